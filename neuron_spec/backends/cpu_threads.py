"""How many threads a model pass uses on the CPU, chosen by measurement.

A pass is a few dozen small matrix products per layer. When the machine is quiet, a wide pass
(a batch of rows, a long verification, a prompt) finishes sooner on every core; a one-token
pass gains little from a second thread; and when another process competes for the cores,
a pass spread over all of them waits at each product for the thread that lost its core
(measured on 2 cores beside one busy process: 8 rows x 1 token took 2-3x as long on two
threads as on one). No fixed count is right for all three, so `ThreadChooser` measures: for
each model and pass size it keeps a moving average of the pass's time with the few and with
all the usable cores, uses the faster, and now and then re-tries the other, ever more rarely
while the tries confirm the choice (so a machine that turns busy, or quiet again, is noticed,
and a wrong re-try costs one pass in many).

NEURON_SPEC_THREADS fixes the count; OMP_NUM_THREADS leaves PyTorch's own choice alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import UsageError

THREADS_ENV = "NEURON_SPEC_THREADS"
WEIGHT = 0.3  # of a new time in a moving average
FIRST_GAP = 8  # passes of one size between re-tries of the other count, at first
MAX_GAP = 64  # the rarest re-try: a change of machine load is noticed within 64 passes

T = TypeVar("T")


def cpu_threads(environ: Mapping[str, str], usable_cores: int) -> int | None:
    """The fewest threads a pass uses: half the usable cores, at least one (a small model's
    step is short, and on a 2-core machine with another process busy one thread generated
    8-13x faster than two); NEURON_SPEC_THREADS when given; None when OMP_NUM_THREADS is set
    (PyTorch reads it: the user's choice stands)."""
    given = environ.get(THREADS_ENV, "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise UsageError(f"{THREADS_ENV}={given!r}: give a whole number of threads, 1 or more")
        return int(given)
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None
    return max(1, usable_cores // 2)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def size_class(tokens: int) -> int:
    """Passes of 1, 2, 3-4, 5-8, ... tokens share their measurements."""
    return max(0, tokens - 1).bit_length()


@dataclass
class _Record:
    """One pass size's measurements: mean seconds per thread count, and the re-try clock."""

    seconds: dict[int, float] = field(default_factory=dict)
    since_try: int = 0
    gap: int = FIRST_GAP

    def best(self) -> int | None:
        return min(self.seconds, key=lambda n: self.seconds[n]) if self.seconds else None


class ThreadChooser:
    """Runs each pass on the thread count measured fastest for its model and size."""

    def __init__(
        self,
        counts: tuple[int, ...],
        set_threads: Callable[[int], None],
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.counts = tuple(sorted(set(counts)))
        self.set_threads, self.clock = set_threads, clock
        # PyTorch keeps the count per OS thread (a thread started later takes the last one
        # set anywhere), so what was set is remembered per thread
        self.current = threading.local()
        self.records: dict[tuple[int, int], _Record] = {}

    @classmethod
    def for_machine(
        cls, environ: Mapping[str, str], cores: int, set_threads: Callable[[int], None]
    ) -> ThreadChooser | None:
        """The chooser between half and all of the cores; one fixed count when the user gave
        one (or there is one core); None when OMP_NUM_THREADS is PyTorch's to read."""
        few = cpu_threads(environ, cores)
        if few is None:
            return None
        fixed = bool(environ.get(THREADS_ENV, "").strip())
        return cls((few,) if fixed else (few, max(few, cores)), set_threads)

    def choose(self, model_key: int, size: int, record: _Record) -> int:
        best = record.best()
        if best is None:  # a new size: the count its model's nearest measured size chose
            near = self._nearest(model_key, size)
            return self.counts[0] if near is None else near
        if len(self.counts) > 1 and record.since_try >= record.gap:
            others = [n for n in self.counts if n != best]
            return ([n for n in others if n not in record.seconds] or others)[0]  # a re-try
        return best

    def _nearest(self, model_key: int, size: int) -> int | None:
        measured = [
            (abs(s - size), r.best()) for (m, s), r in self.records.items()
            if m == model_key and s != size and r.best() is not None
        ]  # fmt: skip
        return min(measured)[1] if measured else None

    def run(self, model_key: int, tokens: int, fn: Callable[[], T]) -> T:
        """fn() on the chosen count; its time is learned for (model_key, size of tokens)."""
        size = size_class(tokens)
        record = self.records.get((model_key, size))
        if record is None:  # its second pass measures the other count (a size may be rare)
            record = self.records[(model_key, size)] = _Record(since_try=FIRST_GAP)
        best_before = record.best()
        n = self.choose(model_key, size, record)
        if getattr(self.current, "count", None) != n:
            self.set_threads(n)
            self.current.count = n
        start = self.clock()
        out = fn()
        self._learn(record, n, self.clock() - start, best_before)
        return out

    def _learn(self, record: _Record, n: int, seconds: float, best_before: int | None) -> None:
        old = record.seconds.get(n)
        retry = best_before is not None and n != best_before
        # a re-try's time replaces the old average, measured long ago on another machine load
        record.seconds[n] = seconds if old is None or retry else old + WEIGHT * (seconds - old)
        if not retry:
            record.since_try += 1
            return
        record.since_try = 0
        if old is None:  # the other count's first measurement: nothing confirmed yet
            return
        best_now = record.best()
        record.gap = min(MAX_GAP, record.gap * 2) if best_now == best_before else FIRST_GAP
