"""The planner: memory per model, the core layout, a tp recommendation, and expected speedup."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.catalog import GB, TP_RULES, Architecture
from ..config.spec import DeploymentSpec, ModelSpec
from ..engine.speedup import best_gamma, expected_speedup
from ..host.facts import HostFacts
from ..preflight.base import Context, build_context
from ..preflight.memory import HIGH_WATER, ModelMemory, fmt_bytes, kv_heads_shardable, model_memory
from ..preflight.rules import pair_fits
from .perf import FAMILIES, decode_step_s

ALPHAS = (0.6, 0.7, 0.8, 0.9)


def step_ms(
    arch: Architecture, m: ModelSpec, tp: int, platform: str | None, positions: int | None = None
) -> float | None:
    """perf.py's decode step at `positions` (the request length the performance section models;
    by default the compiled length), None off Neuron. The one source of step times, so the
    memory table, the speculation table and the performance section agree."""
    family = FAMILIES.get(platform or "")
    if family is None:
        return None
    at = min(positions or m.max_positions, m.max_positions)
    return decode_step_s(arch, m.amp, tp, family, at) * 1e3


# --- plan data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPlan:
    role: str
    model: str
    architecture: str
    memory: ModelMemory  # at the configured tp
    min_cores: int  # total_bytes / budget per core, rounded up
    fitting_tps: tuple[int, ...]  # valid tps on this host at which the model alone fits
    step_ms: float | None
    vocab_size: int = 0
    kv_heads: int = 0
    tp_degree: int = 1

    def kv_replication(self) -> dict[str, Any] | None:
        """GQA at tp above the KV heads: each head is replicated to one per core, so the KV
        cache holds tp / kv_heads copies; what that costs."""
        if not self.kv_heads or self.tp_degree <= self.kv_heads:
            return None
        factor = self.tp_degree / self.kv_heads
        kv = self.memory.kv_cache_bytes
        return {
            "kv_heads": self.kv_heads,
            "replicated_to": self.tp_degree,
            "copies": round(factor, 2),
            "extra_kv_cache_bytes": int(kv - kv / factor),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "architecture": self.architecture,
            "vocab_size": self.vocab_size,
            "kv_replication": self.kv_replication(),
            **self.memory.to_dict(),
            "min_cores": self.min_cores,
            "min_tp": self.fitting_tps[0] if self.fitting_tps else None,
            "fitting_tps": list(self.fitting_tps),
            "estimated_step_ms": round(self.step_ms, 2) if self.step_ms else None,
        }


@dataclass(frozen=True)
class Layout:
    cores_used: int
    visible_cores: str
    per_core_bytes: int
    budget_per_core: int

    @property
    def utilization(self) -> float:
        return self.per_core_bytes / self.budget_per_core

    def to_dict(self) -> dict[str, Any]:
        return {
            "cores_used": self.cores_used,
            "visible_cores": self.visible_cores,
            "per_core_bytes": self.per_core_bytes,
            "budget_per_core_bytes": self.budget_per_core,
            "utilization": round(self.utilization, 4),
        }


@dataclass(frozen=True)
class Recommendation:
    target_tp: int | None
    draft_tp: int | None
    per_core_bytes: int | None
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": {"tp_degree": self.target_tp},
            "draft": {"tp_degree": self.draft_tp},
            "per_core_bytes": self.per_core_bytes,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class SpeculationPlan:
    draft_tokens: int
    window: int
    c_estimate: float | None
    rows: tuple[dict[str, float | int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "draft_tokens": self.draft_tokens,
            "window": self.window,
            "c_estimate": round(self.c_estimate, 4) if self.c_estimate is not None else None,
            "by_alpha": list(self.rows),
        }


@dataclass(frozen=True)
class Plan:
    host: HostFacts
    models: dict[str, ModelPlan]
    layout: Layout | None
    recommendation: Recommendation | None
    speculation: SpeculationPlan
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host.to_dict(),
            "models": {role: mp.to_dict() for role, mp in self.models.items()},
            "layout": self.layout.to_dict() if self.layout else None,
            "recommendation": self.recommendation.to_dict() if self.recommendation else None,
            "speculation": self.speculation.to_dict(),
            "notes": list(self.notes),
        }


def _memory_at(arch: Architecture, m: ModelSpec, tp: int) -> ModelMemory:
    return model_memory(
        arch, tp=tp, amp=m.amp, n_positions=m.max_positions, batch_size=m.batch_size
    )


def _tp_candidates(host: HostFacts) -> list[int]:
    return TP_RULES[host.platform].candidates(host.cores) if host.platform else []


def _model_plan(ctx: Context, role: str, positions: int | None = None) -> ModelPlan | None:
    arch, m = ctx.arch(role), ctx.model_spec(role)
    if arch is None:
        return None
    mem = ctx.memory[role]
    budget = ctx.host.memory_per_core_bytes or 16 * 1024**3
    fits = tuple(
        tp
        for tp in _tp_candidates(ctx.host)
        if kv_heads_shardable(arch, tp) and _memory_at(arch, m, tp).per_core_bytes <= budget
    )
    step = step_ms(arch, m, m.tp_degree, ctx.host.platform, positions)
    return ModelPlan(
        role,
        m.model,
        arch.name,
        mem,
        mem.min_cores(budget),
        fits,
        step,
        arch.vocab_size,
        arch.num_kv_heads if arch.num_kv_heads < arch.num_heads else 0,
        m.tp_degree,
    )


def _recommend(ctx: Context) -> Recommendation:
    host, spec = ctx.host, ctx.spec
    roles = dict(spec.models())
    archs = {role: ctx.arch(role) for role in roles}
    if any(a is None for a in archs.values()) or not host.is_neuron or host.platform is None:
        return Recommendation(
            None, None, None, ("no recommendation: a model's size or the host is unknown",)
        )
    budget = host.memory_per_core_bytes
    rule = TP_RULES[host.platform]
    shared = pair_fits(ctx) or []
    alone = len(roles) == 1
    what = "the target" if alone else "the pair"
    if not shared:
        need = sum(
            _memory_at(a, roles[role], host.cores).total_bytes
            for role, a in archs.items()
            if a is not None
        )
        return Recommendation(
            None,
            None,
            None,
            (
                f"{what} does not fit {host.instance or 'this host'} at any tp the runtime "
                f"accepts ({rule.description}); {'it needs' if alone else 'together they need'} "
                f"about {need / GB:.0f} GB, {host.cores} cores offer "
                f"{host.cores * budget / GB:.0f} GB.",
                "use amp: bf16, shorter n_positions, or a larger instance.",
            ),
        )
    tp, load = shared[-1]
    reasons = [] if alone else [
        "draft and target run in one process and both load from core 0, so they must share "
        "one tp_degree (a second model on a subset of cores fails with nrt_load_collectives).",
    ]  # fmt: skip
    reasons += [
        f"tp {tp} is the largest value the runtime accepts on {host.instance or host.platform} "
        f"({rule.description}) at which {what} fits: {fmt_bytes(load)} per core of "
        f"{fmt_bytes(budget)} ({load / budget:.0%}).",
        "decoding is memory-bandwidth-bound: every extra core adds HBM bandwidth, so the "
        "largest tp that fits is the fastest.",
    ]
    t_arch = archs["target"]
    assert t_arch is not None
    t_alone = [
        t
        for t in _tp_candidates(host)
        if kv_heads_shardable(t_arch, t)
        and _memory_at(t_arch, spec.target, t).per_core_bytes <= budget
    ]
    if not alone and t_alone and t_alone[0] < tp and t_alone[0] * 2 <= host.cores:
        reasons.append(
            f"the target alone would fit from tp {t_alone[0]}, leaving cores for the draft, "
            "but disjoint core sets need two processes, which SpeculativeGenerator cannot "
            f"drive, and each model would get fewer cores' bandwidth; sharing tp {tp} wins."
        )
    if load > HIGH_WATER * budget:
        reasons.append(
            f"at {load / budget:.0%} of the budget the margin is thin; consider "
            "shorter n_positions."
        )
    return Recommendation(tp, None if alone else tp, load, tuple(reasons))


def _speculation(
    ctx: Context, rec: Recommendation, positions: int | None = None
) -> SpeculationPlan:
    spec = ctx.spec
    gamma = spec.speculation.draft_tokens
    t_arch, d_arch = ctx.arch("target"), ctx.arch("draft")
    draft = spec.draft_model
    c = None
    if draft is None:
        c = 0.0  # a lookup: no model pass per proposal
    elif t_arch is not None and d_arch is not None:
        platform = ctx.host.platform or "inf2"
        t_tp, d_tp = rec.target_tp or spec.target.tp_degree, rec.draft_tp or draft.tp_degree
        t_s = step_ms(t_arch, spec.target, t_tp, platform, positions)
        d_s = step_ms(d_arch, draft, d_tp, platform, positions)
        c = d_s / t_s if t_s and d_s else None
    rows: list[dict[str, float | int]] = []
    if c is not None:
        for alpha in ALPHAS:
            g, s = best_gamma(alpha, c)
            rows.append(
                {
                    "alpha": alpha,
                    "speedup_at_draft_tokens": round(expected_speedup(alpha, gamma, c), 3),
                    "best_draft_tokens": g,
                    "best_speedup": round(s, 3),
                }
            )
    return SpeculationPlan(gamma, spec.speculation.window, c, tuple(rows))


def plan(
    spec: DeploymentSpec,
    host: HostFacts,
    base_dir: Path | None = None,
    positions: int | None = None,
) -> Plan:
    """`positions`: the sequence length step times are modelled at (the performance section's
    prompt + new tokens); by default each model's compiled length."""
    ctx = build_context(spec, host, base_dir or Path.cwd())
    notes: list[str] = []
    models = {}
    for role, _m in spec.models():
        mp = _model_plan(ctx, role, positions)
        if mp is None:
            notes.append(
                f"{role}: architecture unknown ({ctx.models[role].problem or 'no config'})"
                "; set model to a catalog name or a readable checkpoint."
            )
        else:
            models[role] = mp
    layout = None
    if host.is_neuron and len(models) == len(list(spec.models())):
        used = max(m.tp_degree for _role, m in spec.models())
        layout = Layout(
            cores_used=used,
            visible_cores=f"0-{used - 1}" if used > 1 else "0",
            per_core_bytes=sum(mp.memory.per_core_bytes for mp in models.values()),
            budget_per_core=host.memory_per_core_bytes,
        )
    if not host.is_neuron:
        notes.append(
            "no Neuron host: pass --instance (e.g. trn1.32xlarge) for a layout and a "
            "tp recommendation."
        )
    rec = _recommend(ctx)
    if spec.backend == "reference":
        notes.append(
            "backend is 'reference': tp_degree and the NeuronCore budget do not apply "
            "to this run; the figures show what the pair needs on Neuron."
        )
    notes.append(
        "step times and speedups come from perf.py's latency model, fitted on published Neuron "
        "2.18 figures (docs/planning.md); measure with `neuron-spec bench` once the models load."
    )
    return Plan(host, models, layout, rec, _speculation(ctx, rec, positions), tuple(notes))
