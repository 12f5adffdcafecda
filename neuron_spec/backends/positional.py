"""The engine's Runners over a positional KV cache, which both Neuron libraries have: a compiled
graph writes each token's K/V at the position it is given, and attention reads the positions
below. Rolling back rejected drafts is moving the write position back: the next pass
overwrites the stale slots before any query reads them.

`PositionalRunner`: one sequence (a model compiled for batch 1). Its first feed is the prompt's
context encoding (all but the tokens whose logits are wanted after it); later feeds go through
the library's passes, as wide as a subclass allows (a speculation window, or one token).

`PositionalRows`: a fixed batch of rows, each at its own positions.

The engine (engine.Batch) feeds w columns to every row at once, of which a row's last m are
live. A compiled graph instead writes each row's tokens at that row's own positions, so each
row keeps which engine column each of its positions came from and which token it holds there.
Rolling back to a column is moving that row's position back: the cache is positional, and a
later pass overwrites the stale slots before anything reads them.

A pass has one width for every row, yet rows bring different numbers of tokens (a prompt, a
draft catching up). A row with fewer re-feeds its last cached tokens in front (the same token at
the same position after the same prefix gives the same KV), or, when it has too little history,
is followed by filler that later passes overwrite. A pass never starts a re-feed at position 0
(NxDI routes any call holding position 0 to context encoding; transformers-neuronx under
continuous batching takes a call whose row 0 starts at 0 for a prompt), and rows that only fill
a free slot are parked at position 1.

Subclasses implement `_prefill` (what a new row needs before its first pass) and `_pass`.
"""

from __future__ import annotations

import bisect

import torch


class PositionalRunner:
    """One sequence over a positional cache; subclasses run the library's calls."""

    library = "the Neuron"

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.pos = 0

    def reset(self, batch: int) -> None:
        if batch != 1:
            raise ValueError(f"the {self.library} engine loop decodes one sequence at a time")
        self.pos = 0  # a new request is a new context encoding: nothing else to clear

    @property
    def length(self) -> int:
        return self.pos

    def invalidate_from(self, start: torch.Tensor) -> None:
        # Positional cache: moving the write position back is the rollback; later writes
        # overwrite. Never forward: a slot that was not written stays unwritten.
        self.pos = min(self.pos, int(start.reshape(-1)[0]))

    def feed(self, tokens: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        """tokens (1, w) -> logits of the last `keep` columns (1, keep, V)."""
        if not bool(mask.all()):
            raise ValueError(f"the {self.library} engine loop has no padded columns")
        width = tokens.shape[1]
        chunks: list[torch.Tensor] = []  # (1, n, V) each, for the columns computed
        i = 0
        if self.pos == 0:  # a draft that caught up late brings more than its prompt: the
            # context encoding takes what it was compiled for, later passes the rest
            i = min(max(1, width - keep), self._context_capacity())
            chunks.append(self._context(tokens[:, :i]))  # (1, 1, V): the last prompt position
            self.pos = i
        while i < width:
            n = self._width(width - i)
            chunks.append(self._pass(tokens[:, i : i + n]))
            self.pos += n
            i += n
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
        return out[:, -keep:]

    def _context(self, prompt: torch.Tensor) -> torch.Tensor:
        """Encode the prompt (1, n) at positions 0..n-1; the logits of its last (1, 1, V)."""
        raise NotImplementedError

    def _context_capacity(self) -> int:
        """The most tokens one context encoding takes."""
        return 1 << 62

    def _width(self, remaining: int) -> int:
        """How many of the remaining tokens the next pass takes."""
        raise NotImplementedError

    def _pass(self, chunk: torch.Tensor) -> torch.Tensor:
        """Feed chunk (1, n) at positions pos..pos+n-1; its logits (1, n, V)."""
        raise NotImplementedError


class PositionalRows:
    """The column bookkeeping of a batch runner; subclasses run the passes."""

    def __init__(self, compiled_batch: int, vocab_size: int, pad_token_id: int):
        self.compiled, self.vocab_size, self.pad = compiled_batch, vocab_size, pad_token_id
        self.idle: set[int] = set()  # set by engine.Batch before each step
        self.reset(1)

    def reset(self, batch: int) -> None:
        if not 1 <= batch <= self.compiled:
            raise ValueError(f"{batch} rows for a model compiled for batch {self.compiled}")
        self.rows = batch
        self.cols: list[list[int]] = [[] for _ in range(batch)]  # column of each position
        self.hist: list[list[int]] = [[] for _ in range(batch)]  # token at each position
        self.idle = set()
        self._length = 0

    def set_idle(self, idle: list[bool]) -> None:
        """Rows that only fill a slot of the compiled batch this step (engine.Batch says so):
        their tokens are never read, so they need no prefill."""
        self.idle = {b for b, i in enumerate(idle) if i}

    @property
    def length(self) -> int:
        return self._length

    def invalidate_from(self, start: torch.Tensor) -> None:
        for b in range(self.rows):
            keep = bisect.bisect_left(self.cols[b], int(start[b]))
            del self.cols[b][keep:], self.hist[b][keep:]
        self._length = min(self._length, int(start.max()))

    def feed(self, tokens: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        """tokens (n, w) with live mask -> logits of each row's last `keep` columns."""
        width = tokens.shape[1]
        live = [tokens[b][mask[b]].tolist() for b in range(self.rows)]
        for b, row in enumerate(live):
            self.cols[b] += range(self._length + width - len(row), self._length + width)
        self._length += width
        live, first = self._prefill(live, keep)
        busy = any(row for b, row in enumerate(live) if b not in self.idle)
        logits = self._pass(live) if busy else self._empty()
        out = torch.zeros((self.rows, keep, self.vocab_size))
        for b, row_logits in enumerate(logits):
            take = torch.cat([first[b], row_logits])[-keep:]
            out[b, keep - take.shape[0] :] = take
        for b in self.idle:
            if b < self.rows:
                self.cols[b], self.hist[b] = [], []
        return out

    def _prefill(
        self, live: list[list[int]], keep: int
    ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Encode what new rows need before a pass; return what is left to feed per row and
        the logits already computed for each row's first tokens (empty when none)."""
        raise NotImplementedError

    def _pass(self, live: list[list[int]]) -> list[torch.Tensor]:
        """Feed each row its tokens at its positions; the logits of each (per row)."""
        raise NotImplementedError

    def _empty(self) -> list[torch.Tensor]:
        return [torch.zeros((0, self.vocab_size)) for _ in range(self.rows)]

    def _layout(
        self, live: list[list[int]], width: int
    ) -> tuple[torch.Tensor, list[int], list[int]]:
        """Each row's `width` tokens for one pass (idle rows of the compiled batch included),
        its first position, and where its own tokens start among the columns (re-fed history
        in front, or filler behind)."""
        ids = torch.full((self.compiled, width), self.pad, dtype=torch.long)
        starts = [1] * self.compiled  # free slots are parked at position 1
        offsets = [0] * self.compiled
        for b, row in enumerate(live):
            if b in self.idle:
                continue
            pos, gap = len(self.hist[b]), width - len(row)
            if pos - gap >= 1:  # re-feed the last `gap` cached tokens in front, from 1 up
                tokens = self.hist[b][pos - gap :] + row
                starts[b], offsets[b] = pos - gap, gap
            else:  # too little history: filler behind, overwritten later
                tokens = row + (row[-1:] or self.hist[b][-1:] or [self.pad]) * gap
                starts[b] = pos
            ids[b] = torch.tensor(tokens)
        return ids, starts, offsets

    def _commit(
        self, live: list[list[int]], logits: torch.Tensor, starts: list[int], offsets: list[int]
    ) -> list[torch.Tensor]:
        """Each row's own logits out of a pass's (B, w, V), its history updated."""
        result = []
        for b, row in enumerate(live):
            first = offsets[b]
            result.append(logits[b, first : first + len(row)])
            if b not in self.idle:
                self.hist[b] = self.hist[b][: starts[b] + first] + row
        return result
