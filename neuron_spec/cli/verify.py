"""`neuron-spec verify`: the checks' progress on stderr, the JSON report written atomically, and
a short plain-text summary (or the report itself, --json) on stdout. The work is
planning/verify.py's."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..planning.verify import Watcher
from .common import host_for, load, stderr_console, stdout_console
from .term import Console, StatusLine, Table, escape

if TYPE_CHECKING:
    from ..config.spec import ConfigFile
    from ..planning.verify import Check, Verification

MARK = {"passed": "[green]passed [/green]", "failed": "[bold red]FAILED [/]", "skipped": "skipped"}


def cmd_verify(args: argparse.Namespace) -> int:
    from ..planning.verify import new_tokens_for, run_verify
    from ..planning.verify_prompts import PROMPTS
    from .run import refuse_long_prompts

    cfg = load(args.config, args.backend)
    out = report_path(args.out, cfg)  # before anything runs: a report that cannot be written
    max_new = new_tokens_for(cfg, args.max_new_tokens)
    host = host_for(cfg, args.instance)
    refuse_long_prompts(cfg, list(PROMPTS), max_new)  # before any model loads
    watcher = _Display(stderr_console())
    try:
        v = run_verify(cfg, host, max_new, watcher)
    finally:
        watcher.close()
    # what was measured reaches the terminal first: a report that then cannot be written
    # (the disk filled during the run) loses nothing the user saw
    if args.json:
        print(json.dumps(v.report, indent=2))
    else:
        render_summary(stdout_console(), v, out)
    _write(out, v.report)
    stderr_console().print(f"[dim]report written to {out}[/dim]")
    return v.exit_code


def report_path(given: str | None, cfg: ConfigFile) -> Path:
    """--out, else verify-<config name>-<UTC time>.json here; refused (exit 2) when it names a
    directory or a directory that does not exist or cannot be written."""
    if given is None:
        stem = cfg.path.stem if cfg.path else "config"
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        return Path(f"verify-{stem}-{stamp}.json")
    path = Path(given).expanduser()
    if path.is_dir():
        raise UsageError(
            f"--out {given}: is a directory; name the report's file, e.g. {path}/verify.json"
        )
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"--out {given}: the directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {given}: the directory {parent} cannot be written here")
    return path


def _write(path: Path, report: dict[str, Any]) -> None:
    from ..util.atomic import write_text_atomic

    try:
        write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise UsageError(
            f"--out {path}: the report could not be written ({exc.strerror or exc}); nothing "
            "there was changed"
        ) from None


class _Display(Watcher):
    """The progress display: one line per check as it ends, and a status line (on a
    terminal) saying what runs now."""

    def __init__(self, console: Console):
        self.console = console
        self.line = StatusLine(console)
        self.stage = ""

    def begin(self, stage: str, text: str) -> None:
        self.stage = stage
        self.line.update(text)

    def say(self, text: str) -> None:
        self.line.update(f"{self.stage}: {escape(text)}")

    def advance(self, label: str, done: int, total: int) -> None:
        self.line.update(f"{self.stage}: {label} ({done}/{total})")

    def end(self, check: Check) -> None:
        self.line.clear()
        self.console.print(
            f"{MARK[check.status]} {check.name:<10} {check.seconds:7.1f} s  {escape(check.summary)}"
        )

    def close(self) -> None:
        self.line.clear()


def render_summary(console: Console, v: Verification, out: Path) -> None:
    """The paste-able summary: verdict, what ran where, each check, the figures beside the
    planner's, the first divergence, memory and versions."""
    r = v.report
    verdict = "PASS" if v.ok else f"FAIL ({', '.join(v.failed)}; exit {v.exit_code})"
    sp = r["speculation"]
    console.print(f"neuron-spec verify: {verdict}", markup=False)
    console.print(
        f"config {r['config']}: backend {r['backend']}, instance {r['instance']}; speculation "
        f"{sp['method']}, draft_tokens {sp['draft_tokens']}, "
        f"{'adaptive' if sp['adaptive'] else 'fixed'}, acceptor {sp['acceptor']}, {sp['mode']}; "
        f"{r['prompts']} prompts ({r['prompt_set']}) x {r['max_new_tokens']} tokens, greedy",
        markup=False,
    )
    for c in v.checks:
        console.print(f"  {c.name:<10} {c.status:<8} {c.seconds:8.1f} s  {c.summary}", markup=False)
    if "comparison" in r:
        console.print(_figures_table(r))
        steps = r["measured"]["speculative"]["alpha_steps"]
        console.print(
            f"alpha: from the proposals of {steps} step(s) (accepted / (accepted + refused))",
            markup=False,
        )
        if r.get("prediction_note"):
            console.print(f"predicted: none ({r['prediction_note']})", markup=False)
    _divergences(console, r)
    console.print(_memory_line(r["memory"]), markup=False)
    console.print(_versions_line(r["versions"]), markup=False)
    console.print(f"report: {out}", markup=False)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _figures_table(r: dict[str, Any]) -> Table:
    t = Table()
    for col, justify in (("figure", "left"), ("measured", "right"), ("predicted", "right")):
        t.add_column(col, justify=justify)
    for row in r["comparison"]:
        t.add_row(row["figure"], _num(row["measured"]), _num(row["predicted"]))
    return t


def _divergences(console: Console, r: dict[str, Any]) -> None:
    check = r["checks"].get("agreement")
    if not check or check["status"] != "failed":
        return
    for row in check["data"]["per_prompt"]:
        d = row["first_divergence"]
        if d is not None:
            console.print(
                f"prompt {row['prompt'] + 1} diverges at token {d['token']}: speculative "
                f"{d['speculative']}, target alone {d['target']}",
                markup=False,
            )


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**30:.2f} GiB"


def _memory_line(m: dict[str, Any]) -> str:
    device = (
        _gib(m["device_peak_bytes"]) if m["device_peak_bytes"] is not None else m["device_note"]
    )
    text = f"memory: host peak {_gib(m['host_peak_bytes'])}; device peak {device}"
    if m.get("device_predicted_bytes") is not None:
        text += f" (planned {_gib(m['device_predicted_bytes'])})"
    return text


def _versions_line(v: dict[str, Any]) -> str:
    have = [f"{name} {version}" for name, version in v["packages"].items() if version]
    missing = [name for name, version in v["packages"].items() if not version]
    text = f"versions: Python {v['python']}, " + ", ".join(have)
    text += f"; Neuron SDK {v['neuron_sdk'] or 'unknown'}"
    if missing:
        text += f"; not installed: {', '.join(missing)}"
    return text
