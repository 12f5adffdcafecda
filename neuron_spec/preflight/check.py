"""The preflight's entry point: every rule (the generic ones and NxD Inference's) over a config and
a host, all findings at once, errors first."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config.spec import DeploymentSpec
from ..host.facts import HostFacts
from . import nxdi, rules
from .base import ORDER, Report, build_context

RULES = [*rules.RULES, *nxdi.RULES]


def preflight(
    spec: DeploymentSpec, host: HostFacts, base_dir: Path | None = None, local: bool = False
) -> Report:
    """Run every rule and return all findings, errors first. `local`: this machine is where
    the pair will load (generate, serve, the launcher), so its directories are checked too."""
    ctx = build_context(spec, host, base_dir or Path.cwd())
    ctx = dataclasses.replace(ctx, local=local or host.source == "detected")
    findings = [f for r in RULES for f in r(ctx)]
    findings.sort(key=lambda f: ORDER[f.severity])
    return Report(tuple(findings), host)
