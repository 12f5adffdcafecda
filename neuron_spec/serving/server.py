"""`neuron-spec serve`: an OpenAI-compatible server (Starlette + uvicorn).

- POST /v1/completions: prompt (string or list), max_tokens, temperature, top_p, stop, seed,
  stream (server-sent events ending in `data: [DONE]`); `usage` in every response and the
  request's speculation figures under `speculation`.
- POST /v1/chat/completions: messages rendered with the tokenizer's chat template, the same
  settings (max_completion_tokens too), plain or streamed as chat.completion.chunk events.
- GET /v1/models and /v1/models/{id}: the one model served; a request naming another model is
  404 model_not_found. The request schemas (openai_api.py, through frontdoor.py, which the
  SageMaker entry point shares) accept the standard fields clients send with neutral values
  and refuse other values with a 400 naming the field.
- --api-key (or NEURON_SPEC_API_KEY): a Bearer key on every /v1 route, 401 otherwise.
- GET /health: 503 while the models load, 200 once ready.
- GET /metrics: Prometheus text format.

Generation runs on one worker thread. Where the backend batches it is continuous batching:
every prompt of every request is a row of one engine batch of `--batch-size` slots (default
target.batch_size); a request joins at the next step while a slot is free, its rows leave the
moment they finish or their client goes away, and `n` choices are rows too. Neuron backends
compiled for a batch (target.batch_size) batch the same way: transformers-neuronx 0.12+ with
the engine loop, and NxD Inference unfused; otherwise they decode one request at a time. What
does not fit waits in a bounded queue: a full queue answers 429 with Retry-After, and /health
says "saturated" (503) while it is full. Every request is bounded: prompt tokens + max_tokens
must fit n_positions (400 naming the limit; max_tokens defaults to what fits). A client that
disconnects, streaming or not, has its generation cancelled at the next step. Client errors are
4xx in OpenAI's error shape, counted in /metrics. SIGTERM stops accepting work, answers queued
requests 503, gives the running ones the drain timeout to finish, then cancels them; exit 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..backends import backend_warnings
from ..config.spec import ConfigFile
from ..engine.loop import GenerationCancelled
from ..errors import BackendUnavailableError, UsageError
from . import frontdoor
from .openai_api import (
    ChatRequest,
    CompletionRequest,
    TextOffsets,
    chunk,
    clip,
    error_body,
    full_body,
    logprobs_after,
    logprobs_body,
    logprobs_part,
    models_body,
    new_id,
    now,
    usage_chunk,
)
from .token_bytes import TokenBytes

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

STEP_POLL_S = 0.05
SEED_RANGE = 1 << 63  # seeds are 0 .. 2^63 - 1 (openai_api, config)
CANCEL_MARGIN_S = 60  # how often a waiting handler checks that its client is still there


def _error(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
) -> JSONResponse:
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(message, kind, param), status_code=status)


Request = frontdoor.Request


@dataclass(eq=False)  # hashed by identity: the scheduler keys its tables by job
class Job:
    request: Request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]]
    ids: list[list[int]]  # each prompt's tokens, checked against n_positions
    max_new: int
    prompts: list[str]  # the texts behind ids (a chat is its rendered template)
    cancelled: threading.Event = field(default_factory=threading.Event)
    sent_logprobs: dict[int, int] = field(default_factory=dict)  # choice -> tokens streamed
    id: str = ""
    created: int = field(default_factory=now)
    arrived: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.id = self.id or new_id(self.chat)

    @property
    def chat(self) -> bool:
        return isinstance(self.request, ChatRequest)

    @property
    def choices(self) -> int:
        """Rows to decode: each prompt `n` times (choice k is prompt k // n)."""
        return len(self.ids) * self.request.n

    def choice(self, k: int) -> tuple[list[int], int | None]:
        """Choice k's prompt tokens and seed: the n choices of a seeded request use
        seed, seed + 1, ... (modulo 2^63, the seed's range) so they differ and each is
        reproducible."""
        seed = self.request.seed
        n = self.request.n
        return self.ids[k // n], None if seed is None else (seed + k % n) % SEED_RANGE

    def settings(self, k: int) -> dict[str, Any]:
        """What choice k is generated with, the same on every path: budget, sampling, its
        seed, stop strings, cancellation."""
        req = self.request
        return {
            "max_new_tokens": self.max_new,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "top_k": req.top_k,
            "seed": self.choice(k)[1],
            "stop": req.stops(),
            "cancelled": self.cancelled.is_set,
        }

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
        # named after vLLM's vllm:num_requests_waiting / _running, request_queue_time_seconds,
        # e2e_request_latency_seconds
        self.waiting = Gauge(p + "num_requests_waiting", "Requests waiting", registry=r)
        self.running = Gauge(p + "num_requests_running", "Requests being decoded", registry=r)
        latency = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        self.queue_time = Histogram(
            p + "request_queue_time_seconds",
            "Time a request waited before its decoding began",
            buckets=latency,
            registry=r,
        )
        self.e2e = Histogram(
            p + "e2e_request_latency_seconds",
            "Time from a request's arrival to its last token",
            buckets=latency,
            registry=r,
        )
        self.ready = Gauge(p + "ready", "1 once the models are loaded", registry=r)
        # batch occupancy: rows decoding together now, out of the batch's slots
        self.batch_rows = Gauge(p + "batch_rows", "Rows in the running batch", registry=r)
        self.batch_slots = Gauge(p + "batch_slots", "Slots of the batch", registry=r)

    def observe(self, m: Any, waited_s: float = 0.0) -> None:
        """One prompt's figures; `waited_s` (the time it spent queued) counts towards its
        time to first token, which runs from the request's arrival."""
        self.prompt_tokens.inc(m.prompt_tokens)
        self.tokens.inc(m.new_tokens)
        self.drafted.inc(m.drafted)
        self.accepted.inc(m.accepted)
        if m.time_to_first_token_s is not None:
            self.ttft.observe(waited_s + m.time_to_first_token_s)
        if m.time_per_output_token_s["mean"] is not None and m.new_tokens > 1:
            for _ in range(m.new_tokens - 1):
                self.tpot.observe(m.time_per_output_token_s["mean"])
        for i, (d, a) in enumerate(
            zip(m.per_position_drafted, m.per_position_accepted, strict=True), 1
        ):
            self.pos_drafted.labels(str(i)).inc(d)
            self.pos_accepted.labels(str(i)).inc(a)


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


class ServerState:
    """Everything the handlers share: the generator, the queue, the worker, the metrics."""

    def __init__(
        self,
        cfg: ConfigFile,
        queue_size: int = 16,
        retry_after_s: int = 2,
        slots: int | None = None,
    ):
        self.cfg = cfg
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.retry_after_s = retry_after_s
        self.metrics = Metrics()
        self.generator: Any = None
        self.pieces: Any = None  # the tokenizer's bytes per token, for logprobs
        self.load_error: str | None = None
        self.shutting_down = False
        self.running: set[Job] = set()
        self.batch: Any = None  # the engine batch requests join, where the backend batches
        self.slots = slots or cfg.spec.target.batch_size
        self.metrics.batch_slots.set(self.slots)
        self.on_fatal: Any = None  # called when loading fails: the server exits
        self.model_name, self.model_names = served_names(cfg)
        self.started = now()
        self._worker = threading.Thread(target=self._work, name="neuron-spec-worker", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, loader: Any) -> None:
        def load() -> None:
            try:
                gen = loader(self.cfg)
                self.batch = gen.open_batch(self.slots)  # None: one request at a time
                self.pieces = TokenBytes(gen.tokenizer)
                self.generator = gen
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
        for job in list(self.running):
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

    def prepare(self, req: Request) -> tuple[list[str], list[list[int]], int]:
        """Prompt texts, their tokens and the new tokens to generate (frontdoor.py's rules)."""
        gen = self.generator
        texts, ids = frontdoor.prompts(gen, req)
        limit = frontdoor.new_tokens(
            req, ids, gen.n_positions, self.cfg.spec.generation.max_new_tokens
        )
        return texts, ids, limit

    # --- work ------------------------------------------------------------------------------

    def submit(self, job: Job) -> bool:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            return False
        self.metrics.queue_depth.set(self.jobs.qsize())
        self.metrics.waiting.set(self.jobs.qsize())
        return True

    def _work(self) -> None:
        if self.batch is None:
            self._work_one_at_a_time()
        else:
            _Scheduler(self, self.batch).run()

    def _next_job(self, block: bool) -> Job | _Stop | None:
        """The next queued job that is still wanted; None when none waits (and `block` is
        false); STOP once the server stops taking work."""
        while True:
            try:
                job = self.jobs.get(block=block)
            except queue.Empty:
                return None
            self._gauge_queue()
            if job is None:
                return STOP
            if not job.cancelled.is_set():
                return job
            self.metrics.requests.labels("cancelled").inc()

    def _gauge_queue(self) -> None:
        self.metrics.queue_depth.set(self.jobs.qsize())
        self.metrics.waiting.set(self.jobs.qsize())

    def finish_job(self, job: Job, outcome: BaseException | dict[str, Any]) -> None:
        """Answer a job: its result, or the error that ended it; counted in /metrics."""
        self.running.discard(job)
        self.metrics.running.set(len(self.running))
        if isinstance(outcome, dict):
            job.push("done", outcome)
            self.metrics.requests.labels("ok").inc()
            self.metrics.e2e.observe(time.monotonic() - job.arrived)
        elif isinstance(outcome, GenerationCancelled):
            self.metrics.requests.labels("cancelled").inc()
            why = "shutting down" if self.shutting_down else "cancelled"
            job.push("error", (503, f"the request was cancelled: the server is {why}"))
        else:
            self.metrics.requests.labels("error").inc()
            self.metrics.errors.labels(type(outcome).__name__).inc()
            job.push("error", (500, f"generation failed: {type(outcome).__name__}: {outcome}"))
            # the client sees one line; the operator's log gets where it failed
            sys.stderr.write(f"neuron-spec: request {job.id} failed:\n")
            traceback.print_exception(type(outcome), outcome, outcome.__traceback__)

    def start_job(self, job: Job) -> None:
        self.running.add(job)
        self.metrics.running.set(len(self.running))
        self.metrics.queue_time.observe(time.monotonic() - job.arrived)

    def _work_one_at_a_time(self) -> None:
        """Backends that decode one sequence at a time: each job runs whole, in turn."""
        while True:
            job = self._next_job(block=True)
            if job is STOP:
                return
            assert isinstance(job, Job)
            self.start_job(job)
            try:
                self.finish_job(job, self._run(job))
            except Exception as exc:
                self.finish_job(job, exc)

    def _run(self, job: Job) -> dict[str, Any]:
        req, gen = job.request, self.generator
        results = []
        for index in range(job.choices):
            began = time.monotonic()
            result = gen.generate(
                "",
                prompt_token_ids=[job.choice(index)[0]],
                **job.settings(index),
                on_text=(lambda _row, d, i=index: job.push("delta", (i, d, None)))
                if req.stream
                else None,
            )
            self.metrics.observe(result.metrics, began - job.arrived)  # TTFT from arrival
            results.append(result)
        return answer(results, req.n)


class _Stop:
    """The worker's signal that the server takes no more work."""


STOP = _Stop()


def answer(results: list[Any], n: int = 1, shape: Any = None) -> dict[str, Any]:
    """A job's response body parts from its choices' Generations, in order (`n` per prompt;
    a prompt's tokens count once in usage, as OpenAI counts them). `shape(result)` gives a
    choice's logprobs, when they were asked for."""
    choices = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    spec: dict[str, Any] = {"drafted": 0, "accepted": 0, "target_passes": 0, "max_batch_rows": 1}
    for index, result in enumerate(results):
        m = result.metrics
        stopped = result.finished_by_stop[0] or result.finished_by_eos[0]
        choices.append(
            {
                "text": result.text[0],
                "index": index,
                "logprobs": shape(result) if shape and result.logprobs is not None else None,
                "finish_reason": "stop" if stopped else "length",
            }
        )
        usage["prompt_tokens"] += m.prompt_tokens if index % n == 0 else 0
        usage["completion_tokens"] += m.new_tokens
        spec["drafted"] += m.drafted
        spec["accepted"] += m.accepted
        spec["target_passes"] += m.target_passes
        spec["max_batch_rows"] = max(spec["max_batch_rows"], m.max_batch_rows)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    spec["acceptance_rate"] = spec["accepted"] / spec["drafted"] if spec["drafted"] else None
    return {"choices": choices, "usage": usage, "speculation": spec}


class StreamedLogprobs:
    """Which of a streamed choice's token logprobs each text delta carries: a token goes out
    with the delta that completes its bytes (a token inside a character waits for the rest),
    so every token is sent once, in order, with its text offset."""

    def __init__(self, pieces: TokenBytes, eos: frozenset[int]):
        self.pieces, self.eos = pieces, eos
        self.sent = 0  # entries sent so far
        self.shown = 0  # bytes of text sent so far
        self.covered = 0  # bytes of the tokens sent so far
        self.offsets: TextOffsets | None = None

    def take(self, entries: list[Any], delta: str) -> tuple[list[Any], list[int]]:
        self.shown += len(delta.encode("utf-8"))
        if self.offsets is None and entries:
            lead = self.pieces.lead(entries[0].token)
            self.offsets, self.covered = TextOffsets(self.pieces, lead), -lead
        take: list[Any] = []
        while self.offsets is not None and self.sent + len(take) < len(entries):
            e = entries[self.sent + len(take)]
            width = self.pieces.width(e.token)
            if e.token in self.eos or self.covered + width > self.shown:
                break
            take.append(e)
            self.covered += width
        self.sent += len(take)
        offsets = [] if self.offsets is None else [self.offsets.advance(e.token) for e in take]
        return take, offsets


@dataclass
class _Slot:
    job: Job
    index: int  # which of the job's prompts
    finish: Any  # turns the finished row into its Generation
    admitted: float


class _Scheduler:
    """Continuous batching: every prompt of every job is a row; rows join the batch at the
    next step boundary when a slot is free and leave as soon as they finish or their client
    goes away. A job is answered when all its rows are done."""

    def __init__(self, state: ServerState, batch: Any):
        self.state, self.batch = state, batch
        self.pending: collections.deque[tuple[Job, int]] = collections.deque()
        self.rows: dict[int, _Slot] = {}  # id(row) -> where it belongs
        self.results: dict[Job, list[Any]] = {}
        self.stopping = False

    def run(self) -> None:
        while True:
            self._fill()
            if not self.batch.busy:
                if self.stopping and not self.pending:
                    return
                continue
            for row in self.batch.cancel_requested():
                self._cancelled(self.rows.pop(id(row)).job)
            try:
                finished = self.batch.step()
            except Exception as exc:
                self._fail_all(exc)
                continue
            for row in finished:
                self._row_done(row)
            self.state.metrics.batch_rows.set(len(self.batch.rows) - len(self.batch.free_slots()))

    def _fill(self) -> None:
        """Admit rows while slots are free: first the prompts of jobs already started, then
        new jobs; wait for work only when nothing runs."""
        while self.batch.free_slots():
            if not self.pending:
                if self.stopping:
                    return
                job = self.state._next_job(block=not self.batch.busy)
                if job is None:
                    return
                if job is STOP:
                    self.stopping = True
                    return
                assert isinstance(job, Job)
                self.state.start_job(job)
                self.results[job] = [None] * job.choices
                self.pending.extend((job, i) for i in range(job.choices))
            job, index = self.pending.popleft()
            if job in self.results:
                self._admit(job, index)

    def _admit(self, job: Job, index: int) -> None:
        req, gen = job.request, self.state.generator
        holder: list[Any] = []  # the row, for its callback
        try:
            row, finish = gen.row(
                job.choice(index)[0],
                **job.settings(index),
                on_text=self._on_text(job, index, holder) if req.stream else None,
                logprobs=req.logprob_count(),
            )
        except Exception as exc:
            self._end(job, exc)
            return
        holder.append(row)
        self.batch.admit(row)
        self.rows[id(row)] = _Slot(job, index, finish, time.monotonic())

    def _row_done(self, row: Any) -> None:
        slot = self.rows.pop(id(row))
        if slot.job not in self.results:
            return
        result = slot.finish()
        self.state.metrics.observe(result.metrics, slot.admitted - slot.job.arrived)
        done = self.results[slot.job]
        done[slot.index] = result
        if all(r is not None for r in done):
            self._end(slot.job, answer(done, slot.job.request.n, self._shape(slot.job)))

    def _on_text(self, job: Job, index: int, holder: list[Any]) -> Any:
        """The stream callback of choice `index`: each text delta with the logprobs of the
        tokens whose bytes it completes (when asked for)."""
        if job.request.logprob_count() is None:
            return lambda d: job.push("delta", (index, d, None))
        stream = StreamedLogprobs(self.state.pieces, frozenset(self.state.generator.eos_token_ids))

        def on_text(delta: str) -> None:
            take, offsets = stream.take(holder[0].token_logprobs, delta)
            job.sent_logprobs[index] = stream.sent
            part = logprobs_part(job.chat, take, self.state.pieces, offsets) if take else None
            job.push("delta", (index, delta, part))

        return on_text

    def _shape(self, job: Job) -> Any:
        """How a choice's log-probabilities are written for this job's endpoint."""
        eos = frozenset(self.state.generator.eos_token_ids)

        def shape(result: Any) -> dict[str, Any]:
            cut = bool(result.finished_by_stop and result.finished_by_stop[0])
            return logprobs_body(
                job.chat, result.logprobs[0], self.state.pieces, result.text[0], cut, eos
            )

        return shape

    def _cancelled(self, job: Job) -> None:
        if job in self.results:
            self._end(job, GenerationCancelled())

    def _end(self, job: Job, outcome: BaseException | dict[str, Any]) -> None:
        """Answer the job; its other rows leave the batch, its queued prompts are dropped."""
        del self.results[job]
        job.cancelled.set()
        for b, row in enumerate(self.batch.rows):
            slot = None if row is None else self.rows.get(id(row))
            if slot is not None and slot.job is job:
                self.batch.leave(b)
                del self.rows[id(row)]
        self.state.finish_job(job, outcome)

    def _fail_all(self, exc: Exception) -> None:
        """A failed step leaves the caches in an unknown state: every running job fails and
        the batch starts afresh."""
        for job in list(self.results):
            self._end(job, exc)
        self.pending.clear()
        self.batch = self.state.generator.open_batch(self.batch.slots)


async def read_body(request: Any, limit: int = frontdoor.MAX_BODY_BYTES) -> bytes:
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


class _Handlers:
    """The HTTP side: every client error is a 4xx in OpenAI's error shape, counted."""

    def __init__(self, state: ServerState):
        self.state = state

    def reject(self, status: int, message: str, param: str | None = None) -> JSONResponse:
        outcome = {413: "invalid", 429: "rejected", 503: "unavailable"}.get(status, "invalid")
        self.state.metrics.requests.labels(outcome).inc()
        kind = {429: "rate_limit_error", 503: "server_error"}.get(status, "invalid_request_error")
        response = _error(status, message, param, kind)
        if status == 413:  # the rest of the body is never read: close, do not drain it
            response.headers["Connection"] = "close"
        return response

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

    async def models(self, _request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse(models_body(self.state.model_name, self.state.started))

    async def model(self, request: Any) -> Any:
        """GET /v1/models/{id}: the served model, or OpenAI's 404 model_not_found."""
        from starlette.responses import JSONResponse

        name = request.path_params["model"]
        if name not in self.state.model_names:
            return self._no_such_model(name)
        return JSONResponse(models_body(self.state.model_name, self.state.started)["data"][0])

    def _no_such_model(self, name: str) -> JSONResponse:
        from starlette.responses import JSONResponse

        body = error_body(
            f"The model {clip(name)} does not exist: this server serves '{self.state.model_name}' "
            "(GET /v1/models).",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
        return JSONResponse(body, status_code=404)

    async def parse(self, request: Any, schema: type[Request]) -> Request | JSONResponse:
        try:
            return frontdoor.parse_body(await read_body(request), schema)
        except frontdoor.RequestError as exc:
            return self.reject(exc.status, exc.message, exc.param)

    async def completions(self, request: Any) -> Any:
        return await self.answer(request, CompletionRequest)

    async def chat_completions(self, request: Any) -> Any:
        return await self.answer(request, ChatRequest)

    async def answer(self, request: Any, schema: type[Request]) -> Any:
        from starlette.responses import StreamingResponse

        body = await self.parse(request, schema)
        if not isinstance(body, schema):
            return body
        if body.model is not None and body.model not in self.state.model_names:
            return self._no_such_model(body.model)
        st = self.state
        if st.shutting_down:
            return self.reject(503, "the server is shutting down")
        if not st.ready:
            return self.reject(503, "the models are still loading; poll /health")
        if body.logprob_count() is not None and st.batch is None:
            backend = st.cfg.spec.backend
            return self.reject(
                400,
                f"logprobs are not returned by the {backend} backend yet (the reference "
                "backend returns them); leave logprobs out",
                "logprobs",
            )
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
        model = self.state.model_name
        return JSONResponse(full_body(job.chat, job.id, job.created, model, payload))

    async def stream(self, job: Job) -> AsyncIterator[str]:
        """Server-sent events as OpenAI sends them: (chat: a role delta first,) text deltas,
        one finishing event per choice (the last one also carrying `speculation`), then, only
        with stream_options.include_usage, usage (choices: []), then [DONE]."""
        head = (job.chat, job.id, job.created, self.state.model_name)
        try:
            if job.chat:
                yield _sse(chunk(*head, 0, None))
            while True:
                kind, payload = await job.events.get()
                if kind == "delta":
                    index, text, logprobs = payload
                    yield _sse(chunk(*head, index, text, logprobs=logprobs))
                    continue
                if kind == "done":
                    for n, choice in enumerate(payload["choices"], 1):
                        sent = job.sent_logprobs.get(choice["index"], 0)
                        rest = logprobs_after(job.chat, choice["logprobs"], sent)
                        last = chunk(
                            *head, choice["index"], "", choice["finish_reason"], logprobs=rest
                        )
                        if n == len(payload["choices"]):
                            last["speculation"] = payload["speculation"]
                        yield _sse(last)
                    if job.request.include_usage:
                        yield _sse(usage_chunk(*head, payload))
                else:
                    status, message = payload
                    yield _sse(error_body(message, "server_error", code=status))
                yield "data: [DONE]\n\n"
                return
        finally:
            job.cancelled.set()  # the client went away, or we are done: free the worker

    async def not_found(self, request: Any, exc: Any) -> Any:
        status = getattr(exc, "status_code", 404)
        what = "method not allowed on" if status == 405 else "no such route:"
        path = request.url.path
        path = path if len(path) <= 200 else path[:199] + "…"
        return _error(status, f"{what} {request.method} {path}; see GET /v1/models")


class _ApiKey:
    """Bearer-token check on every /v1 route (OpenAI's 401 shape); /health and /metrics stay
    open for load balancers and Prometheus. ASGI middleware, so streams are untouched."""

    def __init__(self, app: Any, key: str):
        self.app, self.expected = app, key.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
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


def build_app(state: ServerState, loader: Any, api_key: str | None = None) -> Any:
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
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
            Route("/v1/models", h.models),
            Route("/v1/models/{model:path}", h.model),
            Route("/v1/completions", h.completions, methods=["POST"]),
            Route("/v1/chat/completions", h.chat_completions, methods=["POST"]),
        ],
        exception_handlers={404: h.not_found, 405: h.not_found},
        lifespan=lifespan,
        middleware=[Middleware(_ApiKey, key=api_key)] if api_key else [],
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
    state = ServerState(cfg, queue_size, slots=slots)
    app = build_app(state, load_generator, api_key)

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
