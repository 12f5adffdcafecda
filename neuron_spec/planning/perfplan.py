"""`plan`'s performance and cost sections, and `plan --compare`: perf.py's latency model
applied to a config on an instance, the speculative step at each gamma, and the price of a
million output tokens.

speculative TPOT(gamma) = (gamma x draft step + verify(gamma + 1)) / E[tokens per step],
E = (1 - alpha^(gamma+1)) / (1 - alpha). Requests are timed whole: TTFT, then
new_tokens - 1 steps, so short outputs pay their prefill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from ..config.catalog import INSTANCES, TP_RULES, Architecture
from ..config.spec import DeploymentSpec
from ..config.yamlread import show
from ..engine.speedup import MAX_GAMMA, mean_tokens_per_pass
from ..errors import UsageError
from ..host.facts import HostFacts
from ..preflight.memory import model_memory
from .perf import FAMILIES, Family, decode_step_s, floor_s, prefill_s, verify_step_s
from .pricing import DEFAULT_REGION, price, usd_per_million_tokens

if TYPE_CHECKING:
    from .plan import Plan

GAMMAS = tuple(range(1, MAX_GAMMA + 1))  # searched; the table shows 1..8, or past the best
SHOWN_GAMMAS = 8
DEFAULT_ALPHA = 0.8
DEFAULT_PROMPT_TOKENS = 128


@dataclass(frozen=True)
class Inputs:
    """What the user told plan about the workload and the money."""

    prompt_tokens: int
    new_tokens: int
    alpha: float
    alpha_source: str
    c_measured: float | None = None  # draft step / target step, from a bench file
    price_usd_per_hour: float | None = None
    region: str = DEFAULT_REGION


def inputs(
    spec: DeploymentSpec,
    prompt_tokens: int | None,
    new_tokens: int | None,
    alpha: float | None,
    bench_file: str | None,
    price_override: float | None,
    region: str | None,
) -> Inputs:
    method = spec.speculation.method
    measured_alpha, c = read_bench(bench_file, method) if bench_file else (None, None)
    if alpha is not None:
        a, source = alpha, "--alpha"
    elif measured_alpha is not None:
        a, source = measured_alpha, f"measured ({bench_file})"
    else:
        a, source = DEFAULT_ALPHA, "assumed: pass --alpha A or --from-bench FILE"
    return Inputs(
        prompt_tokens=prompt_tokens or DEFAULT_PROMPT_TOKENS,
        new_tokens=new_tokens or spec.generation.max_new_tokens,
        alpha=a,
        alpha_source=source,
        c_measured=c,
        price_usd_per_hour=price_override,
        region=region or DEFAULT_REGION,
    )


MAX_BENCH_BYTES = 1 << 20  # a bench report is a few kB; a verify report some tens
VERIFY_KIND = "neuron-spec verify"  # a verify report's "kind": read like bench's JSON
MAX_C = 10.0  # draft step / target step: a draft 10x slower than its target is a wrong file


def read_bench(path: str, method: str = "draft") -> tuple[float | None, float | None]:
    """(alpha, c) of the fastest row of a `neuron-spec bench --json` file or a `neuron-spec
    verify` report for `method` (rows written before bench compared methods are the draft
    model's): alpha in [0, 1], c in (0, MAX_C] ([0, MAX_C] for a lookup), both finite; a verify
    report whose checks failed, or anything else, is a UsageError naming the file."""
    from ..util.safeio import Unreadable, read_json

    try:
        report = read_json(Path(path), MAX_BENCH_BYTES)
        _refuse_failed_verify(path, report)
        rows = [r for r in report["speculative"] if r.get("method", "draft") == method]
        if not rows:
            raise UsageError(
                f"--from-bench {path}: no row for speculation.method {method}; run `neuron-spec "
                f"bench CONFIG --methods {method} --json` to measure it"
            )
        best = _fastest(rows, report)
        alpha, c = best.get("alpha"), best.get("c")
    except Unreadable as exc:
        raise UsageError(f"--from-bench {path}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(
            f"--from-bench {path}: not the JSON of `neuron-spec bench --json` or a `neuron-spec "
            "verify` report (it needs 'speculative' rows with 'alpha' and 'c', and their "
            "'speedup' or 'best_draft_tokens')"
        ) from None
    lookup = method != "draft"  # a lookup's c is 0; a draft model always costs something
    low = "[0" if lookup else "(0"
    problem = UsageError(
        f"--from-bench {path}: the best {method} row needs a measured alpha in [0, 1] and "
        f"c in {low}, {MAX_C:g}]; it has alpha {show(alpha)}, c {show(c)}"
    )
    if not _number(alpha) or not _number(c) or not 0 <= alpha <= 1 or c > MAX_C:
        raise problem
    if c < 0 or (c == 0 and not lookup):
        raise problem
    return float(alpha), float(c)


def _refuse_failed_verify(path: str, report: Any) -> None:
    """A verify report is read like bench's JSON, unless a check failed: its figures then do
    not describe a working deployment (or there are none)."""
    if not isinstance(report, dict) or report.get("kind") != VERIFY_KIND or report.get("ok"):
        return
    failed = report.get("failed")
    names = ", ".join(str(n) for n in failed) if isinstance(failed, list) and failed else "?"
    raise UsageError(
        f"--from-bench {path}: this verify report failed its checks ({names[:200]}), so its "
        "figures do not describe a working deployment; fix what failed and run `neuron-spec "
        "verify` again"
    )


def _fastest(rows: list[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    """The fastest row; a file from before rows had their speedup names its best row."""
    if all("speedup" in r for r in rows):
        return max(rows, key=lambda r: float(r["speedup"]))
    return next(r for r in rows if r["draft_tokens"] == report["best_draft_tokens"])


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _request_s(ttft_s: float, tpot_s: float, new_tokens: int) -> float:
    return ttft_s + max(new_tokens - 1, 0) * tpot_s


def request_tokens_per_s(ttft_s: float, tpot_s: float, new_tokens: int) -> float:
    """Output tokens per second of one request timed whole: TTFT, then new_tokens - 1 steps."""
    return new_tokens / _request_s(ttft_s, tpot_s, new_tokens)


def performance_tp(spec: DeploymentSpec, p: Plan) -> int | None:
    """The tp the prediction is for: the config's when draft and target share it and the pair
    fits there; otherwise the recommended one (None when the pair fits nowhere)."""
    rec = p.recommendation
    tp = spec.target.tp_degree
    fits = p.layout is not None and p.layout.per_core_bytes <= p.layout.budget_per_core
    valid = p.host.platform is not None and TP_RULES[p.host.platform].allowed(tp)
    shared = all(m.tp_degree == tp for _role, m in spec.models())
    if shared and fits and valid and tp <= p.host.cores:
        return tp
    return rec.target_tp if rec else None


def draft_runs(gamma: int, alpha: float, mode: str | None) -> float:
    """Draft forward passes per round. NxDI fused: the graph runs the draft k = gamma + 1 times
    (the last draft is never verified), in one device call. NxDI unfused (neuron-spec's engine
    over a one-token draft graph): gamma, plus one more when every draft was accepted (the last
    draft is then fed before the next round), so gamma + alpha^gamma on average. Otherwise
    gamma."""
    if mode == "fused":
        return gamma + 1.0
    if mode == "unfused":
        return gamma + alpha**gamma
    return float(gamma)


BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class _Pair:
    """The pair on one host at one tp: what every batch size's figures are computed from."""

    spec: DeploymentSpec
    target: Architecture
    draft: Architecture | None  # None: a lookup proposes (no draft passes, no draft memory)
    family: Family
    tp: int
    positions: int
    inp: Inputs
    c_scale: float  # measured c over the model's, or 1

    def steps(self, batch: int) -> tuple[float, float]:
        """(target decode step, draft decode step) seconds at `batch` rows; a lookup's
        proposals cost no model pass (0)."""
        t_amp = self.spec.target.amp
        t = decode_step_s(self.target, t_amp, self.tp, self.family, self.positions, batch=batch)
        draft = self.spec.draft_model
        if self.draft is None or draft is None:
            return t, 0.0
        d = decode_step_s(self.draft, draft.amp, self.tp, self.family, self.positions, batch=batch)
        return t, d * self.c_scale

    def gammas(self, batch: int) -> list[dict[str, Any]]:
        """The speculation table at `batch` rows."""
        t_step, d_step = self.steps(batch)
        mode = self.spec.nxdi.speculation_mode if self.spec.backend == "nxdi" else None
        rows = []
        for gamma in GAMMAS:
            verify = verify_step_s(
                self.target, self.spec.target.amp, self.tp, self.family, self.positions,
                gamma + 1, batch=batch,
            )  # fmt: skip
            tokens = mean_tokens_per_pass(self.inp.alpha, gamma)
            tpot = (draft_runs(gamma, self.inp.alpha, mode) * d_step + verify) / tokens
            rows.append(
                {
                    "gamma": gamma,
                    "window_k": gamma + 1,
                    "verify_ms": round(verify * 1e3, 3),
                    "tokens_per_step": round(tokens, 3),
                    "tpot_ms": round(tpot * 1e3, 3),
                    "speedup": round(t_step / tpot, 3),
                }
            )
        return rows

    def fits(self, batch: int, budget: float) -> bool:
        archs = {"target": self.target, "draft": self.draft}
        used = sum(
            model_memory(a, tp=self.tp, amp=m.amp, n_positions=m.max_positions, batch_size=batch)
            .per_core_bytes
            for role, m in self.spec.models()
            if (a := archs[role]) is not None
        )  # fmt: skip
        return used <= budget


def _pair(
    spec: DeploymentSpec, t_arch: Architecture, d_arch: Architecture | None, host: HostFacts,
    tp: int, inp: Inputs,
) -> _Pair:  # fmt: skip
    family = FAMILIES[host.platform or "inf2"]
    positions = min(inp.prompt_tokens + inp.new_tokens, spec.target.max_positions)
    pair = _Pair(spec, t_arch, d_arch, family, tp, positions, inp, 1.0)
    if inp.c_measured is None or d_arch is None:
        return pair
    t_step, d_step = pair.steps(1)
    return _Pair(
        spec, t_arch, d_arch, family, tp, positions, inp, inp.c_measured / (d_step / t_step)
    )


def batching(
    pair: _Pair, host: HostFacts, ttft: float, hourly: float | None
) -> list[dict[str, Any]]:
    """Aggregate tokens/s and $/million tokens at each batch size the pair fits, target alone
    and speculative at that batch's best gamma. A batch reads the weights once for all its
    rows, so a memory-bound step serves more rows at almost no cost, until each row's KV
    reads and compute take over; speculation's verification then stops being free."""
    budget = host.memory_per_core_bytes or 16 * 1024**3
    new = pair.inp.new_tokens
    spec = pair.spec  # batch > 1 runs on the reference backend, TNx's engine loop, NxDI unfused
    batch_one = (spec.backend == "nxdi" and spec.nxdi.speculation_mode == "fused") or (
        spec.backend == "neuronx" and spec.speculation.loop != "engine"
    )
    out = []
    for batch in BATCHES:
        if not pair.fits(batch, budget):
            break
        t_step, _ = pair.steps(batch)
        best = min(pair.gammas(batch), key=lambda r: r["tpot_ms"])
        target_rate = batch * new / _request_s(ttft, t_step, new)
        spec_rate = batch * new / _request_s(ttft, best["tpot_ms"] / 1e3, new)
        row: dict[str, Any] = {
            "batch": batch,
            "target_tpot_ms": round(t_step * 1e3, 3),
            "target_tokens_per_s": round(target_rate, 2),
            "best_gamma": best["gamma"],
            "speculative_tpot_ms": best["tpot_ms"],
            "speculative_tokens_per_s": round(spec_rate, 2),
            "speculation_pays": best["speedup"] > 1.0,
            "runs_here": batch == 1 or not batch_one,
        }
        if hourly is not None:
            row["target_only_usd_per_million_tokens"] = round(
                usd_per_million_tokens(hourly, target_rate), 3
            )
            row["speculative_usd_per_million_tokens"] = round(
                usd_per_million_tokens(hourly, spec_rate), 3
            )
        out.append(row)
    return out


def performance(
    spec: DeploymentSpec, t_arch: Architecture, d_arch: Architecture | None, host: HostFacts,
    tp: int, inp: Inputs,
) -> dict[str, Any]:  # fmt: skip
    """The performance section for the pair on `host` at a shared `tp`, at the config's
    batch size (target.batch_size; `plan --batch B` sets it)."""
    pair = _pair(spec, t_arch, d_arch, host, tp, inp)
    batch = spec.target.batch_size
    t_step, d_step = pair.steps(batch)
    t_one, d_one = pair.steps(1)
    ttft = prefill_s(t_arch, spec.target.amp, tp, pair.family, inp.prompt_tokens)
    mode = spec.nxdi.speculation_mode if spec.backend == "nxdi" else None
    rows = pair.gammas(batch)
    best = min(rows, key=lambda r: r["tpot_ms"])
    # the table always extends past the best gamma it reports (unless that is the last searched)
    rows = rows[: max(SHOWN_GAMMAS, int(best["gamma"]) + 1)]
    target_rate = batch * inp.new_tokens / _request_s(ttft, t_step, inp.new_tokens)
    spec_rate = batch * inp.new_tokens / _request_s(ttft, best["tpot_ms"] / 1e3, inp.new_tokens)
    hourly = _hourly(host.instance, inp)[0]
    return {
        "instance": host.instance,
        "tp_degree": tp,
        "batch_size": batch,
        "speculation_mode": mode,
        "prompt_tokens": inp.prompt_tokens,
        "new_tokens": inp.new_tokens,
        "alpha": inp.alpha,
        "alpha_source": inp.alpha_source,
        "speculation_method": spec.speculation.method,
        "c": round(d_one / t_one, 4),
        "c_source": _c_source(spec, inp),
        "target": {
            "ttft_ms": round(ttft * 1e3, 2),
            "tpot_ms": round(t_step * 1e3, 3),
            "floor_ms": round(floor_s(t_arch, spec.target.amp, tp, pair.family) * 1e3, 3),
            "tokens_per_s": round(target_rate, 2),
        },
        "draft": None if d_arch is None else {"tpot_ms": round(d_step * 1e3, 3)},
        "speculative": rows,
        "best_gamma": best["gamma"],
        "best_speedup": best["speedup"],
        "speculation_pays": best["speedup"] > 1.0,
        "speculative_tokens_per_s": round(spec_rate, 2),
        "batching": batching(pair, host, ttft, hourly),
        "model_note": (
            None
            if host.platform in ("inf2", "trn1")
            else "extrapolated: the latency model is fitted on NeuronCore-v2 (Inf2) rows only"
        ),
    }


def _c_source(spec: DeploymentSpec, inp: Inputs) -> str:
    if spec.draft_model is None:
        return f"0: {spec.speculation.method} proposes without a model pass"
    return "measured (bench)" if inp.c_measured is not None else "model"


def _hourly(instance: str | None, inp: Inputs) -> tuple[float | None, str]:
    """The $/h the cost figures use and where it comes from."""
    if inp.price_usd_per_hour is not None:
        return inp.price_usd_per_hour, "--price"
    row = price(instance or "", inp.region) if instance else None
    if row is not None:
        return row.usd_per_hour, f"{row.source}, {row.as_of}"
    return None, f"no on-demand price for {instance} in {inp.region}: pass --price"


def cost(instance: str | None, perf: dict[str, Any], inp: Inputs) -> dict[str, Any]:
    """$/h and $/million output tokens, target alone and speculative (at the best gamma)."""
    hourly, source = _hourly(instance, inp)
    if hourly is None:
        return {"usd_per_hour": None, "usd_per_million_tokens": None, "source": source}
    target = usd_per_million_tokens(hourly, perf["target"]["tokens_per_s"])
    spec = usd_per_million_tokens(hourly, perf["speculative_tokens_per_s"])
    return {
        "usd_per_hour": hourly,
        "region": inp.region,
        "source": source,
        "target_only_usd_per_million_tokens": round(target, 3),
        "speculative_usd_per_million_tokens": round(spec, 3),
        "usd_per_million_tokens": round(min(target, spec), 3),
    }


def compare_instances(names: list[str]) -> list[str]:
    if names == ["all"]:
        return list(INSTANCES)
    unknown = [n for n in names if n not in INSTANCES]
    if unknown:
        raise UsageError(
            f"--compare: {', '.join(unknown)} not in the catalog; known: {', '.join(INSTANCES)}"
        )
    return names


def section(
    spec: DeploymentSpec, host: HostFacts, archs: dict[str, Architecture | None], tp: int | None,
    inp: Inputs,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:  # fmt: skip
    """(performance, cost, why there are none) for the pair on `host` at `tp`."""
    t_arch, d_arch = archs.get("target"), archs.get("draft")
    if not host.is_neuron or host.platform is None:
        return None, None, "no Neuron instance: pass --instance for time and cost"
    if t_arch is None or (d_arch is None and spec.draft_model is not None):
        return None, None, "a model's architecture is unknown: set architecture: or a catalog name"
    if tp is None:
        return None, None, f"the pair fits {host.instance} at no tp the runtime accepts"
    perf = performance(spec, t_arch, d_arch, host, tp, inp)
    return perf, cost(host.instance, perf, inp), None


def _setup_findings(
    spec: DeploymentSpec, host: HostFacts, base_dir: Path, target_tp: int | None,
    draft_tp: int | None,
) -> list[dict[str, str]]:  # fmt: skip
    """What `validate` says of the pair on `host` at the tp the comparison ranks it with
    (errors and warnings; the informational notes are left out)."""
    from ..preflight.check import preflight

    draft = spec.draft_model
    setup = spec.replace(
        instance=host.instance or spec.instance,
        target=spec.target.replace(tp_degree=target_tp or spec.target.tp_degree),
        draft=draft and draft.replace(tp_degree=draft_tp or draft.tp_degree),
    )
    report = preflight(setup, host, base_dir)
    return [f.to_dict() for f in report.findings if f.severity != "info"]


def _row_cost(row: dict[str, Any]) -> float | None:
    costs = [
        row.get("target_only_usd_per_million_tokens"),
        row.get("speculative_usd_per_million_tokens"),
    ]
    known = [c for c in costs if c is not None]
    return min(known) if known else None


def _best_batch(rows: list[dict[str, Any]], at_config: float | None) -> dict[str, Any]:
    """The batch size a comparison ranks a setup at: the cheapest per token among those
    neuron-spec runs on that backend; and the cheapest the model predicts at any batch."""
    runnable = [r for r in rows if r["runs_here"] and _row_cost(r) is not None]
    every = [r for r in rows if _row_cost(r) is not None]
    if not runnable:
        return {"batch_size": None, "usd_per_million_tokens": at_config}
    best = min(runnable, key=lambda r: _row_cost(r) or 0.0)
    out: dict[str, Any] = {
        "batch_size": best["batch"],
        "usd_per_million_tokens": _row_cost(best),
        "speculation_pays_at_that_batch": best["speculation_pays"],
    }
    cheapest = min(every, key=lambda r: _row_cost(r) or 0.0)
    if cheapest is not best:
        out["predicted_best_batch"] = {
            "batch_size": cheapest["batch"],
            "usd_per_million_tokens": _row_cost(cheapest),
            "note": "not run by neuron-spec on this backend and loop (batch 1 there)",
        }
    return out


def compare(spec: DeploymentSpec, base_dir: Path, names: list[str], inp: Inputs) -> dict[str, Any]:
    """Every named instance where the pair fits, ranked by $/million tokens (then TPOT), and
    why each other one is left out."""
    from ..preflight.base import build_context
    from ..preflight.rules import pair_fitting_tps
    from .plan import plan

    ranked: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    for name in compare_instances(names):
        host = HostFacts.from_instance(INSTANCES[name])
        rec = plan(spec, host, base_dir).recommendation
        ctx = build_context(spec, host, base_dir)
        archs = {role: ctx.arch(role) for role, _ in spec.models()}
        perf, money, why = section(spec, host, archs, rec.target_tp if rec else None, inp)
        if perf is None or money is None:
            reason = rec.reasons[0] if rec and rec.target_tp is None and rec.reasons else why
            excluded.append({"instance": name, "reason": reason})
            continue
        tp = perf["tp_degree"]
        findings = _setup_findings(spec, host, base_dir, tp, rec.draft_tp if rec else tp)
        errors = [f for f in findings if f["severity"] == "error"]
        if errors:
            first = errors[0]
            excluded.append(
                {
                    "instance": name,
                    "reason": f"the preflight refuses it at tp {tp}: "
                    f"{first['code']} ({first['path']}): {first['message']}",
                    "findings": findings,
                }
            )
            continue
        fits = pair_fitting_tps(ctx) or []
        ranked.append(
            {
                "instance": name,
                "findings": findings,
                "min_tp": fits[0] if fits else None,
                "tp_degree": perf["tp_degree"],
                "target_tpot_ms": perf["target"]["tpot_ms"],
                "best_gamma": perf["best_gamma"],
                "speculative_tpot_ms": min(r["tpot_ms"] for r in perf["speculative"]),
                "usd_per_hour": money["usd_per_hour"],
                "price_source": money["source"],
                **_best_batch(perf["batching"], money["usd_per_million_tokens"]),
            }
        )
    ranked.sort(
        key=lambda r: (
            r["usd_per_million_tokens"] is None,
            r["usd_per_million_tokens"] or 0.0,
            r["speculative_tpot_ms"],
        )
    )
    return {"alpha": inp.alpha, "region": inp.region, "ranked": ranked, "excluded": excluded}
