"""Every catalog row is checked: parameter counts, instance arithmetic, tp rules."""

from __future__ import annotations

import json

import pytest

from neuron_spec.config.catalog import (
    ARCHITECTURES,
    INSTANCES,
    TP_RULES,
    architecture_names,
    find_architecture,
)

CORES_PER_CHIP = {"inf2": 2, "trn1": 2, "trn2": 4}  # trn2: logical cores at LNC=2
MEMORY_PER_CHIP_GIB = {"inf2": 32, "trn1": 32, "trn2": 96}


@pytest.mark.parametrize("arch", ARCHITECTURES.values(), ids=lambda a: a.name)
def test_parameter_formula_gives_the_published_count(arch):
    assert arch.published_parameters is not None
    assert arch.parameters() == arch.published_parameters
    assert arch.source, "every row names its source"
    assert arch.is_llama
    assert arch.hidden_size % arch.num_heads == 0
    assert arch.num_heads % arch.num_kv_heads == 0


@pytest.mark.parametrize("row", INSTANCES.values(), ids=lambda r: r.name)
def test_instance_rows_are_consistent(row):
    assert row.cores == row.chips * CORES_PER_CHIP[row.platform]
    assert row.device_memory_gib == row.chips * MEMORY_PER_CHIP_GIB[row.platform]
    assert row.source
    # single-chip instances allow only tp 1 or 2
    valid = TP_RULES[row.platform].candidates(row.cores)
    if row.chips == 1:
        assert valid == [1, 2]


def test_published_device_memory():
    assert INSTANCES["inf2.48xlarge"].device_memory_gib == 384
    assert INSTANCES["trn1.32xlarge"].device_memory_gib == 512
    assert INSTANCES["trn2.48xlarge"].device_memory_gib == 1536


@pytest.mark.parametrize(
    ("platform", "tp", "allowed"),
    [
        ("trn1", 1, True),
        ("trn1", 2, True),
        ("trn1", 4, False),
        ("trn1", 8, True),
        ("trn1", 16, True),
        ("trn1", 24, False),
        ("trn1", 32, True),
        ("trn1", 64, True),
        ("trn1", 48, False),
        ("trn1", 0, False),
        ("inf2", 1, True),
        ("inf2", 3, False),
        ("inf2", 6, True),
        ("inf2", 24, True),
        ("inf2", 23, False),
        ("trn2", 4, True),
        ("trn2", 12, False),
        ("trn2", 64, True),
    ],
)
def test_tp_rules_follow_the_card(platform, tp, allowed):
    assert TP_RULES[platform].allowed(tp) is allowed


def test_documented_values_are_allowed():
    for rule in TP_RULES.values():
        assert all(rule.allowed(tp) for tp in rule.documented)


def test_aliases_resolve_case_insensitively():
    assert find_architecture("meta-llama/Llama-2-70b-hf").name == "llama-2-70b"
    assert find_architecture("LLAMA-2-7B").name == "llama-2-7b"
    assert find_architecture("HuggingFaceTB/SmolLM2-135M-Instruct").name == "smollm2-135m"
    assert find_architecture("gpt2") is None


@pytest.mark.parametrize(
    ("target", "draft"), [("llama-3.1-70b", "llama-3.2-1b"), ("llama-3.3-70b", "llama-3.1-8b")]
)
def test_the_llama_3_pairs_people_run_validate_and_plan_on_trn1(
    write_config, capsys, target, draft
):
    from neuron_spec.cli.main import main

    path = write_config(
        f"""\
        instance: trn1.32xlarge
        backend: nxdi
        target: {{model: {target}, amp: bf16, tp_degree: 32, n_positions: 8192}}
        draft: {{model: {draft}, amp: bf16, tp_degree: 32, n_positions: 8192}}
        speculation: {{draft_tokens: 5}}
        generation: {{max_new_tokens: 512, max_prompt_tokens: 4096}}
        """
    )
    assert main(["validate", str(path), "--json"]) in (0, 1)
    capsys.readouterr()
    assert main(["plan", str(path), "--json"]) in (0, 1)
    plan = json.loads(capsys.readouterr().out)
    text = json.dumps(plan)
    assert "128256" in text


def test_llama_3_x_rows_match_their_published_sizes_and_eos_lists():
    for name in ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "llama-3.2-1b",
                 "llama-3.2-3b", "llama-3.3-70b"):  # fmt: skip
        arch = ARCHITECTURES[name]
        assert arch.parameters() == arch.published_parameters
        assert arch.vocab_size == 128256 and arch.num_kv_heads == 8
        assert arch.eos_token_id == (128001, 128008, 128009)
    assert ARCHITECTURES["llama-3.2-1b"].tie_word_embeddings
    assert not ARCHITECTURES["llama-3.1-70b"].tie_word_embeddings


def test_did_you_mean_stays_within_the_family():
    from neuron_spec.config.spec import did_you_mean

    assert "llama-3.2-1b" in did_you_mean("llama-3.2-1", architecture_names())
    assert "llama-3.3-70b" in did_you_mean("llama-3.3-70", architecture_names())
