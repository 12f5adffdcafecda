"""The engine over a transformers-neuronx model compiled for a batch of B > 1 rows (0.12+).

The models are built with `NeuronConfig(padding_side='right')`: every call passes 2-D
cache ids (one position per row and column), so rows sit at their own positions in one pass,
and `start_ids = arange(B)` (its default, zeros, would send every row's writes to sequence
slot 0). `SpeculativeGenerator.sample` gives every row row 0's accepted length at B > 1, so
batches are driven by neuron-spec's engine only. What the runner maps:

- The engine's virtual columns, rollback and one pass width for rows that bring different
  numbers of tokens: batch_rows.py.
- The engine's n <= B rows are padded to the compiled B with idle rows (a pad token at the
  first positions of their own slot, never read).
- The first feed context-encodes every row's prompt but its last `keep` tokens (padded on
  the right to the longest; the per-row last token is its largest cache id), then feeds the
  rest like any later step.
- w tokens run through the speculation graph when w fits its window and no row's window
  reaches n_positions, else as w one-token passes. No position at or past n_positions is
  ever written.
"""

from __future__ import annotations

from typing import Any

import torch

from ..batch_rows import PositionalRows


class NeuronxBatchRunner(PositionalRows):
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
        self.model, self.n_positions, self.window = model, n_positions, window
        super().__init__(compiled_batch, vocab_size, pad_token_id)

    # --- passes --------------------------------------------------------------------------

    def _start_ids(self) -> torch.Tensor:
        return torch.arange(self.compiled, dtype=torch.int32)

    def _check(self, last_position: int) -> None:
        if last_position >= self.n_positions:
            raise ValueError(
                f"position {last_position} is past n_positions={self.n_positions}; the request "
                "should have been refused before decoding"
            )

    def _prefill(
        self, live: list[list[int]], keep: int
    ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """A new batch: context-encode each row but its last `keep` tokens at once."""
        if any(self.hist):
            return live, self._empty()
        heads = [row[: max(len(row) - keep, 0)] for row in live]
        width = max(len(h) for h in heads)
        if width == 0:
            return live, self._empty()
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
        return [row[len(h) :] for row, h in zip(live, heads, strict=True)], self._empty()

    def _pass(self, live: list[list[int]]) -> list[torch.Tensor]:
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
        return self._commit(live, logits, starts, offsets)
