"""Steps the subcommands share: load a config with the command line's overrides, find the
host, run the preflight and say what it found."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from . import term
from .term import Console

if TYPE_CHECKING:
    from ..config.spec import ConfigFile
    from ..host.facts import HostFacts
    from ..preflight.base import Report


EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE: distinct from every error neuron-spec reports
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def load(path: str, backend: str | None = None) -> ConfigFile:
    import dataclasses

    from ..config.spec import load_config

    cfg = load_config(path)
    if backend is not None and backend != cfg.spec.backend:
        cfg = dataclasses.replace(cfg, spec=cfg.spec.replace(backend=backend))
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


def with_overrides(cfg: ConfigFile, args: argparse.Namespace) -> ConfigFile:
    """CONFIG with the flags given on the command line written into it (validated like the
    file; a bad value is a usage error naming the flag)."""
    import dataclasses

    from ..config.schema import Invalid
    from ..config.spec import describe_invalid

    spec = cfg.spec
    for flag, section, name in _OVERRIDES:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None or isinstance(value, list):
            continue
        if flag == "--draft-tokens" and value == 0:
            continue  # the target alone: the config's draft_tokens still sizes compiled graphs
        part = getattr(spec, section)
        try:
            new = part.replace(**{name: value})
        except Invalid as exc:
            msg = describe_invalid(exc)
            raise UsageError(f"{flag} {value}: {msg} (the config's {section}.{name})") from None
        spec = spec.replace(**{section: new})
    return dataclasses.replace(cfg, spec=spec)


def host_for(cfg: ConfigFile, override: str | None) -> HostFacts:
    from ..config.catalog import INSTANCES
    from ..config.spec import did_you_mean
    from ..host.facts import HostFacts, resolve_host

    if override is not None and override not in INSTANCES:
        raise UsageError(
            f"--instance {override!r} is not a known instance type."
            f"{did_you_mean(override, list(INSTANCES))} Known: {', '.join(INSTANCES)}."
        )
    if cfg.spec.backend == "reference" and override is None and cfg.spec.instance == "auto":
        return HostFacts.none()  # the reference backend runs anywhere: nothing to detect
    return resolve_host(cfg.spec.instance, override)


def stdout_console() -> Console:
    return term.console()


def stderr_console() -> Console:
    return term.console(stderr=True)


escape = term.escape
host_line = term.host_line


def findings_json(report: Report, cfg: ConfigFile) -> list[dict[str, Any]]:
    return [{**f.to_dict(), "location": cfg.where(f.path)} for f in report.findings]


def render_report(console: Console, report: Report, cfg: ConfigFile) -> None:
    console.print(f"[bold]{escape(str(cfg.path))}[/bold]  {host_line(report.host)}")
    render_findings(console, report.findings, cfg.where)


def render_findings(
    console: Console, findings: Sequence[Any], where: Callable[[str], str] | None = None
) -> None:
    """Each finding (severity, code, field, where in the file, message, fix), then the verdict."""
    for f in findings:
        style = SEVERITY_STYLE[f.severity]
        located = f"  [dim]{escape(where(f.path))}[/dim]" if where else ""
        console.print(f"[{style}]{f.severity:<7}[/] [bold]{f.code}[/bold]  {f.path}{located}")
        console.print(f"  {f.message}", markup=False)
        if f.fix:
            console.print(f"  [green]Fix:[/green] {escape(f.fix)}")
    errors = sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    verdict = "[bold red]FAIL[/]" if errors else "[bold green]OK[/]"
    console.print(
        f"{verdict}: {errors} error(s), {warnings} warning(s). "
        "Each code is explained in docs/findings/<code>.md."
    )


def preflight_or_stop(
    cfg: ConfigFile, instance: str | None, as_json: bool, local: bool = True, quiet: bool = False
) -> Report | None:
    """Run the preflight; on errors, print them and return None (the caller exits 1).
    Otherwise say its warnings once, one line each on stderr, unless `quiet`.
    `local`: the pair loads on this machine (generate, serve), so its directories count."""
    from ..preflight.check import preflight

    report = preflight(cfg.spec, host_for(cfg, instance), cfg.base_dir, local=local)
    if report.ok:
        if not quiet:
            say_warnings(report, cfg)
        return report
    if as_json:
        print(json.dumps({"ok": False, "findings": findings_json(report, cfg)}, indent=2))
    else:
        render_report(stderr_console(), report, cfg)
        sys.stderr.write("stopped before loading anything: fix the errors above.\n")
    from ..preflight.base import USAGE_CODES

    if any(f.code in USAGE_CODES for f in report.errors):
        raise UsageError(
            "the config asks for what its backend cannot do (above); nothing was loaded"
        )
    return None


def say_warnings(report: Report, cfg: ConfigFile) -> None:
    if not report.warnings:
        return
    err = stderr_console()
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
