"""One target pass on the CPU, transformers' own cache and attention against the reference
backend's (`backends/kv_cache.py`: columns written in place; `backends/cpu_attention.py`:
grouped key/value heads read without copies).

Loads the demo target (f32, the configured linear kernels) once, encodes a prompt of each
--contexts length, then times passes of each --widths tokens over it (the pass's columns
cropped after each, as a refused proposal is), the two settings taking turns, best and median
of --rounds rounds of 3 passes. Prints JSON: milliseconds per pass for each setting and their
ratio, and whether the logits were equal bit for bit. At one thread unless --threads.

    python benchmarks/pass_cost.py [--contexts 600,3000] [--widths 1,9] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from neuron_spec.backends import load_generator  # noqa: E402
from neuron_spec.backends.cpu_attention import NAME  # noqa: E402
from neuron_spec.backends.reference import HFRunner  # noqa: E402
from neuron_spec.config.spec import load_config  # noqa: E402
from neuron_spec.sources.demo import fetch_demo_checkpoint  # noqa: E402


class StockRunner(HFRunner):
    """The same model with transformers' own DynamicCache and SDPA attention."""

    def reset(self, batch: int) -> None:
        from transformers import DynamicCache

        super().reset(batch)
        self.cache = DynamicCache()


def attention_of(runner: HFRunner) -> str:
    return "sdpa" if isinstance(runner, StockRunner) else NAME


def time_passes(runner: HFRunner, width: int, repeat: int = 3) -> tuple[float, torch.Tensor]:
    ids = torch.arange(100, 100 + width).unsqueeze(0)
    mask = torch.ones_like(ids, dtype=torch.bool)
    start = time.perf_counter()
    for _ in range(repeat):
        logits = runner.feed(ids, mask, width)
        runner.invalidate_from(torch.tensor([runner.length - width]))
    return (time.perf_counter() - start) / repeat * 1e3, logits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--contexts", default="600,3000", help="cached tokens, comma-separated")
    ap.add_argument("--widths", default="1,9", help="tokens per pass, comma-separated")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    fetch_demo_checkpoint()
    os.environ["NEURON_SPEC_THREADS"] = str(args.threads)
    load_before = os.getloadavg()
    model = load_generator(load_config(args.config)).backend.target.model
    torch.set_num_threads(args.threads)
    settings = {"transformers": StockRunner(model), "neuron-spec": HFRunner(model)}
    widths = [int(w) for w in args.widths.split(",")]
    results: dict[str, Any] = {}
    with torch.inference_mode():
        for context in (int(c) for c in args.contexts.split(",")):
            prompt = (torch.arange(context) % 30000 + 200).unsqueeze(0)
            for runner in settings.values():
                model.set_attn_implementation(attention_of(runner))
                runner.reset(1)
                runner.feed(prompt, torch.ones_like(prompt, dtype=torch.bool), 1)
            times: dict[tuple[str, int], list[float]] = {}
            logits: dict[tuple[str, int], torch.Tensor] = {}
            for _ in range(args.rounds):
                for name, runner in settings.items():
                    model.set_attn_implementation(attention_of(runner))
                    for width in widths:
                        ms, out = time_passes(runner, width)
                        times.setdefault((name, width), []).append(ms)
                        logits[(name, width)] = out
            for width in widths:
                row = {
                    name: {
                        "best_ms": round(min(times[(name, width)]), 1),
                        "median_ms": round(statistics.median(times[(name, width)]), 1),
                    }
                    for name in settings
                }
                ours, theirs = row["neuron-spec"], row["transformers"]
                row["median_ratio"] = round(ours["median_ms"] / theirs["median_ms"], 3)
                row["same_logits"] = torch.equal(
                    logits[("neuron-spec", width)], logits[("transformers", width)]
                )
                results[f"context {context}, width {width}"] = row
    report = {
        "threads": args.threads,
        "rounds": args.rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "passes": results,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
