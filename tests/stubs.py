"""Stub models for the engine: logits are a function of the previous live token.

A StubRunner keeps, per row, the (column, token) pairs that are live, so rollback and holes
behave as in a real KV cache; it is cheap enough to run thousands of rows at once.
"""

from __future__ import annotations

import torch


class StubRunner:
    def __init__(self, table: torch.Tensor):
        """table (V, V): logits of the next token given the previous token."""
        self.table = table.float()
        self.vocab_size = table.shape[0]
        self.feeds = 0
        self.reset(0)

    def reset(self, batch: int) -> None:
        self.last = torch.zeros(batch, dtype=torch.long)  # previous live token per row
        self.live: list[list[tuple[int, int]]] = [[] for _ in range(batch)]
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    def feed(self, tokens: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        self.feeds += 1
        batch, width = tokens.shape
        out = torch.empty(batch, width, self.vocab_size)
        for j in range(width):
            col = self._length + j
            live = mask[:, j]
            for b in torch.nonzero(live).flatten().tolist():
                self.live[b].append((col, int(tokens[b, j])))
            self.last = torch.where(live, tokens[:, j], self.last)
            out[:, j] = self.table[self.last]
        self._length += width
        return out[:, -keep:]

    def invalidate_from(self, start: torch.Tensor) -> None:
        for b in range(len(self.live)):
            self.live[b] = [(c, t) for c, t in self.live[b] if c < int(start[b])]
            if self.live[b]:
                self.last[b] = self.live[b][-1][1]
        self._length = min(self._length, int(start.max()))


def next_token_table(fn, vocab: int, sharp: float = 20.0) -> torch.Tensor:
    """Logits making fn(prev) the argmax for every prev token."""
    table = torch.zeros(vocab, vocab)
    for prev in range(vocab):
        table[prev, fn(prev)] = sharp
    return table
