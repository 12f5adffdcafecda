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


class NeuronxRunner:
    """One LlamaForSampling seen as an engine Runner (batch 1)."""

    def __init__(self, model: Any, n_positions: int, vocab_size: int, window: int | None = None):
        self.model = model
        self.n_positions = n_positions
        self.vocab_size = vocab_size
        self.window = window  # the compiled speculation width, on the target only
        self.pos = 0

    def reset(self, batch: int) -> None:
        if batch != 1:
            raise ValueError("the transformers-neuronx engine loop decodes one sequence at a time")
        self.pos = 0

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
            raise ValueError("the transformers-neuronx engine loop has no padded columns")
        width = tokens.shape[1]
        chunks: list[torch.Tensor] = []  # (1, n, V) each, for the columns computed
        i = 0
        if self.pos == 0:
            i = max(1, width - keep)
            self._check(i - 1)
            chunks.append(self.model(tokens[:, :i], None, None).float().unsqueeze(1))
            self.pos = i
        while i < width:
            n = self._window_chunk(width - i)
            chunk = tokens[:, i : i + n]
            chunks.append(self._speculative(chunk) if n > 1 else self._one(chunk))
            i += n
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
        return out[:, -keep:]

    def _window_chunk(self, remaining: int) -> int:
        """How many tokens the next pass takes: a speculation window when one fits."""
        if self.window is None or remaining == 1 or self.pos + self.window > self.n_positions:
            return 1
        return min(remaining, self.window)

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
        self.pos += 1
        return out.float().unsqueeze(1)

    def _speculative(self, chunk: torch.Tensor) -> torch.Tensor:
        assert self.window is not None
        n = chunk.shape[1]
        pad = chunk[:, -1:].expand(1, self.window - n)  # filler, overwritten later
        window = torch.cat([chunk, pad], dim=1)
        cache_ids = torch.arange(self.pos, self.pos + self.window, dtype=torch.int32)
        out: torch.Tensor = self.model.speculative_forward(window, cache_ids, None, self.window)
        self.pos += n
        return out[:n, :, 0].float().unsqueeze(0)  # (k, V, 1) -> (1, n, V)
