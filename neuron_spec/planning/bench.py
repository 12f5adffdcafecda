"""`neuron-spec bench`: the target alone against each way of speculating, on the same prompts.

A setting is a proposal method (a draft model, prompt lookup, suffix matching) at a fixed
length (every step proposes draft_tokens) or adaptive (the engine chooses each step's length).
Every setting decodes the prompts `repeat` times, interleaved with the others so that a machine
slowing down or speeding up touches all alike; each reports its median run and the spread. The
report names the fastest setting (and says when none beats the target alone); for greedy
decoding it also checks that every setting's output is the target's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..engine.speedup import alpha_from_counts, expected_speedup

if TYPE_CHECKING:  # the report's helpers (advice, rendering) run in the light install
    from ..backends.base import Generator
    from ..engine.generation import Generation

DEFAULT_PROMPTS = (
    "The history of the printing press begins",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
)
METHODS = ("draft", "ngram", "suffix")


@dataclass(frozen=True)
class Setting:
    method: str  # draft | ngram | suffix; "target" for the target alone
    draft_tokens: int  # at most, per step (0: the target alone)
    adaptive: bool

    @property
    def label(self) -> str:
        if self.draft_tokens == 0:
            return "target only"
        how = "adaptive" if self.adaptive else "fixed"
        return f"{self.method} {how} {self.draft_tokens}"


TARGET = Setting("target", 0, False)


@dataclass
class BenchRow:
    setting: Setting
    seconds: float
    new_tokens: int
    target_passes: int
    drafted: int
    accepted: int
    refused: int  # row steps in which a proposal was refused
    draft_step_ms: float | None
    target_step_ms: float | None
    outputs: list[list[int]]

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.setting.method,
            "adaptive": self.setting.adaptive,
            "draft_tokens": self.setting.draft_tokens,
            "seconds": round(self.seconds, 4),
            "new_tokens": self.new_tokens,
            "tokens_per_s": round(self.tokens_per_s, 3),
            "target_passes": self.target_passes,
            "drafted": self.drafted,
            "accepted": self.accepted,
        }


def settings(gen: Generator, methods: Sequence[str], gammas: Sequence[int]) -> list[Setting]:
    """The target alone; the config's method at each of `gammas` and adaptive; every other
    method at the config's draft_tokens, fixed and adaptive."""
    configured = gen.spec.speculation.method
    most = max(gammas)
    out = [TARGET]
    for method in methods:
        fixed = gammas if method == configured else [gen.spec.speculation.draft_tokens]
        out += [Setting(method, g, False) for g in fixed]
        out.append(Setting(method, most, True))
    return list(dict.fromkeys(out))


def _run(gen: Generator, prompts: Sequence[str], s: Setting, max_new: int) -> BenchRow:
    method = s.method if s.draft_tokens else None
    results: list[Generation] = []
    for p in prompts:
        out = gen.generate(
            p, max_new_tokens=max_new, draft_tokens=s.draft_tokens, method=method,
            adaptive=s.adaptive,
        )  # fmt: skip
        results.append(out)
    return bench_row(s, results)


def bench_row(s: Setting, results: Sequence[Generation]) -> BenchRow:
    """The totals of one setting's generations (one per prompt)."""
    m = [r.metrics for r in results]
    d_ms = [x.draft_step_ms for x in m if x.draft_step_ms is not None]
    t_ms = [x.target_step_ms for x in m if x.target_step_ms is not None]
    return BenchRow(
        setting=s,
        seconds=sum(x.seconds for x in m),
        new_tokens=sum(x.new_tokens for x in m),
        target_passes=sum(x.target_passes for x in m),
        drafted=sum(x.drafted for x in m),
        accepted=sum(x.accepted for x in m),
        refused=sum(x.refused for x in m),
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
    methods: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Decode `prompts` with every setting (see `settings`), `repeat` interleaved times."""
    tick = tick or (lambda _s: None)
    gen.check_lengths(gen.encode(prompts), max_new)  # every prompt fits, before any work
    chosen = [m for m in (methods or available_methods(gen))]
    plan = settings(gen, chosen, gammas)
    for s in plan[1:]:  # warm-up: the first call of each way pays one-off costs
        gen.generate(prompts[0], max_new_tokens=4, draft_tokens=s.draft_tokens, method=s.method)
    runs: dict[Setting, list[BenchRow]] = {s: [] for s in plan}
    for _ in range(repeat):
        for s in plan:
            runs[s].append(_run(gen, prompts, s, max_new))
            tick(s.label)
    base = _median_row(runs[TARGET])
    rows = [speculative_row(gen, _median_row(runs[s]), base) for s in plan[1:]]
    for s, row in zip(plan[1:], rows, strict=True):
        row.update(_spread(runs[s]))
    best = max(rows, key=lambda x: x["speedup"])
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new,
        "repeat": repeat,
        "temperature": gen.spec.sampling.temperature,
        "acceptor": gen.spec.speculation.acceptor,
        "configured_method": gen.spec.speculation.method,
        "baseline": {
            **base.to_dict(),
            "target_step_ms": round(base.target_step_ms or 0, 3),
            **_spread(runs[TARGET]),
        },
        "speculative": rows,
        "best": {k: best[k] for k in ("method", "adaptive", "draft_tokens", "speedup")},
        "best_draft_tokens": best["draft_tokens"],
        "best_speedup": best["speedup"],
        "advice": advice(best),
    }


def available_methods(gen: Generator) -> list[str]:
    """Every method this loaded pair can run: the draft model only when one is loaded."""
    return [m for m in METHODS if m != "draft" or gen.spec.draft_model is not None]


def advice(best: dict[str, Any]) -> str:
    if best["speedup"] <= 1.0:
        return (
            "speculation does not pay on these prompts: no setting beats the target alone; "
            "decode with the target alone (generate --draft-tokens 0), or try prompts closer "
            "to your workload"
        )
    how = "adaptive: true" if best["adaptive"] else "adaptive: false"
    return (
        f"use speculation: {{method: {best['method']}, draft_tokens: {best['draft_tokens']}, "
        f"{how}}} ({best['speedup']:.2f}x the target alone)"
    )


def speculative_row(
    gen: Generator, r: BenchRow, base: BenchRow, alpha: float | None = None
) -> dict[str, Any]:
    """A speculative setting's figures beside the target alone's: what `plan --from-bench`
    reads (alpha, c, speedup) and what bench shows. `alpha`: a better estimate the caller has
    (else the maximum-likelihood estimate from its accepted and refused proposals, right for
    any mix of proposal lengths)."""
    gamma = r.setting.draft_tokens
    steps = r.target_passes
    mean_l = (r.accepted + steps) / steps if steps else None
    if alpha is None:
        alpha = alpha_from_counts(r.accepted, r.refused)
    if r.setting.method == "draft":
        has_ms = r.draft_step_ms and base.target_step_ms
        c = r.draft_step_ms / base.target_step_ms if has_ms else None  # type: ignore[operator]
    else:
        c = 0.0  # a lookup costs no model pass
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
