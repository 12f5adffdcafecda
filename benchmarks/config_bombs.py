"""`neuron-spec validate` on hostile YAML, as a user runs it (a new process each): an alias
bomb of a few hundred bytes and its cousins (deep nesting, a huge integer, a long document).

Prints JSON: per document its size, exit code, wall seconds and the child's peak RSS in MB.
Target: every one exits 2 in under 1 s with a peak RSS under 200 MB.

    python benchmarks/config_bombs.py
"""

from __future__ import annotations

import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def alias_bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijklmnop"[:levels]
    for prev, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def documents() -> dict[str, str]:
    return {
        "alias_bomb": alias_bomb(),
        "alias_bomb_under_a_field": "x:\n"
        + "".join(f"  {line}\n" for line in alias_bomb().splitlines())
        + "target: {model: llama-2-70b, n_positions: *i}\n",
        "deep_nesting": "target: " + "[" * 5000 + "]" * 5000 + "\n",
        "huge_integer": "target: {model: llama-2-70b, n_positions: " + "9" * 100_000 + "}\n",
        "long_document": "notes: |\n" + "  x\n" * 600_000,
    }


def run(path: Path) -> dict[str, float | int]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "neuron_spec", "validate", str(path)], capture_output=True
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child
    return {
        "bytes": path.stat().st_size,
        "exit": proc.returncode,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak / 1024, 1),  # the largest child so far: an upper bound
        "stderr_bytes": len(proc.stderr),
    }


def main() -> int:
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in documents().items():
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(text)
            report[name] = run(path)
    report["target"] = {"exit": 2, "seconds_below": 1.0, "peak_rss_mb_below": 200}
    report["met"] = all(
        r["exit"] == 2 and r["seconds"] < 1.0 and r["peak_rss_mb"] < 200  # type: ignore[index]
        for k, r in report.items()
        if k not in ("target", "met")
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
