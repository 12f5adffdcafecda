"""`neuron-spec bench`: target-only decoding against speculation at several gamma."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.base import Generator
from ..engine.generation import Generation
from ..engine.speedup import alpha_from_mean_tokens, expected_speedup

DEFAULT_PROMPTS = (
    "The history of the printing press begins",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
)


@dataclass
class BenchRow:
    draft_tokens: int  # 0 = target only
    seconds: float
    new_tokens: int
    target_passes: int
    drafted: int
    accepted: int
    draft_step_ms: float | None
    target_step_ms: float | None
    outputs: list[list[int]]

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "draft_tokens": self.draft_tokens,
            "seconds": round(self.seconds, 4),
            "new_tokens": self.new_tokens,
            "tokens_per_s": round(self.tokens_per_s, 3),
            "target_passes": self.target_passes,
            "drafted": self.drafted,
            "accepted": self.accepted,
        }


def _run(gen: Generator, prompts: Sequence[str], gamma: int, max_new: int) -> BenchRow:
    results: list[Generation] = [
        gen.generate(p, max_new_tokens=max_new, draft_tokens=gamma) for p in prompts
    ]
    m = [r.metrics for r in results]
    d_ms = [x.draft_step_ms for x in m if x.draft_step_ms is not None]
    t_ms = [x.target_step_ms for x in m if x.target_step_ms is not None]
    return BenchRow(
        draft_tokens=gamma,
        seconds=sum(x.seconds for x in m),
        new_tokens=sum(x.new_tokens for x in m),
        target_passes=sum(x.target_passes for x in m),
        drafted=sum(x.drafted for x in m),
        accepted=sum(x.accepted for x in m),
        draft_step_ms=sum(d_ms) / len(d_ms) if d_ms else None,
        target_step_ms=sum(t_ms) / len(t_ms) if t_ms else None,
        outputs=[r.token_ids[0] for r in results],
    )


def _median_row(runs: list[BenchRow]) -> BenchRow:
    """The run with the median time (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r.seconds)
    return ordered[(len(ordered) - 1) // 2]


def _spread(runs: list[BenchRow]) -> dict[str, Any]:
    rates = sorted(r.tokens_per_s for r in runs)
    mid = _median_row(runs).tokens_per_s
    return {
        "runs": len(runs),
        "tokens_per_s_min": round(rates[0], 3),
        "tokens_per_s_max": round(rates[-1], 3),
        "spread_pct": round(100 * (rates[-1] - rates[0]) / mid, 1) if mid else None,
    }


def run_bench(
    gen: Generator,
    prompts: Sequence[str],
    gammas: Sequence[int],
    max_new: int,
    repeat: int = 3,
    tick: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Decode `prompts` target-only and at each gamma, `repeat` times. Runs are interleaved
    (every setting once, then again) so that a machine slowing down or speeding up touches all
    settings alike; each setting reports its median run and the spread of its runs."""
    tick = tick or (lambda _s: None)
    gen.check_lengths(gen.encode(prompts), max_new)  # every prompt fits, before any work
    gen.generate(prompts[0], max_new_tokens=4, draft_tokens=max(gammas))  # warm-up
    runs: dict[int, list[BenchRow]] = {g: [] for g in [0, *gammas]}
    for _ in range(repeat):
        for gamma in runs:
            runs[gamma].append(_run(gen, prompts, gamma, max_new))
            tick("target only" if gamma == 0 else f"draft_tokens={gamma}")
    base = _median_row(runs[0])
    rows = [_speculative_row(gen, gamma, _median_row(runs[gamma]), base) for gamma in gammas]
    for row in rows:
        row.update(_spread(runs[row["draft_tokens"]]))
    best_row = max(rows, key=lambda x: x["speedup"])
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new,
        "repeat": repeat,
        "temperature": gen.spec.sampling.temperature,
        "acceptor": gen.spec.speculation.acceptor,
        "baseline": {
            **base.to_dict(),
            "target_step_ms": round(base.target_step_ms or 0, 3),
            **_spread(runs[0]),
        },
        "speculative": rows,
        "best_draft_tokens": best_row["draft_tokens"],
        "best_speedup": best_row["speedup"],
    }


def _speculative_row(gen: Generator, gamma: int, r: BenchRow, base: BenchRow) -> dict[str, Any]:
    steps = r.target_passes
    mean_l = (r.accepted + steps) / steps if steps else None
    alpha = alpha_from_mean_tokens(mean_l, gamma) if mean_l else None
    c = r.draft_step_ms / base.target_step_ms if r.draft_step_ms and base.target_step_ms else None
    greedy = gen.spec.sampling.temperature == 0
    return {
        **r.to_dict(),
        "speedup": round(r.tokens_per_s / base.tokens_per_s, 3),
        "acceptance_rate": round(r.accepted / r.drafted, 4) if r.drafted else None,
        "mean_tokens_per_pass": round(mean_l, 3) if mean_l else None,
        "alpha": round(alpha, 4) if alpha is not None else None,
        "c": round(c, 4) if c is not None else None,
        "predicted_speedup": (
            round(expected_speedup(alpha, gamma, c), 3)
            if alpha is not None and c is not None
            else None
        ),
        "outputs_match_target": (r.outputs == base.outputs) if greedy else None,
    }
