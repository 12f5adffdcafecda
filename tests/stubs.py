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


class ChainLookup:
    """A free proposer (as prompt lookup is: no model, a point mass) whose proposals follow
    `follow(token)` from the row's last token. A free slot of a fixed batch (no row) proposes
    nothing."""

    name = "chain"
    free = True
    runner = None

    def __init__(self) -> None:
        self.last: dict[int, int] = {}
        self._c: dict[int, list[int]] = {}

    def follow(self, token: int) -> int:
        raise NotImplementedError  # each stub says what comes after a token

    def admit(self, slot, prompt):
        self.last[slot] = prompt[-1]

    def leave(self, slot, output):
        self.last.pop(slot, None)

    def candidates(self, slots, limit):
        self._c = {}
        for b in slots:
            x, row = self.last.get(b), []
            for _ in range(limit if x is not None else 0):
                x = self.follow(x)
                row.append(x)
            self._c[b] = row
        return [self._c[b] for b in slots]

    def propose(self, slots, lengths, acceptor):
        from neuron_spec.engine.proposers import Proposal

        g = max(lengths)
        rows = [(self._c[b][:g] + [0] * g)[:g] for b in slots]
        return Proposal(torch.tensor(rows, dtype=torch.long), list(lengths))

    def settle(self, slots, accepted, idle):
        """Nothing to roll back."""

    def acceptance(self, slot):
        return None

    def learn(self, slot, accepted, offered):
        """Nothing to learn."""

    def commit(self, slot, new, accepted, offered):
        self.last[slot] = new[-1]
