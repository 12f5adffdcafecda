"""Memory of a long-running `neuron-spec serve` under many requests and oversized bodies.

Starts the server on 127.0.0.1 at `--batch-size 4`, waits until it is ready, then:
1. sends `--requests` short completions (8 at a time) and reads the server's resident memory
   (VmRSS, from /proc) after the first 100 and after the last: a server that keeps a record of
   every step grows with the requests it has served;
2. sends a body that declares `--body-mib` MiB (Content-Length) and streams it, then the same
   size chunked, sampling the server's resident memory every 5 ms while it does: the body must
   be refused (413) without being read into memory.
Prints JSON. Targets: `rss_growth_mb` (after the last request minus after the 100th) and each
body's `peak_growth_mb` under 20 MB. Linux only (/proc).

    python benchmarks/serve_memory.py [--config configs/demo-cpu.yaml] [--requests 1000]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start(config: str, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "neuron_spec", "serve", config, "--port", str(port)]
    command += ["--batch-size", "4", "--queue-size", "64", "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready in 300 s")


def requests(url: str, count: int, max_tokens: int) -> dict[int, int]:
    statuses: dict[int, int] = {}

    def one(i: int) -> int:
        body = {"prompt": f"Request {i}: the weather today", "max_tokens": max_tokens}
        return httpx.post(url + "/v1/completions", json=body, timeout=300).status_code

    with cf.ThreadPoolExecutor(8) as pool:
        for status in pool.map(one, range(count)):
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


def big_body(port: int, pid: int, size: int, chunked: bool) -> dict[str, object]:
    """Send a `size`-byte body; the server's answer and its memory while it came."""
    before, peak, stop = rss_mb(pid), [0.0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode()
    piece = b"x" * (1 << 20)
    frame = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece
    sent, answer = 0, b""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        try:
            while sent < size:
                s.sendall(frame)
                sent += len(piece)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            answer = s.recv(4096)
    stop.set()
    sampler.join()
    return {
        "framing": "chunked" if chunked else "content-length",
        "status": answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else None,
        "bytes_the_server_took": sent,
        "seconds": round(time.monotonic() - began, 2),
        "rss_before_mb": round(before, 1),
        "peak_growth_mb": round(max(peak[0] - before, 0.0), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--body-mib", type=int, default=768)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = start(args.config, port)
    try:
        first = requests(url, min(100, args.requests), args.max_tokens)
        after_100 = rss_mb(proc.pid)
        rest = requests(url, max(0, args.requests - 100), args.max_tokens)
        after_all = rss_mb(proc.pid)
        size = args.body_mib << 20
        bodies = [big_body(port, proc.pid, size, chunked) for chunked in (False, True)]
    finally:
        proc.terminate()
        proc.wait(60)
    statuses = {str(k): first.get(k, 0) + rest.get(k, 0) for k in {*first, *rest}}
    report = {
        "config": args.config,
        "batch_size": 4,
        "requests": args.requests,
        "statuses": statuses,
        "rss_after_100_mb": round(after_100, 1),
        "rss_after_all_mb": round(after_all, 1),
        "rss_growth_mb": round(after_all - after_100, 1),
        "bodies": bodies,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
