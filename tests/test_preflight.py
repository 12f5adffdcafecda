"""Preflight rules against made-up hosts: each rule can fire, and the shipped configs pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuron_spec.config.spec import load_config, load_config_text
from neuron_spec.host.facts import HostFacts
from neuron_spec.preflight.base import FINDING_CODES
from neuron_spec.preflight.check import RULES, preflight

from .conftest import BASE_CONFIG, host, shipped_configs


def codes(
    text: str, instance: str = "trn1.32xlarge", base_dir: Path | None = None
) -> dict[str, str]:
    cfg = load_config_text(text)
    report = preflight(cfg.spec, host(instance), base_dir)
    return {f.code: f.severity for f in report.findings}


def edit(old: str, new: str, text: str = BASE_CONFIG) -> str:
    assert old in text, old
    return text.replace(old, new)


T_TP = "tp_degree: 32, n_positions: 2048, batch_size: 1}\ndraft"
D_TP = "tp_degree: 32, n_positions: 2048, batch_size: 1}\nspec"


def test_base_config_passes_on_trn1():
    found = codes(BASE_CONFIG)
    assert not [c for c, s in found.items() if s == "error"]


@pytest.mark.parametrize("path", shipped_configs())
def test_shipped_configs_have_no_errors(path, shipped):
    cfg = load_config(shipped(path))
    instance = cfg.spec.instance if cfg.spec.instance != "auto" else None
    h = host(instance) if instance else HostFacts.none()
    report = preflight(cfg.spec, h, cfg.base_dir)
    assert report.ok, [f.message for f in report.errors]


def test_tp24_on_trn1_is_rejected_with_nearby_values():
    text = edit(T_TP, T_TP.replace("32", "24"), edit(D_TP, D_TP.replace("32", "24")))
    cfg = load_config_text(text)
    report = preflight(cfg.spec, host("trn1.32xlarge"))
    errs = [f for f in report.errors if f.code == "tp-unsupported"]
    assert {f.path for f in errs} == {"target.tp_degree", "draft.tp_degree"}
    assert "16" in errs[0].fix and "32" in errs[0].fix


def test_tp_exceeding_cores():
    text = edit(T_TP, T_TP.replace("32", "16"), edit(D_TP, D_TP.replace("32", "16")))
    assert codes(text, "inf2.24xlarge")["tp-exceeds-cores"] == "error"


def test_draft_tp_must_equal_target_tp():
    found = codes(edit(D_TP, D_TP.replace("32", "16")))
    assert found["tp-mismatch"] == "error"
    cfg = load_config_text(edit(D_TP, D_TP.replace("32", "16")))
    f = next(
        f for f in preflight(cfg.spec, host("trn1.32xlarge")).findings if f.code == "tp-mismatch"
    )
    assert "nrt_load_collectives" in f.message and "draft.tp_degree: 32" in f.fix


def test_70b_bf16_at_tp8_over_budget():
    text = edit(T_TP, T_TP.replace("32", "8"), edit(D_TP, D_TP.replace("32", "8")))
    cfg = load_config_text(text)
    f = next(
        f
        for f in preflight(cfg.spec, host("trn1.32xlarge")).errors
        if f.code == "memory-over-budget"
    )
    assert f.path == "target.tp_degree" and "16" in f.fix


def _made_up_trn1(gib: float) -> HostFacts:
    return HostFacts("trn1-test", "trn1", 32, int(gib * 1024**3), 512 * 1024**3, "catalog")


def _per_core(spec, h):
    report = preflight(spec, h)
    return {f.code: f for f in report.findings}


def test_combined_load_over_budget_even_if_each_fits():
    # at tp 32 the 70B needs ~5.0 GiB per core and the 7B ~1.2 GiB: each fits 6 GiB, both don't
    cfg = load_config_text(BASE_CONFIG)
    found = _per_core(cfg.spec, _made_up_trn1(6.0))
    f = found["memory-over-budget"]
    assert f.severity == "error" and "add up" in f.message


def test_high_water_warning():
    cfg = load_config_text(BASE_CONFIG)
    found = _per_core(cfg.spec, _made_up_trn1(6.6))
    assert found["memory-high"].severity == "warning"
    assert "memory-over-budget" not in found
    assert "memory-high" not in _per_core(cfg.spec, _made_up_trn1(16))


def test_batch_with_speculation_on_neuronx():
    one = edit(T_TP, T_TP.replace("batch_size: 1", "batch_size: 4"))
    assert codes(one)["batch-speculation"] == "error"  # draft and target batch sizes differ
    both = edit(D_TP, D_TP.replace("batch_size: 1", "batch_size: 4"), one)
    assert codes(both)["batch-speculation"] == "info"  # the engine loop batches (0.12+)
    library = edit("speculation: {", "speculation: {loop: library, ", both)
    assert codes(library)["batch-speculation"] == "error"  # the library loop cannot
    ref = edit(
        "backend: neuronx",
        "backend: reference",
        edit(T_TP, T_TP.replace("batch_size: 1", "batch_size: 4")),
    )
    assert "batch-speculation" not in codes(ref)
    nxdi = edit("backend: neuronx", "backend: nxdi", both)
    assert codes(nxdi)["batch-speculation"] == "info"  # unfused: the engine, continuous batching
    fused = edit("backend: nxdi", "backend: nxdi\nnxdi: {speculation_mode: fused}", nxdi)
    assert codes(fused)["batch-speculation"] == "error"  # NxDI's fused draft loop is batch 1
    assert codes(edit("backend: neuronx", "backend: nxdi", one))["batch-speculation"] == "error"


def test_context_length_estimate_beyond_positions():
    found = codes(
        edit(
            T_TP,
            T_TP.replace("batch_size: 1}", "batch_size: 1, context_length_estimate: [512, 4096]}"),
        )
    )
    assert found["context-estimate"] == "error"


def test_sequence_and_window_fit():
    too_long = edit(
        "generation: {max_new_tokens: 128}",
        "generation: {max_new_tokens: 2000, max_prompt_tokens: 100}",
    )
    assert codes(too_long)["sequence-too-long"] == "error"
    tight = edit(
        "generation: {max_new_tokens: 128}",
        "generation: {max_new_tokens: 1948, max_prompt_tokens: 100}",
    )
    assert codes(tight)["window-overflow"] == "info"  # handled: the last tokens one at a time


AWS_RECIPE = """\
instance: trn1.32xlarge
target: {{model: llama-2-70b, amp: bf16, tp_degree: 32, n_positions: {n}, batch_size: 1}}
draft: {{model: llama-2-7b, amp: bf16, tp_degree: 32, n_positions: {n}, batch_size: 1}}
generation: {{max_new_tokens: {new}}}
"""


@pytest.mark.parametrize(("n", "new"), [(128, 50), (256, 40)])
def test_aws_recipe_lengths_validate_with_no_prompt_key(n, new):
    from neuron_spec.preflight.rules import prompt_budget

    cfg = load_config_text(AWS_RECIPE.format(n=n, new=new))
    report = preflight(cfg.spec, host("trn1.32xlarge"))
    assert report.ok, [f.message for f in report.errors]
    assert prompt_budget(cfg.spec) == n - new - cfg.spec.speculation.window


def test_default_prompt_budget_errs_only_when_no_prompt_fits():
    full = load_config_text(AWS_RECIPE.format(n=128, new=128))
    errs = preflight(full.spec, host("trn1.32xlarge")).errors
    assert [(f.code, f.path) for f in errs] == [
        ("sequence-too-long", "generation.max_new_tokens"),
        ("sequence-too-long", "generation.max_new_tokens"),
    ]
    assert "no room for a prompt" in errs[0].message and "n_positions=128" in errs[0].message
    # one token of prompt fits: no error, the window just cannot reach the end
    found = codes(AWS_RECIPE.format(n=128, new=127))
    assert "sequence-too-long" not in found and found["window-overflow"] == "info"


def test_vocab_mismatch():
    found = codes(edit("model: llama-2-7b,", "model: llama-3-8b,"))
    assert found["vocab-mismatch"] == "error"


def test_llama3_warnings_and_eos_list():
    text = BASE_CONFIG.replace("llama-2-70b", "llama-3-70b").replace("llama-2-7b,", "llama-3-8b,")
    text = text.replace(
        "generation: {max_new_tokens: 128}",
        "generation: {max_new_tokens: 128, eos_token_id: [128001, 128009]}",
    )
    found = codes(text.replace("acceptor: lossless}", "acceptor: lossless, loop: library}"))
    assert found["token-id-zero"] == "warning" and found["eos-list"] == "info"
    assert "vocab-mismatch" not in found
    engine = codes(text)  # the default loop, neuron-spec's engine: explicit lengths, any EOS list
    assert "token-id-zero" not in engine and "eos-list" not in engine


def test_library_loop_defects_are_explained_with_the_engine_fix():
    sampled = edit("temperature: 0.0", "temperature: 0.8")
    library = sampled.replace("acceptor: lossless}", "acceptor: lossless, loop: library}")
    cfg = load_config_text(library)
    findings = {f.code: f for f in preflight(cfg.spec, host("trn1.32xlarge")).findings}
    defect = findings["library-loop-defects"]
    assert defect.severity == "warning" and "first new token" in defect.message
    assert "loop: engine" in defect.fix and defect.path == "speculation.loop"
    assert "library-loop-defects" not in codes(BASE_CONFIG)  # greedy: nothing to explain
    assert "library-loop-defects" not in codes(sampled)  # the default loop is the exact one


def test_undocumented_tp_warns():
    text = edit(T_TP, T_TP.replace("32", "16"), edit(D_TP, D_TP.replace("32", "16")))
    found = codes(text)
    assert found["tp-undocumented"] == "warning" and "tp-unsupported" not in found


def test_auto_instance_off_neuron_is_an_error():
    cfg = load_config_text(BASE_CONFIG.replace("instance: trn1.32xlarge", "instance: auto"))
    report = preflight(cfg.spec, HostFacts.none())
    assert [f.code for f in report.errors] == ["host-unknown"]


def _checkpoint(dir: Path, arch: dict, weights: str) -> Path:
    dir.mkdir(parents=True)
    (dir / "config.json").write_text(json.dumps(arch))
    if weights.endswith("/"):
        (dir / weights).mkdir()
    else:
        (dir / weights).write_bytes(b"\0" * 64)
    return dir


HF_LLAMA = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}


def test_checkpoint_directory_rules(tmp_path):
    _checkpoint(tmp_path / "t", HF_LLAMA, "model.safetensors")
    _checkpoint(tmp_path / "d", HF_LLAMA, "pytorch_model.bin")
    text = edit("model: llama-2-70b", "model: ./t", edit("model: llama-2-7b", "model: ./d"))
    found = codes(text, base_dir=tmp_path)
    assert found["checkpoint-not-lazy"] == "warning"  # the .bin draft
    assert "checkpoint-missing" not in found
    assert found["draft-not-smaller"] == "warning"  # same size


def test_missing_checkpoint_and_non_llama(tmp_path):
    _checkpoint(tmp_path / "gpt", {**HF_LLAMA, "model_type": "gpt_neox"}, "model.safetensors")
    text = edit("model: llama-2-70b", "model: ./gpt", edit("model: llama-2-7b", "model: ./none"))
    found = codes(text, base_dir=tmp_path)
    assert found["checkpoint-missing"] == "error"
    assert found["architecture-unsupported"] == "error"


def test_acceptor_sampling_warnings():
    found = codes(
        edit(
            "temperature: 0.0",
            "temperature: 0.7",
            edit("acceptor: lossless", "acceptor: neuronx-default"),
        )
    )
    assert found["acceptor-ignores-sampling"] == "warning"
    assert "acceptor-ignores-sampling" not in codes(edit("temperature: 0.0", "temperature: 0.7"))


def test_every_rule_emits_only_registered_codes():
    # all registered codes are reachable in this module's tests or documented; every rule
    # function is registered
    assert len(RULES) >= 15
    assert all(code == code.lower() and " " not in code for code in FINDING_CODES)


def test_idle_cores_are_mentioned_only_when_a_larger_tp_could_be_used():
    t8 = edit("tp_degree: 32", "tp_degree: 8", edit(D_TP, D_TP.replace("32", "8")))
    assert codes(t8).get("cores-idle") == "info"  # Llama-2 splits over 16 or 32 cores
    assert "cores-idle" not in codes(BASE_CONFIG)  # all 32 in use
    smollm = (
        "instance: inf2.xlarge\nbackend: neuronx\n"
        "target: {model: smollm2-135m, amp: f32, tp_degree: 1, n_positions: 512}\n"
        "draft: {model: smollm2-135m, amp: bf16, tp_degree: 1, n_positions: 512}\n"
        "speculation: {draft_tokens: 4}\n"
    )
    assert "cores-idle" not in codes(smollm, "inf2.xlarge")  # 3 KV heads do not split over 2


def _with_cache(path: str) -> str:
    return BASE_CONFIG + f"compile: {{artifact_cache: '{path}'}}\n"


def local_codes(text: str) -> dict[str, str]:
    """Findings when the pair loads on this machine (generate, serve, launch.sh)."""
    report = preflight(load_config_text(text).spec, host("trn1.32xlarge"), local=True)
    return {f.code: f.severity for f in report.findings}


def test_an_artifact_cache_under_a_file_is_reported_before_loading(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    found = local_codes(_with_cache(str(blocker / "compiled")))
    assert found.get("artifact-cache-unusable") == "error"
    # checking a config for another machine says nothing about this one's disk
    assert "artifact-cache-unusable" not in codes(_with_cache(str(blocker / "compiled")))


def test_an_artifact_cache_where_nothing_can_be_created_is_reported():
    ro = "/proc/neuron-spec-compiled"  # procfs: no directory can be made there, even as root
    assert local_codes(_with_cache(ro)).get("artifact-cache-unusable") == "error"


def test_a_full_artifact_cache_is_reported(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    assert "artifact-cache-unusable" not in local_codes(_with_cache(str(tmp_path / "fresh")))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**12, 10**12 - 10**6, 10**6))
    spec = load_config_text(_with_cache(str(tmp_path))).spec
    report = preflight(spec, host("trn1.32xlarge"), local=True)
    found = [f for f in report.findings if f.code == "artifact-cache-unusable"]
    assert found and "this pair needs about 5.00 GiB" in found[0].message


def _suggested(fix: str) -> list[int]:
    import re

    found: list[int] = []
    for pattern in (r"one of ([\d, ]+)", r"tp_degree: (\d+)", r"fits at: ([\d, ]+)"):
        for group in re.findall(pattern, fix):
            found += [int(x) for x in group.replace(" ", "").split(",") if x]
    return found


@pytest.mark.parametrize("instance", ["trn1.32xlarge", "inf2.48xlarge", "inf2.24xlarge"])
def test_fix_hints_only_suggest_tp_values_at_which_the_pair_fits(instance):
    from neuron_spec.preflight.base import build_context
    from neuron_spec.preflight.rules import pair_fitting_tps

    checked = 0
    for t in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48):
        for d in (t, 8, 16):
            text = (
                f"instance: {instance}\n"
                f"target: {{model: llama-2-70b, tp_degree: {t}}}\n"
                f"draft: {{model: llama-2-7b, tp_degree: {d}}}\n"
            )
            cfg = load_config_text(text)
            h = host(instance)
            fits = pair_fitting_tps(build_context(cfg.spec, h, Path.cwd()))
            assert fits, instance
            for f in preflight(cfg.spec, h).errors:
                for tp in _suggested(f.fix):
                    checked += 1
                    assert tp in fits, (t, d, f.code, f.fix)
    assert checked > 20
