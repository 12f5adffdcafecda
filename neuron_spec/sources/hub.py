"""Hugging Face Hub model ids as `model:` (`meta-llama/Llama-3.1-70B-Instruct`), through
huggingface_hub: its cache, its token (HF_TOKEN, or `hf auth login`), its HF_ENDPOINT and its
offline mode (HF_HUB_OFFLINE=1).

A value is a Hub id when it has the form ORG/NAME and nothing of that name exists next to
the config (`./org/name` is always a path). `validate` and `plan` read only the repo's
config.json (a few kB, cached); `generate`, `serve` and `launch.sh` download the weights
once into the Hugging Face cache (safetensors, config and tokenizer files; never the
`original/` consolidated checkpoints) with huggingface_hub's progress bars.

Reading config.json is bounded in time and size: one GET, answered in full within
`hub_timeout()` seconds (HUB_TIMEOUT_S; NEURON_SPEC_HUB_TIMEOUT overrides it) and at most
MAX_CONFIG_BYTES long, else a HubError naming the endpoint. huggingface_hub's own download
(`hf_hub_download`) offers neither bound: HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT
limit each socket read, so a server that trickles a byte every few seconds never trips them;
it retries a 429 or 503 after the server's Retry-After, however long (`Retry-After: 86400`
waits a day), and when the first metadata request fails it tries again for up to 60 s per
attempt; and it downloads a file whole before its size can be looked at. So that one request
is made here, through huggingface_hub's own HTTP client (`get_session()`: an httpx client from
huggingface_hub 1.0 on, a requests.Session before it, as transformers 4.x pins it; either one
carries the user's proxy and certificate settings), headers (the token) and errors, and its
answer is filed in huggingface_hub's cache layout (blobs/, snapshots/, refs/main), where
`HF_HUB_OFFLINE=1` and the weights download find it.
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.spec import ConfigFile

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
WEIGHTS = ["*.safetensors", "*.safetensors.index.json"]
METADATA = ["*.json", "tokenizer.model", "*.tiktoken", "*.txt"]
MAX_CONFIG_BYTES = 1 << 20
MAX_ERROR_BYTES = 64 << 10  # of an error answer's body: enough for the Hub's JSON message
PIECE_BYTES = 64 << 10  # read at most this much of an answer at a time
HUB_TIMEOUT_S = 15.0  # two repos (target and draft) stay within 30 s
TIMEOUT_ENV = "NEURON_SPEC_HUB_TIMEOUT"
MAX_TIMEOUT_S = 600.0
GRACE_S = 0.5  # past the deadline, for a worker reading a trickle to say so itself
DOWN_FOR_S = 60.0  # an endpoint that did not answer is not asked again for this long
_COMMIT = re.compile(r"[0-9a-f]{40}")
_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_UNAVAILABLE_FIX = (
    "check the network and HF_ENDPOINT (unset it for https://huggingface.co), retry later, or "
    "point model at a local checkpoint directory"
)


class HubError(Exception):
    """The repo cannot be read: `message` says why, `fix` what to do."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.message, self.fix = message, fix


class _Unavailable(Exception):
    """The endpoint gave no usable answer in time (no answer, a trickle, 429/5xx, a broken
    connection): str(exc) says what it did."""


class _TooLarge(Exception):
    """The answer is longer than allowed: str(exc) says how long."""


@dataclass(frozen=True)
class _Answer:
    body: bytes
    commit: str | None
    etag: str | None


# Within one process (validate resolves each model more than once): answers by (endpoint,
# repo), and endpoints that did not answer, with when they failed.
_answers: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
_down: dict[str, tuple[float, HubError]] = {}  # endpoint -> (when, the error it gave)


def is_hub_id(value: str, base_dir: Path) -> bool:
    if not HUB_ID.match(value) or ".." in value or value.lower().endswith(".gguf"):
        return False
    return not (base_dir / value).exists()


def hub_timeout() -> float:
    """Seconds one Hub request may take from start to its last byte: HUB_TIMEOUT_S, or
    NEURON_SPEC_HUB_TIMEOUT when set (more than 0, at most MAX_TIMEOUT_S)."""
    from ..util.safeio import printable

    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return HUB_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT_S:  # nan fails too
        raise HubError(
            f"{TIMEOUT_ENV}={printable(text, 40)!r} is not a number of seconds in "
            f"(0, {MAX_TIMEOUT_S:g}]",
            f"unset it (the default is {HUB_TIMEOUT_S:g} s) or set it to e.g. 30",
        )
    return value


def _library() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError:
        raise HubError(
            "reading a Hugging Face Hub model needs huggingface_hub",
            "pip install huggingface_hub (the reference extra brings it)",
        ) from None
    return huggingface_hub


def _endpoint(hub: Any) -> str:
    return str(hub.constants.ENDPOINT)


def _offline(hub: Any, repo: str) -> HubError:
    return HubError(
        f"HF_HUB_OFFLINE is set and {repo} is not in the Hugging Face cache "
        f"({hub.constants.HF_HUB_CACHE})",
        "run once with network access (unset HF_HUB_OFFLINE), or point model at a "
        "local checkpoint directory",
    )


def _explain(hub: Any, repo: str, exc: Exception) -> HubError:
    """A HubError in words for what huggingface_hub raised."""
    from ..util.safeio import printable

    errors = hub.errors
    where = _endpoint(hub)
    page = f"{where}/{repo}"
    if isinstance(exc, errors.GatedRepoError):
        return HubError(
            f"{repo} is gated: its files need an accepted license and a token",
            f"accept the license at {page}, then set HF_TOKEN (or run `hf auth login`)",
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(
            f"there is no repo {repo} at {where} (or it is private)",
            "check the name; for a private repo set HF_TOKEN (or run `hf auth login`)",
        )
    local_miss = isinstance(exc, getattr(errors, "LocalEntryNotFoundError", ()))
    if hub.constants.HF_HUB_OFFLINE:
        return _offline(hub, repo)
    if isinstance(exc, errors.EntryNotFoundError) and not local_miss:
        return HubError(f"{repo} has no config.json", "use a repo with a transformers config")
    return HubError(
        f"cannot read {repo} from {where}: {type(exc).__name__}: {printable(str(exc), 200)}",
        "check the network (and HF_ENDPOINT), or point model at a local checkpoint directory",
    )


def fetch_config(repo: str) -> tuple[dict[str, Any], str]:
    """The repo's config.json, and where it came from (for messages): fetched with one
    bounded request and filed in the Hugging Face cache, or read from that cache offline or
    when the Hub does not answer."""
    return _fetch(repo)[:2]


def _fetch(repo: str) -> tuple[dict[str, Any], str, bool]:
    """fetch_config, and whether the answer is live (False: from the cache)."""
    hub = _library()
    endpoint = _endpoint(hub)
    if hub.constants.HF_HUB_OFFLINE:
        cached = _from_cache(hub, repo)
        if cached is None:
            raise _offline(hub, repo)
        return (*cached, False)
    known = _answers.get((endpoint, repo))
    if known is not None:
        return known[0], known[1], True
    down = _down.get(endpoint)
    if down is not None and time.monotonic() - down[0] < DOWN_FOR_S:
        again = HubError(f"{down[1].message} (so {repo} was not asked for)", down[1].fix)
        return (*_cached_or(hub, repo, again), False)
    try:
        answer = _bounded_get(hub, repo, hub_timeout())
    except _Unavailable as exc:
        error = HubError(
            f"the Hub at {endpoint} (HF_ENDPOINT) gave no usable answer for {repo}'s "
            f"config.json: {exc}",
            _UNAVAILABLE_FIX,
        )
        _down[endpoint] = (time.monotonic(), error)
        return (*_cached_or(hub, repo, error), False)
    except _TooLarge as exc:
        raise HubError(
            f"{repo}'s config.json at {endpoint} is {exc}, more than the {MAX_CONFIG_BYTES} "
            "bytes a config.json may have (a real one is a few kB): nothing was kept",
            "check the repo name and HF_ENDPOINT",
        ) from None
    data = _parse(answer.body, repo, endpoint)
    where = f"config.json of {repo} at {endpoint}"
    _store(hub, repo, answer)
    _answers[(endpoint, repo)] = (data, where)
    return data, where, True


def _cached_or(hub: Any, repo: str, error: HubError) -> tuple[dict[str, Any], str]:
    cached = _from_cache(hub, repo)
    if cached is None:
        raise error
    return cached


def _parse(body: bytes, repo: str, endpoint: str) -> dict[str, Any]:
    from ..util.safeio import Unreadable, loads

    try:
        data = loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        data = None
    except Unreadable as exc:
        raise HubError(
            f"{repo}'s config.json at {endpoint} is unreadable: {exc}", "check the repo"
        ) from None
    if not isinstance(data, dict):
        raise HubError(f"{repo}'s config.json at {endpoint} is not a JSON object", "check the repo")
    return data


def _from_cache(hub: Any, repo: str) -> tuple[dict[str, Any], str] | None:
    """The cached config.json of the repo's main revision, or None."""
    from ..util.safeio import Unreadable, read_json

    path = hub.try_to_load_from_cache(repo, "config.json")
    if not isinstance(path, str):
        return None
    try:
        data = read_json(Path(path), MAX_CONFIG_BYTES)
    except Unreadable as exc:
        raise HubError(
            f"the cached config.json of {repo} ({path}) is unreadable: {exc}",
            "delete it from the Hugging Face cache and run again with network access",
        ) from None
    if not isinstance(data, dict):
        raise HubError(
            f"the cached config.json of {repo} ({path}) is not a JSON object",
            "delete it from the Hugging Face cache and run again with network access",
        )
    return data, path


# --- the one bounded request ------------------------------------------------------------------


def _bounded_get(hub: Any, repo: str, seconds: float) -> _Answer:
    """GET config.json in a worker thread, waited for `seconds` at most: the socket timeouts
    of an HTTP client bound each read, not the whole exchange, and a status line or headers
    sent a byte at a time would outlast any of them. The worker stops at its next byte once
    the time is up; until then it is a daemon thread holding one connection."""
    url = hub.hf_hub_url(repo, "config.json")
    headers = hub.utils.build_hf_headers()
    per_read = min(float(hub.constants.HF_HUB_ETAG_TIMEOUT), seconds)
    deadline = time.monotonic() + seconds
    stop = threading.Event()
    box: list[Any] = []

    def work() -> None:
        try:
            box.append(_get(hub, url, headers, per_read, deadline, stop))
        except BaseException as exc:  # handed to the caller, whatever it is
            box.append(exc)

    worker = threading.Thread(target=work, name="neuron-spec-hub", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0.0) + GRACE_S)  # for its own word on it
    stop.set()
    if not box:
        raise _Unavailable(f"no complete answer within {seconds:g} s")
    if isinstance(box[0], (_Unavailable, _TooLarge, HubError)):
        raise box[0]
    if isinstance(box[0], BaseException):
        raise _classify(hub, repo, box[0], seconds)
    answer: _Answer = box[0]
    return answer


def _classify(hub: Any, repo: str, exc: BaseException, seconds: float) -> Exception:
    """What the library or the connection raised: a refusal the Hub explains (gated, no such
    repo or file) as a HubError, anything else (timeouts, resets) as unavailability."""
    from ..util.safeio import printable

    if isinstance(exc, hub.errors.HfHubHTTPError):
        return _explain(hub, repo, exc)
    if not isinstance(exc, Exception):  # KeyboardInterrupt and the like, in the worker
        return _Unavailable(type(exc).__name__)
    name = type(exc).__name__
    if "Timeout" in name or "timed out" in str(exc):  # ConnectTimeout, ReadTimeout, ...
        return _Unavailable(f"no complete answer within {seconds:g} s ({name})")
    detail = printable(str(exc), 160)
    return _Unavailable(f"{name}{': ' + detail if detail else ''}")


def _get(
    hub: Any, url: str, headers: dict[str, str], per_read: float, deadline: float, stop: Any
) -> _Answer:
    with _open(hub.get_session(), url, headers, per_read) as response:
        status = int(response.status_code)
        if status == 429 or status >= 500:
            raise _Unavailable(_busy(status, response.headers.get("Retry-After")))
        if status >= 400:
            body = _read(response, MAX_ERROR_BYTES, deadline, stop, keep_short=True)
            hub.utils.hf_raise_for_status(_settled(response, body))
            raise _Unavailable(f"it answered HTTP {status}")
        if status >= 300:
            raise _Unavailable(f"it answered HTTP {status} without a usable redirect")
        _check_length(response.headers.get("Content-Length"))
        body = _read(response, MAX_CONFIG_BYTES, deadline, stop)
        etag = response.headers.get("X-Linked-Etag") or response.headers.get("ETag")
        return _Answer(body, response.headers.get("X-Repo-Commit"), etag)


def _busy(status: int, retry_after: str | None) -> str:
    from ..util.safeio import printable

    said = f"it answered HTTP {status} ({'too many requests' if status == 429 else 'busy'})"
    if retry_after:
        said += f" and asked to be retried after {printable(retry_after, 40)!r} s"
    return said + "; neuron-spec does not wait for it"


def _check_length(declared: str | None) -> None:
    size = int(declared) if declared is not None and declared.strip().isdigit() else 0
    if size > MAX_CONFIG_BYTES:
        raise _TooLarge(f"{size} bytes long (Content-Length)")


def _read(response: Any, limit: int, deadline: float, stop: Any, keep_short: bool = False) -> bytes:
    """The body, decoded, at most `limit` bytes (or its first `limit` when `keep_short`),
    given up once the deadline passes."""
    chunks, size = [], 0
    for chunk in _chunks(response):
        size += len(chunk)
        if size > limit:
            if keep_short:
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            raise _TooLarge(f"more than {limit} bytes long (it was still sending)")
        chunks.append(chunk)
        if stop.is_set() or time.monotonic() > deadline:
            raise _Unavailable(f"it sent {size} bytes, too slowly to finish in time")
    return b"".join(chunks)


# huggingface_hub's HTTP client is an httpx client from 1.0 on (its `stream()` opens a streamed
# answer) and a requests.Session before (its `stream` is a setting: `get(..., stream=True)`
# opens one). Both answers have `status_code` and case-insensitive `headers`; these three
# functions are all that differs.


def _open(session: Any, url: str, headers: dict[str, str], per_read: float) -> Any:
    """A streamed GET of `url`, as a context manager that closes it (without reading on);
    redirects are followed, as huggingface_hub's client is set to, and nothing is retried."""
    if callable(getattr(session, "stream", None)):  # httpx
        return session.stream("GET", url, headers=headers, timeout=per_read)
    return session.get(url, headers=headers, timeout=per_read, stream=True)  # requests


def _chunks(response: Any) -> Iterator[bytes]:
    """The body, decoded (a gzipped answer is unzipped), in pieces as they arrive: each
    piece is what one read of the connection brought, so a trickle is looked at byte by byte."""
    if hasattr(response, "iter_bytes"):  # httpx
        return iter(response.iter_bytes())
    read1 = getattr(response.raw, "read1", None)  # requests over urllib3 2.x
    if read1 is None:  # an older urllib3 reads whole pieces; the caller's deadline bounds that
        return iter(response.iter_content(PIECE_BYTES))
    return iter(lambda: read1(PIECE_BYTES, decode_content=True) or b"", b"")


def _settled(response: Any, body: bytes) -> Any:
    """A read copy of a streamed error answer, of the client's own type, for
    huggingface_hub's hf_raise_for_status (which would otherwise read the whole body itself)."""
    kept = {
        k: v
        for k, v in response.headers.items()
        if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
    }
    if hasattr(response, "iter_bytes"):  # httpx
        return type(response)(
            response.status_code, headers=kept, content=body, request=response.request
        )
    copy = type(response)()  # requests: its body is read from `raw`
    copy.status_code, copy.headers = response.status_code, type(response.headers)(kept)
    copy.raw, copy.encoding = io.BytesIO(body), response.encoding
    copy.url, copy.reason, copy.request = response.url, response.reason, response.request
    return copy


# --- the Hugging Face cache --------------------------------------------------------------------


def _store(hub: Any, repo: str, answer: _Answer) -> None:
    """File config.json in huggingface_hub's cache layout (blobs/<etag>, snapshots/<commit>/
    config.json linking to it, refs/main naming the commit), as hf_hub_download would; an
    answer without a commit and an etag of the Hub's form, or a cache that cannot be written,
    is not cached (it is fetched again next time)."""
    etag = (answer.etag or "").removeprefix("W/").strip('"')
    commit = answer.commit or ""
    if not (_COMMIT.fullmatch(commit) and _ETAG.fullmatch(etag)):
        return
    folder = Path(hub.constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
    try:
        blob = folder / "blobs" / etag
        _write(blob, answer.body)
        _link(folder / "snapshots" / commit / "config.json", blob)
        _write(folder / "refs" / "main", commit.encode())
    except OSError:
        return


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _link(path: Path, blob: Path) -> None:
    """A relative symlink to the blob, as huggingface_hub makes; a copy where links fail."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.symlink_to(os.path.relpath(blob, path.parent))
    except OSError:
        tmp.write_bytes(blob.read_bytes())
    os.replace(tmp, path)


# --- the weights --------------------------------------------------------------------------------


def download(repo: str, say: Callable[[str], None]) -> Path:
    """The repo's weights, config and tokenizer in the Hugging Face cache (downloaded once,
    with progress bars); its snapshot directory. config.json is fetched first, bounded as
    for `validate`: a Hub that does not answer, or refuses the repo, fails here within
    hub_timeout(), by name. When it does not answer, a snapshot already in the cache is used
    without asking it. The weights themselves come through huggingface_hub, each read
    bounded by HF_HUB_DOWNLOAD_TIMEOUT (a download of many GB has no useful overall bound)."""
    hub = _library()
    live = _fetch(repo)[2]
    say(f"downloading {repo} from {_endpoint(hub)} into the Hugging Face cache (once)")
    options: dict[str, Any] = {"ignore_patterns": ["original/*"]}
    options["etag_timeout"] = min(float(hub.constants.HF_HUB_ETAG_TIMEOUT), hub_timeout())
    if not live and not hub.constants.HF_HUB_OFFLINE:
        options["local_files_only"] = True  # the Hub did not answer: the cache or nothing
    try:
        folder = hub.snapshot_download(repo, allow_patterns=WEIGHTS + METADATA, **options)
        if not any(Path(folder).glob("*.safetensors")):  # an older repo: .bin weights
            folder = hub.snapshot_download(repo, allow_patterns=["*.bin", *METADATA], **options)
    except Exception as exc:  # explained, as for config.json
        down = _down.get(_endpoint(hub))
        if options.get("local_files_only") and down is not None:
            raise down[1] from None
        raise _explain(hub, repo, exc) from None
    return Path(folder)


def materialize(cfg: ConfigFile, say: Callable[[str], None]) -> ConfigFile:
    """The config with each Hub id replaced by its downloaded snapshot directory (a model
    used by both roles is downloaded once)."""
    import dataclasses

    from ..errors import ConfigError, ConfigProblem

    spec, done = cfg.spec, dict[str, str]()
    for role, m in cfg.spec.models():
        if not is_hub_id(m.model, cfg.base_dir):
            continue
        try:
            if m.model not in done:
                done[m.model] = str(download(m.model, say))
        except HubError as exc:
            raise ConfigError(
                [ConfigProblem(f"{role}.model", exc.message, exc.fix + ".")]
            ) from None
        spec = spec.replace(**{role: getattr(spec, role).replace(model=done[m.model])})
    return cfg if spec is cfg.spec else dataclasses.replace(cfg, spec=spec)
