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
from typing import cast

import torch

from .acceptors import Acceptor, GreedyAcceptor
from .policy import LengthPolicy, RowAcceptance, RowPlan
from .proposers import DraftModel, Proposal, Proposer
from .runner import Runner, chunk, timed_feed

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


def logprobs_of(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
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
    # always propose as many tokens as it can (a seeded sampled row: it consumes its random
    # numbers as it does alone, whatever the length policy chooses for the batch)
    pinned: bool = False
    # log-probabilities under the target's distribution: None = not wanted, N = each emitted
    # token's and the N most likely alternatives at its position
    logprobs: int | None = None
    # no `eos` id is emitted before the row has this many tokens (vLLM's min_tokens)
    min_new: int = 0
    token_logprobs: list[TokenLogprob] = field(default_factory=list)
    acceptance: RowAcceptance = field(default_factory=RowAcceptance)
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
        self,
        draft_ids: torch.Tensor,
        draft_logits: torch.Tensor | None,
        target_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = draft_ids.shape[1] + 1
        tokens = torch.zeros((len(self.acceptors), width), dtype=torch.long)
        counts = torch.zeros(len(self.acceptors), dtype=torch.long)
        for b, (a, g) in enumerate(zip(self.acceptors, self.gammas, strict=True)):
            q = None if draft_logits is None else draft_logits[b : b + 1, :g]
            row_tokens, row_count = a.accept(
                draft_ids[b : b + 1, :g], q, target_logits[b : b + 1, : g + 1]
            )
            tokens[b, : g + 1] = row_tokens[0]
            counts[b] = row_count[0]
        return tokens, counts


def _as_proposer(given: Proposer | Runner | None, slots: int, pad: int) -> Proposer | None:
    """A Proposer as given, or a draft model's Runner wrapped as one."""
    if given is None or hasattr(given, "propose"):
        return cast("Proposer | None", given)
    return DraftModel(given, slots, pad)


class Batch:
    """A fixed number of slots decoded together, one speculative step at a time.

    Each step the proposer offers up to `gamma_max` tokens per row (a draft model's drafts, or
    a lookup's matches), as many as the length policy chooses (or `gamma_max` without one);
    the target verifies them in one pass; the acceptor keeps each row's prefix and one more
    token. A runner with `arrange` (the reference backend's) holds only the occupied slots'
    rows: before a step its rows are rearranged to them, a departed row's dropped and a new
    row's started empty, so free slots cost nothing. A runner without it (compiled graphs of
    one batch size) holds every slot; a free slot is fed a pad token and dropped after the step.
    """

    def __init__(
        self,
        target: Runner,
        proposer: Proposer | Runner | None,
        slots: int,
        *,
        draft_tokens: int,
        pad_token_id: int = 0,
        acceptor: Acceptor | None = None,
        policy: LengthPolicy | None = None,
        history: bool = True,
    ):
        """`proposer`: a Proposer, or a draft model's Runner, or None (the target alone).
        `policy`: choose each step's proposal length (see policy.py); without one, every step
        proposes up to `draft_tokens`. `history`: keep every step's record and pass times in
        `steps` and `*_step_seconds` (a batch filled once); a long-lived batch (a server's)
        keeps only the last step's, since every row records its own steps in its result."""
        if slots < 1:
            raise ValueError("a batch needs at least one slot")
        self.proposer = _as_proposer(proposer, slots, pad_token_id) if draft_tokens > 0 else None
        self.target, self.pad, self.policy, self.history = target, pad_token_id, policy, history
        self.gamma_max = draft_tokens if self.proposer is not None else 0
        self.shared = acceptor
        self.idle_acceptor = GreedyAcceptor()
        self.rows: list[Row | None] = [None] * slots
        self.target_todo: list[list[int]] = [[pad_token_id] for _ in range(slots)]
        self.elastic = all(hasattr(r, "arrange") for r in self._runners())
        self.physical: list[int] = [] if self.elastic else list(range(slots))  # slot per row
        self.fresh: set[int] = set()  # admitted since the last step
        self.dirty = [False] * slots  # fixed rows: holds columns of a row that has left
        self.steps: list[StepRecord] = []  # every step, all slots (only the last: no history)
        self.draft_step_seconds: list[float] = []
        self.target_step_seconds: list[float] = []
        self._times: tuple[list[float], list[float]] = ([], [])  # the last step's passes
        for runner in self._runners():
            runner.reset(0 if self.elastic else slots)

    @property
    def draft(self) -> Runner | None:
        return None if self.proposer is None else self.proposer.runner

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
        if self.proposer is not None:
            self.proposer.admit(b, row.prompt)
        self.fresh.add(b)
        row.result.start = time.perf_counter()
        return b

    def leave(self, slot: int) -> Row | None:
        """Empty a slot (its row is returned as it stands)."""
        row, self.rows[slot] = self.rows[slot], None
        self.dirty[slot] = self.dirty[slot] or row is not None
        self.fresh.discard(slot)
        self.target_todo[slot] = [self.pad]
        if self.proposer is not None and row is not None:
            done = not row.was_cancelled and row.ended
            self.proposer.leave(slot, list(row.prompt) + row.tokens if done else None)
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
        draft = self.draft if hasattr(self, "proposer") else None
        return [r for r in (self.target, draft) if r is not None]

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """One speculative step for every occupied slot; returns the rows that finished in
        it (EOS, budget, or their callback said stop), which have left their slots."""
        if not self.busy:
            return []
        if not self.history:  # a long-lived batch stays the same size however long it runs
            self.steps.clear()
            self.draft_step_seconds.clear()
            self.target_step_seconds.clear()
        prefill = bool(self.fresh)
        self._draft_s = 0.0  # the draft model's feeds this step
        self._place_rows()
        t_step = time.perf_counter()
        rows = [self.rows[b] for b in self.physical]
        candidates = self._candidates()
        lengths = self._lengths(rows, candidates)
        gamma = max(lengths, default=0)
        acceptor = self._acceptor(rows, lengths)
        marks = (len(self.draft_step_seconds), len(self.target_step_seconds))
        proposal = self._propose(lengths, acceptor)
        t_logits, t_first, t_seconds = self._verify(proposal.ids)
        emitted, counts = acceptor.accept(proposal.ids, proposal.logits, _banned(rows, t_logits))
        n_acc = torch.minimum((counts - 1).clamp(min=0), torch.tensor(lengths))
        idle = torch.tensor([r is None for r in rows])
        self.target.invalidate_from(torch.where(idle, 0, t_first + n_acc))
        if self.proposer is not None:
            self.proposer.settle(self.physical, n_acc, idle)
        now = time.perf_counter()
        record = StepRecord(now - t_step, gamma, [0] * self.slots, [0] * self.slots)
        record.rows = sum(r is not None for r in rows)
        record.row_drafted = [0] * self.slots
        for p, b in enumerate(self.physical):
            record.row_drafted[b] = lengths[p]
        self.steps.append(record)
        self._times = (self.draft_step_seconds[marks[0] :], self.target_step_seconds[marks[1] :])
        finished = self._commit(record, emitted, counts, n_acc, lengths, candidates, now, t_logits)
        self._learn(gamma, t_seconds, record.seconds, prefill)
        return finished

    def _candidates(self) -> list[list[int]] | None:
        """What a free proposer would propose for each row (None: a draft model)."""
        if self.proposer is None or not self.proposer.free:
            return None
        return self.proposer.candidates(self.physical, self.gamma_max)

    def _lengths(self, rows: list[Row | None], candidates: list[list[int]] | None) -> list[int]:
        """Each row's proposal length this step: the policy's choice (pinned rows: all they
        can), never more than the proposer has or the row's budget leaves."""
        caps = [
            0 if r is None else min(
                self.gamma_max if candidates is None else len(candidates[p]),
                r.max_new - len(r.tokens) - 1,
            )
            for p, r in enumerate(rows)
        ]  # fmt: skip
        if self.policy is None:
            return caps
        plans = [
            RowPlan(self._known(b, r), cap, r.pinned)
            for b, r, cap in zip(self.physical, rows, caps, strict=True)
            if r is not None
        ]
        gamma = self.policy.choose(len(self.physical), plans)
        pinned = max((p.cap for p in plans if p.pinned), default=0)
        gamma = max(gamma, pinned)  # a pinned row widens the pass: every row may use it
        return [min(gamma, cap) for cap in caps]

    def _known(self, slot: int, row: Row) -> RowAcceptance:
        """What is known of how often the row's proposals are kept: the proposer's record
        when it keeps one (a lookup's, by match length), else the row's own."""
        found = None if self.proposer is None else self.proposer.acceptance(slot)
        return row.acceptance if found is None else found

    def _propose(self, lengths: list[int], acceptor: Acceptor) -> Proposal:
        width = len(self.physical)
        if self.proposer is None or max(lengths, default=0) == 0:
            return Proposal(torch.zeros((width, 0), dtype=torch.long), [0] * width)
        proposal = self.proposer.propose(self.physical, lengths, acceptor)
        if isinstance(self.proposer, DraftModel):
            self.draft_step_seconds.extend(self.proposer.pass_seconds)
            self.proposer.pass_seconds.clear()
            self._draft_s = self.proposer.seconds
        return proposal

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

    def _acceptor(self, rows: list[Row | None], lengths: list[int]) -> Acceptor:
        """The shared acceptor when no row brings its own and every row offers as many
        tokens (it sees the whole batch at once); else each row's own at its own length."""
        own = any(r is not None and r.acceptor is not None for r in rows)
        if not own and self.shared is not None and len(set(lengths)) <= 1:
            return self.shared
        chosen = [self.idle_acceptor if r is None else (r.acceptor or self.shared) for r in rows]
        return _PerRow(chosen, lengths)  # type: ignore[arg-type]  # None only with a shared one

    def _verify(self, draft_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The target's pass over its to-do tokens and the proposals: the logits of the last
        gamma + 1 columns (B, gamma + 1, V), the cache column of the first proposal, and the
        pass's seconds."""
        width, gamma = draft_ids.shape
        tokens, mask = chunk([self.target_todo[b] for b in self.physical], self.pad)
        first_draft = self.target.length + tokens.shape[1]
        tokens = torch.cat([tokens, draft_ids], dim=1)  # (B, w + gamma)
        mask = torch.cat([mask, torch.ones((width, gamma), dtype=torch.bool)], dim=1)
        logits = timed_feed(self.target, tokens, mask, gamma + 1, [self.target_step_seconds])
        seconds = self.target_step_seconds[-1]
        return logits, torch.full((width,), first_draft, dtype=torch.long), seconds

    def _commit(
        self,
        record: StepRecord,
        emitted: torch.Tensor,
        counts: torch.Tensor,
        n_acc: torch.Tensor,
        lengths: list[int],
        candidates: list[list[int]] | None,
        now: float,
        t_logits: torch.Tensor,
    ) -> list[Row]:
        """Append each row's new tokens, learn its acceptance, let finished rows leave, and
        set the to-do lists that keep the caches' invariant for the next step."""
        finished = []
        for p, b in enumerate(self.physical):
            row = self.rows[b]
            if row is None:
                continue
            new = [int(x) for x in emitted[p, : int(counts[p])]]
            keep = _commit_row(row, new, now)
            if row.logprobs is not None and keep:
                row.token_logprobs += logprobs_of(t_logits[p, : len(keep)], keep, row.logprobs)
            accepted = int(n_acc[p])
            record.accepted[b], record.emitted[b] = accepted, len(keep)
            self._record(row, record, b)
            candidate = None if candidates is None else candidates[p]
            self._acceptance(b, row, accepted, lengths[p], candidate, new)
            stop = row.on_tokens is not None and bool(keep) and bool(row.on_tokens(keep))
            self.target_todo[b] = [new[-1]]
            if self.proposer is not None:
                self.proposer.commit(b, new, accepted, lengths[p])
            if row.ended or stop:
                row.result.end = now
                finished.append(row)
                self.leave(b)
        return finished

    def _acceptance(
        self,
        slot: int,
        row: Row,
        accepted: int,
        offered: int,
        candidate: list[int] | None,
        new: list[int],
    ) -> None:
        """What this step says of the row's acceptance: its offered proposals and, when every
        one was kept and its free proposal had more (or it offered none), the next token of
        that proposal checked against the token the target then emitted (a point mass is
        accepted exactly when the target's token equals it), so a proposal cut short still
        says whether it would have gone on. Past what was offered, only with an acceptor known
        to keep a point mass that way (not a user's)."""
        more = candidate is not None and len(candidate) > offered and len(new) > offered
        acceptor = row.acceptor or self.shared
        as_drawn = offered == 0 or getattr(acceptor, "keeps_point_mass_as_drawn", False)
        if more and accepted == offered and as_drawn:
            assert candidate is not None
            accepted, offered = accepted + int(candidate[offered] == new[offered]), offered + 1
        row.acceptance.add(accepted, offered)
        if self.proposer is not None:
            self.proposer.learn(slot, accepted, offered)
        if self.policy is not None:
            self.policy.observe_acceptance(accepted, offered)

    def _learn(self, gamma: int, verify_s: float, step_s: float, prefill: bool) -> None:
        """The policy's measurements: a prefill's pass is not a decoding step's."""
        if self.policy is None or prefill:
            return
        rows = len(self.physical)
        width = self.policy.verify_width(gamma)
        self.policy.observe_verify(rows, width, verify_s)
        if gamma > 0 and self._draft_s > 0:
            self.policy.observe_draft(rows, self._draft_s / gamma)  # per token, catch-up in
        self.policy.observe_host(rows, step_s - verify_s - self._draft_s)

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


def _banned(rows: Sequence[Row | None], logits: torch.Tensor) -> torch.Tensor:
    """The target's logits (B, w, V) with each row's `eos` ids impossible at the positions
    before its `min_new`-th token (a copy; the originals give the logprobs)."""
    out = logits
    for p, row in enumerate(rows):
        short = 0 if row is None or not row.eos else row.min_new - len(row.tokens)
        if row is not None and short > 0:
            out = out.clone() if out is logits else out
            ids = torch.tensor(sorted(row.eos), dtype=torch.long)
            out[p, :short, ids] = float("-inf")
    return out


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


ProposerFactory = Callable[[int], Proposer]  # slots -> a fresh lookup proposer


@dataclass
class Decode:
    """How a call's prompts are decoded, whatever the backend: the speculation length, the
    budget, the stop ids, the callbacks, where proposals come from (`lookup`: a factory of
    lookup proposers; None: the backend's draft model, when it has one) and the length policy
    (None: always up to draft_tokens)."""

    draft_tokens: int
    max_new_tokens: int
    eos_token_ids: Sequence[int] = ()
    pad_token_id: int = 0
    on_tokens: StreamCallback | None = None
    cancelled: Callable[[], bool] | None = None
    lookup: ProposerFactory | None = None
    policy: LengthPolicy | None = None
    min_new_tokens: int = 0  # no EOS id before this many tokens

    def run(
        self,
        target: Runner,
        draft: Runner | None,
        acceptor: Acceptor,
        prompts: Sequence[Sequence[int]],
        on_tokens: StreamCallback | None = None,
    ) -> EngineResult:
        """The prompts as one batch over `target`, proposals from the lookup or `draft`;
        `on_tokens` (when given) replaces the call's own callback (a group of a larger call)."""
        proposer: Proposer | Runner | None = draft
        if self.lookup is not None:
            proposer = self.lookup(len(prompts))
        return speculative_generate(
            target,
            proposer if self.draft_tokens > 0 else None,
            acceptor,
            prompts,
            draft_tokens=self.draft_tokens,
            max_new_tokens=self.max_new_tokens,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            on_tokens=on_tokens or self.on_tokens,
            cancelled=self.cancelled,
            policy=self.policy,
            min_new_tokens=self.min_new_tokens,
        )


@torch.inference_mode()
def speculative_generate(
    target: Runner,
    proposer: Proposer | Runner | None,
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
    policy: LengthPolicy | None = None,
    min_new_tokens: int = 0,
) -> EngineResult:
    """Generate up to max_new_tokens per prompt, all prompts as one batch. `proposer`: a
    Proposer or a draft model's Runner; None or draft_tokens=0: the target alone. `acceptors`,
    one per prompt, give each row its own sampling (else `acceptor` serves every row);
    `policy` chooses each step's proposal length (else always up to draft_tokens);
    `min_new_tokens`: no EOS id is emitted before a row has that many tokens."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    batch = Batch(
        target,
        proposer,
        len(prompts),
        draft_tokens=draft_tokens if proposer is not None else 0,
        pad_token_id=pad_token_id,
        acceptor=acceptor,
        policy=policy,
    )
    eos = frozenset(eos_token_ids)
    rows = []
    for b, prompt in enumerate(prompts):
        callback = None if on_tokens is None else (lambda t, b=b: on_tokens(b, t))
        own = acceptors[b] if acceptors is not None else None
        rows.append(Row(list(prompt), max_new_tokens, eos, own, callback, min_new=min_new_tokens))
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
