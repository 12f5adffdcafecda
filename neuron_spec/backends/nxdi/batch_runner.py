"""An NxDI application compiled for a batch of B > 1 rows with continuous batching, seen as an
engine Runner: each row at its own positions, rows joining and leaving between steps.

What NxDI's graphs allow (0.8 at cd3abf3, unchanged at 0.9's c63afe0 and ef2731e), and how the
runner maps onto it (runner.py has batch 1):
- the plan compiles with `is_continuous_batching=True` and `ctx_batch_size=1`: context
  encoding then writes only the cache row of the one `seq_id` it is given, so a new row is
  prefilled into its slot while the others keep their KV. Without continuous batching a
  context encoding rewrites every row (and one of fewer rows than compiled is padded by
  copying its first row into the missing seq ids, whose caches then take its writes);
- every other call carries the full compiled batch with `seq_ids = arange(B)` in order, per-row
  `position_ids`, and a mask that is 1 exactly on each row's committed positions below its
  first new one (idle rows: none);
- any call holding position 0 in any row is routed to context encoding, so no row of a
  speculation or token-generation pass starts at 0: idle rows are parked at position 1, and a
  row re-feeds cached tokens only from position 1 up (positional.py);
- a speculative target has only the speculation graph, exactly k wide: a feed is laid out over
  whole multiples of k (re-fed history in front, or filler behind that later passes
  overwrite); the draft and a plain target go one token at a time;
- the first feed of a row is its context encoding (all but its last `keep` tokens, at least
  one), padded to the context bucket by neuron-spec with position 0 on the pads (NxDI pads
  with 1 and returns the logits of the first maximal position).
A pass that would write at or past the compiled length is refused before it runs.
"""

from __future__ import annotations

from typing import Any

import torch

from ..positional import PositionalRows
from .runner import nxdi_logits


class NxdiBatchRunner(PositionalRows):
    """One NxDI application compiled for `compiled_batch` rows (continuous batching)."""

    def __init__(
        self,
        model: Any,
        *,
        vocab_size: int,
        compiled_length: int,
        context_length: int,
        compiled_batch: int,
        pad_token_id: int,
        window: int | None = None,
    ):
        self.model, self.window = model, window
        self.compiled_length, self.context_length = compiled_length, context_length
        super().__init__(compiled_batch, vocab_size, pad_token_id)

    def _prefill(
        self, live: list[list[int]], keep: int
    ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Context-encode each new row into its own slot, all but its last `keep` tokens."""
        first = self._empty()
        for b, row in enumerate(live):
            if b in self.idle or self.hist[b] or not row:
                continue
            head = max(1, len(row) - keep)
            first[b] = self._context(b, row[:head])
            self.hist[b], live[b] = row[:head], row[head:]
        return live, first

    def _context(self, slot: int, prompt: list[int]) -> torch.Tensor:
        n = len(prompt)
        if n > self.context_length:
            raise ValueError(
                f"the prompt has {n} tokens; NxDI's context encoding was compiled for at most "
                f"{self.context_length} (generation.max_prompt_tokens)"
            )
        width = self.context_length
        ids = torch.full((1, width), self.pad, dtype=torch.long)
        ids[0, :n] = torch.tensor(prompt)
        mask = torch.zeros((1, width), dtype=torch.long)
        mask[0, :n] = 1
        positions = torch.zeros((1, width), dtype=torch.long)  # pads at 0, never the maximum
        positions[0, :n] = torch.arange(n)
        logits = self._forward(ids, mask, positions, torch.tensor([slot]))  # (1, 1, V)
        return logits[0]

    def _pass(self, live: list[list[int]]) -> list[torch.Tensor]:
        step = self.window or 1
        width = max(len(row) for row in live)
        total = -(-width // step) * step  # whole passes of the graph's width
        ids, starts, offsets = self._layout(live, total)
        chunks = [
            self._graph_pass(ids[:, j : j + step], [s + j for s in starts])
            for j in range(0, total, step)
        ]
        return self._commit(live, torch.cat(chunks, dim=1), starts, offsets)

    def _graph_pass(self, ids: torch.Tensor, starts: list[int]) -> torch.Tensor:
        """One call over the full compiled batch: ids (B, w) at each row's own positions."""
        width = ids.shape[1]
        active = [b < self.rows and b not in self.idle for b in range(self.compiled)]
        for b, start in enumerate(starts):
            if active[b] and start + width > self.compiled_length:
                raise ValueError(
                    f"a pass at positions {start}..{start + width - 1} would reach the compiled "
                    f"length {self.compiled_length}; the request should have been refused "
                    "before decoding"
                )
        mask = torch.zeros((self.compiled, max(starts)), dtype=torch.long)
        for b, start in enumerate(starts):
            if active[b]:
                mask[b, :start] = 1  # committed positions only
        positions = torch.tensor(starts).unsqueeze(1) + torch.arange(width)
        return self._forward(ids, mask, positions, torch.arange(self.compiled))

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, seq_ids: torch.Tensor
    ) -> torch.Tensor:
        return nxdi_logits(self.model, ids, mask, positions, seq_ids, self.vocab_size)
