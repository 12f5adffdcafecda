"""The speculative decoding loop, independent of how the models are run.

A `Runner` wraps one model with its KV cache. The cache is a row of columns per sequence;
a boolean mask marks which columns are live. Feeding appends columns; rejected draft tokens
are rolled back by masking their columns and cropping the columns no row needs, never by
recomputing from the prompt. Rows of a batch accept different numbers of tokens, so each
row's live columns may have holes; position ids count live columns, so a row's positions are
exactly those of its own sequence.

A `Batch` is a fixed number of slots. Each holds a `Row` (one sequence with its own budget,
EOS ids, acceptor, stream callback and cancellation) or nothing. `step()` runs one
speculative step for every occupied slot: rows sit at different positions, accept different
numbers of drafts, and finish on their own; a finished row leaves its slot at once, and a
new row can be admitted into a free slot between any two steps (its prompt is fed in the
next step, beside the other rows' one-token to-do lists). This is continuous batching at
step granularity; `speculative_generate` is the special case of a batch filled once.

Invariant between steps: each model's cache holds every committed token of a row except the
ones in that row's to-do list, which are fed at the start of the next step (the target's
to-do is the last emitted token; the draft's also holds the last draft token when every
draft was accepted, since the draft never fed it). An empty slot is fed a pad token, which
is dropped again after the step, so it holds no live column at a step boundary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .acceptors import Acceptor, GreedyAcceptor


class Runner(Protocol):
    """One model and its cache. Optional: `arrange(index)` (the runner holds only the rows
    of occupied slots, see Batch) and `set_idle(flags)` (a runner of a fixed batch is told,
    before each step, which rows only fill a free slot)."""

    vocab_size: int

    def reset(self, batch: int) -> None: ...

    @property
    def length(self) -> int:
        """Columns in the cache (live or not)."""
        ...

    def feed(self, tokens: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        """Append columns tokens (B, w) with live mask (B, w); return the logits of the last
        `keep` columns (B, keep, V). Fewer logits, less work: the vocabulary projection is a
        large share of a small model's step."""
        ...

    def invalidate_from(self, start: torch.Tensor) -> None:
        """Mark row b's columns >= start[b] dead; crop columns that are dead in every row."""
        ...


# Called with (row, new tokens) as they are accepted; returning True ends that row (a stop
# string was reached, say).
StreamCallback = Callable[[int, list[int]], "bool | None"]
RowCallback = Callable[[list[int]], "bool | None"]


class GenerationCancelled(Exception):
    """Raised out of the loop when `cancelled()` turns true (e.g. the client went away)."""


@dataclass
class StepRecord:
    seconds: float
    drafted: int  # gamma for this step
    accepted: list[int]  # per row, drafts accepted (before EOS / length truncation)
    emitted: list[int]  # per row, tokens actually appended
    row_drafted: list[int] | None = None  # per row, when rows drafted different counts
    rows: int = 1  # rows decoding together in this step

    def drafted_by(self, b: int) -> int:
        return self.drafted if self.row_drafted is None else self.row_drafted[b]


@dataclass
class EngineResult:
    tokens: list[list[int]]  # generated ids per row (prompt excluded)
    finished_by_eos: list[bool]
    steps: list[StepRecord]
    start: float
    first_token_at: list[float | None]  # per row, perf_counter time of its first token
    draft_step_seconds: list[float] = field(default_factory=list)  # 1-token draft feeds
    target_step_seconds: list[float] = field(default_factory=list)  # target passes
    end: float = 0.0


@dataclass
class TokenLogprob:
    """An emitted token's log-probability under the target (its raw logits, before any
    temperature or top-k/p), and the most likely tokens at that position."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def _logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """logits (n, V) of the positions that emitted `tokens` (n)."""
    lsm = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for i, tok in enumerate(tokens):
        best = torch.topk(lsm[i], top) if top > 0 else None
        alternatives = (
            [] if best is None
            else [(int(t), float(v)) for v, t in zip(best.values, best.indices, strict=True)]
        )  # fmt: skip
        out.append(TokenLogprob(tok, float(lsm[i, tok]), alternatives))
    return out


@dataclass
class Row:
    """One sequence: what it starts from and how it ends. `result` is its own EngineResult
    (one row), complete when the row leaves the batch."""

    prompt: Sequence[int]
    max_new: int
    eos: frozenset[int] = frozenset()
    acceptor: Acceptor | None = None  # None: the batch's shared acceptor
    on_tokens: RowCallback | None = None
    cancelled: Callable[[], bool] | None = None
    # always draft (a seeded sampled row: it consumes its random numbers as it does alone)
    pinned: bool = False
    # log-probabilities under the target's distribution: None = not wanted, N = each emitted
    # token's and the N most likely alternatives at its position
    logprobs: int | None = None
    token_logprobs: list[TokenLogprob] = field(default_factory=list)
    result: EngineResult = field(init=False)
    was_cancelled: bool = False

    def __post_init__(self) -> None:
        if len(self.prompt) == 0:
            raise ValueError("every prompt needs at least one token")
        if self.max_new < 1:
            raise ValueError("a row needs max_new >= 1")
        self.result = EngineResult([[]], [False], [], time.perf_counter(), [None])

    @property
    def tokens(self) -> list[int]:
        return self.result.tokens[0]

    @property
    def ended(self) -> bool:
        return self.result.finished_by_eos[0] or len(self.tokens) >= self.max_new


def _chunk(todo: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned (B, w) tokens and live mask from per-row token lists."""
    width = max(1, max(len(t) for t in todo))
    tokens = torch.full((len(todo), width), pad, dtype=torch.long)
    mask = torch.zeros((len(todo), width), dtype=torch.bool)
    for b, row in enumerate(todo):
        if row:
            tokens[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[b, width - len(row) :] = True
    return tokens, mask


def _timed_feed(
    runner: Runner, tokens: torch.Tensor, mask: torch.Tensor, keep: int, sinks: list[list[float]]
) -> torch.Tensor:
    t0 = time.perf_counter()
    out = runner.feed(tokens, mask, keep)
    for sink in sinks:
        sink.append(time.perf_counter() - t0)
    return out


class _PerRow:
    """Each row's own acceptor as one: row b's drafts and acceptance use its sampling
    settings, its generator and its own draft count `gammas[b]` (positions past it are
    drafted by argmax and never offered), so a seeded row draws exactly what it draws when
    decoded alone, whatever its neighbours."""

    def __init__(self, acceptors: list[Acceptor], gammas: list[int]):
        self.acceptors, self.gammas = acceptors, gammas
        self.uses_draft_logits = any(getattr(a, "uses_draft_logits", True) for a in acceptors)
        self.samples_draft = any(a.samples_draft for a in acceptors)
        self.position = 0  # which draft the next draft_token call picks

    def draft_token(self, logits: torch.Tensor) -> torch.Tensor:
        i, self.position = self.position, self.position + 1
        picks = [
            a.draft_token(logits[b : b + 1]) if i < g else logits[b : b + 1].argmax(dim=-1)
            for b, (a, g) in enumerate(zip(self.acceptors, self.gammas, strict=True))
        ]
        return torch.cat(picks)

    def accept(
        self, draft_ids: torch.Tensor, draft_logits: torch.Tensor, target_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = draft_ids.shape[1] + 1
        tokens = torch.zeros((len(self.acceptors), width), dtype=torch.long)
        counts = torch.zeros(len(self.acceptors), dtype=torch.long)
        for b, (a, g) in enumerate(zip(self.acceptors, self.gammas, strict=True)):
            q = draft_logits[b : b + 1, :g]
            row_tokens, row_count = a.accept(
                draft_ids[b : b + 1, :g], q, target_logits[b : b + 1, : g + 1]
            )
            tokens[b, : g + 1] = row_tokens[0]
            counts[b] = row_count[0]
        return tokens, counts


class DraftPolicy:
    """Whether to draft at the batch's current number of rows, measured rather than assumed.

    At batch 1 verifying gamma drafts costs little more than one decode step; as rows are
    added the target's pass does more work per row and the drafts' share grows, so there is
    an occupancy beyond which drafting loses. This keeps, per number of rows, moving averages
    of output tokens/s and step time over steps with drafts and over steps without, and takes
    the faster way (output per row, each way at its nearest measured occupancy; learning
    starts with the cheaper way, no drafts). Now and then it tries the other way, so that a
    change (another acceptance rate, a busier machine) is noticed: after at least EXPLORE
    steps, and only once the time since the last try is RATIO x backoff times what a try
    costs, so re-checking takes at most about 1/RATIO of the time. A try lasts until one fair
    step of the other way (at most RUN steps), whose rate replaces the stale estimate. Each
    try that confirms the way held doubles the backoff (up to MAX_BACKOFF), and one that
    overturns it resets it to 1: a way that keeps losing is re-checked ever more rarely (a
    try of a much slower way is a visible stall). One row always drafts. Steps that prefill
    a new row or catch the draft up are not averaged: their time is mostly that."""

    EXPLORE = 16
    RUN = 3  # at most, for a try to get one fair step
    RATIO = 10.0
    MAX_BACKOFF = 16.0
    WEIGHT = 0.3  # of the newest step in the moving averages

    def __init__(self) -> None:
        self.rate: dict[tuple[int, bool], float] = {}  # output tokens/s
        self.step_s: dict[tuple[int, bool], float] = {}  # seconds per step
        self.trying = 0  # steps left of a try of the other way
        self.try_way = True
        self.steps_since = 0  # steps since the last try ended
        self.exploit_s = 0.0  # seconds since the last try ended
        self.explore_s = 0.0  # seconds the last try took
        self.backoff = 1.0

    def _nearest(self, rows: int, way: bool) -> int | None:
        """The measured occupancy closest to `rows` for that way."""
        known = [r for r, w in self.rate if w == way]
        return min(known, key=lambda r: (abs(r - rows), -r)) if known else None

    def _faster(self, rows: int) -> bool | None:
        """True when drafting is measured faster at `rows` (None: a way is unmeasured)."""
        with_at, without_at = self._nearest(rows, True), self._nearest(rows, False)
        if with_at is None or without_at is None:
            return None
        return self.rate[(with_at, True)] / with_at >= self.rate[(without_at, False)] / without_at

    def drafts(self, rows: int) -> bool:
        if rows <= 1:
            return True
        if self.trying > 0:
            return self.try_way
        faster = self._faster(rows)
        if faster is None:  # learning: no drafts first, then a try of drafting
            if self._nearest(rows, False) is None:
                return False
            self.trying, self.try_way, self.explore_s = self.RUN, True, 0.0
            return True
        other = self._nearest(rows, not faster)
        assert other is not None
        try_cost = max(self.explore_s, self.step_s[(other, not faster)])
        due = self.RATIO * self.backoff * try_cost
        if self.steps_since >= self.EXPLORE and self.exploit_s >= due:
            self.trying, self.try_way, self.explore_s = self.RUN, not faster, 0.0
            return self.try_way
        return faster

    def record(self, rows: int, drafted: bool, tokens: int, seconds: float, counted: bool) -> None:
        """A step's outcome; `counted` when its rate is a fair sample of its way."""
        trying = self.trying > 0
        sample = counted and rows > 1 and seconds > 0
        if sample:  # a try's sample replaces what is known of that way: it may be stale
            weight = 1.0 if trying and drafted == self.try_way else self.WEIGHT
            for table, value in ((self.rate, tokens / seconds), (self.step_s, seconds)):
                old = table.get((rows, drafted))
                table[(rows, drafted)] = value if old is None else old + weight * (value - old)
        if not trying:
            self.steps_since += 1
            self.exploit_s += seconds
            return
        self.explore_s += seconds
        self.trying -= 1
        if sample and drafted == self.try_way:  # one fair sample settles it
            self.trying = 0
            confirmed = self._faster(rows) in (not self.try_way, None)
            self.backoff = min(2 * self.backoff, self.MAX_BACKOFF) if confirmed else 1.0
        if self.trying == 0:
            self.steps_since, self.exploit_s = 0, 0.0


class Batch:
    """A fixed number of slots decoded together, one speculative step at a time.

    A runner with `arrange` (the reference backend's) holds only the occupied slots' rows:
    before a step its rows are rearranged to them, a departed row's dropped and a new row's
    started empty, so free slots cost nothing. A runner without it (compiled graphs of one
    batch size) holds every slot; a free slot is fed a pad token and dropped after the step.
    """

    def __init__(
        self,
        target: Runner,
        draft: Runner | None,
        slots: int,
        *,
        draft_tokens: int,
        pad_token_id: int = 0,
        acceptor: Acceptor | None = None,
        policy: DraftPolicy | None = None,
        history: bool = True,
    ):
        """`policy`: decide per step whether drafting pays at the current occupancy (see
        DraftPolicy); without one, every step drafts up to `draft_tokens`. `history`: keep
        every step's record and pass times in `steps` and `*_step_seconds` (a batch filled
        once); a long-lived batch (a server's) keeps only the last step's, since every row
        records its own steps in its result."""
        if slots < 1:
            raise ValueError("a batch needs at least one slot")
        self.policy = policy
        self.target, self.pad = target, pad_token_id
        self.draft = draft if draft_tokens > 0 else None
        self.gamma_max = draft_tokens if self.draft is not None else 0
        self.shared = acceptor
        self.idle_acceptor = GreedyAcceptor()
        self.rows: list[Row | None] = [None] * slots
        self.target_todo: list[list[int]] = [[pad_token_id] for _ in range(slots)]
        self.draft_todo: list[list[int]] = [[pad_token_id] for _ in range(slots)]
        self.elastic = all(hasattr(r, "arrange") for r in (target, self.draft) if r is not None)
        self.physical: list[int] = [] if self.elastic else list(range(slots))  # slot per row
        self.fresh: set[int] = set()  # admitted since the last step
        self.dirty = [False] * slots  # fixed rows: holds columns of a row that has left
        self.history = history
        self.steps: list[StepRecord] = []  # every step, all slots (only the last: no history)
        self.draft_step_seconds: list[float] = []
        self.target_step_seconds: list[float] = []
        self._times: tuple[list[float], list[float]] = ([], [])  # the last step's passes
        self._draft_width = 0  # the widest draft feed of the last step
        target.reset(0 if self.elastic else slots)
        if self.draft is not None:
            self.draft.reset(0 if self.elastic else slots)

    @property
    def slots(self) -> int:
        return len(self.rows)

    def free_slots(self) -> list[int]:
        return [b for b, r in enumerate(self.rows) if r is None]

    @property
    def busy(self) -> bool:
        return any(r is not None for r in self.rows)

    def admit(self, row: Row, slot: int | None = None) -> int:
        """Place `row` in a free slot (the first, unless named); its prompt is fed at the
        next step. Returns the slot."""
        free = self.free_slots()
        if not free or (slot is not None and slot not in free):
            raise ValueError("no free slot for the row")
        if row.acceptor is None and self.shared is None:
            raise ValueError("the row has no acceptor and the batch no shared one")
        b = free[0] if slot is None else slot
        self.rows[b] = row
        self.target_todo[b] = list(row.prompt)
        self.draft_todo[b] = list(row.prompt)
        self.fresh.add(b)
        row.result.start = time.perf_counter()
        return b

    def leave(self, slot: int) -> Row | None:
        """Empty a slot (its row is returned as it stands)."""
        row, self.rows[slot] = self.rows[slot], None
        self.dirty[slot] = self.dirty[slot] or row is not None
        self.fresh.discard(slot)
        self.target_todo[slot] = [self.pad]
        self.draft_todo[slot] = [self.pad]
        return row

    def cancel_requested(self) -> list[Row]:
        """Rows whose `cancelled()` turned true leave; returned marked `was_cancelled`."""
        gone = []
        for b, row in enumerate(self.rows):
            if row is not None and row.cancelled is not None and row.cancelled():
                row.was_cancelled = True
                row.result.end = time.perf_counter()
                self.leave(b)
                gone.append(row)
        return gone

    def _runners(self) -> list[Runner]:
        return [r for r in (self.target, self.draft) if r is not None]

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """One speculative step for every occupied slot; returns the rows that finished in
        it (EOS, budget, or their callback said stop), which have left their slots."""
        if not self.busy:
            return []
        prefill = bool(self.fresh)
        self._draft_width = 0
        if not self.history:  # a long-lived batch stays the same size however long it runs
            self.steps.clear()
            self.draft_step_seconds.clear()
            self.target_step_seconds.clear()
        self._place_rows()
        slots = self.physical
        t_step = time.perf_counter()
        rows = [self.rows[b] for b in slots]
        occupied = sum(r is not None for r in rows)
        drafting = self.policy is None or self.policy.drafts(occupied)
        # no point drafting past a row's budget
        gammas = [
            0
            if r is None
            else min(self.gamma_max if drafting or r.pinned else 0, r.max_new - len(r.tokens) - 1)
            for r in rows
        ]
        gamma = max(gammas)
        acceptor = self._acceptor(rows, gammas)
        marks = (len(self.draft_step_seconds), len(self.target_step_seconds))
        draft_ids, q_logits, d_start = self._draft(acceptor, gamma)
        t_logits, t_first = self._verify(draft_ids)
        q = torch.stack(q_logits, dim=1) if q_logits else t_logits[:, :0]
        emitted, counts = acceptor.accept(draft_ids, q, t_logits)
        n_acc = (counts - 1).clamp(min=0, max=gamma)
        idle = torch.tensor([r is None for r in rows])
        self.target.invalidate_from(torch.where(idle, 0, t_first + n_acc))
        if self.draft is not None:
            after = d_start + n_acc if gamma > 0 else torch.full_like(n_acc, self.draft.length)
            self.draft.invalidate_from(torch.where(idle, 0, after))
        now = time.perf_counter()
        record = StepRecord(now - t_step, gamma, [0] * self.slots, [0] * self.slots)
        record.rows = occupied
        if isinstance(acceptor, _PerRow):  # rows drafted as many as their budgets allow
            record.row_drafted = [0] * self.slots
            for p, b in enumerate(slots):
                record.row_drafted[b] = gammas[p]
        self.steps.append(record)
        self._times = (self.draft_step_seconds[marks[0] :], self.target_step_seconds[marks[1] :])
        finished = self._commit(record, emitted, counts, n_acc, draft_ids, now, t_logits)
        if self.policy is not None:
            pure = drafting or gamma == 0  # not a step some pinned rows drafted in alone
            fair = pure and not prefill and self._draft_width <= 2
            self.policy.record(occupied, gamma > 0, sum(record.emitted), record.seconds, fair)
        return finished

    def _place_rows(self) -> None:
        """Make the runners' rows those of the occupied slots (elastic), or drop what a
        departed row left in a slot a new row now takes (fixed)."""
        if self.elastic:
            occupied = [b for b, r in enumerate(self.rows) if r is not None]
            if occupied != self.physical or self.fresh:
                index = [
                    None if b in self.fresh or b not in self.physical else self.physical.index(b)
                    for b in occupied
                ]
                for runner in self._runners():
                    runner.arrange(index)  # type: ignore[attr-defined]
                self.physical = occupied
        elif any(self.dirty[b] for b in self.fresh):
            reset = torch.tensor([self.dirty[b] and b in self.fresh for b in range(self.slots)])
            for runner in self._runners():
                full = torch.full((self.slots,), runner.length, dtype=torch.long)
                runner.invalidate_from(torch.where(reset, 0, full))
            self.dirty = [False] * self.slots
        if not self.elastic:  # rows that only fill the compiled batch need no prefill
            idle = [r is None for r in self.rows]
            for runner in self._runners():
                if hasattr(runner, "set_idle"):
                    runner.set_idle(idle)
        self.fresh.clear()

    def _acceptor(self, rows: list[Row | None], gammas: list[int]) -> Acceptor:
        """The shared acceptor when no row brings its own (it sees the whole batch at one
        draft count), else each row's own."""
        if all(r is None or r.acceptor is None for r in rows) and self.shared is not None:
            return self.shared
        chosen = [self.idle_acceptor if r is None else (r.acceptor or self.shared) for r in rows]
        return _PerRow(chosen, gammas)  # type: ignore[arg-type]  # None only with a shared one

    def _draft(
        self, acceptor: Acceptor, gamma: int
    ) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        """gamma draft tokens per row (B, gamma), the logits each was drawn from (kept only
        when the acceptor reads them), and the cache column where the first was written."""
        width = len(self.physical)
        draft_ids = torch.zeros((width, gamma), dtype=torch.long)
        draft_logits: list[torch.Tensor] = []
        if gamma == 0 or self.draft is None:
            return draft_ids, draft_logits, 0
        keep_q = getattr(acceptor, "uses_draft_logits", True)  # custom acceptors: always
        tokens, mask = _chunk([self.draft_todo[b] for b in self.physical], self.pad)
        self._draft_width = tokens.shape[1]
        sinks = [self.draft_step_seconds] if tokens.shape[1] == 1 else []  # 1-token steps
        logits = _timed_feed(self.draft, tokens, mask, 1, sinks)[:, -1]  # (B, V)
        d_start = self.draft.length  # column where d_1 will be written
        one = torch.ones((width, 1), dtype=torch.bool)
        for i in range(gamma):
            draft_ids[:, i] = acceptor.draft_token(logits)  # (B,)
            if keep_q:
                draft_logits.append(logits)
            if i < gamma - 1:
                step_ids = draft_ids[:, i : i + 1]
                logits = _timed_feed(self.draft, step_ids, one, 1, [self.draft_step_seconds])
                logits = logits[:, -1]
        return draft_ids, draft_logits, d_start

    def _verify(self, draft_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The target's pass over its to-do tokens and the drafts: the logits of the last
        gamma + 1 columns (B, gamma + 1, V), and the cache column of the first draft."""
        width, gamma = draft_ids.shape
        tokens, mask = _chunk([self.target_todo[b] for b in self.physical], self.pad)
        first_draft = self.target.length + tokens.shape[1]
        tokens = torch.cat([tokens, draft_ids], dim=1)  # (B, w + gamma)
        mask = torch.cat([mask, torch.ones((width, gamma), dtype=torch.bool)], dim=1)
        logits = _timed_feed(self.target, tokens, mask, gamma + 1, [self.target_step_seconds])
        return logits, torch.full((width,), first_draft, dtype=torch.long)

    def _commit(
        self,
        record: StepRecord,
        emitted: torch.Tensor,
        counts: torch.Tensor,
        n_acc: torch.Tensor,
        draft_ids: torch.Tensor,
        now: float,
        t_logits: torch.Tensor,
    ) -> list[Row]:
        """Append each row's new tokens, let finished rows leave, and set the to-do lists
        that keep the cache invariant for the next step."""
        gamma = draft_ids.shape[1]
        finished = []
        for p, b in enumerate(self.physical):
            row = self.rows[b]
            if row is None:
                continue
            new = [int(x) for x in emitted[p, : int(counts[p])]]
            keep = _commit_row(row, new, now)
            if row.logprobs is not None and keep:
                row.token_logprobs += _logprobs(t_logits[p, : len(keep)], keep, row.logprobs)
            record.accepted[b], record.emitted[b] = int(n_acc[p]), len(keep)
            self._record(row, record, b)
            stop = row.on_tokens is not None and bool(keep) and bool(row.on_tokens(keep))
            self.target_todo[b] = [new[-1]]
            if gamma > 0:
                last_draft = [int(draft_ids[p, -1])] if int(n_acc[p]) == gamma else []
                self.draft_todo[b] = [*last_draft, new[-1]]
            else:
                self.draft_todo[b] = self.draft_todo[b] + [new[-1]]
            if row.ended or stop:
                row.result.end = now
                finished.append(row)
                self.leave(b)
        return finished

    def _record(self, row: Row, record: StepRecord, b: int) -> None:
        """The step as the row saw it, in the row's own result."""
        row.result.steps.append(
            StepRecord(
                record.seconds,
                record.drafted_by(b),
                [record.accepted[b]],
                [record.emitted[b]],
                rows=record.rows,
            )
        )
        row.result.draft_step_seconds.extend(self._times[0])
        row.result.target_step_seconds.extend(self._times[1])


def _commit_row(row: Row, new: list[int], now: float) -> list[int]:
    """Append what the row may keep of a step's new tokens (up to its budget, through its
    first EOS); returns them."""
    res = row.result
    keep = new[: row.max_new - len(res.tokens[0])]
    for i, tok in enumerate(keep):
        if tok in row.eos:
            keep = keep[: i + 1]
            res.finished_by_eos[0] = True
            break
    res.tokens[0].extend(keep)
    if res.first_token_at[0] is None and keep:
        res.first_token_at[0] = now
    return keep


@torch.inference_mode()
def speculative_generate(
    target: Runner,
    draft: Runner | None,
    acceptor: Acceptor,
    prompts: Sequence[Sequence[int]],
    *,
    draft_tokens: int,
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    on_tokens: StreamCallback | None = None,
    cancelled: Callable[[], bool] | None = None,
    acceptors: Sequence[Acceptor] | None = None,
) -> EngineResult:
    """Generate up to max_new_tokens per prompt, all prompts as one batch. draft=None or
    draft_tokens=0: target only. `acceptors`, one per prompt, give each row its own
    sampling (else `acceptor` serves every row)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    batch = Batch(
        target,
        draft,
        len(prompts),
        draft_tokens=draft_tokens if draft is not None else 0,
        pad_token_id=pad_token_id,
        acceptor=acceptor,
    )
    eos = frozenset(eos_token_ids)
    rows = []
    for b, prompt in enumerate(prompts):
        callback = None if on_tokens is None else (lambda t, b=b: on_tokens(b, t))
        own = acceptors[b] if acceptors is not None else None
        rows.append(Row(list(prompt), max_new_tokens, eos, own, callback))
        batch.admit(rows[-1], b)
    start = time.perf_counter()
    while batch.busy:
        if cancelled is not None and cancelled():
            raise GenerationCancelled()
        batch.step()
    result = EngineResult(
        [r.tokens for r in rows],
        [r.result.finished_by_eos[0] for r in rows],
        batch.steps,
        start,
        [r.result.first_token_at[0] for r in rows],
        batch.draft_step_seconds,
        batch.target_step_seconds,
    )
    result.end = time.perf_counter()
    return result
