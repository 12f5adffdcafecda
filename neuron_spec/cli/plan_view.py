"""How `neuron-spec plan` looks on a terminal: memory, layout, recommendation, speedup, and
perf.py's predicted latency and cost (or the instances ranked by cost)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .term import Console, Table, escape, host_line

if TYPE_CHECKING:
    from ..config.spec import ConfigFile
    from ..planning.plan import Plan
    from ..preflight.base import Report


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"  # one unit throughout: GiB, as the per-core budget


def _findings_cell(findings: list[dict[str, str]]) -> str:
    warnings = sum(f["severity"] == "warning" for f in findings)
    return "ok" if not warnings else f"{warnings} warning{'s' if warnings > 1 else ''}"


def _kv_heads(mp: Any) -> str:
    rep = mp.kv_replication()
    if rep is None:
        return str(mp.kv_heads) if mp.kv_heads else "-"
    return (
        f"{rep['kv_heads']}, replicated to {rep['replicated_to']} "
        f"(+{rep['extra_kv_cache_bytes'] / 2**30:.2f} GiB)"
    )


def render_plan(console: Console, p: Plan, report: Report, cfg: ConfigFile) -> None:
    from ..preflight.memory import fmt_bytes

    console.print(f"[bold]{cfg.path}[/bold]  {host_line(p.host)}")
    console.print("memory per model at the configured tp")
    t = Table()
    t.add_column("")
    roles = list(p.models)
    for role in roles:
        t.add_column(role, justify="right")

    def row(label: str, fn: Any) -> None:
        t.add_row(label, *(fn(p.models[r]) for r in roles))

    def fits(mp: Any) -> str:
        f = mp.fitting_tps
        return ", ".join(map(str, f)) if 0 < len(f) <= 6 else (f"{f[0]} .. {f[-1]}" if f else "-")

    row("model", lambda mp: mp.architecture)
    row("amp / tp_degree", lambda mp: f"{mp.memory.amp} / {mp.memory.tp}")
    row("parameters (padded)", lambda mp: f"{mp.memory.padded_parameters / 1e9:.2f}B")
    row("weights", lambda mp: _gb(mp.memory.weight_bytes))
    row("KV cache", lambda mp: _gb(mp.memory.kv_cache_bytes))
    row("KV heads (GQA)", _kv_heads)
    row("runtime overhead", lambda mp: _gb(mp.memory.overhead_bytes))
    row("total", lambda mp: _gb(mp.memory.total_bytes))
    row("per core", lambda mp: fmt_bytes(mp.memory.per_core_bytes))
    row("min cores (total / budget)", lambda mp: str(mp.min_cores))
    row("fits alone at tp", fits)
    row("est. decode step", lambda mp: f"{mp.step_ms:.1f} ms" if mp.step_ms else "-")
    console.print(t)
    if p.layout:
        lay = p.layout
        who = "both models" if len(p.models) > 1 else "the target"
        console.print(
            f"layout: {who} on cores {lay.visible_cores} (NEURON_RT_VISIBLE_CORES), "
            f"{fmt_bytes(lay.per_core_bytes)} per core of {fmt_bytes(lay.budget_per_core)} "
            f"({lay.utilization:.0%})"
        )
    rec = p.recommendation
    if rec is not None:
        if rec.target_tp:
            draft = f", draft.tp_degree: {rec.draft_tp}" if rec.draft_tp else ""
            console.print(f"[bold]recommendation:[/bold] target.tp_degree: {rec.target_tp}{draft}")
        else:
            console.print("[bold]recommendation:[/bold] none")
        for r in rec.reasons:
            console.print(f"  - {escape(r)}")
    _render_speedup(console, p)
    for n in p.notes:
        console.print(f"[dim]note: {n}[/dim]")
    if not report.ok:
        console.print(
            f"[bold red]preflight: {len(report.errors)} error(s)[/]; run "
            f"`neuron-spec validate {cfg.path}` for the details."
        )


def _render_speedup(console: Console, p: Plan) -> None:
    sp = p.speculation
    if not sp.rows:
        return
    cost = (
        f"estimated c = draft/target step time = {sp.c_estimate:.2f}"
        if sp.c_estimate
        else "no draft model: proposals cost no model pass, c = 0"
    )
    console.print(
        f"expected speedup (draft_tokens {sp.draft_tokens}, window k={sp.window}, {cost})"
    )
    st = Table()
    for col in ("alpha", f"speedup at {sp.draft_tokens}", "best draft_tokens", "best speedup"):
        st.add_column(col, justify="right")
    keys = ("alpha", "speedup_at_draft_tokens", "best_draft_tokens", "best_speedup")
    for spec_row in sp.rows:
        st.add_row(*(str(spec_row[k]) for k in keys))
    console.print(st)


def render_performance(
    console: Console, perf: dict[str, Any] | None, money: dict[str, Any] | None, why: str | None
) -> None:
    if perf is None:
        console.print(f"[dim]performance: {escape(why or 'not available')}[/dim]")
        return
    t = perf["target"]
    console.print(
        f"[bold]performance[/bold] at tp {perf['tp_degree']} on {perf['instance']}, "
        f"batch {perf['batch_size']}, {perf['prompt_tokens']}-token prompt, "
        f"{perf['new_tokens']} new tokens (latency model: docs/planning.md)"
    )
    draft = (
        f"draft TPOT {perf['draft']['tpot_ms']:.2f} ms"
        if perf["draft"]
        else f"proposals by {perf['speculation_method']} lookup, no draft model"
    )
    console.print(
        f"  target: TTFT {t['ttft_ms']:.1f} ms, TPOT {t['tpot_ms']:.2f} ms (floor "
        f"{t['floor_ms']:.2f} ms), {t['tokens_per_s']:.1f} tokens/s; {draft}; "
        f"c = {perf['c']:.3f} ({perf['c_source']})"
    )
    console.print(f"  alpha = {perf['alpha']} ({escape(perf['alpha_source'])})")
    if perf.get("model_note"):
        console.print(f"  [yellow]{escape(perf['model_note'])}[/yellow]")
    st = Table()
    for col in ("gamma", "window k", "verify ms", "tokens/step", "TPOT ms", "speedup"):
        st.add_column(col, justify="right")
    for r in perf["speculative"]:
        mark = " *" if r["gamma"] == perf["best_gamma"] else ""
        st.add_row(
            f"{r['gamma']}{mark}",
            str(r["window_k"]),
            f"{r['verify_ms']:.2f}",
            f"{r['tokens_per_step']:.2f}",
            f"{r['tpot_ms']:.2f}",
            f"{r['speedup']:.2f}",
        )
    console.print(st)
    verdict = "speculation pays" if perf["speculation_pays"] else "target alone is faster"
    rate = "per request" if perf["batch_size"] == 1 else f"over {perf['batch_size']} rows"
    console.print(
        f"  best gamma {perf['best_gamma']} (*): {perf['best_speedup']:.2f}x, {verdict}; "
        f"{perf['speculative_tokens_per_s']:.1f} tokens/s {rate}"
    )
    if money is None or money["usd_per_hour"] is None:
        console.print(f"  cost: {escape((money or {}).get('source', 'no price'))}")
    else:
        console.print(
            f"  cost: ${money['usd_per_hour']:.2f}/h ({escape(money['source'])}); per million "
            f"output tokens ${money['target_only_usd_per_million_tokens']:.2f} target alone, "
            f"${money['speculative_usd_per_million_tokens']:.2f} speculative"
        )
    _render_batching(console, perf["batching"])


def _render_batching(console: Console, rows: list[dict[str, Any]]) -> None:
    """Tokens/s and $/Mtok at each batch size that fits, target alone and speculative."""
    if not rows:
        return
    console.print("  [bold]batching[/bold]: aggregate output tokens/s at each batch size that fits")
    t = Table()
    cols = ("batch", "target TPOT ms", "target tok/s", "best gamma", "spec tok/s",
            "$/Mtok target", "$/Mtok spec", "runs here")  # fmt: skip
    for col in cols:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            str(r["batch"]),
            f"{r['target_tpot_ms']:.2f}",
            f"{r['target_tokens_per_s']:.0f}",
            str(r["best_gamma"]) if r["speculation_pays"] else f"{r['best_gamma']} (loses)",
            f"{r['speculative_tokens_per_s']:.0f}",
            _usd(r.get("target_only_usd_per_million_tokens")),
            _usd(r.get("speculative_usd_per_million_tokens")),
            "yes" if r["runs_here"] else "not yet",
        )
    console.print(t)
    if not all(r["runs_here"] for r in rows):
        console.print(
            "  [dim]batch > 1 rows marked 'not yet' are predictions: NxD Inference's fused "
            "mode and transformers-neuronx's library loop decode batch 1 "
            "(batch-speculation).[/dim]"
        )


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_compare(console: Console, ranking: dict[str, Any], cfg: ConfigFile) -> None:
    console.print(
        f"[bold]{escape(str(cfg.path))}[/bold]: instances where the pair fits, cheapest per "
        f"million output tokens first (alpha {ranking['alpha']}, prices {ranking['region']})"
    )
    if not ranking["ranked"]:
        named = len(ranking["excluded"])
        console.print(f"  the pair fits none of the {named} instance(s) named:")
        for e in ranking["excluded"]:
            console.print(f"  excluded {e['instance']}: {escape(e['reason'] or '')}")
        return
    t = Table()
    cols = ("instance", "min tp", "tp", "target TPOT ms", "best gamma", "spec TPOT ms",
            "$/h", "batch", "$/Mtok", "preflight")  # fmt: skip
    for col in cols:
        t.add_column(col, justify="left" if col == "instance" else "right")
    for r in ranking["ranked"]:
        usd = r["usd_per_hour"]
        mtok = r["usd_per_million_tokens"]
        t.add_row(
            r["instance"],
            str(r["min_tp"]),
            str(r["tp_degree"]),
            f"{r['target_tpot_ms']:.2f}",
            str(r["best_gamma"]),
            f"{r['speculative_tpot_ms']:.2f}",
            "-" if usd is None else f"{usd:.2f}",
            str(r.get("batch_size") or "-"),
            "-" if mtok is None else f"{mtok:.2f}",
            _findings_cell(r.get("findings", [])),
        )
    console.print(t)
    warned = [r for r in ranking["ranked"] if r.get("findings")]
    for r in warned:
        codes = ", ".join(sorted({f["code"] for f in r["findings"]}))
        console.print(f"  {r['instance']} at tp {r['tp_degree']}: `validate` warns: {codes}")
    for e in ranking["excluded"]:
        console.print(f"  excluded {e['instance']}: {escape(e['reason'] or '')}")
