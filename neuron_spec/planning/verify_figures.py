"""`verify`'s figures: what was measured over the prompt set (speculative and target alone),
what the planner predicts for the same config, prompt length and output length, and the two
side by side. Pure data in, data out; the latency model is perf.py's, as `plan` shows it."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.speedup import alpha_from_counts, mean_tokens_per_pass

if TYPE_CHECKING:
    from ..config.spec import DeploymentSpec
    from ..engine.generation import Generation
    from ..host.facts import HostFacts


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def measured(results: Sequence[Generation]) -> dict[str, Any]:
    """One way of decoding over the prompt set: TTFT over prompts, TPOT over every output token
    (each after its row's first), tokens/s over the whole set, and the proposals' counts."""
    from ..engine.generation import percentile

    m = [r.metrics for r in results]
    firsts = [x.time_to_first_token_s for x in m if x.time_to_first_token_s is not None]
    per_token = [s for r in results for s in r.token_seconds]
    seconds = sum(x.seconds for x in m)
    new = sum(x.new_tokens for x in m)
    drafted, accepted = sum(x.drafted for x in m), sum(x.accepted for x in m)
    return {
        "prompts": len(m),
        "new_tokens": new,
        "seconds": round(seconds, 4),
        "tokens_per_s": round(new / seconds, 3) if seconds > 0 else None,
        "ttft_ms": {
            "p50": _ms(percentile(firsts, 0.5)),
            "mean": _ms(statistics.fmean(firsts) if firsts else None),
        },
        "tpot_ms": {
            "p50": _ms(percentile(per_token, 0.5)),
            "p90": _ms(percentile(per_token, 0.9)),
            "mean": _ms(statistics.fmean(per_token) if per_token else None),
        },
        "target_passes": sum(x.target_passes for x in m),
        "drafted": drafted,
        "accepted": accepted,
        "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
    }


def proposing_steps(results: Sequence[Generation]) -> int:
    """How many row steps proposed at least one token: the sample pooled_alpha comes from."""
    return sum(r.metrics.per_position_drafted[0] for r in results if r.metrics.per_position_drafted)


def pooled_alpha(results: Sequence[Generation]) -> float | None:
    """alpha over the prompt set, as `generate` estimates it for one call: every proposal's
    outcome pooled (accepted / (accepted + refused)), whatever each step's length."""
    accepted = sum(r.metrics.accepted for r in results)
    refused = sum(r.metrics.refused for r in results)
    alpha = alpha_from_counts(accepted, refused)
    return None if alpha is None else round(alpha, 4)


NO_MODEL = (
    "the planner's latency model covers NeuronCores only (Inf2, Trn1; Trn2 extrapolated); "
    "this run is not on one"
)


def predicted(
    spec: DeploymentSpec, host: HostFacts, base_dir: Path, prompt_tokens: int, new_tokens: int
) -> tuple[dict[str, Any] | None, str | None]:
    """What `plan` predicts for this config on `host` at these lengths (alpha assumed as plan
    assumes it), at the config's draft_tokens; (None, why) where it predicts nothing."""
    from ..preflight.base import build_context
    from .perfplan import inputs, performance_tp, request_tokens_per_s, section
    from .plan import plan

    if spec.backend == "reference" or not host.is_neuron:
        return None, NO_MODEL
    p = plan(spec, host, base_dir, prompt_tokens + new_tokens)
    inp = inputs(spec, prompt_tokens, new_tokens, None, None, None, None)
    ctx = build_context(spec, host, base_dir)
    archs = {role: ctx.arch(role) for role, _ in spec.models()}
    perf, _money, why = section(spec, host, archs, performance_tp(spec, p), inp)
    if perf is None:
        return None, why
    gamma = spec.speculation.draft_tokens
    row = next((r for r in perf["speculative"] if r["gamma"] == gamma), None)
    target = perf["target"]
    ttft_s = target["ttft_ms"] / 1e3
    out: dict[str, Any] = {
        "instance": perf["instance"],
        "tp_degree": perf["tp_degree"],
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "alpha": inp.alpha,
        "alpha_source": inp.alpha_source,
        "target": {k: target[k] for k in ("ttft_ms", "tpot_ms", "tokens_per_s")},
        "speculative": None,
        "device_memory_per_core_bytes": p.layout.per_core_bytes if p.layout else None,
        "device_memory_bytes": p.layout.per_core_bytes * p.layout.cores_used if p.layout else None,
    }
    if row is not None:
        tokens = mean_tokens_per_pass(inp.alpha, gamma)
        rate = request_tokens_per_s(ttft_s, row["tpot_ms"] / 1e3, new_tokens)
        out["speculative"] = {
            "tpot_ms": row["tpot_ms"],
            "tokens_per_s": round(rate, 2),
            "speedup": row["speedup"],
            "acceptance_rate": round((tokens - 1) / gamma, 4),
            "alpha": inp.alpha,
        }
    return out, None


def _at(data: dict[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(k)
    return data


def side_by_side(
    spec_m: dict[str, Any], target_m: dict[str, Any], row: dict[str, Any],
    pred: dict[str, Any] | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Each figure measured beside the planner's prediction (None where it predicts none)."""
    figures = [
        ("TTFT p50 ms, target alone", target_m["ttft_ms"]["p50"], ("target", "ttft_ms")),
        ("TTFT p50 ms, speculative", spec_m["ttft_ms"]["p50"], ()),
        ("TPOT p50 ms, target alone", target_m["tpot_ms"]["p50"], ("target", "tpot_ms")),
        ("TPOT p90 ms, target alone", target_m["tpot_ms"]["p90"], ()),
        ("TPOT p50 ms, speculative", spec_m["tpot_ms"]["p50"], ("speculative", "tpot_ms")),
        ("TPOT p90 ms, speculative", spec_m["tpot_ms"]["p90"], ()),
        ("tokens/s, target alone", target_m["tokens_per_s"], ("target", "tokens_per_s")),
        ("tokens/s, speculative", spec_m["tokens_per_s"], ("speculative", "tokens_per_s")),
        ("speedup", row.get("speedup"), ("speculative", "speedup")),
        ("acceptance", spec_m["acceptance_rate"], ("speculative", "acceptance_rate")),
        ("alpha", row.get("alpha"), ("speculative", "alpha")),
    ]
    return [
        {"figure": name, "measured": value, "predicted": _at(pred, *keys) if keys else None}
        for name, value, keys in figures
    ]
