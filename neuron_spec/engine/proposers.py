"""Proposers: where the tokens a speculative step offers the target come from.

- `DraftModel`: a smaller model of the same tokenizer drafts them one at a time through its
  own Runner (sampled from its warped distribution when the acceptor samples). Proposing g
  tokens costs g passes of the draft.
- `PromptLookup`: no model. The row's last n tokens (n from `n_max` down to `n_min`) are looked
  up earlier in the row's own prompt and output, and what followed their latest occurrence is
  proposed (prompt lookup decoding; transformers' `prompt_lookup_num_tokens`). Input-grounded
  work — summaries, extraction, edits, code, agent loops — repeats its input and pays well.
- `SuffixLookup`: prompt lookup over the row itself and, bounded in memory, over the earlier
  outputs of the same server (`SuffixStore`), the longer match winning (after SuffixDecoding,
  Oliaro et al., arXiv 2411.04975, which also learns from earlier outputs).

Proposals from the lookups are certain (a point mass q = δ(x)), so the acceptors verify them
exactly as they verify drafts: greedy output stays the target's greedy decoding and sampled
output stays distributed as the target's (sampling.point_mass_step). They cost no model pass,
which is also why the length policy can check one a row did not offer against the token the
target then emitted.

The lookup tables are written here (a dict from n-grams to their latest end): a suffix
automaton or tree would find the same latest matches with more code and no gain at these
lengths.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .acceptors import Acceptor
from .policy import RowAcceptance
from .runner import Runner, chunk, timed_feed


@dataclass
class Proposal:
    """The tokens a step offers, per row (B rows, in the batch's row order)."""

    ids: torch.Tensor  # (B, g) int64: a row that proposes fewer repeats its last token
    lengths: list[int]  # how many of each row's g tokens are proposed (0..g)
    logits: torch.Tensor | None = None  # (B, g, V) a draft model's, when the acceptor reads q
    draft_start: int = 0  # a draft model: the cache column of its first proposed token

    @property
    def gamma(self) -> int:
        return int(self.ids.shape[1])


class Proposer(Protocol):
    """What a step asks of a proposer. `slots` are the batch's rows in their physical order."""

    name: str
    free: bool  # proposals cost no model pass and are point masses (lookups)

    @property
    def runner(self) -> Runner | None:
        """The draft model's Runner, arranged and reset with the target's; None for lookups."""
        ...

    def admit(self, slot: int, prompt: Sequence[int]) -> None: ...

    def leave(self, slot: int, output: Sequence[int] | None) -> None:
        """The row in `slot` left: `output` when it finished, None when it was cancelled."""
        ...

    def candidates(self, slots: Sequence[int], limit: int) -> list[list[int]] | None:
        """Free proposers: what each row would propose now (up to `limit` tokens, maybe none;
        none for a free slot of a fixed batch, which `slots` may include); None for a draft
        model, which proposes only when asked (at a cost)."""
        ...

    def propose(
        self, slots: Sequence[int], lengths: Sequence[int], acceptor: Acceptor
    ) -> Proposal: ...

    def settle(self, slots: Sequence[int], accepted: torch.Tensor, idle: torch.Tensor) -> None:
        """After the target verified: `accepted` (B,) proposals kept per row."""
        ...

    def commit(self, slot: int, new: list[int], accepted: int, offered: int) -> None:
        """The tokens the row in `slot` emitted this step."""
        ...

    def acceptance(self, slot: int) -> RowAcceptance | None:
        """What is known of how often this row's current proposals are kept, when the
        proposer knows better than the row's own record (a lookup: by match length)."""
        ...

    def learn(self, slot: int, accepted: int, offered: int) -> None:
        """This step's trials of the row's proposals (see `acceptance`)."""
        ...


def _pad_ids(rows: Sequence[Sequence[int]], gamma: int, pad: int) -> torch.Tensor:
    """(B, gamma): each row's tokens, then its last (or pad) repeated."""
    ids = torch.full((len(rows), gamma), pad, dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids[b, : len(row)] = torch.tensor(row[:gamma], dtype=torch.long)
            ids[b, len(row) :] = row[-1]
    return ids


# --- a draft model -------------------------------------------------------------------------------


class DraftModel:
    """A draft model as a proposer. Its cache holds every committed token of a row except its
    to-do list, fed at the start of the next proposal: the last emitted token, and the last
    draft when every draft was accepted (the draft never fed it). While the length policy
    proposes nothing, the to-do list grows and is caught up in one pass."""

    name = "draft"
    free = False

    def __init__(self, runner: Runner, slots: int, pad_token_id: int = 0):
        self._runner, self.pad = runner, pad_token_id
        self.todo: list[list[int]] = [[pad_token_id] for _ in range(slots)]
        self.pass_seconds: list[float] = []  # 1-token passes, for the metrics
        self.seconds = 0.0  # every feed of the last proposal, its catch-up included
        self.feed_width = 0  # the widest feed of the last proposal (a catch-up is wide)
        self._start = 0
        self._gamma = 0
        self._last: dict[int, int] = {}  # slot -> its last draft token of this step

    @property
    def runner(self) -> Runner:
        return self._runner

    def admit(self, slot: int, prompt: Sequence[int]) -> None:
        self.todo[slot] = list(prompt)

    def leave(self, slot: int, output: Sequence[int] | None) -> None:
        self.todo[slot] = [self.pad]

    def candidates(self, slots: Sequence[int], limit: int) -> list[list[int]] | None:
        return None

    def propose(self, slots: Sequence[int], lengths: Sequence[int], acceptor: Acceptor) -> Proposal:
        gamma = max(lengths, default=0)
        width = len(slots)
        ids = torch.zeros((width, gamma), dtype=torch.long)
        self._gamma, self.feed_width, self.seconds = gamma, 0, 0.0
        if gamma == 0:
            return Proposal(ids, list(lengths))
        began = time.perf_counter()
        keep_q = getattr(acceptor, "uses_draft_logits", True)  # custom acceptors: always
        tokens, mask = chunk([self.todo[b] for b in slots], self.pad)
        self.feed_width = tokens.shape[1]
        sinks = [self.pass_seconds] if tokens.shape[1] == 1 else []
        logits = timed_feed(self._runner, tokens, mask, 1, sinks)[:, -1]  # (B, V)
        self._start = self._runner.length  # the column where the first draft is written
        drawn: list[torch.Tensor] = []
        one = torch.ones((width, 1), dtype=torch.bool)
        for i in range(gamma):
            ids[:, i] = acceptor.draft_token(logits)  # (B,)
            if keep_q:
                drawn.append(logits)
            if i < gamma - 1:
                step = timed_feed(self._runner, ids[:, i : i + 1], one, 1, [self.pass_seconds])
                logits = step[:, -1]
        q = torch.stack(drawn, dim=1) if drawn else None
        self._last = {b: int(ids[p, -1]) for p, b in enumerate(slots)}
        self.seconds = time.perf_counter() - began
        return Proposal(ids, list(lengths), q, self._start)

    def settle(self, slots: Sequence[int], accepted: torch.Tensor, idle: torch.Tensor) -> None:
        if self._gamma > 0:
            after = self._start + accepted
        else:
            after = torch.full_like(accepted, self._runner.length)
        self._runner.invalidate_from(torch.where(idle, 0, after))

    def acceptance(self, slot: int) -> RowAcceptance | None:
        return None  # the row's own record

    def learn(self, slot: int, accepted: int, offered: int) -> None:
        """Nothing to learn here: a draft model's rows keep their own record."""

    def commit(self, slot: int, new: list[int], accepted: int, offered: int) -> None:
        if self._gamma > 0:
            last = [self._last[slot]] if accepted == self._gamma else []
            self.todo[slot] = [*last, new[-1]]
        else:
            self.todo[slot] = self.todo[slot] + [new[-1]]


# --- lookups -------------------------------------------------------------------------------------


class NgramIndex:
    """Where each n-gram (n_min..n_max tokens) of a growing token sequence last occurred: the
    position after its latest occurrence that is followed by at least one more token."""

    def __init__(self, n_min: int, n_max: int):
        self.n_min, self.n_max = n_min, n_max
        self.tokens: list[int] = []
        self.after: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # n-grams ending before this position are indexed

    def extend(self, tokens: Sequence[int]) -> None:
        self.tokens.extend(tokens)
        # index the n-grams that end before the last token: the suffix is what is looked up,
        # and a match must have a token after it
        while self._indexed < len(self.tokens) - 1:
            end = self._indexed + 1
            for n in range(self.n_min, min(self.n_max, end) + 1):
                self.after[tuple(self.tokens[end - n : end])] = end
            self._indexed = end

    def match(self, suffix: Sequence[int], limit: int) -> tuple[int, list[int]]:
        """(n, continuation) for the longest n-gram ending `suffix` found here, whose
        continuation (up to `limit` tokens) is proposed; (0, []) when none."""
        for n in range(min(self.n_max, len(suffix)), self.n_min - 1, -1):
            at = self.after.get(tuple(suffix[len(suffix) - n :]))
            if at is not None:
                return n, self.tokens[at : at + limit]
        return 0, []

    def lookup(self, limit: int) -> tuple[int, list[int]]:
        """The match for this sequence's own last tokens."""
        return self.match(self.tokens, limit)


class PromptLookup:
    """Prompt lookup over each row's own prompt and output (see the module). How often a
    proposal is kept depends most on how long a run of tokens it was matched on (a single
    repeated token says little; four say much), so acceptance is learned per match length,
    across rows, for the length policy."""

    name = "ngram"
    free = True
    runner = None

    def __init__(self, n_min: int = 1, n_max: int = 4):
        self.n_min, self.n_max = n_min, n_max
        self.rows: dict[int, NgramIndex] = {}
        self._proposed: dict[int, list[int]] = {}
        self._matched: dict[int, int] = {}  # slot -> match length of its current proposal
        self.by_length: dict[int, RowAcceptance] = {}

    def admit(self, slot: int, prompt: Sequence[int]) -> None:
        index = NgramIndex(self.n_min, self.n_max)
        index.extend(prompt)
        self.rows[slot] = index

    def leave(self, slot: int, output: Sequence[int] | None) -> None:
        self.rows.pop(slot, None)
        self._proposed.pop(slot, None)

    def _lookup(self, slot: int, limit: int) -> tuple[int, list[int]]:
        index = self.rows.get(slot)
        return index.lookup(limit) if index is not None else (0, [])

    def candidates(self, slots: Sequence[int], limit: int) -> list[list[int]]:
        found = [self._lookup(b, limit) for b in slots]
        self._matched = {b: n for b, (n, _tokens) in zip(slots, found, strict=True)}
        self._proposed = {b: tokens for b, (_n, tokens) in zip(slots, found, strict=True)}
        return [tokens for _n, tokens in found]

    def acceptance(self, slot: int) -> RowAcceptance | None:
        n = self._matched.get(slot, 0)
        return self.by_length.setdefault(n, RowAcceptance()) if n else None

    def learn(self, slot: int, accepted: int, offered: int) -> None:
        found = self.acceptance(slot)
        if found is not None:
            found.add(accepted, offered)

    def propose(self, slots: Sequence[int], lengths: Sequence[int], acceptor: Acceptor) -> Proposal:
        gamma = max(lengths, default=0)
        rows = [self._proposed.get(b, [])[:n] for b, n in zip(slots, lengths, strict=True)]
        pad = [self.rows[b].tokens[-1] if b in self.rows else 0 for b in slots]
        ids = _pad_ids(rows, gamma, 0)
        for i, (row, last) in enumerate(zip(rows, pad, strict=True)):
            if not row:
                ids[i, :] = last
        return Proposal(ids, list(lengths))

    def settle(self, slots: Sequence[int], accepted: torch.Tensor, idle: torch.Tensor) -> None:
        """Nothing to roll back: a lookup holds no cache, only the committed tokens."""

    def commit(self, slot: int, new: list[int], accepted: int, offered: int) -> None:
        index = self.rows.get(slot)
        if index is not None:
            index.extend(new)


class SuffixStore:
    """Earlier outputs of one server, as a token stream indexed by n-grams, at most
    `max_tokens` long: the oldest outputs are forgotten first. Outputs are separated so that
    no match runs from one into the next."""

    SEPARATOR = -1

    def __init__(self, n_min: int, n_max: int, max_tokens: int):
        self.n_min, self.n_max, self.max_tokens = n_min, n_max, max_tokens
        self.tokens: list[int] = []  # tokens[i] is stream position start + i
        self.start = 0
        self.after: dict[tuple[int, ...], int] = {}  # n-gram -> stream position after it
        self.outputs: collections.deque[tuple[int, int]] = collections.deque()  # (begin, end)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, output: Sequence[int]) -> None:
        if not output or self.max_tokens <= 0:
            return
        output = list(output)[-self.max_tokens :]
        begin = self.start + len(self.tokens)
        self.tokens.extend(output)
        self.tokens.append(self.SEPARATOR)
        for end in range(1, len(output)):  # n-grams with a token after them
            for n in range(self.n_min, min(self.n_max, end) + 1):
                self.after[tuple(output[end - n : end])] = begin + end
        self.outputs.append((begin, begin + len(output) + 1))
        while len(self.tokens) > self.max_tokens + 1 and len(self.outputs) > 1:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        begin, end = self.outputs.popleft()
        old = self.tokens[: end - self.start]
        for stop in range(1, len(old)):
            for n in range(self.n_min, min(self.n_max, stop) + 1):
                key = tuple(old[stop - n : stop])
                if self.after.get(key) == begin + stop:  # not overwritten by a later output
                    del self.after[key]
        del self.tokens[: end - self.start]
        self.start = end

    def match(self, suffix: Sequence[int], limit: int) -> tuple[int, list[int]]:
        for n in range(min(self.n_max, len(suffix)), self.n_min - 1, -1):
            at = self.after.get(tuple(suffix[len(suffix) - n :]))
            if at is not None and at >= self.start:
                out = self.tokens[at - self.start : at - self.start + limit]
                if self.SEPARATOR in out:
                    out = out[: out.index(self.SEPARATOR)]
                if out:
                    return n, out
        return 0, []


class SuffixLookup(PromptLookup):
    """Prompt lookup over the row itself and over earlier outputs (`store`), whichever match
    is longer (the row's own on a tie); finished rows add their output to the store."""

    name = "suffix"

    def __init__(self, store: SuffixStore, n_min: int = 1, n_max: int = 4):
        super().__init__(n_min, n_max)
        self.store = store

    def _lookup(self, slot: int, limit: int) -> tuple[int, list[int]]:
        index = self.rows.get(slot)
        if index is None:
            return 0, []
        own = index.lookup(limit)
        shared = self.store.match(index.tokens, limit)
        return shared if shared[0] > own[0] else own

    def leave(self, slot: int, output: Sequence[int] | None) -> None:
        if output is not None:
            self.store.add(output)
        super().leave(slot, output)
