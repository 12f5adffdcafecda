"""What a generation returns: the texts, the tokens and the figures (Metrics, computed one way for
every backend from the engine's step records), and the text stream that turns accepted tokens
into text deltas and ends a row at a stop string."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .loop import EngineResult, TokenLogprob
from .speedup import alpha_from_counts


def _first_stop(text: str, stops: Sequence[str], after: int = 0) -> tuple[int, int] | None:
    """(start, length) of the earliest stop string in text that ends past character `after`,
    or None."""
    hits = [(i, len(s)) for s in stops if (i := text.find(s, max(0, after - len(s) + 1))) >= 0]
    return min(hits) if hits else None


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Metrics:
    """Figures of one generate call (all rows of a batch together)."""

    prompt_tokens: int
    new_tokens: int
    seconds: float
    time_to_first_token_s: float | None
    time_per_output_token_s: dict[str, float | None]  # mean, p50, p90, p99
    tokens_per_s: float
    target_passes: int
    draft_tokens: int  # gamma as configured
    drafted: int
    accepted: int
    acceptance_rate: float | None  # accepted / drafted
    mean_tokens_per_pass: float | None  # L: tokens emitted per target pass, per row
    per_position_acceptance: list[float]  # P(draft i accepted | drafted), i = 1..gamma
    per_position_drafted: list[int]  # how often position i was drafted
    per_position_accepted: list[int]  # how often position i was accepted
    alpha: float | None  # per-token acceptance probability: accepted / (accepted + refused)
    draft_step_ms: float | None  # mean time of a 1-token draft pass
    target_step_ms: float | None  # mean time of a target pass
    per_row: list[dict[str, int]] = field(default_factory=list)  # {drafted, accepted} per prompt
    max_batch_rows: int = 1  # the most rows that decoded together in any step
    method: str = "draft"  # where proposals came from: draft, ngram or suffix
    refused: int = 0  # row steps in which a proposal was refused (alpha's failed trials)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_token_seconds(res: EngineResult) -> list[float]:
    """The time of each output token after the first of its row: a step's time shared by the
    tokens it emitted (the first step, which holds the prompt's encoding, is left out)."""
    out: list[float] = []
    for step in res.steps[1:]:
        for emitted in step.emitted:
            if emitted:
                out.extend([step.seconds / emitted] * emitted)
    return out


def compute_metrics(
    res: EngineResult, prompt_tokens: int, gamma: int, method: str = "draft"
) -> Metrics:
    new_tokens = sum(len(t) for t in res.tokens)
    seconds = max(res.end - res.start, 1e-9)
    firsts = [t - res.start for t in res.first_token_at if t is not None]
    per_token = output_token_seconds(res)
    drafted = accepted = row_steps = refused = 0
    pos_drafted = [0] * gamma
    pos_accepted = [0] * gamma
    per_row = [{"drafted": 0, "accepted": 0} for _ in res.tokens]
    for step in res.steps:
        for b, (acc, emitted) in enumerate(zip(step.accepted, step.emitted, strict=True)):
            if emitted == 0:
                continue  # the row had finished
            drafts = step.drafted_by(b)
            per_row[b]["drafted"] += drafts
            per_row[b]["accepted"] += acc
            row_steps += 1
            drafted += drafts
            accepted += acc
            refused += int(acc < drafts)
            for j in range(drafts):
                pos_drafted[j] += 1
                pos_accepted[j] += int(acc > j)
    return Metrics(
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        seconds=seconds,
        time_to_first_token_s=statistics.fmean(firsts) if firsts else None,
        time_per_output_token_s={
            "mean": statistics.fmean(per_token) if per_token else None,
            "p50": percentile(per_token, 0.50),
            "p90": percentile(per_token, 0.90),
            "p99": percentile(per_token, 0.99),
        },
        tokens_per_s=new_tokens / seconds,
        target_passes=len(res.steps),
        draft_tokens=gamma,
        drafted=drafted,
        accepted=accepted,
        acceptance_rate=accepted / drafted if drafted else None,
        mean_tokens_per_pass=(accepted + row_steps) / row_steps if row_steps else None,
        per_position_acceptance=[
            a / d if d else 0.0 for a, d in zip(pos_accepted, pos_drafted, strict=True)
        ],
        per_position_drafted=pos_drafted,
        per_position_accepted=pos_accepted,
        alpha=alpha_from_counts(accepted, refused),
        draft_step_ms=statistics.fmean(res.draft_step_seconds) * 1e3
        if res.draft_step_seconds
        else None,
        target_step_ms=statistics.fmean(res.target_step_seconds) * 1e3
        if res.target_step_seconds
        else None,
        per_row=per_row,
        max_batch_rows=max((step.rows for step in res.steps), default=1),
        method=method,
        refused=refused,
    )


@dataclass
class Generation:
    text: list[str]
    token_ids: list[list[int]]  # generated tokens only, per prompt
    finished_by_eos: list[bool]
    metrics: Metrics
    prompt_token_ids: list[list[int]] = field(default_factory=list)
    finished_by_stop: list[bool] = field(default_factory=list)
    logprobs: list[list[TokenLogprob]] | None = None  # per row, when asked for
    # each output token's time after its row's first (all rows), for percentiles over calls
    token_seconds: list[float] = field(default_factory=list)

    def to_dict(self, single: bool = False) -> dict[str, Any]:
        if single and len(self.text) == 1:
            return {
                "text": self.text[0],
                "token_ids": self.token_ids[0],
                "finished_by_eos": self.finished_by_eos[0],
                "metrics": self.metrics.to_dict(),
            }
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "finished_by_eos": self.finished_by_eos,
            "metrics": self.metrics.to_dict(),
        }


class RequestTooLong(ValueError):
    """Prompt + max_new_tokens exceed n_positions. `field`: what to shorten first (the
    prompt when it leaves no room at all, else max_tokens)."""

    def __init__(self, message: str, field: str = "max_tokens"):
        super().__init__(message)
        self.field = field


TextCallback = Callable[[int, str], None]


@dataclass(frozen=True)
class Ending:
    """How a request's rows end and what their text shows: OpenAI's stop strings, and vLLM's
    extensions (https://docs.vllm.ai/en/latest/api/vllm/sampling_params.html): stop token
    ids, ignore_eos, min_tokens (neither EOS nor a stop id nor a stop string ends a row before
    it has that many tokens), include_stop_str_in_output, skip_special_tokens."""

    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    include_stop: bool = False
    skip_special: bool = True

    def finishing_ids(self, eos: Sequence[int]) -> frozenset[int]:
        """The token ids that end a row: EOS (unless ignored) and the stop token ids."""
        return frozenset(() if self.ignore_eos else eos) | frozenset(self.stop_token_ids)


class TextStream:
    """Text as tokens are accepted, for `on_text` and stop strings. Text that may be the start
    of a stop string, or an incomplete multi-byte character, is held back until it is known
    not to be; a row that reaches a stop string ends there, the stop string not included
    (unless `ending.include_stop`)."""

    def __init__(
        self, tokenizer: Any, rows: int, on_text: TextCallback | None, ending: Ending
    ) -> None:
        self.tokenizer, self.on_text, self.ending = tokenizer, on_text, ending
        self.stops = [s for s in ending.stop if s]
        self.so_far: list[list[int]] = [[] for _ in range(rows)]
        self.shown = [""] * rows
        self.stopped = [False] * rows
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # may start a stop
        self.stop_from: list[int | None] = [None if ending.min_tokens else 0] * rows

    @property
    def active(self) -> bool:
        return self.on_text is not None or bool(self.stops)

    def decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=self.ending.skip_special))

    def _cut(self, row: int, tokens: list[int], text: str) -> str:
        """The text up to the row's first stop string (through it, with include_stop), and
        whether one was found (then the row is marked stopped). Before min_tokens tokens no
        stop string counts; after, only one ending past the text of those tokens."""
        after = self.stop_from[row]
        if after is None:
            if len(tokens) < self.ending.min_tokens:
                return text
            after = self.stop_from[row] = len(self.decode(tokens[: self.ending.min_tokens]))
        hit = _first_stop(text, self.stops, after)
        if hit is None:
            return text
        self.stopped[row] = True
        start, length = hit
        return text[: start + length] if self.ending.include_stop else text[:start]

    def on_tokens(self, row: int, new: list[int]) -> bool:
        """The engine's callback: True ends the row."""
        self.so_far[row].extend(new)
        text = self._cut(row, self.so_far[row], self.decode(self.so_far[row]))
        if not self.stopped[row] and text.endswith("\ufffd"):
            return False  # an incomplete multi-byte character: wait for the rest
        shown = self.shown[row]
        safe = len(text) if self.stopped[row] else max(len(shown), len(text) - self.hold)
        if self.on_text is not None and safe > len(shown):
            self.on_text(row, text[len(shown) : safe])
        self.shown[row] = text[:safe]
        return self.stopped[row]

    def finish(self, tokens: list[list[int]]) -> list[str]:
        """Each row's whole text, cut at its first stop string; what was held back is sent."""
        texts = []
        for row, toks in enumerate(tokens):
            text = self._cut(row, toks, self.decode(toks))
            if self.on_text is not None and len(text) > len(self.shown[row]):
                self.on_text(row, text[len(self.shown[row]) :])  # flush what was held back
            texts.append(text)
        return texts
