"""The speculative decoding loop, independent of how the models are run.

A `Runner` wraps one model with its KV cache. The cache is a row of columns per sequence;
a boolean mask marks which columns are live. Feeding appends columns; rejected draft tokens
are rolled back by masking their columns and cropping the columns no row needs, never by
recomputing from the prompt. Rows of a batch accept different numbers of tokens, so each
row's live columns may have holes; position ids count live columns, so a row's positions are
exactly those of its own sequence.

Invariant between steps: each model's cache holds every committed token of a row except the
ones in that row's to-do list, which are fed at the start of the next step (the target's
to-do is the last emitted token; the draft's also holds the last draft token when every
draft was accepted, since the draft never fed it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .acceptors import Acceptor


class Runner(Protocol):
    """One model and its cache."""

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


class GenerationCancelled(Exception):
    """Raised out of the loop when `cancelled()` turns true (e.g. the client went away)."""


@dataclass
class StepRecord:
    seconds: float
    drafted: int  # gamma for this step
    accepted: list[int]  # per row, drafts accepted (before EOS / length truncation)
    emitted: list[int]  # per row, tokens actually appended


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
    runner: Runner, tokens: torch.Tensor, mask: torch.Tensor, keep: int, sink: list[float] | None
) -> torch.Tensor:
    t0 = time.perf_counter()
    out = runner.feed(tokens, mask, keep)
    if sink is not None:
        sink.append(time.perf_counter() - t0)
    return out


def _commit_row(
    result: EngineResult, b: int, new: list[int], eos: set[int], max_new: int, now: float
) -> list[int]:
    """Append what row b may keep of a step's new tokens (up to its budget, through its first
    EOS); returns them."""
    keep = new[: max_new - len(result.tokens[b])]
    for i, tok in enumerate(keep):
        if tok in eos:
            keep = keep[: i + 1]
            result.finished_by_eos[b] = True
            break
    result.tokens[b].extend(keep)
    if result.first_token_at[b] is None and keep:
        result.first_token_at[b] = now
    return keep


@dataclass
class _Rows:
    """Per-row loop state: what each model has yet to see (see the module's invariant), which
    rows are finished, and when they end."""

    target_todo: list[list[int]]
    draft_todo: list[list[int]]
    done: list[bool]
    eos: set[int]
    max_new: int
    on_tokens: StreamCallback | None


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
) -> EngineResult:
    """Generate up to max_new_tokens per prompt. draft=None or draft_tokens=0: target only."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    batch = len(prompts)
    gamma_max = draft_tokens if draft is not None else 0
    target.reset(batch)
    if draft is not None:
        draft.reset(batch)
    rows = _Rows(
        [list(p) for p in prompts],
        [list(p) for p in prompts],
        [False] * batch,
        set(eos_token_ids),
        max_new_tokens,
        on_tokens,
    )
    out: list[list[int]] = [[] for _ in prompts]
    result = EngineResult(out, [False] * batch, [], time.perf_counter(), [None] * batch)

    while not all(rows.done):
        if cancelled is not None and cancelled():
            raise GenerationCancelled()
        t_step = time.perf_counter()
        remaining = max(max_new_tokens - len(out[b]) for b in range(batch) if not rows.done[b])
        gamma = min(gamma_max, remaining - 1)  # no point drafting past the budget

        # 1. Draft gamma tokens, one at a time (the first feed catches the draft's cache up).
        draft_ids, draft_logits, d_start = _draft(
            draft if gamma > 0 else None, acceptor, rows.draft_todo, gamma, pad_token_id, result
        )

        # 2. The target scores its to-do tokens plus the gamma drafts in one pass.
        t_logits, t_first_draft = _verify(target, rows.target_todo, draft_ids, pad_token_id, result)

        # 3. Accept a prefix of the drafts and emit one more token: (B, gamma + 1), (B,).
        q_logits = torch.stack(draft_logits, dim=1) if draft_logits else t_logits[:, :0]
        emitted, counts = acceptor.accept(draft_ids, q_logits, t_logits)
        n_acc = (counts - 1).clamp(min=0, max=gamma)  # (B,)

        # 4. Roll back what was rejected.
        target.invalidate_from(t_first_draft + n_acc)
        if gamma > 0 and draft is not None:
            draft.invalidate_from(d_start + n_acc)

        # 5. Commit, per row: stop at EOS or the token budget.
        now = time.perf_counter()
        record = StepRecord(now - t_step, gamma, [], [])
        _commit(result, rows, record, emitted, counts, n_acc, draft_ids, now)
        result.steps.append(record)
    result.end = time.perf_counter()
    return result


def _draft(
    draft: Runner | None,
    acceptor: Acceptor,
    todo: list[list[int]],
    gamma: int,
    pad_token_id: int,
    result: EngineResult,
) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """gamma draft tokens per row (B, gamma), the logits each was drawn from (kept only when
    the acceptor reads them), and the cache column where the first was written."""
    batch = len(todo)
    draft_ids = torch.zeros((batch, gamma), dtype=torch.long)
    draft_logits: list[torch.Tensor] = []
    if gamma == 0 or draft is None:
        return draft_ids, draft_logits, 0
    keep_q = getattr(acceptor, "uses_draft_logits", True)  # custom acceptors: always
    tokens, mask = _chunk(todo, pad_token_id)
    sink = result.draft_step_seconds if tokens.shape[1] == 1 else None  # 1-token steps
    logits = _timed_feed(draft, tokens, mask, 1, sink)[:, -1]  # (B, V)
    d_start = draft.length  # column where d_1 will be written
    one = torch.ones((batch, 1), dtype=torch.bool)
    for i in range(gamma):
        draft_ids[:, i] = acceptor.draft_token(logits)  # (B,)
        if keep_q:
            draft_logits.append(logits)
        if i < gamma - 1:
            step_ids = draft_ids[:, i : i + 1]
            logits = _timed_feed(draft, step_ids, one, 1, result.draft_step_seconds)[:, -1]
    return draft_ids, draft_logits, d_start


def _verify(
    target: Runner,
    todo: list[list[int]],
    draft_ids: torch.Tensor,
    pad_token_id: int,
    result: EngineResult,
) -> tuple[torch.Tensor, int]:
    """The target's pass over its to-do tokens and the drafts: the logits of the last
    gamma + 1 columns (B, gamma + 1, V), and the cache column of the first draft."""
    batch, gamma = draft_ids.shape
    tokens, mask = _chunk(todo, pad_token_id)
    first_draft = target.length + tokens.shape[1]
    tokens = torch.cat([tokens, draft_ids], dim=1)  # (B, w + gamma)
    mask = torch.cat([mask, torch.ones((batch, gamma), dtype=torch.bool)], dim=1)
    return _timed_feed(target, tokens, mask, gamma + 1, result.target_step_seconds), first_draft


def _commit(
    result: EngineResult,
    rows: _Rows,
    record: StepRecord,
    emitted: torch.Tensor,
    counts: torch.Tensor,
    n_acc: torch.Tensor,
    draft_ids: torch.Tensor,
    now: float,
) -> None:
    """Append each row's new tokens, decide which rows are done, and set the to-do lists
    that keep the cache invariant for the next step."""
    gamma = draft_ids.shape[1]
    for b in range(len(rows.done)):
        new = [int(x) for x in emitted[b, : int(counts[b])]]
        accepted = int(n_acc[b])
        if rows.done[b]:
            record.accepted.append(0)
            record.emitted.append(0)
        else:
            keep = _commit_row(result, b, new, rows.eos, rows.max_new, now)
            record.accepted.append(accepted)
            record.emitted.append(len(keep))
            stop = rows.on_tokens is not None and bool(keep) and bool(rows.on_tokens(b, keep))
            ended = result.finished_by_eos[b] or len(result.tokens[b]) >= rows.max_new
            rows.done[b] = ended or stop
        rows.target_todo[b] = [new[-1]]
        if gamma > 0:
            last_draft = [int(draft_ids[b, -1])] if accepted == gamma else []
            rows.draft_todo[b] = [*last_draft, new[-1]]
        else:
            rows.draft_todo[b] = rows.draft_todo[b] + [new[-1]]
