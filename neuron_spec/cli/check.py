"""The subcommands that check and plan without loading anything: validate, plan, schema, env,
doctor."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    findings_json,
    host_for,
    load,
    preflight_or_stop,
    render_findings,
    render_report,
    stdout_console,
)
from .term import Console

if TYPE_CHECKING:
    from ..config.spec import ConfigFile


def cmd_validate(args: argparse.Namespace) -> int:
    from ..preflight.check import preflight

    cfg = load(args.config, args.backend)
    host = host_for(cfg, args.instance)
    report = preflight(cfg.spec, host, cfg.base_dir, local=args.local)
    if args.json:
        out = {
            "config": str(cfg.path),
            "ok": report.ok,
            "host": host.to_dict(),
            "findings": findings_json(report, cfg),
        }
        print(json.dumps(out, indent=2))
    else:
        render_report(stdout_console(), report, cfg)
    return _exit_code(report)


def _exit_code(report: Any) -> int:
    """0 when nothing is wrong, 2 when a model cannot be read at all, else 1."""
    from ..preflight.base import INPUT_CODES

    if any(f.code in INPUT_CODES for f in report.errors):
        return EXIT_USAGE
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_plan(args: argparse.Namespace) -> int:
    from ..planning.perfplan import compare, inputs, performance_tp, section
    from ..planning.plan import plan
    from ..preflight.base import build_context
    from ..preflight.check import preflight
    from . import plan_view

    cfg = load(args.config, args.backend)
    if args.batch is not None:  # plan the pair as if both were compiled for this batch
        import dataclasses

        draft = cfg.spec.draft
        spec = cfg.spec.replace(
            target=cfg.spec.target.replace(batch_size=args.batch),
            draft=draft and draft.replace(batch_size=args.batch),
        )
        cfg = dataclasses.replace(cfg, spec=spec)
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
        ranking = compare(cfg.spec, cfg.base_dir, args.compare, inp)
        if args.json:
            print(json.dumps({"config": str(cfg.path), "compare": ranking}, indent=2))
        else:
            plan_view.render_compare(stdout_console(), ranking, cfg)
        return EXIT_OK if ranking["ranked"] else EXIT_FAILED
    host = host_for(cfg, args.instance)
    # step times at the request length the performance section models: one source for all
    p = plan(cfg.spec, host, cfg.base_dir, inp.prompt_tokens + inp.new_tokens)
    report = preflight(cfg.spec, host, cfg.base_dir)
    ctx = build_context(cfg.spec, host, cfg.base_dir)
    archs = {role: ctx.arch(role) for role, _ in cfg.spec.models()}
    tp = performance_tp(cfg.spec, p)
    perf, money, why = section(cfg.spec, host, archs, tp, inp)
    if args.json:
        out = {
            "config": str(cfg.path),
            "ok": report.ok,
            **p.to_dict(),
            "performance": perf,
            "cost": money,
            "performance_note": why,
            "findings": findings_json(report, cfg),
        }
        print(json.dumps(out, indent=2))
    else:
        plan_view.render_plan(stdout_console(), p, report, cfg)
        plan_view.render_performance(stdout_console(), perf, money, why)
    return _exit_code(report)


def cmd_schema(args: argparse.Namespace) -> int:
    from ..config.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_env(args: argparse.Namespace) -> int:
    from ..backends.neuron_plan import planned_env

    cfg = load(args.config, args.backend)
    if not cfg.spec.neuron:
        raise UsageError(
            "env prints what the Neuron runtime and compiler read; the reference backend "
            "needs none of it"
        )
    if preflight_or_stop(cfg, args.instance, args.json, local=False, quiet=True) is None:
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

    from ..backends.neuron_plan import artifact_root
    from ..host import probe as hostprobe
    from ..preflight.doctor import check_host

    cfg = load(args.config) if args.config else None
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
        _render_doctor(stdout_console(), report, cfg)
    return EXIT_OK if report.ok else EXIT_FAILED


def _render_doctor(console: Console, report: Any, cfg: ConfigFile | None) -> None:
    from ..preflight.memory import fmt_bytes

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
    render_findings(console, report.findings)
