"""The subcommands that move things: deploy (SageMaker) and cache (compiled artifacts)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import UsageError
from . import term
from .common import EXIT_FAILED, EXIT_OK, escape, load, preflight_or_stop, stdout_console


def cmd_deploy(args: argparse.Namespace) -> int:
    from ..deploy import sagemaker as dp

    if args.deploy_command is None:
        raise UsageError("deploy needs an action: sagemaker or delete")
    if args.deploy_command == "delete":
        done = dp.delete(args.name, args.region, _deploy_say, dry_run=args.dry_run)
        if args.json:
            print(json.dumps(done.to_dict()))
        elif args.dry_run:
            print("\n".join(r.render() for r in done.requests))
        else:
            print(f"deleted {len(done.requests)} resource(s); kept {len(done.kept)}")
            for why in done.kept:
                print(f"  kept {why}")
        return EXIT_OK
    cfg = load(args.config)
    instance_type = args.instance_type or dp.default_instance_type(cfg)
    opts = dp.DeployOptions(
        role_arn=args.role,
        bucket=args.bucket,
        instance_type=instance_type,
        initial_instance_count=args.initial_instance_count,
        endpoint_name=args.endpoint_name,
        region=args.region,
        image_uri=args.image_uri,
        wait_timeout_s=args.wait_timeout,
        autoscale=_scaling(args, cfg, instance_type),
    )
    problems = dp.validate(cfg, opts)
    if problems:
        raise UsageError("cannot deploy:\n  " + "\n  ".join(problems))
    catalog_name = instance_type.removeprefix("ml.")
    from ..config.catalog import INSTANCES

    neuron_instance = cfg.spec.neuron and catalog_name in INSTANCES
    if neuron_instance and preflight_or_stop(cfg, catalog_name, args.json, local=False) is None:
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


def _scaling(args: argparse.Namespace, cfg: Any, instance_type: str) -> Any:
    """--autoscale MIN:MAX (and --autoscale-target) as a Scaling, or None."""
    from ..deploy.autoscale import Scaling, parse_range, target_from_plan

    if args.autoscale is None:
        if args.autoscale_target is not None:
            raise UsageError("--autoscale-target needs --autoscale MIN:MAX")
        return None
    low, high = parse_range(args.autoscale)
    if args.autoscale_target is not None:
        return Scaling(low, high, float(args.autoscale_target), "--autoscale-target")
    target, source = target_from_plan(cfg, instance_type)
    return Scaling(low, high, target, source)


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
    with Progress(*columns, console=term.rich_console(), transient=True) as bar:
        task = bar.add_task("checkpoints", total=None)

        def update(n: int, total: int) -> None:
            bar.update(task, total=total, advance=n)

        yield update


def _cache_for(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from ..backends.artifacts import ArtifactCache
    from ..backends.neuron_plan import artifact_root

    if args.config:
        cfg = load(args.config)
        return ArtifactCache(artifact_root(cfg), cfg.spec.compile.s3_mirror)
    from ..config.spec import CompileSpec

    default = CompileSpec().artifact_cache  # one default, the config's
    root = Path(args.dir or default).expanduser()
    if args.dir and not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise UsageError(f"--dir {args.dir}: {what}; point it at an artifact cache")
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
        console = stdout_console()
        console.print(f"{cache.root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
        if entries:
            table = term.Table()
            for header, justify in (("key", "left"), ("size", "right"), ("role", "left"),
                                    ("model", "left"), ("state", "left")):  # fmt: skip
                table.add_column(header, justify)
            for e in entries:
                desc = e.description
                state = "ok" if e.ok else f"[red]broken: {escape(e.problem or '')}[/red]"
                table.add_row(
                    e.key,
                    f"{e.size_bytes / 1e6:.1f} MB",
                    escape(str(desc.get("role", "?"))),
                    escape(str(desc.get("model", "?"))),
                    state,
                )
            console.print(table)
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
