"""Generator: text in, text and figures out, on whichever backend the config names."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config.spec import ConfigFile, SamplingSpec
from .loop import Batch, EngineResult, Row, Runner, TokenLogprob, speculative_generate
from .speedup import alpha_from_mean_tokens


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in text, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _percentile(values: Sequence[float], q: float) -> float | None:
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
    alpha: float | None  # per-token acceptance probability, from L
    draft_step_ms: float | None  # mean time of a 1-token draft pass
    target_step_ms: float | None  # mean time of a target pass
    per_row: list[dict[str, int]] = field(default_factory=list)  # {drafted, accepted} per prompt
    max_batch_rows: int = 1  # the most rows that decoded together in any step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_metrics(res: EngineResult, prompt_tokens: int, gamma: int) -> Metrics:
    new_tokens = sum(len(t) for t in res.tokens)
    seconds = max(res.end - res.start, 1e-9)
    firsts = [t - res.start for t in res.first_token_at if t is not None]
    per_token: list[float] = []
    drafted = accepted = row_steps = full_row_steps = full_accepted = 0
    pos_drafted = [0] * gamma
    pos_accepted = [0] * gamma
    per_row = [{"drafted": 0, "accepted": 0} for _ in res.tokens]
    for i, step in enumerate(res.steps):
        for b, (acc, emitted) in enumerate(zip(step.accepted, step.emitted, strict=True)):
            if emitted == 0:
                continue  # the row had finished
            drafts = step.drafted_by(b)
            per_row[b]["drafted"] += drafts
            per_row[b]["accepted"] += acc
            row_steps += 1
            drafted += drafts
            accepted += acc
            if drafts == gamma:
                full_row_steps += 1
                full_accepted += acc
            for j in range(drafts):
                pos_drafted[j] += 1
                pos_accepted[j] += int(acc > j)
            if i > 0:
                per_token.extend([step.seconds / emitted] * emitted)
    mean_l = (full_accepted + full_row_steps) / full_row_steps if full_row_steps else None
    alpha = alpha_from_mean_tokens(mean_l, gamma) if (mean_l is not None and gamma > 0) else None
    return Metrics(
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        seconds=seconds,
        time_to_first_token_s=statistics.fmean(firsts) if firsts else None,
        time_per_output_token_s={
            "mean": statistics.fmean(per_token) if per_token else None,
            "p50": _percentile(per_token, 0.50),
            "p90": _percentile(per_token, 0.90),
            "p99": _percentile(per_token, 0.99),
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
        alpha=alpha,
        draft_step_ms=statistics.fmean(res.draft_step_seconds) * 1e3
        if res.draft_step_seconds
        else None,
        target_step_ms=statistics.fmean(res.target_step_seconds) * 1e3
        if res.target_step_seconds
        else None,
        per_row=per_row,
        max_batch_rows=max((step.rows for step in res.steps), default=1),
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
# (prompts, acceptor, draft_tokens, max_new_tokens, eos_token_ids, pad_token_id, on_tokens)
Decoder = Callable[..., EngineResult]


class _TextStream:
    """Text as tokens are accepted, for `on_text` and stop strings. Text that may be the start
    of a stop string, or an incomplete multi-byte character, is held back until it is known
    not to be; a row that reaches a stop string ends there, the stop string not included."""

    def __init__(
        self, tokenizer: Any, rows: int, on_text: TextCallback | None, stops: list[str]
    ) -> None:
        self.tokenizer, self.on_text, self.stops = tokenizer, on_text, stops
        self.so_far: list[list[int]] = [[] for _ in range(rows)]
        self.shown = [""] * rows
        self.stopped = [False] * rows
        self.hold = max((len(s) for s in stops), default=1) - 1  # may be the start of a stop

    @property
    def active(self) -> bool:
        return self.on_text is not None or bool(self.stops)

    def on_tokens(self, row: int, new: list[int]) -> bool:
        """The engine's callback: True ends the row."""
        self.so_far[row].extend(new)
        text = self.tokenizer.decode(self.so_far[row], skip_special_tokens=True)
        cut = _first_stop(text, self.stops)
        if cut is not None:
            text, self.stopped[row] = text[:cut], True
        elif text.endswith("\ufffd"):
            return False  # an incomplete multi-byte character: wait for the rest
        shown = self.shown[row]
        safe = len(text) if self.stopped[row] else max(len(shown), len(text) - self.hold)
        if self.on_text is not None and safe > len(shown):
            self.on_text(row, text[len(shown) : safe])
        self.shown[row] = text[:safe]
        return self.stopped[row]

    def finish(self, tokens: list[list[int]]) -> list[str]:
        """Each row's whole text, cut at its first stop string; what was held back is sent."""
        texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
        for row, text in enumerate(texts):
            cut = _first_stop(text, self.stops)
            if cut is not None:
                texts[row], self.stopped[row] = text[:cut], True
            elif self.on_text is not None and len(text) > len(self.shown[row]):
                self.on_text(row, text[len(self.shown[row]) :])  # flush what was held back
        return texts


class Generator:
    """A loaded draft/target pair plus its tokenizer; `generate` as often as you like."""

    def __init__(
        self,
        cfg: ConfigFile,
        target: Runner | None,
        draft: Runner | None,
        tokenizer: Any,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        device: str = "cpu",
        decoder: Decoder | None = None,
    ):
        self.cfg = cfg
        self.spec = cfg.spec
        self.target = target
        self.draft = draft
        self.decoder: Decoder = decoder or self._decode_with_runners
        self.backend: Any = None  # the loaded backend object, when it is not the runners
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.device = device
        self.max_prompt_tokens: int | None = None  # a backend compiled for shorter prompts

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        ids = [list(self.tokenizer(p).input_ids) for p in prompts]
        for p, row in zip(prompts, ids, strict=True):
            if not row:
                raise ValueError(f"prompt {p!r} encodes to no tokens")
        return ids

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        draft_tokens: int | None = None,
        on_text: TextCallback | None = None,
        prompt_token_ids: Sequence[Sequence[int]] | None = None,
        stop: Sequence[str] = (),
        cancelled: Callable[[], bool] | None = None,
    ) -> Generation:
        """Generate for one prompt or a batch. `on_text(row, delta)` receives text as tokens are
        accepted; `stop` strings end a row (the text is cut before the stop string, which is
        not returned); `cancelled()` is polled between steps and aborts the call with
        GenerationCancelled when it turns true."""
        from .acceptors import make_acceptor

        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = (
            [list(p) for p in prompt_token_ids]
            if prompt_token_ids is not None
            else self.encode(batch)
        )
        max_new = max_new_tokens or self.spec.generation.max_new_tokens
        self.check_lengths(ids, max_new)
        sampling = self._sampling(temperature, top_k, top_p, seed)
        acceptor = make_acceptor(self.spec.speculation.acceptor, sampling)
        gamma = self.spec.speculation.draft_tokens if draft_tokens is None else draft_tokens
        stream = _TextStream(self.tokenizer, len(ids), on_text, [s for s in stop if s])
        res = self.decoder(
            ids,
            acceptor,
            draft_tokens=gamma,
            max_new_tokens=max_new,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            on_tokens=stream.on_tokens if stream.active else None,
            cancelled=cancelled,
        )
        texts = stream.finish(res.tokens)
        metrics = compute_metrics(res, sum(len(p) for p in ids), gamma)
        return Generation(texts, res.tokens, res.finished_by_eos, metrics, ids, stream.stopped)

    def open_batch(self, slots: int) -> Batch | None:
        """A continuous batch of `slots` rows on this pair, or None when the backend decodes
        one sequence at a time (then requests run one after another)."""
        target, draft = self.target, self.draft
        runners = getattr(self.backend, "batch_runners", None)
        if target is None and runners is not None:
            pair = runners(slots)  # a backend whose compiled graphs batch (TNx 0.12+)
            if pair is None:
                return None
            target, draft = pair
        if target is None:
            return None
        from .loop import DraftPolicy

        gamma = self.spec.speculation.draft_tokens
        draft = draft if gamma > 0 else None
        policy = DraftPolicy() if self.spec.speculation.adaptive_batch else None
        return Batch(
            target,
            draft,
            slots,
            draft_tokens=gamma,
            pad_token_id=self.pad_token_id,
            policy=policy,
            history=False,  # each row keeps its own steps; the batch may run for days
        )

    def row(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        logprobs: int | None = None,
    ) -> tuple[Row, Callable[[], Generation]]:
        """One request as a row of a continuous batch (see `open_batch`), with its own
        sampling, seed, stop strings and budget; and the function that turns the finished
        row into its Generation. `logprobs`: N to record each emitted token's log-probability
        under the target and the N most likely alternatives (None: not recorded)."""
        from .acceptors import make_acceptor

        ids = [list(prompt_ids)]
        max_new = max_new_tokens or self.spec.generation.max_new_tokens
        self.check_lengths(ids, max_new)
        sampling = self._sampling(temperature, top_k, top_p, seed)
        acceptor = make_acceptor(self.spec.speculation.acceptor, sampling)
        text_cb = None if on_text is None else (lambda _row, delta: on_text(delta))
        stream = _TextStream(self.tokenizer, 1, text_cb, [s for s in stop if s])
        callback = (lambda new: stream.on_tokens(0, new)) if stream.active else None
        eos = frozenset(self.eos_token_ids)
        row = Row(ids[0], max_new, eos, acceptor, callback, cancelled, logprobs=logprobs)
        # a request that gives its own seed and samples always drafts, so it draws its random
        # numbers as it does alone (its output equals the output alone only while its logits
        # do too: see max_batch_rows in the metrics)
        row.pinned = seed is not None and sampling.temperature > 0

        def finish() -> Generation:
            res = row.result
            texts = stream.finish(res.tokens)
            metrics = compute_metrics(res, len(ids[0]), self.spec.speculation.draft_tokens)
            gen = Generation(texts, res.tokens, res.finished_by_eos, metrics, ids, stream.stopped)
            gen.logprobs = None if logprobs is None else [row.token_logprobs]
            return gen

        return row, finish

    def _sampling(
        self,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
    ) -> SamplingSpec:
        """The config's sampling with this call's overrides."""
        s = self.spec.sampling
        return SamplingSpec(
            temperature=s.temperature if temperature is None else float(temperature),
            top_k=s.top_k if top_k is None else top_k,
            top_p=s.top_p if top_p is None else float(top_p),
            seed=s.seed if seed is None else seed,
        )

    @property
    def n_positions(self) -> int:
        """The longest sequence (prompt + generated) both models were configured for."""
        return min(self.spec.target.max_positions, self.spec.draft.max_positions)

    def check_lengths(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
        """Refuse a request that cannot fit n_positions before any model runs (ValueError,
        which the CLI shows as a usage error and the server as a 400)."""
        limit = self.n_positions
        longest = max(len(p) for p in prompts)
        if self.max_prompt_tokens is not None and longest > self.max_prompt_tokens:
            raise RequestTooLong(
                f"the prompt has {longest} tokens; the models' prompt encoding was compiled for "
                f"at most {self.max_prompt_tokens} (generation.max_prompt_tokens). Fix: shorten "
                "the prompt, or raise generation.max_prompt_tokens and load again.",
                "prompt",
            )
        if longest + max_new_tokens > limit:
            raise RequestTooLong(
                f"the prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = "
                f"{longest + max_new_tokens} exceeds n_positions={limit}, the longest sequence "
                "the models were configured for. Fix: shorten the prompt, lower "
                "max_new_tokens, or raise n_positions in the config."
            )

    def _decode_with_runners(
        self, prompts: Sequence[Sequence[int]], acceptor: Any, *, draft_tokens: int, **kwargs: Any
    ) -> EngineResult:
        if self.target is None:
            raise ValueError("a Generator without a decoder needs a target runner")
        draft = self.draft if draft_tokens > 0 else None
        return speculative_generate(
            self.target, draft, acceptor, prompts, draft_tokens=draft_tokens, **kwargs
        )
