"""Host time per speculative step of the two transformers-neuronx loops, with the device's
cost taken away: what neuron-spec's `engine` loop and the library's `SpeculativeGenerator`
(`library` loop) spend on the host between NeuronCore calls.

The pair is the transformers-neuronx test double (tests/tnx_double, which reproduces the
library's loops release by release) with zero-cost models: every forward returns a
precomputed logits row (vocabulary 32000) by table lookup, so what is timed is the loops'
own work: acceptance over the vocabulary, tensor bookkeeping, streaming. The draft disagrees
with the target at every fifth position, so steps accept some drafts and reject others.

Prints JSON: milliseconds per target pass (speculative step) for each loop and API, medians
of --repeat runs, and engine/library ratios. Target: the engine loop is no slower (ratio <= 1).

    python benchmarks/loop_overhead.py [--repeat 15] [--new-tokens 240]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB, K, N_POSITIONS, PROMPT = 32000, 7, 512, 8
RELEASES = {"v1": "0.11.351", "v2": "0.13.322"}


def _checkpoint(directory: Path) -> Path:
    """A one-layer Llama with a 32000-token vocabulary (its weights are never used)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=N_POSITIONS,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(directory)
    return directory


def _tables() -> tuple[object, object]:
    """Target and draft logits per position: the draft's argmax differs every fifth one."""
    import torch

    g = torch.Generator().manual_seed(0)
    target = torch.randn(N_POSITIONS, VOCAB, generator=g)
    best = torch.randint(3, VOCAB, (N_POSITIONS,), generator=g)
    target[torch.arange(N_POSITIONS), best] += 20.0
    draft = target.clone()
    wrong = torch.arange(0, N_POSITIONS, 5)
    draft[wrong, (best[wrong] + 1) % VOCAB] += 40.0
    return target, draft


def _pair(work: Path, ckpt: Path, version: str):
    os.environ["TNX_DOUBLE_VERSION"] = version
    for name in list(sys.modules):
        if name.startswith("transformers_neuronx"):
            del sys.modules[name]
    from neuron_spec.backends.neuronx.backend import NeuronxPair
    from neuron_spec.config.spec import load_config

    cfg = work / f"{version}.yaml"
    cfg.write_text(
        "instance: trn1.32xlarge\nbackend: neuronx\n"
        f"target: {{model: {ckpt}, amp: f32, tp_degree: 32, n_positions: {N_POSITIONS}}}\n"
        f"draft: {{model: {ckpt}, amp: f32, tp_degree: 32, n_positions: {N_POSITIONS}}}\n"
        f"speculation: {{draft_tokens: {K - 1}, acceptor: greedy}}\n"
        f"compile: {{artifact_cache: {work / 'compiled' / version}}}\n"
    )
    pair = NeuronxPair(load_config(cfg))
    target, draft = _tables()
    pair.target._logits_at = lambda row, pos: target[pos]  # zero-cost device
    pair.draft._logits_at = lambda row, pos: draft[pos]
    return pair


def _run(pair, loop: str, new_tokens: int) -> tuple[float, int, int]:
    """One decode; returns (ms per target pass, target passes, tokens)."""
    from neuron_spec.config.spec import SamplingSpec
    from neuron_spec.engine.acceptors import make_acceptor

    pair.loop = loop
    acceptor = make_acceptor("greedy", SamplingSpec())
    prompt = list(range(3, 3 + PROMPT))
    t0 = time.perf_counter()
    out = pair.decode([prompt], acceptor, draft_tokens=K - 1, max_new_tokens=new_tokens)
    seconds = time.perf_counter() - t0
    steps = max(1, len(out.target_step_seconds))
    return seconds * 1000 / steps, steps, len(out.tokens[0])


def _compare(pair, new_tokens: int, repeat: int) -> dict[str, object]:
    """The loops alternate run by run (after one warm-up each), so drift in the machine's
    speed falls on both alike."""
    times: dict[str, list[float]] = {"engine": [], "library": []}
    shape: dict[str, dict[str, int]] = {}
    for i in range(repeat + 1):
        for loop in ("engine", "library") if i % 2 == 0 else ("library", "engine"):
            ms, steps, tokens = _run(pair, loop, new_tokens)
            if i:
                times[loop].append(ms)
            shape[loop] = {"target_passes": steps, "tokens": tokens}
    out: dict[str, object] = {
        loop: {"ms_per_step": statistics.median(v), **shape[loop]} for loop, v in times.items()
    }
    out["engine_over_library"] = statistics.median(times["engine"]) / statistics.median(
        times["library"]
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--new-tokens", type=int, default=240)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests" / "tnx_double"))
    report: dict[str, object] = {"vocab": VOCAB, "window_k": K, "repeat": args.repeat}
    with tempfile.TemporaryDirectory(prefix="loop-overhead-") as tmp:
        work = Path(tmp)
        ckpt = _checkpoint(work / "ckpt")
        for api, version in RELEASES.items():
            pair = _pair(work, ckpt, version)
            assert pair.api == api, (pair.api, api)
            report[api] = {
                "transformers_neuronx": version,
                **_compare(pair, args.new_tokens, args.repeat),
            }
            from transformers_neuronx import _runtime

            _runtime.reset()
    report["engine_no_slower"] = all(
        report[api]["engine_over_library"] <= 1.0  # type: ignore[index]
        for api in RELEASES
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
