"""An NxDI application as an engine Runner (engine.py): neuron-spec's own loop drives the
compiled graphs through `forward()`, never through NxDI's generation adapter.

NxDI's KV cache is positional per seq id: context encoding fills positions [0, bucket), every
other graph writes its tokens at their `position_ids`, and attention reads cached positions
only where `attention_mask` is 1. So rolling back rejected drafts is moving the write position
back: the next pass overwrites them, and the mask (1 exactly on committed positions below the
first active one) never lets a stale slot be read. What the runner maps:
- the first feed of a request is context encoding. neuron-spec pads it to the context bucket
  itself, with position 0 on the pads: NxDI pads positions with 1 and returns the logits of
  the first maximal position id, which for a one-token prompt would be a pad slot;
- on a speculative target every later pass is the speculation graph, exactly k wide (there is
  no token-generation graph): a shorter feed is padded with filler whose slots the next pass
  overwrites; the compiled length leaves the k - 1 positions of headroom this needs;
- on the draft (and a plain target) every later token goes through token generation, one at
  a time.
A pass that would write at or past the compiled length is refused before it runs.
"""

from __future__ import annotations

from typing import Any

import torch

from ..positional import PositionalRunner


class NxdiRunner(PositionalRunner):
    """One NxDI application (batch 1, seq id 0) seen as an engine Runner."""

    library = "NxDI"

    def __init__(
        self,
        model: Any,
        *,
        vocab_size: int,
        compiled_length: int,
        context_length: int,
        pad_token_id: int,
        window: int | None = None,
    ):
        super().__init__(vocab_size)
        self.model = model
        self.compiled_length = compiled_length
        self.context_length = context_length
        self.pad_token_id = pad_token_id
        self.window = window  # the speculation graph's width k, on a speculative target only

    def _context_capacity(self) -> int:
        return self.context_length

    def _width(self, remaining: int) -> int:
        return min(remaining, self.window) if self.window else 1

    def _context(self, prompt: torch.Tensor) -> torch.Tensor:
        n = prompt.shape[1]
        if n > self.context_length:
            raise ValueError(
                f"the prompt has {n} tokens; NxDI's context encoding was compiled for at most "
                f"{self.context_length} (generation.max_prompt_tokens)"
            )
        width = self.context_length
        ids = torch.full((1, width), self.pad_token_id, dtype=torch.long)
        ids[:, :n] = prompt
        mask = torch.zeros((1, width), dtype=torch.long)
        mask[:, :n] = 1
        positions = torch.zeros((1, width), dtype=torch.long)  # pads at 0, never the maximum
        positions[:, :n] = torch.arange(n)
        return self._forward(ids, mask, positions)  # (1, 1, V): the last prompt position

    def _pass(self, chunk: torch.Tensor) -> torch.Tensor:
        n = chunk.shape[1]
        width = self.window or 1
        end = self.pos + width
        if end > self.compiled_length:
            raise ValueError(
                f"a pass at positions {self.pos}..{end - 1} would reach the compiled length "
                f"{self.compiled_length}; the request should have been refused before decoding"
            )
        filler = chunk[:, -1:].expand(1, width - n)  # overwritten by the next pass
        ids = torch.cat([chunk, filler], dim=1)
        mask = torch.ones((1, self.pos), dtype=torch.long)  # committed positions only
        positions = torch.arange(self.pos, end).reshape(1, -1)
        logits = self._forward(ids, mask, positions)  # (1, width, V)
        return logits[:, :n]

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        seq_ids = torch.zeros(1, dtype=torch.long)
        return nxdi_logits(self.model, ids, mask, positions, seq_ids, self.vocab_size)


def nxdi_logits(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    seq_ids: torch.Tensor,
    vocab_size: int,
) -> torch.Tensor:
    """One `forward()` call; its float32 logits over the vocabulary."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, seq_ids=seq_ids)
    logits = out.logits
    if logits is None:
        raise ValueError("NxDI returned no logits: on-device sampling must be off")
    out_logits: torch.Tensor = logits.float()[..., :vocab_size]
    return out_logits
