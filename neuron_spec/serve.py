"""`neuron-spec serve`: an OpenAI-compatible completions server (Starlette + uvicorn).

- POST /v1/completions: prompt (string or list), max_tokens, temperature, top_p, stop, seed,
  stream (server-sent events ending in `data: [DONE]`); `usage` in every response and the
  request's speculation figures under `speculation`.
- GET /health: 503 while the models load, 200 once ready.
- GET /metrics: Prometheus text format.

Generation runs on one worker thread, one request at a time (transformers-neuronx speculation
is batch 1), fed from a bounded queue: a full queue answers 429 with Retry-After, and /health
says "saturated" (503) while it is full. Every request is bounded: prompt tokens + max_tokens
must fit n_positions (400 naming the limit; max_tokens defaults to what fits). A client that
disconnects, streaming or not, has its generation cancelled at the next step. Client errors are
4xx in OpenAI's error shape, counted in /metrics. SIGTERM stops accepting work, answers queued
requests 503, gives the running one the drain timeout to finish, then cancels it; exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .backends import backend_warnings
from .config import ConfigFile
from .engine import GenerationCancelled
from .errors import BackendUnavailableError, UsageError

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

MAX_PROMPTS = 16
MAX_STOPS = 4
MAX_BODY_BYTES = 1 << 20
MIN_TEMPERATURE = 1e-4
STEP_POLL_S = 0.05
CANCEL_MARGIN_S = 60  # how often a waiting handler checks that its client is still there


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


class CompletionRequest(BaseModel):
    """The subset of OpenAI's /v1/completions that neuron-spec serves."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        items = [v] if isinstance(v, str) else v
        if not items or len(items) > MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts")
        if any(not p for p in items):
            raise ValueError("prompts must not be empty")
        if any(_has_surrogate(p) for p in items):
            raise ValueError("prompts must be valid Unicode (a lone surrogate is not)")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float | None) -> float | None:
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise ValueError(
                f"must be 0 (greedy) or at least {MIN_TEMPERATURE}: smaller values overflow "
                "the scaled logits"
            )
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > MAX_STOPS or any(not s for s in items):
            raise ValueError(f"give up to {MAX_STOPS} non-empty stop strings")
        if any(_has_surrogate(x) for x in items):
            raise ValueError("stop strings must be valid Unicode (a lone surrogate is not)")
        return v

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def _error(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
) -> JSONResponse:
    from starlette.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


@dataclass
class Job:
    request: CompletionRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]]
    ids: list[list[int]]  # each prompt's tokens, checked against n_positions
    max_new: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def push(self, kind: str, payload: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        p = "neuron_spec_"
        self.requests = Counter(
            p + "requests", "Completion requests by outcome", ["status"], registry=r
        )
        self.errors = Counter(p + "request_errors", "Failed requests by kind", ["kind"], registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed", registry=r)
        self.tokens = Counter(p + "generated_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "Time to first token",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.tpot = Histogram(
            p + "time_per_output_token_seconds",
            "Time per output token",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.drafted = Counter(p + "draft_tokens", "Draft tokens proposed", registry=r)
        self.accepted = Counter(p + "accepted_tokens", "Draft tokens accepted", registry=r)
        self.pos_drafted = Counter(
            p + "position_drafted", "Drafts proposed at each position", ["position"], registry=r
        )
        self.pos_accepted = Counter(
            p + "position_accepted", "Drafts accepted at each position", ["position"], registry=r
        )
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting", registry=r)
        self.ready = Gauge(p + "ready", "1 once the models are loaded", registry=r)

    def observe(self, m: Any) -> None:
        self.prompt_tokens.inc(m.prompt_tokens)
        self.tokens.inc(m.new_tokens)
        self.drafted.inc(m.drafted)
        self.accepted.inc(m.accepted)
        if m.time_to_first_token_s is not None:
            self.ttft.observe(m.time_to_first_token_s)
        if m.time_per_output_token_s["mean"] is not None and m.new_tokens > 1:
            for _ in range(m.new_tokens - 1):
                self.tpot.observe(m.time_per_output_token_s["mean"])
        for i, (d, a) in enumerate(
            zip(m.per_position_drafted, m.per_position_accepted, strict=True), 1
        ):
            self.pos_drafted.labels(str(i)).inc(d)
            self.pos_accepted.labels(str(i)).inc(a)


class ServerState:
    """Everything the handlers share: the generator, the queue, the worker, the metrics."""

    def __init__(self, cfg: ConfigFile, queue_size: int = 16, retry_after_s: int = 2):
        self.cfg = cfg
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.retry_after_s = retry_after_s
        self.metrics = Metrics()
        self.generator: Any = None
        self.load_error: str | None = None
        self.shutting_down = False
        self.running: Job | None = None
        self.on_fatal: Any = None  # called when loading fails: the server exits
        self.model_name = cfg.spec.target.model.rstrip("/").split("/")[-1]
        self._worker = threading.Thread(target=self._work, name="neuron-spec-worker", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, loader: Any) -> None:
        def load() -> None:
            try:
                self.generator = loader(self.cfg)
                for message in backend_warnings(self.generator):
                    sys.stderr.write(f"neuron-spec: warning: {message}\n")
                self.metrics.ready.set(1)
                self._worker.start()
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                if self.on_fatal is not None:
                    self.on_fatal()

        threading.Thread(target=load, name="neuron-spec-loader", daemon=True).start()

    def begin_shutdown(self) -> None:
        """Stop taking work; answer queued requests 503; let the running one finish."""
        self.shutting_down = True
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.push("error", (503, "the server is shutting down"))
        with contextlib.suppress(queue.Full):
            self.jobs.put_nowait(None)

    def cancel_running(self) -> None:
        job = self.running
        if job is not None:
            job.cancelled.set()

    @property
    def ready(self) -> bool:
        return self.generator is not None and not self.shutting_down

    @property
    def saturated(self) -> bool:
        return self.jobs.full()

    def stop_worker(self, timeout_s: float) -> None:
        """Cancel what runs and wait for the worker to leave the models: a process must not
        exit while a thread is inside torch (that aborts it)."""
        self.begin_shutdown()
        self.cancel_running()
        if self._worker.is_alive():
            self._worker.join(timeout_s)

    def plan(self, req: CompletionRequest) -> tuple[list[list[int]], int]:
        """Each prompt's tokens and the new tokens to generate; RequestTooLong when they
        cannot fit n_positions. max_tokens defaults to what fits (at most the config's)."""
        from .generate import RequestTooLong

        gen = self.generator
        ids = gen.encode(req.prompts())
        limit = gen.n_positions
        longest = max(len(i) for i in ids)
        room = limit - longest
        if room < 1:
            raise RequestTooLong(
                f"the prompt is {longest} tokens; n_positions={limit} leaves no room to generate"
            )
        if req.max_tokens is None:
            return ids, min(self.cfg.spec.generation.max_new_tokens, room)
        if req.max_tokens > room:
            raise RequestTooLong(
                f"the prompt ({longest} tokens) + max_tokens ({req.max_tokens}) exceeds "
                f"n_positions={limit}: at most {room} new tokens fit"
            )
        return ids, req.max_tokens

    # --- work ------------------------------------------------------------------------------

    def submit(self, job: Job) -> bool:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            return False
        self.metrics.queue_depth.set(self.jobs.qsize())
        return True

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            self.metrics.queue_depth.set(self.jobs.qsize())
            if job is None:
                return
            if job.cancelled.is_set():
                self.metrics.requests.labels("cancelled").inc()
                continue
            self.running = job
            try:
                job.push("done", self._run(job))
                self.metrics.requests.labels("ok").inc()
            except GenerationCancelled:
                self.metrics.requests.labels("cancelled").inc()
                why = "shutting down" if self.shutting_down else "cancelled"
                job.push("error", (503, f"the request was cancelled: the server is {why}"))
            except Exception as exc:
                self.metrics.requests.labels("error").inc()
                self.metrics.errors.labels(type(exc).__name__).inc()
                job.push("error", (500, f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                self.running = None

    def _run(self, job: Job) -> dict[str, Any]:
        req, gen = job.request, self.generator
        choices = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        spec: dict[str, Any] = {"drafted": 0, "accepted": 0, "target_passes": 0}
        for index, prompt in enumerate(req.prompts()):
            on_text = None
            if req.stream:

                def on_text(_row: int, delta: str, index: int = index) -> None:
                    job.push("delta", (index, delta))

            result = gen.generate(
                prompt,
                prompt_token_ids=[job.ids[index]],
                max_new_tokens=job.max_new,
                temperature=req.temperature,
                top_p=req.top_p,
                seed=req.seed,
                stop=req.stops(),
                on_text=on_text,
                cancelled=job.cancelled.is_set,
            )
            m = result.metrics
            self.metrics.observe(m)
            stopped = result.finished_by_stop[0] or result.finished_by_eos[0]
            choices.append(
                {
                    "text": result.text[0],
                    "index": index,
                    "logprobs": None,
                    "finish_reason": "stop" if stopped else "length",
                }
            )
            usage["prompt_tokens"] += m.prompt_tokens
            usage["completion_tokens"] += m.new_tokens
            spec["drafted"] += m.drafted
            spec["accepted"] += m.accepted
            spec["target_passes"] += m.target_passes
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        spec["acceptance_rate"] = spec["accepted"] / spec["drafted"] if spec["drafted"] else None
        return {"choices": choices, "usage": usage, "speculation": spec}


def _body(job: Job, model: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "text_completion",
        "created": job.created,
        "model": model,
        **result,
    }


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


class _Handlers:
    """The HTTP side: every client error is a 4xx in OpenAI's error shape, counted."""

    def __init__(self, state: ServerState):
        self.state = state

    def reject(self, status: int, message: str, param: str | None = None) -> JSONResponse:
        outcome = {413: "invalid", 429: "rejected", 503: "unavailable"}.get(status, "invalid")
        self.state.metrics.requests.labels(outcome).inc()
        kind = {429: "rate_limit_error", 503: "server_error"}.get(status, "invalid_request_error")
        return _error(status, message, param, kind)

    async def health(self, _request: Any) -> Any:
        from starlette.responses import JSONResponse

        st = self.state
        if st.load_error:
            return JSONResponse({"status": "failed", "error": st.load_error}, status_code=503)
        if st.shutting_down:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if not st.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        queue_info = {"depth": st.jobs.qsize(), "capacity": st.jobs.maxsize}
        if st.saturated:
            body = {"status": "saturated", "queue": queue_info}
            return JSONResponse(body, 503, headers={"Retry-After": str(st.retry_after_s)})
        return JSONResponse({"status": "ready", "model": st.model_name, "queue": queue_info})

    async def metrics(self, _request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        registry = self.state.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def parse(self, request: Any) -> CompletionRequest | JSONResponse:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return self.reject(413, f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            payload = json.loads(raw)
        except RecursionError:
            return self.reject(400, "the body is nested too deeply")
        except (ValueError, UnicodeDecodeError) as exc:
            return self.reject(400, f"the body is not valid JSON: {str(exc)[:200]}")
        try:
            return CompletionRequest.model_validate(payload)
        except (ValidationError, RecursionError) as exc:
            if isinstance(exc, RecursionError):
                return self.reject(400, "the body is nested too deeply")
            first = exc.errors()[0]
            param = ".".join(str(x) for x in first["loc"] if not isinstance(x, int)) or None
            if first["type"] == "extra_forbidden":
                return self.reject(400, f"unknown field {param!r}", param)
            got = repr(first.get("input"))
            got = got if len(got) <= 80 else got[:79] + "…"
            return self.reject(400, f"{param}: {first['msg']} (got {got})", param)

    async def completions(self, request: Any) -> Any:
        from starlette.responses import StreamingResponse

        from .generate import RequestTooLong

        body = await self.parse(request)
        if not isinstance(body, CompletionRequest):
            return body
        st = self.state
        if st.shutting_down:
            return self.reject(503, "the server is shutting down")
        if not st.ready:
            return self.reject(503, "the models are still loading; poll /health")
        try:
            ids, max_new = st.plan(body)
        except RequestTooLong as exc:
            return self.reject(400, str(exc), "max_tokens" if body.max_tokens else "prompt")
        job = Job(body, asyncio.get_running_loop(), asyncio.Queue(), ids, max_new)
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

    async def wait(self, job: Job, request: Any) -> Any:
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
            return _error(status, message, kind="server_error")
        return JSONResponse(_body(job, self.state.model_name, payload))

    async def stream(self, job: Job) -> AsyncIterator[str]:
        model = self.state.model_name
        try:
            while True:
                kind, payload = await job.events.get()
                if kind == "delta":
                    index, text = payload
                    chunk = {"text": text, "index": index, "logprobs": None, "finish_reason": None}
                    yield _sse(_body(job, model, {"choices": [chunk]}))
                    continue
                if kind == "done":
                    for choice in payload["choices"]:
                        yield _sse(_body(job, model, {"choices": [{**choice, "text": ""}]}))
                    tail = {k: payload[k] for k in ("usage", "speculation")}
                    yield _sse(_body(job, model, {"choices": [], **tail}))
                else:
                    status, message = payload
                    yield _sse(
                        {"error": {"message": message, "type": "server_error", "code": status}}
                    )
                yield "data: [DONE]\n\n"
                return
        finally:
            job.cancelled.set()  # the client went away, or we are done: free the worker


def build_app(state: ServerState, loader: Any) -> Any:
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import Route

    h = _Handlers(state)

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        state.start(loader)
        yield
        state.begin_shutdown()
        state.cancel_running()

    return Starlette(
        routes=[
            Route("/health", h.health),
            Route("/metrics", h.metrics),
            Route("/v1/completions", h.completions, methods=["POST"]),
        ],
        lifespan=lifespan,
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
    cfg: ConfigFile, host: str, port: int, queue_size: int = 16, drain_timeout_s: float = 30.0
) -> int:
    """Run the server until SIGTERM/SIGINT, then drain: queued requests get 503, the running
    one has drain_timeout_s to finish before it is cancelled. Returns the exit code (0)."""
    try:
        import uvicorn
    except ImportError:
        raise BackendUnavailableError(
            "serving needs the serve extra: pip install 'neuron-spec[serve]'"
        ) from None
    from .backends import load_generator

    sock = listen(host, port)  # before anything loads: a busy port is a clear exit 2 at once
    state = ServerState(cfg, queue_size)
    app = build_app(state, load_generator)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Drain, then exit 0. uvicorn's own handler would also re-raise the signal once it
            # has shut down, so a server that stopped cleanly would look killed.
            if not state.shutting_down:
                state.begin_shutdown()
                timer = threading.Timer(drain_timeout_s, state.cancel_running)
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

    state.on_fatal = fatal
    server.run(sockets=[sock])
    state.stop_worker(timeout_s=60)
    if state.load_error:
        sys.stderr.write(f"error: loading the models failed: {state.load_error}\n")
        return 1
    return 0
