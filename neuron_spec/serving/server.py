"""`neuron-spec serve`: an OpenAI-compatible server (Starlette + uvicorn).

- POST /v1/completions: prompt (text or token ids, one or a list), max_tokens, temperature,
  top_p, stop, seed, stream (server-sent events ending in `data: [DONE]`), echo and logprobs
  (scoring); `usage` in every response and the request's speculation figures under
  `speculation`. vLLM's extensions and the policy for other fields: openai_api.py and
  docs/clients.md.
- POST /v1/chat/completions: messages rendered with the tokenizer's chat template, the same
  settings (max_completion_tokens too), plain or streamed as chat.completion.chunk events.
- GET /v1/models and /v1/models/{id}: the one model served; a request naming another model is
  404 model_not_found. The request schemas (openai_api.py, through frontdoor.py, which the
  SageMaker entry point shares) accept the standard fields clients send with neutral values
  and refuse other values with a 400 naming the field.
- --api-key (or NEURON_SPEC_API_KEY): a Bearer key on every /v1 route, 401 otherwise.
- GET /health: 503 while the models load, 200 once ready.
- GET /metrics: Prometheus text format.

This module is the HTTP side: routes, request parsing (frontdoor.py) and the wire format of
answers (openai_api.py). The work runs in scheduler.py: one worker thread, continuous batching
where the backend batches (every prompt and each of its `n` choices a row of one engine batch of
`--batch-size` slots), one request at a time otherwise. What does not fit waits in a queue: a
request is admitted while running + queued requests are fewer than the slots + --queue-size,
however a burst is timed; beyond that it gets 429 with Retry-After, and /health says
"saturated" (503) meanwhile. --cors-origin lets browser pages of the listed origins call the
API (Starlette's CORSMiddleware). Every request is bounded: prompt tokens + max_tokens
must fit n_positions (400 naming the limit; max_tokens defaults to what fits). A client that
disconnects, streaming or not, has its generation cancelled at the next step. Client errors are
4xx in OpenAI's error shape, counted in /metrics. SIGTERM stops accepting work, answers queued
requests 503, gives the running ones the drain timeout to finish, then cancels them; exit 0.
"""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..config.spec import ConfigFile
from ..errors import BackendUnavailableError, UsageError
from . import frontdoor
from .openai_api import (
    ChatRequest,
    CompletionRequest,
    chunk,
    clip,
    error_body,
    full_body,
    logprobs_after,
    models_body,
    now,
    usage_chunk,
)
from .scheduler import Job, Loader, Scheduler

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, Response
    from starlette.types import ASGIApp, Receive, Scope, Send

Request = frontdoor.Request
STEP_POLL_S = 0.05
CANCEL_MARGIN_S = 60  # how often a waiting handler checks that its client is still there


def _error(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
) -> JSONResponse:
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(message, kind, param), status_code=status)


def served_names(cfg: ConfigFile) -> tuple[str, frozenset[str]]:
    """The name the target is served as, and every name a request may use for it: a Hugging
    Face Hub id is served as itself (`org/name`, as clients name it) and also answers to its
    last part; a local checkpoint is served as its directory's (or file's) name."""
    from ..sources.hub import is_hub_id

    model = cfg.spec.target.model.rstrip("/")
    short = model.split("/")[-1]
    if is_hub_id(model, cfg.base_dir):
        return model, frozenset({model, short})
    return short, frozenset({short})


async def read_body(request: HttpRequest, limit: int = frontdoor.MAX_BODY_BYTES) -> bytes:
    """The request body, never more than `limit` bytes of it read: a Content-Length over the
    limit is refused before a byte of the body is read, and a chunked body is read only
    until it passes the limit (RequestError 413; uvicorn then closes the connection)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise frontdoor.RequestError(400, "the Content-Length header is not a number")
        if len(declared.strip()) > 15 or int(declared) > limit:
            raise frontdoor.RequestError(
                413, f"the body is {declared} bytes; at most {limit} are accepted"
            )
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise frontdoor.RequestError(413, f"the body is over {limit} bytes")
    return bytes(body)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


class Routes:
    """The HTTP side: every client error is a 4xx in OpenAI's error shape, counted."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self.model_name, self.model_names = served_names(scheduler.cfg)
        self.started = now()

    def reject(self, status: int, message: str, param: str | None = None) -> JSONResponse:
        outcome = {413: "invalid", 429: "rejected", 503: "unavailable"}.get(status, "invalid")
        self.scheduler.metrics.requests.labels(outcome).inc()
        kind = {429: "rate_limit_error", 503: "server_error"}.get(status, "invalid_request_error")
        response = _error(status, message, param, kind)
        if status == 413:  # the rest of the body is never read: close, do not drain it
            response.headers["Connection"] = "close"
        return response

    async def health(self, _request: HttpRequest) -> Response:
        from starlette.responses import JSONResponse

        st = self.scheduler
        if st.load_error:
            return JSONResponse({"status": "failed", "error": st.load_error}, status_code=503)
        if st.shutting_down:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if not st.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        queue_info = {"depth": st.jobs.qsize(), "capacity": st.queue_size}
        if st.saturated:
            body = {"status": "saturated", "queue": queue_info}
            return JSONResponse(body, 503, headers={"Retry-After": str(st.retry_after_s)})
        return JSONResponse({"status": "ready", "model": self.model_name, "queue": queue_info})

    async def metrics(self, _request: HttpRequest) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        registry = self.scheduler.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self, _request: HttpRequest) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse(models_body(self.model_name, self.started))

    async def model(self, request: HttpRequest) -> Response:
        """GET /v1/models/{id}: the served model, or OpenAI's 404 model_not_found."""
        from starlette.responses import JSONResponse

        name = request.path_params["model"]
        if name not in self.model_names:
            return self._no_such_model(name)
        return JSONResponse(models_body(self.model_name, self.started)["data"][0])

    def _no_such_model(self, name: str) -> JSONResponse:
        from starlette.responses import JSONResponse

        body = error_body(
            f"The model {clip(name)} does not exist: this server serves '{self.model_name}' "
            "(GET /v1/models).",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
        return JSONResponse(body, status_code=404)

    async def parse(self, request: HttpRequest, schema: type[Request]) -> Request | JSONResponse:
        try:
            return frontdoor.parse_body(await read_body(request), schema)
        except frontdoor.RequestError as exc:
            return self.reject(exc.status, exc.message, exc.param)

    async def completions(self, request: HttpRequest) -> Response:
        return await self.answer(request, CompletionRequest)

    async def chat_completions(self, request: HttpRequest) -> Response:
        return await self.answer(request, ChatRequest)

    async def answer(self, request: HttpRequest, schema: type[Request]) -> Response:
        from starlette.responses import StreamingResponse

        body = await self.parse(request, schema)
        if not isinstance(body, CompletionRequest | ChatRequest):
            return body
        if body.model is not None and body.model not in self.model_names:
            return self._no_such_model(body.model)
        st = self.scheduler
        if st.shutting_down:
            return self.reject(503, "the server is shutting down")
        if not st.ready:
            return self.reject(503, "the models are still loading; poll /health")
        refused = self.cannot(body)
        if refused is not None:
            return self.reject(400, refused[1], refused[0])
        try:
            prompts, ids, max_new = st.prepare(body)
        except frontdoor.RequestError as exc:
            return self.reject(exc.status, exc.message, exc.param)
        job = Job(body, asyncio.get_running_loop(), asyncio.Queue(), ids, max_new, prompts)
        if not st.submit(job):
            resp = self.reject(429, "the request queue is full; retry later")
            resp.headers["Retry-After"] = str(st.retry_after_s)
            return resp
        if body.stream:
            return StreamingResponse(
                self.stream(job),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await self.wait(job, request)

    def cannot(self, body: Request) -> tuple[str, str] | None:
        """(field, message) when the loaded backend cannot honour what the request asks."""
        st, backend = self.scheduler, self.scheduler.cfg.spec.backend
        if body.logprob_count() is not None and st.batch is None:
            return "logprobs", (
                f"logprobs are not returned by the {backend} backend yet (the reference "
                "backend returns them); leave logprobs out"
            )
        scoring = isinstance(body, CompletionRequest) and body.echo
        if scoring and body.logprob_count() is not None and not st.loaded().scores_prompts:
            return "echo", (
                f"echo with logprobs is not supported by the {backend} backend: its compiled "
                "context encoding returns the logits of a prompt's last position only"
            )
        return None

    async def wait(self, job: Job, request: HttpRequest) -> Response:
        """The result of a non-streaming job; a client that goes away cancels it."""
        from starlette.responses import JSONResponse

        getter = asyncio.ensure_future(job.events.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=STEP_POLL_S)
                if done:
                    kind, payload = getter.result()
                    if kind != "delta":
                        break
                    getter = asyncio.ensure_future(job.events.get())
                elif await request.is_disconnected():
                    job.cancelled.set()  # the worker stops at its next step
                    getter.cancel()
                    return _error(499, "the client closed the request", kind="client_closed")
        except asyncio.CancelledError:
            job.cancelled.set()
            getter.cancel()
            raise
        if kind == "error":
            status, message = payload
            why = "invalid_request_error" if status == 400 else "server_error"
            return _error(status, message, kind=why)
        model = self.model_name
        return JSONResponse(full_body(job.chat, job.id, job.created, model, payload))

    async def stream(self, job: Job) -> AsyncIterator[str]:
        """Server-sent events as OpenAI sends them: (chat: each choice's role delta first,)
        text deltas, one finishing event per choice (the last one also carrying
        `speculation`), then, only with stream_options.include_usage, usage (choices: []),
        then [DONE]. With stream_options.continuous_usage_stats every event carries the usage
        so far (vLLM's extension)."""
        head = (job.chat, job.id, job.created, self.model_name)
        usage = _RunningUsage(job) if job.request.continuous_usage else None
        try:
            if job.chat:
                for index in range(job.choices):
                    yield _sse(_with(usage, chunk(*head, index, None)))
            while True:
                kind, payload = await job.events.get()
                if kind == "delta":
                    index, text, logprobs, tokens = payload
                    if usage is not None:
                        usage.tokens[index] = tokens
                    yield _sse(_with(usage, chunk(*head, index, text, logprobs=logprobs)))
                    continue
                if kind == "done":
                    for event in self._finish(job, payload, usage):
                        yield event
                else:
                    status, message = payload
                    yield _sse(error_body(message, "server_error", code=status))
                yield "data: [DONE]\n\n"
                return
        finally:
            job.cancelled.set()  # the client went away, or we are done: free the worker

    def _finish(self, job: Job, payload: dict[str, Any], usage: _RunningUsage | None) -> list[str]:
        """The finishing event of each choice, then the usage event when asked for."""
        head = (job.chat, job.id, job.created, self.model_name)
        if usage is not None:
            usage.final = payload["usage"]
        events = []
        for n, choice in enumerate(payload["choices"], 1):
            sent = job.sent_logprobs.get(choice["index"], 0)
            rest = logprobs_after(job.chat, choice["logprobs"], sent)
            last = chunk(*head, choice["index"], "", choice["finish_reason"], logprobs=rest)
            if n == len(payload["choices"]):
                last["speculation"] = payload["speculation"]
            events.append(_sse(_with(usage, last)))
        if job.request.include_usage:
            events.append(_sse(usage_chunk(*head, payload)))
        return events

    async def not_found(self, request: HttpRequest, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        what = "method not allowed on" if status == 405 else "no such route:"
        path = request.url.path
        path = path if len(path) <= 200 else path[:199] + "…"
        return _error(status, f"{what} {request.method} {path}; see GET /v1/models")


class _RunningUsage:
    """A streamed job's usage so far, for continuous_usage_stats: the prompts' tokens (each
    prompt once, as OpenAI counts them) and each choice's tokens so far; the final usage
    once the job is done."""

    def __init__(self, job: Job):
        self.prompt = sum(len(ids) for ids in job.ids)
        self.tokens: dict[int, int] = {}
        self.final: dict[str, Any] | None = None

    def now(self) -> dict[str, int]:
        if self.final is not None:
            return {k: self.final[k] for k in ("prompt_tokens", "completion_tokens",
                                               "total_tokens")}  # fmt: skip
        done = sum(self.tokens.values())
        return {"prompt_tokens": self.prompt, "completion_tokens": done,
                "total_tokens": self.prompt + done}  # fmt: skip


def _with(usage: _RunningUsage | None, event: dict[str, Any]) -> dict[str, Any]:
    """The event, with the usage so far when the client asked for it on every event."""
    if usage is not None:
        event["usage"] = usage.now()
    return event


class _ApiKey:
    """Bearer-token check on every /v1 route (OpenAI's 401 shape); /health and /metrics stay
    open for load balancers and Prometheus. ASGI middleware, so streams are untouched."""

    def __init__(self, app: ASGIApp, key: str):
        self.app, self.expected = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        import hmac

        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(bearer_token(given), self.expected):
                body = error_body(
                    "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
                from starlette.responses import JSONResponse

                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def bearer_token(header: bytes) -> bytes:
    """The token of an `Authorization: Bearer TOKEN` header (the scheme is case-insensitive,
    RFC 7235 section 2.1; spaces around the token are not part of it); b"" for any other."""
    scheme, _, token = header.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


def check_api_key(key: str, source: str) -> str:
    """The key, or a UsageError when no client could send it: blank (an unset shell variable
    passed as --api-key "$KEY" would otherwise serve without authentication), or holding
    characters an HTTP header cannot carry as a bearer token (spaces, control characters,
    non-ASCII)."""
    if not key.strip():
        raise UsageError(
            f"{source} is empty (an unset environment variable?): the server would run without "
            "authentication. Fix: give the key, or leave the option out to serve without one."
        )
    bad = [ch for ch in key if not "!" <= ch <= "~"]
    if bad:
        raise UsageError(
            f"{source} holds {bad[0]!r}: a bearer token is printable ASCII without spaces, "
            "so no client could send this key. Fix: use letters, digits and -._~+/= only."
        )
    return key


def check_origin(origin: str) -> str:
    """A --cors-origin value: scheme://host[:port], as browsers send the Origin header
    (RFC 6454); a UsageError otherwise (a path, a trailing slash or a wildcard never matches
    what a browser sends, or would open the server to every site)."""
    from urllib.parse import urlsplit

    parts = urlsplit(origin)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or origin != f"{parts.scheme}://{parts.netloc}"
        or "@" in parts.netloc
    ):
        raise UsageError(
            f"--cors-origin {origin!r}: give an origin as a browser sends it, "
            "scheme://host[:port] with no path (e.g. https://app.example.com)"
        )
    return origin


def _middleware(api_key: str | None, cors_origins: list[str]) -> list[Any]:
    """CORS for the listed origins (Starlette's CORSMiddleware, outermost, so a browser's
    preflight needs no key), then the API key check."""
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    stack = []
    if cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        )
    if api_key:
        stack.append(Middleware(_ApiKey, key=api_key))
    return stack


def build_app(
    scheduler: Scheduler,
    loader: Loader,
    api_key: str | None = None,
    cors_origins: list[str] | None = None,
) -> Starlette:
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import Route

    h = Routes(scheduler)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        scheduler.start(loader)
        yield
        scheduler.begin_shutdown()
        scheduler.cancel_running()

    return Starlette(
        routes=[
            Route("/health", h.health),
            Route("/metrics", h.metrics),
            Route("/v1/models", h.models),
            Route("/v1/models/{model:path}", h.model),
            Route("/v1/completions", h.completions, methods=["POST"]),
            Route("/v1/chat/completions", h.chat_completions, methods=["POST"]),
        ],
        exception_handlers={404: h.not_found, 405: h.not_found},
        lifespan=lifespan,
        middleware=_middleware(api_key, cors_origins or []),
    )


class PortUnavailable(UsageError):
    """The address cannot be bound: in use, not an address of this host, or privileged."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (IPv4 or IPv6), or PortUnavailable saying why."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise PortUnavailable(f"--host {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = {
            errno.EADDRINUSE: "is in use (another server, or an earlier neuron-spec serve)",
            errno.EACCES: "needs privileges (ports below 1024)",
            errno.EADDRNOTAVAIL: "is not an address of this machine",
        }.get(exc.errno or 0, f"cannot be bound ({exc.strerror})")
        raise PortUnavailable(
            f"{host}:{port} {why}. Fix: pick another with --port (and --host), or stop "
            "what holds it."
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(
    cfg: ConfigFile,
    host: str,
    port: int,
    queue_size: int = 16,
    drain_timeout_s: float = 30.0,
    api_key: str | None = None,
    slots: int | None = None,
    cors_origins: list[str] | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT, then drain: queued requests get 503, the running
    one has drain_timeout_s to finish before it is cancelled. Returns the exit code (0)."""
    try:
        import uvicorn
    except ImportError:
        raise BackendUnavailableError(
            "serving needs the serve extra: pip install 'neuron-spec[serve]'"
        ) from None
    from ..backends import load_generator

    sock = listen(host, port)  # before anything loads: a busy port is a clear exit 2 at once
    scheduler = Scheduler(cfg, queue_size, slots=slots)
    app = build_app(scheduler, load_generator, api_key, cors_origins)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Drain, then exit 0. uvicorn's own handler would also re-raise the signal once it
            # has shut down, so a server that stopped cleanly would look killed.
            if not scheduler.shutting_down:
                scheduler.begin_shutdown()
                timer = threading.Timer(drain_timeout_s, scheduler.cancel_running)
                timer.daemon = True
                timer.start()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        lifespan="on",
        # After the drain, the cancelled request still finishes its current step and answers:
        # a margin for that step on a machine that is busy with something else.
        timeout_graceful_shutdown=int(drain_timeout_s) + CANCEL_MARGIN_S,
    )
    server = _Server(config)

    def fatal() -> None:
        server.should_exit = True

    scheduler.on_fatal = fatal
    server.run(sockets=[sock])
    scheduler.stop_worker(timeout_s=60)
    if scheduler.load_error:
        sys.stderr.write(f"error: loading the models failed: {scheduler.load_error}\n")
        return 1
    return 0
