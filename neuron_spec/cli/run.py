"""The subcommands that load the pair: generate (and its --dry-run), bench, serve."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from . import term
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    escape,
    load,
    preflight_or_stop,
    stderr_console,
    stdout_console,
    with_overrides,
)
from .term import Console, Table

if TYPE_CHECKING:
    from ..backends.base import Generator
    from ..backends.neuron_plan import PlanView
    from ..backends.neuronx.plan import LoadPlan
    from ..backends.nxdi.plan import NxdiPlan
    from ..config.spec import ConfigFile


def _load_generator(cfg: ConfigFile) -> Generator:
    from ..backends import load_generator

    err = stderr_console()
    with err.status("loading models...") as status:
        gen = load_generator(cfg, progress=lambda msg: status.update(msg))
    err.print(f"[dim]loaded on {gen.device}[/dim]")
    for message in gen.warnings():
        err.print(f"[yellow]warning:[/yellow] {escape(message)}")
    return gen


def _render_metrics(console: Console, metrics: dict[str, Any]) -> None:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.1f} ms"

    t = Table(show_header=False, box=False)
    t.add_column(style="dim")
    t.add_column()
    tpot = metrics["time_per_output_token_s"]
    rate = metrics["acceptance_rate"]
    t.add_row("tokens", f"{metrics['new_tokens']} new, {metrics['prompt_tokens']} prompt")
    t.add_row("time to first token", ms(metrics["time_to_first_token_s"]))
    t.add_row(
        "time per output token",
        f"mean {ms(tpot['mean'])}, p50 {ms(tpot['p50'])}, p90 {ms(tpot['p90'])}, "
        f"p99 {ms(tpot['p99'])}",
    )
    t.add_row("throughput", f"{metrics['tokens_per_s']:.1f} tokens/s")
    t.add_row("target passes", str(metrics["target_passes"]))
    if metrics["draft_tokens"]:
        source = "a draft model" if metrics["method"] == "draft" else f"{metrics['method']} lookup"
        t.add_row("proposals", f"from {source}, up to {metrics['draft_tokens']} per step")
        t.add_row(
            "accepted / drafted",
            f"{metrics['accepted']} / {metrics['drafted']}"
            + (f" ({rate:.0%})" if rate is not None else ""),
        )
        if metrics["mean_tokens_per_pass"] is not None:
            t.add_row("mean tokens per target pass", f"{metrics['mean_tokens_per_pass']:.2f}")
        t.add_row(
            "per-position acceptance",
            " ".join(f"{p:.2f}" for p in metrics["per_position_acceptance"]),
        )
        if metrics["alpha"] is not None:
            t.add_row("alpha (estimated)", f"{metrics['alpha']:.3f}")
    console.print(t)


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = with_overrides(load(args.config, args.backend), args)
    if args.dry_run:
        return _dry_run(cfg, args)
    if not args.prompt:
        raise UsageError("generate needs --prompt TEXT (or --dry-run)")
    _refuse_empty_prompts(args.prompt)  # before the preflight and any model loads
    if args.stream and len(args.prompt) > 1:
        raise UsageError("--stream takes a single --prompt")
    if preflight_or_stop(cfg, args.instance, args.json, quiet=args.quiet) is None:
        return EXIT_FAILED
    refuse_long_prompts(cfg, args.prompt, args.max_new_tokens)  # before any model loads
    gen = _load_generator(cfg)
    on_text = None
    if args.stream and not args.json:

        def on_text(_row: int, text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

    try:
        result = gen.generate(
            args.prompt if len(args.prompt) > 1 else args.prompt[0],
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            draft_tokens=args.draft_tokens,
            on_text=on_text,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        body = result.to_dict(single=len(args.prompt) == 1)
        body["warnings"] = gen.warnings()
        print(json.dumps(body, indent=2))
        return EXIT_OK
    console = stdout_console()
    if args.stream:
        sys.stdout.write("\n")
    else:
        for i, text in enumerate(result.text):
            if len(result.text) > 1:
                console.print(f"[bold]--- prompt {i + 1}[/bold]")
            console.print(args.prompt[i] + text, markup=False)
    console.print()
    _render_metrics(console, result.metrics.to_dict())
    return EXIT_OK


def _refuse_empty_prompts(prompts: list[str]) -> None:
    for i, text in enumerate(prompts, start=1):
        if not text:
            which = f"prompt {i} of {len(prompts)}" if len(prompts) > 1 else "the prompt"
            raise UsageError(
                f"--prompt: {which} is empty; there is nothing to continue. "
                "Fix: give the text to continue, e.g. --prompt 'The sea is'."
            )


def refuse_long_prompts(cfg: ConfigFile, prompts: list[str], max_new: int | None) -> None:
    """A prompt that cannot fit n_positions is refused here, with the `tokenizers` library
    alone (a fraction of a second), not after both models have loaded. Without a local
    tokenizer.json (a catalog name, s3://) the generator checks it after loading, as always."""
    import importlib.util
    from pathlib import Path

    from ..sources.checkpoint import resolve_model

    spec = cfg.spec
    if importlib.util.find_spec("tokenizers") is None:
        return
    m = spec.target
    where = m.tokenizer or resolve_model(m.model, cfg.base_dir, m.architecture).location
    path = Path(where).expanduser()
    path = path if path.is_dir() else path.parent
    file = path / "tokenizer.json"
    if not file.is_file():
        return
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(file))
    except Exception:  # an unusual tokenizer: the generator's own check runs after loading
        return
    limit = spec.n_positions
    new = max_new or spec.generation.max_new_tokens
    budget = None
    if spec.backend == "nxdi":  # its prompt encoding is compiled for the prompt budget
        from ..backends.nxdi.plan import context_length

        budget = context_length(cfg)
    for text in prompts:
        n = len(tok.encode(text).ids)
        if budget is not None and n > budget:
            raise UsageError(
                f"the prompt is {n} tokens; NxD Inference's prompt encoding is compiled for "
                f"at most {budget} (generation.max_prompt_tokens). Nothing was loaded."
            )
        if n + new > limit:
            raise UsageError(
                f"the prompt is {n} tokens and max_new_tokens is {new}: {n + new} exceeds "
                f"n_positions={limit}, the longest sequence the models were configured for. "
                "Fix: shorten the prompt, lower --max-new-tokens, or raise n_positions. "
                "Nothing was loaded."
            )


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from ..planning.bench import DEFAULT_PROMPTS, run_bench, settings

    cfg = with_overrides(load(args.config, args.backend), args)
    prompts = list(DEFAULT_PROMPTS)
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                prompts = [line.strip() for line in f if line.strip()]
        except OSError as exc:
            raise UsageError(f"--prompts {args.prompts}: {exc.strerror}") from None
        if not prompts:
            raise UsageError(f"--prompts {args.prompts}: no prompts in the file")
    if preflight_or_stop(cfg, args.instance, args.json, quiet=args.quiet) is None:
        return EXIT_FAILED
    gammas = args.draft_tokens
    if gammas is None:
        configured = cfg.spec.speculation.draft_tokens
        gammas = [configured] if cfg.spec.neuron else [1, 2, 4, 6, 8]
    gen = _load_generator(cfg)
    methods = _bench_methods(args.methods, cfg)
    total = len(settings(gen, methods, gammas)) * args.repeat
    with Progress(transient=True, console=term.rich_console()) as progress:
        task = progress.add_task("benchmarking", total=total)
        try:
            report = run_bench(
                gen,
                prompts,
                gammas,
                args.max_new_tokens,
                args.repeat,
                tick=lambda label: progress.update(task, advance=1, description=label),
                methods=methods,
            )
        except ValueError as exc:  # a prompt that cannot fit n_positions, or encodes to nothing
            raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    _render_bench(stdout_console(), report)
    return EXIT_OK


def _bench_methods(given: list[str] | None, cfg: ConfigFile) -> list[str]:
    """--methods, checked against what the config loads (a draft model only with method
    draft); by default every method it can run."""
    from ..planning.bench import METHODS

    loads_draft = cfg.spec.draft_model is not None
    if given is None:
        return [m for m in METHODS if m != "draft" or loads_draft]
    unknown = [m for m in given if m not in METHODS]
    if unknown:
        raise UsageError(
            f"--methods: {', '.join(unknown)} unknown; choose from draft, ngram, suffix"
        )
    if "draft" in given and not loads_draft:
        raise UsageError(
            "--methods draft: this config loads no draft model (speculation.method is "
            f"{cfg.spec.speculation.method}); set method: draft with a draft: section to compare it"
        )
    return list(dict.fromkeys(given))


def _render_bench(console: Console, report: dict[str, Any]) -> None:
    base = report["baseline"]
    console.print(
        f"target only: {base['tokens_per_s']:.1f} tokens/s ({_range(base)}) over "
        f"{report['prompts']} prompt(s) x {report['max_new_tokens']} tokens; target step "
        f"{base['target_step_ms']:.1f} ms; median of {report['repeat']} interleaved run(s)"
    )
    t = Table()
    cols = (
        "method",
        "length",
        "tokens/s",
        "min..max",
        "speedup",
        "predicted",
        "acceptance",
        "tokens/pass",
        "alpha",
        "c",
        "same output",
    )
    for c in cols:
        t.add_column(c, justify="right")

    def f(v: Any, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else (fmt.format(v) if isinstance(v, float) else str(v))

    for r in report["speculative"]:
        t.add_row(
            r["method"],
            f"adaptive, up to {r['draft_tokens']}" if r["adaptive"] else str(r["draft_tokens"]),
            f(r["tokens_per_s"], "{:.1f}"),
            _range(r),
            f(r["speedup"]),
            f(r["predicted_speedup"]),
            f(r["acceptance_rate"], "{:.0%}"),
            f(r["mean_tokens_per_pass"]),
            f(r["alpha"], "{:.3f}"),
            f(r["c"]),
            f(r["outputs_match_target"]),
        )
    console.print(t)
    if report["best_speedup"] > 1.0:
        console.print(f"[bold]best:[/bold] {escape(report['advice'])}")
    else:
        console.print(f"[bold]speculation does not pay here[/bold]: {escape(report['advice'])}")
    console.print(
        "[dim]acceptance: the share of proposed tokens the target accepted. alpha: the chance "
        "that one proposed token is accepted given those before it were, estimated from every "
        "step's proposals, whatever their length (accepted / (accepted + refused)); c: a "
        "proposal's cost as a "
        "share of a target step (0 for lookups, which run no model).[/dim]"
    )


def _range(row: dict[str, Any]) -> str:
    return f"{row['tokens_per_s_min']:.1f}..{row['tokens_per_s_max']:.1f}"


def _dry_run(cfg: ConfigFile, args: argparse.Namespace) -> int:
    """Everything generate does before loading: the preflight (for --instance, with every
    override), then the backend's load plan instead of the load."""
    if not cfg.spec.neuron:
        raise UsageError(
            "--dry-run shows a Neuron backend's load plan; this config uses the reference backend"
        )
    if preflight_or_stop(cfg, args.instance, args.json, local=False, quiet=args.quiet) is None:
        return EXIT_FAILED
    if cfg.spec.backend == "nxdi":
        from ..backends.nxdi.plan import build_nxdi_plan

        plan: NxdiPlan | LoadPlan = build_nxdi_plan(cfg)
    else:
        from ..backends.neuronx.plan import build_load_plan

        plan = build_load_plan(cfg)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        _render_plan(stdout_console(), plan.view(str(cfg.path)))
    return EXIT_OK


def _render_plan(console: Console, view: PlanView) -> None:
    console.print(f"[bold]load plan[/bold]{escape(view.title.removeprefix('load plan'))}")
    for fact in view.facts:
        console.print(fact, markup=False, soft_wrap=True)
    console.print("\n[bold]environment[/bold] (scripts/launch.sh exports these)")
    for name, value in view.env.items():
        console.print(f"  export {name}={shlex.quote(value)}", markup=False, soft_wrap=True)
    for heading, lines in view.sections:
        console.print(f"\n[bold]{heading}[/bold]")
        numbered = heading.startswith("calls")
        for i, line in enumerate(lines, 1):
            text = f"  {i:2d}. {line}" if numbered else f"  {line}"
            console.print(text, markup=False, highlight=False, soft_wrap=True)
    for note in view.notes:
        console.print(f"[dim]note: {escape(note)}[/dim]")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serving.server import check_origin, serve

    key = _api_key(args.api_key)  # before anything else: a blank key must never serve
    origins = [check_origin(o) for o in args.cors_origin]
    cfg = load(args.config, args.backend)
    if preflight_or_stop(cfg, args.instance, False, quiet=args.quiet) is None:
        return EXIT_FAILED
    slots = args.batch_size or cfg.spec.target.batch_size
    if args.batch_size and cfg.spec.backend != "reference":
        raise UsageError(
            f"--batch-size applies to the reference backend; the {cfg.spec.backend} backend "
            "decodes with the batch size its graphs were compiled for (target.batch_size)."
        )
    return serve(
        cfg, args.host, args.port, args.queue_size, args.drain_timeout, key, slots, origins
    )


def _api_key(given: str | None) -> str | None:
    """--api-key, else NEURON_SPEC_API_KEY, else None (no key); a blank or unusable key is a
    UsageError, whichever way it came."""
    import os

    from ..serving.server import check_api_key

    if given is not None:
        return check_api_key(given, "--api-key")
    from_env = os.environ.get("NEURON_SPEC_API_KEY")
    return None if from_env is None else check_api_key(from_env, "NEURON_SPEC_API_KEY")
