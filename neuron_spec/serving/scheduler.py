"""The server's work, away from HTTP: jobs (one per request), a bounded queue, one worker thread
that owns the models, and continuous batching.

Where the backend batches, every prompt of every job (each of its `n` choices too) is a row of
one engine batch: rows join at the next step boundary while a slot is free, and leave the
moment they finish, fail or their client goes away; a job is answered when all its rows are
done. Otherwise jobs run whole, one after another. The handlers talk to the Scheduler only
through `submit`, a job's event queue and its `cancelled` flag.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Generator
from ..config.spec import ConfigFile
from ..engine.generation import Generation, TextCallback
from ..engine.loop import Batch, GenerationCancelled, Row, StreamCallback, TokenLogprob
from ..errors import UsageError
from . import frontdoor
from .metrics import Metrics
from .openai_api import ChatRequest, CompletionRequest, logprobs_part, new_id, now
from .responses import Shape, StreamedLogprobs, answer, echoed, logprob_shape, prompt_only
from .token_bytes import TokenBytes

SEED_RANGE = 1 << 63  # seeds are 0 .. 2^63 - 1 (openai_api, config)
Request = frontdoor.Request
Loader = Callable[[ConfigFile], Generator]
Outcome = BaseException | dict[str, Any]


@dataclass(eq=False)  # hashed by identity: the scheduler keys its tables by job
class Job:
    """One request being answered: its prompts, budget, and the events its handler awaits
    ("delta", "done" or "error"), pushed from the worker thread."""

    request: Request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]]
    ids: list[list[int]]  # each prompt's tokens, checked against n_positions
    max_new: int
    prompts: list[str]  # the texts behind ids (a chat is its rendered template)
    cancelled: threading.Event = field(default_factory=threading.Event)
    sent_logprobs: dict[int, int] = field(default_factory=dict)  # choice -> tokens streamed
    # per prompt, with echo and logprobs: its tokens' log-probabilities (the first None)
    scored: list[list[TokenLogprob | None]] | None = None
    released: bool = False  # no longer counted against the server's capacity
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
            "top_k": req.top_k_value,
            "seed": self.choice(k)[1],
            "ending": frontdoor.ending(req),
            "cancelled": self.cancelled.is_set,
        }

    @property
    def echo(self) -> bool:
        return isinstance(self.request, CompletionRequest) and self.request.echo

    def push(self, kind: str, payload: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))


class _Stop:
    """The worker's signal that the server takes no more work."""


STOP = _Stop()


class Scheduler:
    """The generator, the queue, the worker thread and the metrics the handlers share."""

    def __init__(
        self,
        cfg: ConfigFile,
        queue_size: int = 16,
        retry_after_s: int = 2,
        slots: int | None = None,
    ):
        self.cfg = cfg
        # Admission counts requests, not queue places: a request is admitted while those
        # running and queued are fewer than the slots plus `queue_size`, however a burst is
        # timed (the worker may still be busy with the first prompts while slots are free).
        self.queue_size = queue_size
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.admitted = 0  # requests queued or running
        self._admission = threading.Lock()
        self.retry_after_s = retry_after_s
        self.metrics = Metrics()
        self.generator: Generator | None = None
        self.pieces: TokenBytes | None = None  # the tokenizer's bytes per token, for logprobs
        self.load_error: str | None = None
        self.shutting_down = False
        self.running: set[Job] = set()
        self.batch: Batch | None = None  # the batch requests join, where the backend batches
        self.slots = slots or cfg.spec.target.batch_size
        self.metrics.batch_slots.set(self.slots)
        self.on_fatal: Callable[[], None] | None = None  # loading failed: the server exits
        self._worker = threading.Thread(target=self._work, name="neuron-spec-worker", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, loader: Loader) -> None:
        """Load the models on a thread of their own, then start the worker."""

        def load() -> None:
            try:
                gen = loader(self.cfg)
                self.batch = gen.open_batch(self.slots)  # None: one request at a time
                self.pieces = TokenBytes(gen.tokenizer)
                self.generator = gen
                for message in gen.warnings():
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
                self.release(job)
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
    def capacity(self) -> int:
        """Requests the server holds at once: one per slot (one in all where the backend
        decodes one request at a time) and the queue's."""
        return (self.slots if self.batch is not None else 1) + self.queue_size

    @property
    def saturated(self) -> bool:
        return self.admitted >= self.capacity

    def stop_worker(self, timeout_s: float) -> None:
        """Cancel what runs and wait for the worker to leave the models: a process must not
        exit while a thread is inside torch (that aborts it)."""
        self.begin_shutdown()
        self.cancel_running()
        if self._worker.is_alive():
            self._worker.join(timeout_s)

    def loaded(self) -> Generator:
        if self.generator is None:
            raise RuntimeError("the models are not loaded yet")
        return self.generator

    def prepare(self, req: Request) -> tuple[list[str], list[list[int]], int]:
        """Prompt texts, their tokens and the new tokens to generate (frontdoor.py's rules)."""
        gen = self.loaded()
        texts, ids = frontdoor.prompts(gen, req)
        limit = frontdoor.new_tokens(
            req, ids, gen.n_positions, self.cfg.spec.generation.max_new_tokens
        )
        return texts, ids, limit

    # --- work ------------------------------------------------------------------------------

    def submit(self, job: Job) -> bool:
        """Queue the job, unless the server holds `capacity` requests (or is stopping)."""
        with self._admission:
            if self.shutting_down or self.admitted >= self.capacity:
                return False
            self.admitted += 1
            self.jobs.put_nowait(job)
        self._gauge_queue()
        return True

    def release(self, job: Job) -> None:
        """The job no longer counts against the capacity (once, however it ended)."""
        with self._admission:
            if not job.released:
                job.released = True
                self.admitted -= 1

    def _work(self) -> None:
        if self.batch is None:
            self._work_one_at_a_time()
        else:
            BatchLoop(self, self.batch).run()

    def next_job(self, block: bool) -> Job | _Stop | None:
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
            self.release(job)
            self.metrics.requests.labels("cancelled").inc()

    def _gauge_queue(self) -> None:
        self.metrics.queue_depth.set(self.jobs.qsize())
        self.metrics.waiting.set(self.jobs.qsize())

    def finish_job(self, job: Job, outcome: Outcome) -> None:
        """Answer a job: its result, or the error that ended it; counted in /metrics."""
        self.running.discard(job)
        self.release(job)
        self.metrics.running.set(len(self.running))
        if isinstance(outcome, dict):
            job.push("done", outcome)
            self.metrics.requests.labels("ok").inc()
            self.metrics.e2e.observe(time.monotonic() - job.arrived)
        elif isinstance(outcome, UsageError):  # what the request asks, this backend cannot
            self.metrics.requests.labels("invalid").inc()
            job.push("error", (400, str(outcome)))
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
            job = self.next_job(block=True)
            if not isinstance(job, Job):
                return
            self.start_job(job)
            try:
                self.finish_job(job, self._run(job))
            except Exception as exc:
                self.finish_job(job, exc)

    def _run(self, job: Job) -> Outcome:
        req, gen = job.request, self.loaded()
        results = []
        for index in range(job.choices if job.max_new else 0):
            began = time.monotonic()
            on_text, on_tokens = _deltas(job, index) if req.stream else (None, None)
            result = gen.generate(
                "",
                prompt_token_ids=[job.choice(index)[0]],
                **job.settings(index),
                on_text=on_text,
                on_tokens=on_tokens,
            )
            self.metrics.observe(result.metrics, began - job.arrived)  # TTFT from arrival
            results.append(result)
        return self.reply(job, results)

    def reply(
        self, job: Job, results: list[Generation], shape: Shape | None = None
    ) -> dict[str, Any]:
        """The job's answer from its choices' Generations (none: max_tokens 0, the prompt
        alone), the prompt in front of each text with echo."""
        req = job.request
        wanted = req.logprob_count() is not None
        body = answer(results, req.n, shape) if results else prompt_only(job.ids, req.n, wanted)
        if job.echo and self.pieces is not None:
            body = echoed(body, job.prompts, job.ids, req.n, job.scored, self.pieces)
        return body


def _deltas(job: Job, index: int) -> tuple[TextCallback, StreamCallback]:
    """A Generator's text and token callbacks that stream choice `index` of the job, each
    delta with the choice's tokens so far."""
    tokens = [0]

    def count(_row: int, new: list[int]) -> None:
        tokens[0] += len(new)

    def push(_row: int, delta: str) -> None:
        job.push("delta", (index, delta, None, tokens[0]))

    return push, count


@dataclass
class _Slot:
    job: Job
    index: int  # which of the job's prompts
    finish: Callable[[], Generation]  # turns the finished row into its Generation
    admitted: float


class BatchLoop:
    """Continuous batching: every prompt of every job is a row; rows join the batch at the
    next step boundary when a slot is free and leave as soon as they finish or their client
    goes away. A job is answered when all its rows are done."""

    def __init__(self, scheduler: Scheduler, batch: Batch):
        self.scheduler, self.batch = scheduler, batch
        self.generator = scheduler.loaded()
        self.pending: collections.deque[tuple[Job, int]] = collections.deque()
        self.rows: dict[int, _Slot] = {}  # id(row) -> where it belongs
        self.results: dict[Job, list[Generation | None]] = {}
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
            occupied = len(self.batch.rows) - len(self.batch.free_slots())
            self.scheduler.metrics.batch_rows.set(occupied)

    def _fill(self) -> None:
        """Admit rows while slots are free: first the prompts of jobs already started, then
        new jobs; wait for work only when nothing runs."""
        while self.batch.free_slots():
            if not self.pending:
                if self.stopping:
                    return
                job = self.scheduler.next_job(block=not self.batch.busy)
                if job is None:
                    return
                if not isinstance(job, Job):
                    self.stopping = True
                    return
                self.scheduler.start_job(job)
                if not self._begin(job):
                    continue
                self.results[job] = [None] * job.choices
                self.pending.extend((job, i) for i in range(job.choices))
            job, index = self.pending.popleft()
            if job in self.results:
                self._admit(job, index)

    def _begin(self, job: Job) -> bool:
        """Score the job's prompts when it asks for echo with logprobs; answer it at once
        when it generates nothing (max_tokens 0). False when it is answered."""
        req = job.request
        try:
            if job.echo and req.logprob_count() is not None:
                top = req.logprob_count() or 0
                job.scored = [self.generator.prompt_logprobs(ids, top) for ids in job.ids]
        except Exception as exc:
            self.scheduler.finish_job(job, exc)
            return False
        if job.max_new == 0:
            self.scheduler.finish_job(job, self.scheduler.reply(job, []))
            return False
        return True

    def _admit(self, job: Job, index: int) -> None:
        req = job.request
        holder: list[Row] = []  # the row, for its callback
        try:
            row, finish = self.generator.row(
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

    def _on_text(self, job: Job, index: int, holder: list[Row]) -> Callable[[str], None]:
        """The stream callback of choice `index`: each text delta with the logprobs of the
        tokens whose bytes it completes (when asked for) and the choice's tokens so far."""
        pieces = self.scheduler.pieces
        stream = None
        if job.request.logprob_count() is not None and pieces is not None:
            stream = StreamedLogprobs(pieces, self._finishing(job))

        def on_text(delta: str) -> None:
            row, part = holder[0], None
            if stream is not None and pieces is not None:
                take, offsets = stream.take(row.token_logprobs, delta)
                job.sent_logprobs[index] = stream.sent
                part = logprobs_part(job.chat, take, pieces, offsets) if take else None
            job.push("delta", (index, delta, part, len(row.tokens)))

        return on_text

    def _finishing(self, job: Job) -> frozenset[int]:
        """The ids that end the job's rows, which its logprobs do not list."""
        return frontdoor.ending(job.request).finishing_ids(self.generator.eos_token_ids)

    def _row_done(self, row: Row) -> None:
        slot = self.rows.pop(id(row))
        if slot.job not in self.results:
            return
        result = slot.finish()
        self.scheduler.metrics.observe(result.metrics, slot.admitted - slot.job.arrived)
        done = self.results[slot.job]
        done[slot.index] = result
        if all(r is not None for r in done):
            shape = logprob_shape(slot.job.chat, self.scheduler.pieces, self._finishing(slot.job))
            results = [r for r in done if r is not None]
            self._end(slot.job, self.scheduler.reply(slot.job, results, shape))

    def _cancelled(self, job: Job) -> None:
        if job in self.results:
            self._end(job, GenerationCancelled())

    def _end(self, job: Job, outcome: Outcome) -> None:
        """Answer the job; its other rows leave the batch, its queued prompts are dropped."""
        del self.results[job]
        job.cancelled.set()
        for b, row in enumerate(self.batch.rows):
            slot = None if row is None else self.rows.get(id(row))
            if slot is not None and slot.job is job:
                self.batch.leave(b)
                del self.rows[id(row)]
        self.scheduler.finish_job(job, outcome)

    def _fail_all(self, exc: Exception) -> None:
        """A failed step leaves the caches in an unknown state: every running job fails and
        the batch starts afresh."""
        for job in list(self.results):
            self._end(job, exc)
        self.pending.clear()
        fresh = self.generator.open_batch(self.batch.slots)
        if fresh is None:  # the same backend batched a moment ago
            raise RuntimeError("the backend no longer opens a batch") from exc
        self.batch = fresh
