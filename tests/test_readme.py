"""The README tells the truth: every file it names exists, and its validate example shows what
`neuron-spec validate` prints for that file."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from .conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
NAMED = re.compile(r"\b((?:configs|examples|scripts|docs|benchmarks|tests)/[\w./-]*\w)")


def test_every_file_the_readme_names_exists():
    named = sorted(set(NAMED.findall(README)))
    assert len(named) > 10, "the scan found almost nothing: it is broken"
    missing = [n for n in named if not (ROOT / n).exists() and "<" not in n]
    assert not missing, f"the README names files that do not exist: {missing}"


def test_the_validate_example_is_what_validate_prints():
    block = README.split("```console\n", 1)[1].split("```", 1)[0]
    command, *shown = block.splitlines()
    args = command.removeprefix("$ neuron-spec ").split()
    proc = subprocess.run(
        [sys.executable, "-m", "neuron_spec", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "100"},
        timeout=120,
    )
    printed = [line.rstrip() for line in proc.stdout.splitlines()]
    # every headline line (host, findings, verdict) and every Fix appears as printed
    for line in shown:
        if re.match(r"^(examples/|error |warning |info |FAIL|OK)|^  Fix:", line):
            assert line in printed, f"README shows {line!r}; validate prints {printed}"
    assert proc.returncode == 1
