"""The `engine` loop on transformers-neuronx: neuron-spec's own speculative engine (engine.py)
drives the compiled pair directly, through a Runner over each LlamaForSampling.

transformers-neuronx's KV caches are positional: a forward pass writes the slots of its
`cache_ids`, and attention reads the slots up to each query's position. Rolling back rejected
drafts therefore needs no work: the write position moves back, and the next pass overwrites
the stale slots before any query can read them. What the Runner maps:
- the first feed (an empty cache) is context encoding (`model(ids, None)`), which returns the
  logits of its last position only, so the tokens whose logits are wanted after it are fed
  separately;
- a multi-token feed on the target runs the compiled speculation graph
  (`speculative_forward`, exactly `window` tokens wide: shorter feeds are padded, and the
  padding's slots are overwritten later like any rejected draft);
- everything else, and anything whose padded window would reach n_positions, runs one token
  at a time through the token-generation graph.
No position at or past n_positions is ever written.
"""

from __future__ import annotations

from typing import Any

import torch

from ..positional import PositionalRunner


class NeuronxRunner(PositionalRunner):
    """One LlamaForSampling seen as an engine Runner (batch 1)."""

    library = "transformers-neuronx"

    def __init__(self, model: Any, n_positions: int, vocab_size: int, window: int | None = None):
        super().__init__(vocab_size)
        self.model = model
        self.n_positions = n_positions
        self.window = window  # the compiled speculation width, on the target only

    def _context(self, prompt: torch.Tensor) -> torch.Tensor:
        self._check(prompt.shape[1] - 1)
        out: torch.Tensor = self.model(prompt, None, None)  # (1, V)
        return out.float().unsqueeze(1)

    def _width(self, remaining: int) -> int:
        """A speculation window when one fits, else one token."""
        if self.window is None or remaining == 1 or self.pos + self.window > self.n_positions:
            return 1
        return min(remaining, self.window)

    def _pass(self, chunk: torch.Tensor) -> torch.Tensor:
        return self._speculative(chunk) if chunk.shape[1] > 1 else self._one(chunk)

    def _check(self, position: int) -> None:
        if position >= self.n_positions:
            raise ValueError(
                f"position {position} is past n_positions={self.n_positions}; the request "
                "should have been refused before decoding"
            )

    def _one(self, token: torch.Tensor) -> torch.Tensor:
        self._check(self.pos)
        cache_ids = torch.tensor([self.pos], dtype=torch.int32)
        out: torch.Tensor = self.model(token, cache_ids, None)  # (1, V)
        return out.float().unsqueeze(1)

    def _speculative(self, chunk: torch.Tensor) -> torch.Tensor:
        assert self.window is not None
        n = chunk.shape[1]
        pad = chunk[:, -1:].expand(1, self.window - n)  # filler, overwritten later
        window = torch.cat([chunk, pad], dim=1)
        cache_ids = torch.arange(self.pos, self.pos + self.window, dtype=torch.int32)
        out: torch.Tensor = self.model.speculative_forward(window, cache_ids, None, self.window)
        return out[:n, :, 0].float().unsqueeze(0)  # (k, V, 1) -> (1, n, V)
