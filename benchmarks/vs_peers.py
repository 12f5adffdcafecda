"""Speculation against its peers, in one run, on the CPU demo: greedy decoding of a shipped
prompt set with the target alone, transformers' prompt lookup, transformers' assisted
generation with the demo draft, and each of neuron-spec's methods (draft model, n-gram prompt
lookup, suffix matching; fixed and adaptive length).

Prompts: benchmarks/prompts/grounded.json (input-grounded: edit, extract, reformat, quote or
summarise a text given in the prompt) or chat.json (open-ended questions, nothing to copy),
each wrapped in the demo model's chat template. Every setting decodes every prompt; settings
take turns (a round is every setting once) so that a machine slowing down touches all alike;
each reports its median round. The suffix proposer's memory of earlier outputs is emptied
before each setting's pass over the prompts: it learns from the answers to the earlier prompts
of that pass, as a server would, never from an answer to the same prompt.

By default every setting runs on the same model objects, so on the same kernels (on the CPU:
the linear layers neuron-spec packs for oneDNN) and on one fixed thread count (`--threads`,
default neuron-spec's fewest: half the cores), so that the differences are the methods' own.
`--as-shipped` compares the products instead, each as its users get it: transformers' settings
on models loaded by transformers alone (its own kernels) at PyTorch's default thread count,
neuron-spec's as `generate` runs them (packed kernels, the thread count measured per pass).

Prints JSON: per setting, tokens/s, speedup over the target alone (transformers), tokens per
target pass, and whether every output equals the target's greedy decoding; and the machine's
load average before and after.

    python benchmarks/vs_peers.py [--prompts grounded|chat] [--max-new-tokens 128] [--rounds 3]
                                  [--as-shipped]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from neuron_spec.backends import load_generator  # noqa: E402
from neuron_spec.config.spec import load_config  # noqa: E402
from neuron_spec.sources.demo import fetch_demo_checkpoint  # noqa: E402


@dataclass
class Result:
    seconds: float = 0.0
    tokens: int = 0
    passes: int = 0
    outputs: list[list[int]] = field(default_factory=list)


class PassCounter:
    """Counts the target model's forward calls (transformers' generate calls it once a pass)."""

    def __init__(self, model: Any):
        self.count = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.count += 1


def chat_ids(tok: Any, prompt: str) -> list[int]:
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return list(tok(text, add_special_tokens=False).input_ids)


def hf_setting(
    model: Any, counter: PassCounter, eos: list[int], pad: int, threads: int, **extra: Any
):
    def run(ids: list[int], max_new: int) -> tuple[list[int], int]:
        torch.set_num_threads(threads)  # neuron-spec's passes may have set another count
        before = counter.count
        x = torch.tensor([ids])
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
            **extra,
        )
        return out[0, len(ids) :].tolist(), counter.count - before

    return run


def ours_setting(gen: Any, method: str | None, gamma: int, adaptive: bool):
    def run(ids: list[int], max_new: int) -> tuple[list[int], int]:
        out = gen.generate(
            "", prompt_token_ids=[ids], max_new_tokens=max_new, draft_tokens=gamma,
            method=method, adaptive=adaptive, temperature=0.0,
        )  # fmt: skip
        return out.token_ids[0], out.metrics.target_passes

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--prompts", default="grounded", help="grounded or chat (benchmarks/prompts)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--draft-tokens", type=int, default=16, help="neuron-spec's lookups")
    ap.add_argument("--prompt-lookup-tokens", type=int, default=10, help="transformers'")
    ap.add_argument(
        "--threads", type=int, default=0, help="CPU threads for every setting (0: half the cores)"
    )
    ap.add_argument(
        "--only",
        default="",
        help="run only the settings whose names contain one of these |-separated words",
    )
    ap.add_argument(
        "--as-shipped",
        action="store_true",
        help="each product as its users get it: transformers' settings on models loaded by "
        "transformers alone at PyTorch's default thread count, neuron-spec's with its packed "
        "kernels and measured thread count (default: the same models and threads for all)",
    )
    args = ap.parse_args()
    fetch_demo_checkpoint()
    prompts = json.loads((ROOT / "benchmarks" / "prompts" / f"{args.prompts}.json").read_text())
    load_before = os.getloadavg()
    torch_threads = torch.get_num_threads()  # PyTorch's default, before anything sets it
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // 2)
    if args.as_shipped:
        threads = torch_threads
    else:
        os.environ["NEURON_SPEC_THREADS"] = str(threads)  # one count for every setting
    cfg = load_config(args.config)
    gen = load_generator(cfg)
    tok = gen.tokenizer
    if args.as_shipped:
        target, draft = stock_models(cfg)
    else:
        target, draft = gen.backend.target.model, gen.backend.draft.model
    counter = PassCounter(target)
    eos, pad = gen.eos_token_ids, gen.pad_token_id
    g = args.draft_tokens
    draft_g = gen.spec.speculation.draft_tokens
    settings = {
        "target alone (transformers)": hf_setting(target, counter, eos, pad, threads),
        "prompt lookup (transformers)": hf_setting(
            target, counter, eos, pad, threads, prompt_lookup_num_tokens=args.prompt_lookup_tokens
        ),
        "assisted generation (transformers)": hf_setting(
            target, counter, eos, pad, threads, assistant_model=draft
        ),
        "target alone (neuron-spec)": ours_setting(gen, None, 0, False),
        "draft model, fixed (neuron-spec)": ours_setting(gen, "draft", draft_g, False),
        "draft model, adaptive (neuron-spec)": ours_setting(gen, "draft", draft_g, True),
        "ngram, fixed (neuron-spec)": ours_setting(gen, "ngram", g, False),
        "ngram, adaptive (neuron-spec)": ours_setting(gen, "ngram", g, True),
        "suffix, fixed (neuron-spec)": ours_setting(gen, "suffix", g, False),
        "suffix, adaptive (neuron-spec)": ours_setting(gen, "suffix", g, True),
    }
    if args.only:
        words = [w.strip() for w in args.only.split("|") if w.strip()]
        keep = ("target alone (transformers)",)
        settings = {k: v for k, v in settings.items() if k in keep or any(w in k for w in words)}
    ids = [chat_ids(tok, p["prompt"]) for p in prompts]
    for run in settings.values():  # warm-up: first calls pay one-off costs
        run(ids[0], 8)
    rounds: dict[str, list[Result]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, run in settings.items():
            forget(gen)  # the suffix proposer learns only from this pass's earlier prompts
            res = Result()
            for prompt in ids:
                t0 = time.perf_counter()
                out, passes = run(prompt, args.max_new_tokens)
                res.seconds += time.perf_counter() - t0
                res.tokens += len(out)
                res.passes += passes
                res.outputs.append(out)
            rounds[name].append(res)
    args.threads_used = threads
    print(json.dumps(report(rounds, args, prompts, load_before), indent=2))
    return 0


def stock_models(cfg: Any) -> tuple[Any, Any]:
    """The config's target and draft as transformers alone loads them (its own kernels)."""
    from neuron_spec.sources.hf import load_model

    spec = cfg.spec
    roles = {"target": spec.target, "draft": spec.draft}
    loaded = {
        role: load_model(m.model, m.amp, cfg.base_dir, m.tokenizer, "cpu").model.eval()
        for role, m in roles.items()
        if m is not None
    }
    return loaded["target"], loaded.get("draft")


def forget(gen: Any) -> None:
    """Empty the suffix proposer's memory of earlier outputs."""
    from neuron_spec.engine.proposers import SuffixStore

    old = gen.suffix
    gen.suffix = SuffixStore(old.n_min, old.n_max, old.max_tokens)


def report(
    rounds: dict[str, list[Result]], args: Any, prompts: list[dict[str, str]], load: Any
) -> dict[str, Any]:
    def median(name: str) -> Result:
        return sorted(rounds[name], key=lambda r: r.seconds)[(len(rounds[name]) - 1) // 2]

    base = median("target alone (transformers)")
    reference = base.outputs
    rows = {}
    for name in rounds:
        r = median(name)
        rates = [x.tokens / x.seconds for x in rounds[name]]
        rows[name] = {
            "tokens_per_s": round(r.tokens / r.seconds, 2),
            "tokens_per_s_rounds": [round(x, 2) for x in rates],
            "speedup_vs_target_alone": round(
                (r.tokens / r.seconds) / (base.tokens / base.seconds), 3
            ),
            "tokens_per_target_pass": round(r.tokens / max(r.passes, 1), 3),
            "same_output_as_target_greedy": r.outputs == reference,
            "new_tokens": r.tokens,
        }
    lookup = rows.get("prompt lookup (transformers)")
    best_free = max(
        (v for k, v in rows.items() if k.startswith(("ngram", "suffix"))),
        key=lambda v: v["tokens_per_s"],
        default=None,
    )
    summary = {}
    if best_free and lookup:
        summary = {
            "best_draft_free_speedup_vs_target_alone": best_free["speedup_vs_target_alone"],
            "best_draft_free_vs_transformers_prompt_lookup": round(
                best_free["tokens_per_s"] / lookup["tokens_per_s"], 3
            ),
        }
    return {
        "prompts": args.prompts,
        "prompt_count": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "mode": "as shipped" if args.as_shipped else "same models, kernels and threads",
        "threads": (
            {"transformers": args.threads_used, "neuron-spec": "measured per pass"}
            if args.as_shipped
            else args.threads_used
        ),
        "settings": rows,
        "summary": summary,
        "median_of": statistics.median(range(1, args.rounds + 1)),
    }


if __name__ == "__main__":
    raise SystemExit(main())
