"""The `neuron-spec` command: thin subcommands over library calls.

Exit codes (docs/exit-codes.md): 0 ok; 1 the checks found errors, or the work failed;
2 the command cannot run as given (usage, config, input, or something on this machine to
change first); 70 internal error (a bug); 130 interrupted. User errors never show a traceback
unless --debug is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import term
from .backends import backend_warnings
from .cli_args import build_parser
from .errors import ConfigError, NeuronSpecError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from .config import ConfigFile
    from .host import HostFacts
    from .preflight import Report

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE: distinct from every error neuron-spec reports
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


# --- shared steps ------------------------------------------------------------------------------


def _load(path: str, backend: str | None = None) -> ConfigFile:
    import dataclasses

    from .config import load_config

    cfg = load_config(path)
    if backend is not None and backend != cfg.spec.backend:
        cfg = dataclasses.replace(cfg, spec=cfg.spec.model_copy(update={"backend": backend}))
    return cfg


# Command-line flags that stand for a config field: (flag, section, field). The preflight, the
# load plan (--dry-run) and the run all see the same values.
_OVERRIDES = (
    ("--temperature", "sampling", "temperature"),
    ("--top-k", "sampling", "top_k"),
    ("--top-p", "sampling", "top_p"),
    ("--seed", "sampling", "seed"),
    ("--draft-tokens", "speculation", "draft_tokens"),
    ("--max-new-tokens", "generation", "max_new_tokens"),
)


def _with_overrides(cfg: ConfigFile, args: argparse.Namespace) -> ConfigFile:
    """CONFIG with the flags given on the command line written into it (validated like the
    file; a bad value is a usage error naming the flag)."""
    import dataclasses

    from pydantic import ValidationError

    spec = cfg.spec
    for flag, section, name in _OVERRIDES:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None or isinstance(value, list):
            continue
        part = getattr(spec, section)
        try:
            new = type(part).model_validate({**part.model_dump(), name: value})
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise UsageError(f"{flag} {value}: {msg} (the config's {section}.{name})") from None
        spec = spec.model_copy(update={section: new})
    return dataclasses.replace(cfg, spec=spec)


def _host(cfg: ConfigFile, override: str | None) -> HostFacts:
    from .catalog import INSTANCES
    from .config import did_you_mean
    from .host import HostFacts, resolve_host

    if override is not None and override not in INSTANCES:
        raise UsageError(
            f"--instance {override!r} is not a known instance type."
            f"{did_you_mean(override, list(INSTANCES))} Known: {', '.join(INSTANCES)}."
        )
    if cfg.spec.backend == "reference" and override is None and cfg.spec.instance == "auto":
        return HostFacts.none()  # the reference backend runs anywhere: nothing to detect
    return resolve_host(cfg.spec.instance, override)


def _console() -> Console:
    return term.console()


escape = term.escape
_host_line = term.host_line


def _findings_json(report: Report, cfg: ConfigFile) -> list[dict[str, Any]]:
    return [{**f.to_dict(), "location": cfg.where(f.path)} for f in report.findings]


def _render_report(console: Console, report: Report, cfg: ConfigFile) -> None:
    console.print(f"[bold]{cfg.path}[/bold]  {_host_line(report.host)}")
    for f in report.findings:
        style = _SEVERITY_STYLE[f.severity]
        console.print(
            f"[{style}]{f.severity:<7}[/] [bold]{f.code}[/bold]  {f.path}  "
            f"[dim]{cfg.where(f.path)}[/dim]"
        )
        console.print(f"  {f.message}", markup=False)
        if f.fix:
            console.print(f"  [green]Fix:[/green] {escape(f.fix)}")
    n_err, n_warn = len(report.errors), len(report.warnings)
    verdict = "[bold red]FAIL[/]" if n_err else "[bold green]OK[/]"
    console.print(
        f"{verdict}: {n_err} error(s), {n_warn} warning(s). "
        "Each code is explained in docs/findings/<code>.md."
    )


# --- subcommands -------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from .preflight import preflight

    cfg = _load(args.config, args.backend)
    host = _host(cfg, args.instance)
    report = preflight(cfg.spec, host, cfg.base_dir, local=args.local)
    if args.json:
        out = {
            "config": str(cfg.path),
            "ok": report.ok,
            "host": host.to_dict(),
            "findings": _findings_json(report, cfg),
        }
        print(json.dumps(out, indent=2))
    else:
        _render_report(_console(), report, cfg)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_plan(args: argparse.Namespace) -> int:
    from . import plan_view
    from .perfplan import compare, inputs, section
    from .plan import plan
    from .preflight import build_context, preflight

    cfg = _load(args.config, args.backend)
    inp = inputs(
        cfg.spec,
        args.prompt_tokens,
        args.new_tokens,
        args.alpha,
        args.from_bench,
        args.price,
        args.region,
    )
    if args.compare:
        names = [n.strip() for n in args.compare.split(",") if n.strip()]
        ranking = compare(cfg.spec, cfg.base_dir, names, inp)
        if args.json:
            print(json.dumps({"config": str(cfg.path), "compare": ranking}, indent=2))
        else:
            plan_view.render_compare(_console(), ranking, cfg)
        return EXIT_OK if ranking["ranked"] else EXIT_FAILED
    host = _host(cfg, args.instance)
    p = plan(cfg.spec, host, cfg.base_dir)
    report = preflight(cfg.spec, host, cfg.base_dir)
    ctx = build_context(cfg.spec, host, cfg.base_dir)
    archs = {role: ctx.arch(role) for role, _ in cfg.spec.models()}
    tp = plan_view.performance_tp(cfg.spec, p)
    perf, money, why = section(cfg.spec, host, archs, tp, inp)
    if args.json:
        out = {
            "config": str(cfg.path),
            "ok": report.ok,
            **p.to_dict(),
            "performance": perf,
            "cost": money,
            "performance_note": why,
            "findings": _findings_json(report, cfg),
        }
        print(json.dumps(out, indent=2))
    else:
        plan_view.render_plan(_console(), p, report, cfg)
        plan_view.render_performance(_console(), perf, money, why)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_schema(args: argparse.Namespace) -> int:
    from .config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def _preflight_or_stop(
    cfg: ConfigFile, instance: str | None, as_json: bool, local: bool = True, quiet: bool = False
) -> Report | None:
    """Run the preflight; on errors, print them and return None (the caller exits 1).
    Otherwise say its warnings once, one line each on stderr, unless `quiet`.
    `local`: the pair loads on this machine (generate, serve), so its directories count."""
    from .preflight import preflight

    report = preflight(cfg.spec, _host(cfg, instance), cfg.base_dir, local=local)
    if report.ok:
        if not quiet:
            _say_warnings(report, cfg)
        return report
    if as_json:
        print(json.dumps({"ok": False, "findings": _findings_json(report, cfg)}, indent=2))
    else:
        _render_report(_stderr_console(), report, cfg)
        sys.stderr.write("stopped before loading anything: fix the errors above.\n")
    return None


def _say_warnings(report: Report, cfg: ConfigFile) -> None:
    if not report.warnings:
        return
    err = _stderr_console()
    for f in report.warnings:
        err.print(
            f"[yellow]warning[/yellow] {f.code} ({f.path}, {escape(cfg.where(f.path))}): "
            f"{escape(f.message)}"
        )
    where = escape(str(cfg.path))
    err.print(
        f"[dim]{len(report.warnings)} preflight warning(s): `neuron-spec validate {where}` "
        "shows each with its fix; --quiet hides them[/dim]"
    )


def _load_generator(cfg: ConfigFile) -> Any:
    from .backends import load_generator

    err = _stderr_console()
    with err.status("loading models...") as status:
        gen = load_generator(cfg, progress=lambda msg: status.update(msg))
    err.print(f"[dim]loaded on {gen.device}[/dim]")
    for message in backend_warnings(gen):
        err.print(f"[yellow]warning:[/yellow] {escape(message)}")
    return gen


def _render_metrics(console: Console, metrics: dict[str, Any]) -> None:
    from rich.table import Table

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.1f} ms"

    t = Table(show_header=False, box=None, pad_edge=False)
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
        t.add_row("draft tokens per step", str(metrics["draft_tokens"]))
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
    cfg = _with_overrides(_load(args.config, args.backend), args)
    if args.dry_run:
        return _dry_run(cfg, args)
    if not args.prompt:
        raise UsageError("generate needs --prompt TEXT (or --dry-run)")
    if args.stream and len(args.prompt) > 1:
        raise UsageError("--stream takes a single --prompt")
    if _preflight_or_stop(cfg, args.instance, args.json, quiet=args.quiet) is None:
        return EXIT_FAILED
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
        body["warnings"] = backend_warnings(gen)
        print(json.dumps(body, indent=2))
        return EXIT_OK
    console = _console()
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


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from .bench import DEFAULT_PROMPTS, run_bench

    cfg = _with_overrides(_load(args.config, args.backend), args)
    prompts = list(DEFAULT_PROMPTS)
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                prompts = [line.strip() for line in f if line.strip()]
        except OSError as exc:
            raise UsageError(f"--prompts {args.prompts}: {exc.strerror}") from None
        if not prompts:
            raise UsageError(f"--prompts {args.prompts}: no prompts in the file")
    if _preflight_or_stop(cfg, args.instance, args.json, quiet=args.quiet) is None:
        return EXIT_FAILED
    gammas = args.draft_tokens
    if gammas is None:
        configured = cfg.spec.speculation.draft_tokens
        gammas = [configured] if cfg.spec.backend == "neuronx" else [1, 2, 4, 6, 8]
    gen = _load_generator(cfg)
    total = (1 + len(gammas)) * args.repeat
    with Progress(transient=True, console=_stderr_console()) as progress:
        task = progress.add_task("benchmarking", total=total)
        try:
            report = run_bench(
                gen,
                prompts,
                gammas,
                args.max_new_tokens,
                args.repeat,
                tick=lambda label: progress.update(task, advance=1, description=label),
            )
        except ValueError as exc:  # a prompt that cannot fit n_positions, or encodes to nothing
            raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    _render_bench(_console(), report)
    return EXIT_OK


def _stderr_console() -> Console:
    return term.console(stderr=True)


def _render_bench(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    base = report["baseline"]
    console.print(
        f"target only: {base['tokens_per_s']:.1f} tokens/s ({_range(base)}) over "
        f"{report['prompts']} prompt(s) x {report['max_new_tokens']} tokens; target step "
        f"{base['target_step_ms']:.1f} ms; median of {report['repeat']} interleaved run(s)"
    )
    t = Table()
    cols = (
        "draft_tokens",
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
            str(r["draft_tokens"]),
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
    console.print(
        f"best draft_tokens: {report['best_draft_tokens']} (speedup {report['best_speedup']:.2f}x)"
    )


def _range(row: dict[str, Any]) -> str:
    return f"{row['tokens_per_s_min']:.1f}..{row['tokens_per_s_max']:.1f}"


def _dry_run(cfg: ConfigFile, args: argparse.Namespace) -> int:
    """Everything generate does before loading: the preflight (for --instance, with every
    override), then the load plan instead of the load."""
    as_json = args.json
    if cfg.spec.backend != "neuronx":
        raise UsageError(
            "--dry-run shows the transformers-neuronx load plan; this config uses "
            "the reference backend"
        )
    from .loadplan import build_load_plan

    if _preflight_or_stop(cfg, args.instance, as_json, local=False, quiet=args.quiet) is None:
        return EXIT_FAILED

    plan = build_load_plan(cfg)
    if as_json:
        print(json.dumps(plan.to_dict(), indent=2))
        return EXIT_OK
    console = _console()
    version = plan.tnx_version or "not installed here"
    console.print(
        f"[bold]load plan[/bold] for {cfg.path} (transformers-neuronx {version}, API {plan.api})"
    )
    console.print("\n[bold]environment[/bold] (scripts/launch.sh exports these)")
    for name, value in plan.env.items():
        console.print(f"  export {name}={shlex.quote(value)}", markup=False, soft_wrap=True)
    console.print("\n[bold]calls, in order[/bold]")
    for i, call in enumerate(plan.calls(), 1):
        console.print(f"  {i:2d}. {call}", markup=False, highlight=False, soft_wrap=True)
    console.print("\n[bold]compiled-artifact cache keys[/bold]")
    for ml in (plan.draft, plan.target):
        console.print(f"  {ml.role}: {ml.cache_key}", markup=False)
    for note in plan.notes:
        console.print(f"[dim]note: {escape(note)}[/dim]")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    cfg = _load(args.config, args.backend)
    if _preflight_or_stop(cfg, args.instance, False, quiet=args.quiet) is None:
        return EXIT_FAILED
    return serve(cfg, args.host, args.port, args.queue_size, args.drain_timeout)


def cmd_deploy(args: argparse.Namespace) -> int:
    from . import deploy as dp

    if args.deploy_command is None:
        raise UsageError("deploy needs an action: sagemaker or delete")
    if args.deploy_command == "delete":
        reqs = dp.delete(args.name, args.region, _deploy_say, dry_run=args.dry_run)
        if args.json:
            print(json.dumps([{"operation": r.operation, "params": r.params} for r in reqs]))
        elif args.dry_run:
            print("\n".join(r.render() for r in reqs))
        return EXIT_OK
    cfg = _load(args.config)
    opts = dp.DeployOptions(
        role_arn=args.role,
        bucket=args.bucket,
        instance_type=args.instance_type,
        initial_instance_count=args.initial_instance_count,
        endpoint_name=args.endpoint_name,
        region=args.region,
        image_uri=args.image_uri,
        wait_timeout_s=args.wait_timeout,
    )
    problems = dp.validate(cfg, opts)
    if problems:
        raise UsageError("cannot deploy:\n  " + "\n  ".join(problems))
    catalog_name = args.instance_type.removeprefix("ml.")
    from .catalog import INSTANCES

    neuron_instance = cfg.spec.backend == "neuronx" and catalog_name in INSTANCES
    if neuron_instance and _preflight_or_stop(cfg, catalog_name, args.json, local=False) is None:
        return EXIT_FAILED
    if args.dry_run:
        return _deploy_dry_run(dp.plan_deploy(cfg, opts, exists=False), args.json)
    with _transfer_progress() as on_bytes:
        result = dp.deploy(
            cfg,
            opts,
            _deploy_say,
            with_dependencies=not args.no_dependency_wheels,
            on_bytes=on_bytes,
        )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        verb = "updated" if result["updated"] else "created"
        print(f"endpoint {result['endpoint']} {verb} in {result['region']}: {result['status']}")
    return EXIT_OK


def _deploy_say(msg: str) -> None:
    sys.stderr.write(f"[deploy] {msg}\n")


def _deploy_dry_run(plan: Any, as_json: bool) -> int:
    reqs = plan.requests
    if as_json:
        body = [
            {
                "service": r.service,
                "operation": r.operation,
                "params": {k: v for k, v in r.params.items() if k != "Body"},
            }
            for r in reqs
        ]
        print(json.dumps(body, indent=2))
        return EXIT_OK
    print(f"# region {plan.region} (from {plan.region_source}); image {plan.image}")
    for c in plan.checkpoints:
        print(f"# upload {c.local}: {len(c.files)} file(s), {c.total_bytes / 1e9:.2f} GB")
    print("\n".join(r.render() for r in reqs))
    return EXIT_OK


@contextlib.contextmanager
def _transfer_progress() -> Iterator[Callable[[int, int], None]]:
    """A byte progress bar on a terminal; elsewhere a line at every tenth of the way."""
    if not term.console(stderr=True).is_terminal:
        seen = {"done": 0, "tenth": 0}

        def line(n: int, total: int) -> None:
            seen["done"] += n
            tenth = seen["done"] * 10 // max(total, 1)
            if tenth > seen["tenth"]:
                seen["tenth"] = tenth
                _deploy_say(f"checkpoints {seen['done'] / 1e9:.2f} of {total / 1e9:.2f} GB")

        yield line
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=term.console(stderr=True), transient=True) as bar:
        task = bar.add_task("checkpoints", total=None)

        def update(n: int, total: int) -> None:
            bar.update(task, total=total, advance=n)

        yield update


def cmd_env(args: argparse.Namespace) -> int:
    from .loadplan import planned_env

    cfg = _load(args.config, args.backend)
    if cfg.spec.backend != "neuronx":
        raise UsageError(
            "env prints what the Neuron runtime and compiler read; the reference backend "
            "needs none of it"
        )
    if _preflight_or_stop(cfg, args.instance, args.json, local=False, quiet=True) is None:
        return EXIT_FAILED  # the layout is not one the runtime accepts on that instance
    env = planned_env(cfg)
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        for name, value in env.items():
            print(f"export {name}={shlex.quote(value)}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import hostprobe
    from .doctor import check_host
    from .loadplan import artifact_root

    cfg = _load(args.config) if args.config else None
    disk_dir = artifact_root(cfg) if cfg else Path("~/.cache/neuron-spec/compiled")
    if args.from_dir:
        try:
            raw = hostprobe.read_recording(Path(args.from_dir))
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        source = args.from_dir
    else:
        raw, source = hostprobe.live_outputs(disk_dir), "this host"
    if args.record:
        names = hostprobe.write_recording(raw, Path(args.record))
        sys.stderr.write(f"recorded {', '.join(names)} in {args.record}\n")
    snap = hostprobe.parse(raw, source, str(hostprobe.existing_ancestor(disk_dir)))
    report = check_host(snap, cfg)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _render_doctor(_console(), report, cfg)
    return EXIT_OK if report.ok else EXIT_FAILED


def _render_doctor(console: Console, report: Any, cfg: ConfigFile | None) -> None:
    from .memory import fmt_bytes

    snap = report.snap
    ram = report.to_dict()["host_ram_bytes"]
    console.print(
        f"[bold]host check[/bold] ({snap.source}): {snap.cores} NeuronCores, "
        f"host memory {fmt_bytes(ram) if ram else 'unknown'}, "
        f"{fmt_bytes(snap.disk_free) if snap.disk_free is not None else 'unknown'} free "
        f"on {snap.disk_path or 'the artifact cache'}" + (f"; for {cfg.path}" if cfg else "")
    )
    for name, version in report.components.items():
        console.print(f"  {name:<26} {version or '[dim]not installed[/dim]'}")
    for f in report.findings:
        style = _SEVERITY_STYLE[f.severity]
        console.print(f"[{style}]{f.severity:<7}[/] [bold]{f.code}[/bold]  {f.path}")
        console.print(f"  {f.message}", markup=False)
        if f.fix:
            console.print(f"  [green]Fix:[/green] {escape(f.fix)}")
    errors = sum(f.severity == "error" for f in report.findings)
    warnings = sum(f.severity == "warning" for f in report.findings)
    verdict = "[bold red]FAIL[/]" if errors else "[bold green]OK[/]"
    console.print(
        f"{verdict}: {errors} error(s), {warnings} warning(s). "
        "Each code is explained in docs/findings/<code>.md."
    )


def _cache_for(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from .artifacts import ArtifactCache
    from .loadplan import artifact_root

    if args.config:
        cfg = _load(args.config)
        return ArtifactCache(artifact_root(cfg), cfg.spec.compile.s3_mirror)
    from .config import CompileSpec

    default = CompileSpec().artifact_cache  # one default, the config's
    root = Path(args.dir or default).expanduser()
    return ArtifactCache(root)


def cmd_cache(args: argparse.Namespace) -> int:
    if args.cache_command is None:
        raise UsageError("cache needs an action: list or prune")
    cache = _cache_for(args)
    if args.cache_command == "list":
        entries = cache.entries()
        if args.json:
            print(
                json.dumps(
                    {"root": str(cache.root), "entries": [e.to_dict() for e in entries]}, indent=2
                )
            )
            return EXIT_OK
        console = _console()
        console.print(f"{cache.root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
        for e in entries:
            desc = e.description
            what = f"{desc.get('role', '?')} {desc.get('model', '?')}"
            state = "ok" if e.ok else f"[red]broken: {escape(e.problem or '')}[/red]"
            console.print(f"  {e.key}  {e.size_bytes / 1e6:9.1f} MB  {escape(what)}  {state}")
        return EXIT_OK
    if not (args.all or args.broken or args.older_than is not None):
        raise UsageError("prune needs --all, --broken or --older-than DAYS")
    older = args.older_than * 86400 if args.older_than is not None else None
    gone = cache.prune(
        older_than_s=older, broken=args.broken, everything=args.all, dry_run=args.dry_run
    )
    kept = cache.foreign()
    if args.json:
        body = {"removed": [e.to_dict() for e in gone], "dry_run": args.dry_run, "left": kept}
        print(json.dumps(body, indent=2))
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {len(gone)} entr{'y' if len(gone) == 1 else 'ies'} from {cache.root}")
        for e in gone:
            print(f"  {e.key}  {e.size_bytes / 1e6:.1f} MB")
        if kept:
            print(f"left alone (not cache entries): {', '.join(kept)}")
    return EXIT_OK


COMMANDS = {
    "validate": cmd_validate,
    "plan": cmd_plan,
    "generate": cmd_generate,
    "bench": cmd_bench,
    "schema": cmd_schema,
    "env": cmd_env,
    "serve": cmd_serve,
    "deploy": cmd_deploy,
    "cache": cmd_cache,
    "doctor": cmd_doctor,
}


def _report_error(exc: NeuronSpecError, as_json: bool) -> None:
    if as_json:
        body: dict[str, Any] = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, ConfigError):
            body["problems"] = [p.to_dict() for p in exc.problems]
        print(json.dumps(body, indent=2))
        return
    if isinstance(exc, ConfigError):
        sys.stderr.write(f"error: {len(exc.problems)} problem(s) in the config:\n")
        for p in exc.problems:
            sys.stderr.write(f"  {p.render()}\n")
    else:
        sys.stderr.write(f"error: {exc}\n")


def main(argv: Sequence[str] | None = None) -> int:
    # The CLI uses no pydantic plugins; skipping their entry-point scan saves ~40 ms per run.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    try:
        return COMMANDS[args.command](args)
    except NeuronSpecError as exc:
        if debug:
            raise
        _report_error(exc, bool(getattr(args, "json", False)))
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        if debug:
            raise
        sys.stderr.write(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in neuron-spec; rerun with --debug for the traceback.\n"
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
