"""What the engine asks of a model: a Runner (one model and its KV cache, fed columns of tokens,
rolled back by marking columns dead), and the two helpers that feed one."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import torch


class Runner(Protocol):
    """One model and its cache. Optional: `arrange(index)` (the runner holds only the rows
    of occupied slots, see Batch) and `set_idle(flags)` (a runner of a fixed batch is told,
    before each step, which rows only fill a free slot)."""

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


def chunk(todo: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned (B, w) tokens and live mask from per-row token lists."""
    width = max(1, max(len(t) for t in todo))
    tokens = torch.full((len(todo), width), pad, dtype=torch.long)
    mask = torch.zeros((len(todo), width), dtype=torch.bool)
    for b, row in enumerate(todo):
        if row:
            tokens[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[b, width - len(row) :] = True
    return tokens, mask


def timed_feed(
    runner: Runner, tokens: torch.Tensor, mask: torch.Tensor, keep: int, sinks: list[list[float]]
) -> torch.Tensor:
    t0 = time.perf_counter()
    out = runner.feed(tokens, mask, keep)
    for sink in sinks:
        sink.append(time.perf_counter() - t0)
    return out
