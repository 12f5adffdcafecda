"""Greedy speculative decoding on the demo pair: this engine vs transformers' assisted
generation vs target-only decoding, on the same prompts and the same gamma.

transformers' assisted generation runs with `assistant_model=draft`, `num_assistant_tokens=gamma`,
a constant schedule and the confidence threshold off, so both engines draft exactly gamma tokens
per step. transformers reads these settings from the *assistant's* generation_config, not from
generate()'s keyword arguments (which it passes on but does not apply to the assistant):
without setting them there, it silently uses its adaptive schedule and confidence threshold,
drafting anywhere from 2 to 20 tokens per step, and the comparison is not like for like.
The script checks that all three produce identical tokens, then prints JSON with tokens/s
for each (median of --repeat runs) and the ratio of this engine to assisted generation.
Goal: ratio >= 1.2.

    python benchmarks/vs_assisted.py [--gamma 4] [--max-new-tokens 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from neuron_spec.backends import load_generator  # noqa: E402
from neuron_spec.config.spec import load_config  # noqa: E402
from neuron_spec.planning.bench import DEFAULT_PROMPTS  # noqa: E402
from neuron_spec.sources.demo import fetch_demo_checkpoint  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fetch_demo_checkpoint(say=lambda m: print(m, file=sys.stderr))
    gen = load_generator(load_config(args.config))
    target, draft = gen.target.model, gen.draft.model
    tok = gen.tokenizer
    prompts = list(DEFAULT_PROMPTS)
    n, gamma = args.max_new_tokens, args.gamma

    def ours() -> list[list[int]]:
        return [
            gen.generate(p, max_new_tokens=n, temperature=0.0, draft_tokens=gamma).token_ids[0]
            for p in prompts
        ]

    def hf(assistant: bool) -> list[list[int]]:
        outs = []
        for p in prompts:
            ids = tok(p, return_tensors="pt").input_ids
            kwargs = {}
            if assistant:
                draft.generation_config.num_assistant_tokens = gamma
                draft.generation_config.num_assistant_tokens_schedule = "constant"
                draft.generation_config.assistant_confidence_threshold = 0.0
                kwargs = {
                    "assistant_model": draft,
                    "num_assistant_tokens": gamma,
                    "num_assistant_tokens_schedule": "constant",
                    "assistant_confidence_threshold": 0.0,
                }
            with torch.inference_mode():
                out = target.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=n,
                    pad_token_id=gen.pad_token_id,
                    **kwargs,
                )
            outs.append(out[0, ids.shape[1] :].tolist())
        return outs

    methods = {
        "neuron_spec": ours,
        "transformers_assisted": lambda: hf(True),
        "target_only": lambda: hf(False),
    }
    results: dict[str, dict[str, object]] = {}
    outputs: dict[str, list[list[int]]] = {}
    for name, fn in methods.items():
        fn()  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            outputs[name] = fn()
            times.append(time.perf_counter() - t0)
        tokens = sum(len(o) for o in outputs[name])
        med = statistics.median(times)
        results[name] = {
            "tokens": tokens,
            "median_s": round(med, 4),
            "tokens_per_s": round(tokens / med, 2),
            "runs_s": [round(t, 4) for t in times],
        }
    identical = outputs["neuron_spec"] == outputs["transformers_assisted"] == outputs["target_only"]
    ratio = (
        results["neuron_spec"]["tokens_per_s"] / results["transformers_assisted"]["tokens_per_s"]
    )  # type: ignore[operator]
    print(
        json.dumps(
            {
                "pair": "SmolLM2-135M-Instruct f32 target, bf16 draft (configs/demo-cpu.yaml)",
                "prompts": len(prompts),
                "max_new_tokens": n,
                "gamma": gamma,
                "repeat": args.repeat,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
                "outputs_identical": identical,
                "results": results,
                "neuron_spec_vs_assisted": round(ratio, 3),
                "goal": ">= 1.2",
                "meets_goal": identical and ratio >= 1.2,
            },
            indent=2,
        )
    )
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
