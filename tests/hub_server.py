"""A stand-in for the Hugging Face Hub on 127.0.0.1, for HF_ENDPOINT: it serves the file
routes huggingface_hub uses (`/api/models/{repo}/revision/{rev}` and `/{repo}/resolve/{rev}/
{file}`, HEAD and GET, with the X-Repo-Commit and ETag headers the library reads), answers a
gated repo with 401 `X-Error-Code: GatedRepo` and an unknown one with 404 `RepoNotFound`, as
the Hub does, and records every path it is asked for.

A repo may be made hostile (`hostile[repo] = mode`): its files are answered a byte at a time
("trickle": the body; "trickle-headers": the status line and headers too), with 429 or 503 and
`Retry-After: 86400` ("429", "503"), or with 96 MB of config.json ("huge": announced by
Content-Length; "huge-chunked": without one). `Silent` accepts connections and never answers."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUGE = 96_000_000
TRICKLE_FOR_S = 60.0  # a hostile answer gives up after this, or when the server stops


class Hub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.gated: set[str] = set()
        self.requests: list[str] = []
        self.methods: list[str] = []  # beside requests: HEAD or GET
        self.hostile: dict[str, str] = {}
        self.closing = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

        class Server(ThreadingHTTPServer):
            def handle_error(self, *_args: Any) -> None:  # a client that hung up: expected
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo: str, files: dict[str, bytes], gated: bool = False) -> None:
        self.repos[repo] = files
        if gated:
            self.gated.add(repo)

    def add_dir(self, repo: str, directory: Path) -> None:
        self.add(repo, {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()})

    def stop(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(path)
        self.methods.append(h.command)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 5:
            repo = "/".join(parts[2:4])
            if parts[4] == "tree":
                return self._tree(h, repo, body)
            return self._info(h, repo, body)
        if parts[0] == "api":
            return self._send(h, 404, b"", {}, body)
        repo, rest = "/".join(parts[:2]), parts[2:]
        if len(rest) < 3 or rest[0] != "resolve":
            return self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
        name = "/".join(rest[2:])
        if repo in self.hostile:
            return self._hostile(h, self.hostile[repo])
        if repo not in self.repos:
            return self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
        if repo in self.gated and "authorization" not in {k.lower() for k in h.headers}:
            msg = b'{"error": "Access to model is restricted. You must have access."}'
            return self._send(h, 401, msg, {"X-Error-Code": "GatedRepo"}, body)
        data = self.repos[repo].get(name)
        if data is None:
            return self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
        etag = '"' + hashlib.sha256(data).hexdigest() + '"'
        return self._send(h, 200, data, {"X-Repo-Commit": COMMIT, "ETag": etag}, body)

    def _info(self, h: BaseHTTPRequestHandler, repo: str, body: bool) -> None:
        if repo not in self.repos:
            return self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
        if repo in self.gated and "authorization" not in {k.lower() for k in h.headers}:
            return self._send(h, 401, b"", {"X-Error-Code": "GatedRepo"}, body)
        siblings = [{"rfilename": n} for n in sorted(self.repos[repo])]
        info = {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings}
        return self._send(h, 200, json.dumps(info).encode(), {}, body)

    def _tree(self, h: BaseHTTPRequestHandler, repo: str, body: bool) -> None:
        """The repo's files, as the Hub's tree listing gives them."""
        if repo not in self.repos:
            return self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
        entries = [
            {"type": "file", "path": name, "size": len(data),
             "oid": hashlib.sha1(data).hexdigest()}
            for name, data in sorted(self.repos[repo].items())
        ]  # fmt: skip
        return self._send(h, 200, json.dumps(entries).encode(), {}, body)

    def _hostile(self, h: BaseHTTPRequestHandler, mode: str) -> None:
        if mode in ("429", "503"):
            return self._send(h, int(mode), b"", {"Retry-After": "86400"}, True)
        if mode.startswith("huge"):
            return self._huge(h, chunked=mode == "huge-chunked")
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nX-Repo-Commit: " + COMMIT.encode()
        head += b"\r\n\r\n"
        if mode == "trickle":
            h.wfile.write(head)
            h.wfile.flush()
            head = b""
        self._trickle(h, head + b"{" + b" " * 4000)

    def _trickle(self, h: BaseHTTPRequestHandler, data: bytes) -> None:
        """One byte every 0.2 s: each read of the client's finds something, so no per-read
        timeout ever fires."""
        end = time.monotonic() + TRICKLE_FOR_S
        for i in range(len(data)):
            if self.closing.is_set() or time.monotonic() > end:
                return
            try:
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)

    def _huge(self, h: BaseHTTPRequestHandler, chunked: bool) -> None:
        h.send_response(200)
        h.send_header("X-Repo-Commit", COMMIT)
        if chunked:
            h.send_header("Connection", "close")
            h.close_connection = True
        else:
            h.send_header("Content-Length", str(HUGE))
        h.end_headers()
        block, sent = b'{"pad": "' + b"x" * (1 << 20), 0
        while sent < HUGE and not self.closing.is_set():
            try:
                h.wfile.write(block)
            except OSError:
                return
            sent += len(block)
            block = b"x" * (1 << 20)

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str], body: bool
    ) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)


class Silent:
    """A server that accepts connections and never reads or answers: a Hub that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)

    def stop(self) -> None:
        self.closing.set()
        self.sock.close()
        for conn in self.held:
            conn.close()
