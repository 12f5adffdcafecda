"""The README and the docs tell the truth: every file, script and command they name exists, and
the README's validate example shows what `neuron-spec validate` prints for that file."""

from __future__ import annotations

import re

from .conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
NAMED = re.compile(r"\b((?:configs|examples|scripts|docs|benchmarks|tests)/[\w./-]*\w)")


def test_every_file_the_readme_names_exists():
    named = sorted(set(NAMED.findall(README)))
    assert len(named) > 10, "the scan found almost nothing: it is broken"
    missing = [n for n in named if not (ROOT / n).exists() and "<" not in n]
    assert not missing, f"the README names files that do not exist: {missing}"


DOCS = sorted((ROOT / "docs").rglob("*.md"))
COMMAND = re.compile(r"`neuron-spec ([a-z-]+)(?: ([a-z-]+))?")


def test_every_file_the_docs_name_exists():
    missing = []
    for doc in DOCS:
        for name in set(NAMED.findall(doc.read_text(encoding="utf-8"))):
            if "<" not in name and not (ROOT / name).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {name}")
    assert len(DOCS) > 20
    assert not missing, f"docs name files that do not exist: {missing}"


def test_every_command_the_readme_and_docs_name_exists():
    from neuron_spec.cli.args import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = sub.choices
    named: set[tuple[str, str | None]] = set()
    for text in [README, *(d.read_text(encoding="utf-8") for d in DOCS)]:
        named.update(COMMAND.findall(text))
    assert len(named) > 8, "the scan found almost nothing: it is broken"
    for command, action in sorted(named, key=str):
        assert command in commands, f"`neuron-spec {command}` is named but does not exist"
        actions = next(
            (a.choices for a in commands[command]._actions if a.dest.endswith("_command")), None
        )
        if actions is not None and action and not action.startswith("-"):
            assert action in actions, f"`neuron-spec {command} {action}` does not exist"


def test_the_validate_example_is_what_validate_prints(capsys, monkeypatch):
    from neuron_spec.cli.main import main

    block = README.split("```console\n", 1)[1].split("```", 1)[0]
    command, *shown = block.splitlines()
    args = command.removeprefix("$ neuron-spec ").split()
    monkeypatch.chdir(ROOT)  # the example's paths are the repository's
    monkeypatch.setenv("COLUMNS", "100")
    code = main(args)
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    # every headline line (host, findings, verdict) and every Fix appears as printed
    for line in shown:
        if re.match(r"^(examples/|error |warning |info |FAIL|OK)|^  Fix:", line):
            assert line in printed, f"README shows {line!r}; validate prints {printed}"
    assert code == 1
