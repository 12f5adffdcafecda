"""The engine over a transformers-neuronx model compiled for a batch of B > 1 rows (0.12+).

The models are built with `NeuronConfig(padding_side='right')`: every call passes 2-D
cache ids (one position per row and column), so rows sit at their own positions in one pass,
and `start_ids = arange(B)` (its default, zeros, would send every row's writes to sequence
slot 0). `SpeculativeGenerator.sample` gives every row row 0's accepted length at B > 1, so
batches are driven by neuron-spec's engine only. What the runner maps:

- The engine's columns are virtual, as on the reference backend: a feed appends w columns to
  every row, of which a row's last m are live; each row keeps which column each of its
  positions came from, so rolling back to a column is moving that row's position back (the
  cache is positional: later writes overwrite the stale slots before anything reads them).
- The engine's n <= B rows are padded to the compiled B with idle rows (a pad token at the
  first positions of their own slot, never read).
- Rows feed different numbers of tokens in one step (a prompt, a draft catching up), but a
  pass has one width: a row with fewer tokens re-feeds its last cached tokens in front (the
  same token at the same position after the same prefix gives the same KV), or, when it has
  too few, is followed by filler that later passes overwrite.
- The first feed context-encodes every row's prompt but its last `keep` tokens (padded on
  the right to the longest; the per-row last token is its largest cache id), then feeds the
  rest like any later step.
- w tokens run through the speculation graph when w fits its window and no row's window
  reaches n_positions, else as w one-token passes. No position at or past n_positions is
  ever written.
"""

from __future__ import annotations

import bisect
from typing import Any

import torch


class NeuronxBatchRunner:
    """One LlamaForSampling compiled for `compiled_batch` rows, seen as an engine Runner."""

    def __init__(
        self,
        model: Any,
        n_positions: int,
        vocab_size: int,
        compiled_batch: int,
        window: int | None = None,
        pad_token_id: int = 0,
    ):
        self.model, self.n_positions, self.vocab_size = model, n_positions, vocab_size
        self.compiled, self.window, self.pad = compiled_batch, window, pad_token_id
        self.reset(1)

    def reset(self, batch: int) -> None:
        if not 1 <= batch <= self.compiled:
            raise ValueError(f"{batch} rows for a model compiled for batch {self.compiled}")
        self.rows = batch
        self.cols: list[list[int]] = [[] for _ in range(batch)]  # column of each position
        self.hist: list[list[int]] = [[] for _ in range(batch)]  # token at each position
        self._length = 0

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
        if all(not h for h in self.hist):  # a new batch: encode the prompts' heads at once
            live = self._context(live, keep)
        logits = self._pass(live)  # per row: (its tokens, V)
        out = torch.zeros((self.rows, keep, self.vocab_size))
        for b, row_logits in enumerate(logits):
            take = row_logits[-keep:]
            out[b, keep - take.shape[0] :] = take
        return out

    # --- passes --------------------------------------------------------------------------

    def _start_ids(self) -> torch.Tensor:
        return torch.arange(self.compiled, dtype=torch.int32)

    def _check(self, last_position: int) -> None:
        if last_position >= self.n_positions:
            raise ValueError(
                f"position {last_position} is past n_positions={self.n_positions}; the request "
                "should have been refused before decoding"
            )

    def _context(self, live: list[list[int]], keep: int) -> list[list[int]]:
        """Context-encode each row but its last `keep` tokens; return what is left to feed."""
        heads = [row[: max(len(row) - keep, 0)] for row in live]
        width = max(len(h) for h in heads)
        if width == 0:
            return live
        self._check(width - 1)
        ids = torch.full((self.compiled, width), self.pad, dtype=torch.long)
        for b, head in enumerate(heads):
            filler = head[-1:] or [self.pad]
            ids[b] = torch.tensor(head + filler * (width - len(head)))
        cache_ids = torch.arange(width, dtype=torch.int32).repeat(self.compiled, 1)
        for b, head in enumerate(heads):  # each row's last token: its largest cache id
            if head:
                cache_ids[b, len(head) :] = len(head) - 1
        self.model(ids, cache_ids, self._start_ids())
        for b, head in enumerate(heads):
            self.hist[b] = list(head)
        return [row[len(h) :] for row, h in zip(live, heads, strict=True)]

    def _layout(
        self, live: list[list[int]], width: int
    ) -> tuple[torch.Tensor, list[int], list[int]]:
        """Each row's `width` tokens for one pass, its first position, and where its own
        tokens start among the columns (re-fed history in front, or filler behind)."""
        ids = torch.full((self.compiled, width), self.pad, dtype=torch.long)
        starts, offsets = [0] * self.compiled, [0] * self.compiled
        for b, row in enumerate(live):
            pos, gap = len(self.hist[b]), width - len(row)
            if gap <= pos:  # re-feed the last `gap` cached tokens in front
                tokens = self.hist[b][pos - gap :] + row
                starts[b], offsets[b] = pos - gap, gap
            else:  # too little history: filler behind, overwritten later
                tokens = row + (row[-1:] or [self.pad]) * gap
                starts[b] = pos
            ids[b] = torch.tensor(tokens)
        return ids, starts, offsets

    def _pass(self, live: list[list[int]]) -> list[torch.Tensor]:
        """Feed each row its tokens at its positions; the logits of each (per row)."""
        width = max(len(row) for row in live)
        ids, starts, offsets = self._layout(live, width)
        window = self.window
        use_window = (
            window is not None
            and 1 < width <= window
            and all(s + window <= self.n_positions for s in starts[: self.rows])
        )
        if use_window:
            assert window is not None
            filler = ids[:, -1:].expand(self.compiled, window - width)
            ids = torch.cat([ids, filler], dim=1)
            width = window
        cache_ids = torch.tensor(starts, dtype=torch.int32).unsqueeze(1) + torch.arange(width)
        self._check(int(cache_ids[: self.rows].max()))
        cache_ids = cache_ids.to(torch.int32)
        if use_window:
            out = self.model.speculative_forward(ids, cache_ids, self._start_ids(), window)
            logits = out.float().permute(2, 0, 1)  # (k, V, B) -> (B, k, V)
        else:
            columns = [
                self.model(ids[:, j : j + 1], cache_ids[:, j : j + 1], self._start_ids())
                for j in range(width)
            ]
            logits = torch.stack([c.float() for c in columns], dim=1)  # (B, w, V)
        result = []
        for b, row in enumerate(live):
            first = offsets[b]
            result.append(logits[b, first : first + len(row)])
            self.hist[b] = self.hist[b][: starts[b] + first] + row
        return result
