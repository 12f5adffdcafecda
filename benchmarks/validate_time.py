"""Wall time of `neuron-spec validate` (or `plan`) on a shipped config, as a user runs it (a
new process).

Prints JSON: every run's seconds, the median, whether torch/transformers/boto3 were imported,
and whether neuron-spec's bytecode was cached or compiled on every run. Target: median under
0.3 s on a 2-core machine.

    python benchmarks/validate_time.py [--runs 15] [--command validate|plan]
        [--config configs/trn1-llama2-70b-7b-bf16.yaml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "boto3", "botocore", "transformers_neuronx")
PROBE = (
    "import sys; from neuron_spec.cli.main import main; rc = main([sys.argv[2], sys.argv[1]]); "
    f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr); "
    "raise SystemExit(rc)"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--config", default=str(ROOT / "configs" / "trn1-llama2-70b-7b-bf16.yaml"))
    ap.add_argument("--target-seconds", type=float, default=0.3)
    ap.add_argument("--command", choices=("validate", "plan"), default="validate")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "neuron_spec", args.command, args.config]
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache once
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            print(proc.stderr.decode(), file=sys.stderr)
            return 1
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, args.config, args.command], capture_output=True, text=True
    )
    heavy = next(
        (ln.split("=", 1)[1] for ln in probe.stderr.splitlines() if ln.startswith("HEAVY=")), "?"
    )
    median = statistics.median(times)
    cached = any((ROOT / "neuron_spec" / "__pycache__").glob("cli.*.pyc"))
    bytecode = "cached" if cached or not sys.flags.dont_write_bytecode else "compiled on every run"
    print(
        json.dumps(
            {
                "command": " ".join(cmd[1:]),
                "runs": args.runs,
                "seconds": [round(t, 4) for t in times],
                "median_s": round(median, 4),
                "min_s": round(min(times), 4),
                "max_s": round(max(times), 4),
                "target_s": args.target_seconds,
                "meets_target": median < args.target_seconds,
                "heavy_modules_imported": [m for m in heavy.split(",") if m],
                # PYTHONDONTWRITEBYTECODE=1 with no __pycache__ (an editable install never
                # run before without it) makes every run compile neuron-spec's modules again;
                # scripts/_env.sh compiles them once, as pip does for a regular install.
                "neuron_spec_bytecode": bytecode,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
