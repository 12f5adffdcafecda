"""The `library` loop on transformers-neuronx: SpeculativeGenerator.sample, with every defect
that can be fixed from outside fixed (docs/neuron.md, the quirks table).

The library's loop is driven through its streamer, which sees every token it commits:
- v2 streams the prompt first (skipped here) and then zero-padded (1, k) blocks; the library
  commits `count_nonzero` of the acceptor's row, which the acceptor records, so exactly what
  the library commits is passed on;
- generation stops (by raising out of `put`) at any EOS id of a list, at max_new_tokens, and
  before a speculation step could write at or past n_positions: the library itself writes up
  to k - 2 positions past its sequence_length (v2) and finishes v1 runs with a greedy tail
  that is never streamed, so neither is ever reached;
- what is left is finished with `target.sample`, streamed, with the configured sampling
  (`top_k=None` when top-k is off, floats for temperature and top_p).
What cannot be fixed from outside: the first new token is the target's argmax whatever the
acceptor, and on v2 an emitted token id 0 is dropped and corrupts the KV cache. The preflight
explains both (finding `library-loop-defects`) and names the fix: `speculation.loop: engine`.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...engine.acceptors import SampledDraftProvider
from ...engine.loop import GenerationCancelled, StepRecord


class _Stop(Exception):
    """Raised out of the streamer to end the library's loop where neuron-spec wants."""


@dataclass
class _Put:
    at: float
    emitted: int
    step: int | None  # acceptor calls so far (speculation), None for plain decoding


@dataclass
class Recorder:
    """The streamer handed to the library: commits, bounds and times what it is given."""

    max_new: int
    eos: set[int]
    acceptor: Any
    on_tokens: Callable[[int, list[int]], Any] | None = None
    cancelled: Callable[[], bool] | None = None
    limit: int = 0  # stop once this many tokens are committed
    mode: str = "single"  # "v2-speculation": prompt, first token, then (1, k) blocks
    tokens: list[int] = field(default_factory=list)
    puts: list[_Put] = field(default_factory=list)
    by_eos: bool = False
    stopped: bool = False  # a stop string, via on_tokens
    _seen: int = 0

    def put(self, value: Any) -> None:
        if self.cancelled is not None and self.cancelled():
            raise GenerationCancelled()
        now = time.perf_counter()
        self._seen += 1
        ids = [int(t) for t in torch.as_tensor(value).reshape(-1).tolist()]
        step: int | None = None
        if self.mode == "v2-speculation":
            if self._seen == 1:
                return  # the prompt, echoed
            if self._seen > 2:  # a zero-padded block: what the library commits of it
                ids = ids[: self.acceptor.calls[-1].library_count]
        if self.mode != "single":
            step = len(self.acceptor.calls)
        new = self._commit(ids)
        self.puts.append(_Put(now, len(new), step))
        if new and self.on_tokens is not None and self.on_tokens(0, new):
            self.stopped = True
        if self.by_eos or self.stopped or len(self.tokens) >= self.limit:
            raise _Stop()

    def _commit(self, ids: list[int]) -> list[int]:
        new: list[int] = []
        for t in ids[: self.max_new - len(self.tokens)]:
            new.append(t)
            if t in self.eos:
                self.by_eos = True
                break
        self.tokens.extend(new)
        return new

    def end(self) -> None:
        pass

    @property
    def done(self) -> bool:
        return self.by_eos or self.stopped or len(self.tokens) >= self.max_new

    def steps(self, start: float) -> list[StepRecord]:
        """One record per target pass that emitted tokens, with its measured time."""
        records: list[StepRecord] = []
        last, previous = start, None
        for put in self.puts:
            if put.step is not None and records and put.step == previous:
                records[-1].emitted[0] += put.emitted  # v1 streams a block token by token
                records[-1].seconds += put.at - last
            else:
                call = self.acceptor.calls[put.step - 1] if put.step else None
                drafted, accepted = (call.drafted, call.accepted) if call else (0, 0)
                records.append(StepRecord(put.at - last, drafted, [accepted], [put.emitted]))
            previous, last = put.step, put.at
        return records


def sampling_kwargs(acceptor: Any) -> dict[str, Any]:
    """target.sample's arguments for the configured sampling: top_k a positive int or None,
    temperature and top_p floats (the library rejects anything else)."""
    s = acceptor.sampling
    if s.temperature == 0 or getattr(acceptor, "name", "") == "greedy":
        return {"top_k": 1}
    return {
        "top_k": s.top_k if s.top_k > 0 else None,
        "top_p": float(s.top_p),
        "temperature": float(s.temperature),
    }


@dataclass
class LibraryPair:
    draft: Any
    target: Any
    api: str  # "v1" | "v2", from SpeculativeGenerator.sample's signature
    window: int  # k
    n_positions: int  # the smaller max(n_positions) of the two models


def run_library(
    pair: LibraryPair,
    prompt: Sequence[int],
    acceptor: Any,
    *,
    speculate: bool,
    max_new: int,
    eos: Sequence[int],
    pad: int,
    on_tokens: Any = None,
    cancelled: Any = None,
) -> tuple[Recorder, float]:
    """Generate for one prompt; returns the recorder (tokens, puts) and the start time."""
    acceptor.calls.clear()
    if acceptor.sampling.seed is not None:
        torch.manual_seed(acceptor.sampling.seed)  # the library samples with torch's global RNG
    rec = Recorder(max_new, set(eos), acceptor, on_tokens, cancelled)
    ids = torch.tensor([list(prompt)], dtype=torch.long)
    n_prompt, k = len(prompt), pair.window
    start = time.perf_counter()
    # A step starting after c committed tokens writes positions up to prompt + c + k - 2.
    rec.limit = min(max_new, pair.n_positions - k - n_prompt + 2)
    if speculate and rec.limit >= 1:
        rec.mode = "v2-speculation" if pair.api == "v2" else "v1-speculation"
        _speculate(pair, ids, acceptor, rec, eos, pad)
    if not rec.done:
        rec.mode, rec.limit = "single", max_new
        _finish(pair, ids, acceptor, rec, eos)
    return rec, start


def _speculate(
    pair: LibraryPair, ids: torch.Tensor, acceptor: Any, rec: Recorder, eos: Sequence[int], pad: int
) -> None:
    speculation = importlib.import_module("transformers_neuronx.speculation")
    draft: Any = pair.draft
    if getattr(acceptor, "samples_draft", False) and acceptor.sampling.temperature > 0:
        draft = SampledDraftProvider(pair.draft, acceptor, pair.api)
    generator = speculation.SpeculativeGenerator(draft, pair.target, pair.window, acceptor)
    # Long enough that the library never ends a run by length (v1 would finish greedily,
    # unstreamed; v2 would overrun): the recorder stops it first.
    kwargs: dict[str, Any] = {
        "sequence_length": ids.shape[1] + rec.max_new + pair.window + 2,
        "streamer": rec,
    }
    if eos:
        kwargs["eos_token_id"] = int(eos[0])  # one int; the recorder stops on every id
    if pair.api == "v2":
        kwargs["pad_token_id"] = pad
        kwargs["attention_mask"] = torch.ones_like(ids)
    with contextlib.suppress(_Stop):
        generator.sample(ids, **kwargs)


def _finish(
    pair: LibraryPair, ids: torch.Tensor, acceptor: Any, rec: Recorder, eos: Sequence[int]
) -> None:
    """Plain decoding on the target from where the speculative loop stopped (or from the
    prompt): target.sample continues from the last committed token's position."""
    kwargs: dict[str, Any] = {
        **sampling_kwargs(acceptor),
        "sequence_length": ids.shape[1] + rec.max_new,
        "streamer": rec,
    }
    if eos:
        kwargs["eos_token_override"] = int(eos[0])
    if rec.tokens:
        last = torch.tensor([[rec.tokens[-1]]], dtype=torch.long)
        position = ids.shape[1] + len(rec.tokens) - 1
        kwargs["cache_ids"] = torch.tensor([position], dtype=torch.int32)
        ids = last
    with contextlib.suppress(_Stop):
        pair.target.sample(ids, **kwargs)
