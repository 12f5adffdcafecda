"""The engine over a transformers-neuronx model compiled for a batch of B > 1 rows (0.12+).

The models are built with `NeuronConfig(padding_side='right',
continuous_batching=ContinuousBatchingConfig(max_num_seqs=B))`: every call passes 2-D cache
ids (one position per row and column), so rows sit at their own positions in one pass, and
`start_ids = arange(B)` in order (the default, zeros, would send every row's writes to
sequence slot 0; 0.12 returns a full batch's logits in slot order whatever the ids say).
`SpeculativeGenerator.sample` gives every row row 0's accepted length at B > 1, so batches are
driven by neuron-spec's engine only. What the runner maps:

- The engine's virtual columns, rollback and one pass width for rows that bring different
  numbers of tokens: positional.py. Every call carries the full compiled batch (under
  continuous batching a one-token call of fewer rows is padded with token 0 at position 0 of
  each slot left out, overwriting it); free slots are parked at position 1.
- A new row, at the start of a batch or joining a running one, has its prompt but its last
  `keep` tokens context-encoded alone into its own slot (the prompt graph is batch 1 under
  continuous batching), while the other rows keep their KV; the rest is fed like any step.
  The library asserts such a call no wider than its largest context bucket
  (`_prepare_for_continuous_batching`: "invalid input prompt length"), so a longer prompt
  has only that much encoded, the rest fed with the steps.
- w tokens run through the speculation graph when w fits its window, the window fits the
  largest context bucket (asserted the same way), no row's window reaches n_positions and
  row 0 does not start at position 0 (the library would take the call for a prompt), else as
  w one-token passes. No position at or past n_positions is ever written.
- Cache ids are built in the dtype of the input ids (int64): a one-token call under
  continuous batching scatters the caller's cache ids into zeros of input_ids' dtype, and
  `scatter_` refuses another dtype (RuntimeError).
"""

from __future__ import annotations

from typing import Any

import torch

from ..positional import PositionalRows


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
        # LlamaForSampling.context_buckets (llama/model.py, bucket.context_sizes): half of
        # each n_positions bucket, or context_length_estimate; none when that is 0
        self.context_limit = max(model.context_buckets, default=0)
        super().__init__(compiled_batch, vocab_size, pad_token_id)

    # --- passes --------------------------------------------------------------------------

    def _start_ids(self) -> torch.Tensor:
        return torch.arange(self.compiled, dtype=torch.int32)

    @staticmethod
    def _cache_ids(starts: list[int], width: int) -> torch.Tensor:
        """(rows, width) positions from each row's start, int64 like the input ids: under
        continuous batching a one-token call scatters them into zeros of input_ids' dtype
        (base.py `_prepare_for_continuous_batching`, 0.12 6c0b875 and 0.13 1ade6d7), which
        raises for int32 cache ids beside int64 ids."""
        return torch.tensor(starts, dtype=torch.long).unsqueeze(1) + torch.arange(width)

    def _check(self, last_position: int) -> None:
        if last_position >= self.n_positions:
            raise ValueError(
                f"position {last_position} is past n_positions={self.n_positions}; the request "
                "should have been refused before decoding"
            )

    def _prefill(
        self, live: list[list[int]], keep: int
    ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Context-encode each new row into its own slot (continuous batching: the prompt
        graph is batch 1 and writes only the slot start_ids names), all but its last `keep`
        tokens, and no more than the largest context bucket. A head of one token is left to
        the passes: one token with start_ids would be token generation padded to the full
        batch, writing token 0 at position 0 of every other slot."""
        for b, row in enumerate(live):
            head = min(len(row) - keep, self.context_limit)
            if b in self.idle or self.hist[b] or head < 2:
                continue
            self._check(head - 1)
            ids = torch.tensor([row[:head]], dtype=torch.long)
            self.model(ids, self._cache_ids([0], head), torch.tensor([b], dtype=torch.int32))
            self.hist[b], live[b] = row[:head], row[head:]
        return live, self._empty()

    def _pass(self, live: list[list[int]]) -> list[torch.Tensor]:
        width = max(len(row) for row in live)
        ids, starts, offsets = self._layout(live, width)
        window = self.window
        use_window = (
            window is not None
            and 1 < width <= window <= self.context_limit
            and all(s + window <= self.n_positions for s in starts[: self.rows])
            and starts[0] > 0  # else the library takes the call for a prompt
        )
        if use_window:
            assert window is not None
            filler = ids[:, -1:].expand(self.compiled, window - width)
            ids = torch.cat([ids, filler], dim=1)
            width = window
        cache_ids = self._cache_ids(starts, width)
        self._check(int(cache_ids[: self.rows].max()))
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
