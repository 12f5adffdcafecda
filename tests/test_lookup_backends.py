"""Proposers without a draft model on the Neuron backends, against the libraries' doubles: a
config with speculation.method ngram (or suffix) and no `draft:` section loads and compiles the
target alone, verifies the lookup's proposals with the target's speculation graph, and gives
the reference backend's greedy tokens, at batch 1 and at batch 4."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuron_spec.backends import load_generator
from neuron_spec.config.spec import load_config
from neuron_spec.errors import UsageError

from .neuron_fixtures import (
    clean_neuron_env,  # noqa: F401  (autouse: the Neuron environment undone)
    make_checkpoint,
    use_double,
    use_nxdi_double,
)

pytestmark = pytest.mark.reference
# repeated runs in the prompts: prompt lookup has something to propose from the first step
PROMPTS = ["w1 w2 w3 w4 w1 w2 w3", "w7 w8 w7 w8 w7", "w40 w41 w42 w43 w44 w40 w41"]


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("lookup") / "target", seed=0)


def lookup_config(tmp_path: Path, target: Path, backend: str, *, batch: int = 1,
                  method: str = "ngram", extra: str = "") -> Path:  # fmt: skip
    path = tmp_path / f"{backend}-{method}-{batch}.yaml"
    path.write_text(
        f"instance: trn1.32xlarge\nbackend: {backend}\n"
        f"target: {{model: {target}, amp: f32, tp_degree: 32, n_positions: 48, "
        f"batch_size: {batch}}}\n"
        f"speculation: {{method: {method}, draft_tokens: 4, acceptor: greedy, ngram_min: 1, "
        "adaptive: false}\n"
        f"sampling: {{temperature: 0}}\n"
        f"generation: {{max_new_tokens: 24, max_prompt_tokens: 12}}\n"
        f"compile: {{artifact_cache: {tmp_path / 'compiled'}}}\n{extra}"
    )
    return path


def reference_tokens(tmp_path: Path, target: Path) -> list[list[int]]:
    ref = load_generator(load_config(lookup_config(tmp_path, target, "reference")))
    return [ref.generate(p, draft_tokens=0).token_ids[0] for p in PROMPTS]


@pytest.mark.parametrize("version", ["0.12.313", "0.13.322"])
@pytest.mark.parametrize("batch", [1, 4])
def test_transformers_neuronx_runs_a_lookup_on_the_target_alone(
    tmp_path, monkeypatch, target_dir, version, batch
):
    use_double(monkeypatch, version, tmp_path / "meta")
    expected = reference_tokens(tmp_path, target_dir)
    gen = load_generator(load_config(lookup_config(tmp_path, target_dir, "neuronx", batch=batch)))
    pair = gen.backend
    assert pair.draft is None and pair.events == [("target", "compiled")]  # no draft at all
    assert [k for k, _batch in pair.target.speculation] == [5]  # window k = draft_tokens + 1
    out = gen.generate(PROMPTS)
    assert out.token_ids == expected
    assert out.metrics.drafted > 0 and out.metrics.accepted > 0
    assert out.metrics.method == "ngram"
    calls = [name for name, *_ in pair.target.calls]
    assert "speculative_forward" in calls


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize(
    ("method", "release"), [("ngram", "0.8.16251"), ("suffix", "0.8.16251"), ("ngram", "0.9.17334")]
)
def test_nxd_inference_unfused_runs_a_lookup_on_the_targets_speculation_model(
    tmp_path, monkeypatch, target_dir, batch, method, release
):
    use_nxdi_double(monkeypatch, tmp_path / "meta", release)
    expected = reference_tokens(tmp_path, target_dir)
    cfg = lookup_config(tmp_path, target_dir, "nxdi", batch=batch, method=method)
    gen = load_generator(load_config(cfg))
    pair = gen.backend
    assert pair.draft is None and pair.events == [("target", "compiled")]
    assert pair.target.neuron_config.speculation_length == 5
    out = gen.generate(PROMPTS)
    assert out.token_ids == expected
    assert out.metrics.drafted > 0 and out.metrics.accepted > 0


def test_fused_speculation_without_a_draft_model_is_refused(tmp_path, monkeypatch, target_dir):
    use_nxdi_double(monkeypatch, tmp_path / "meta")
    cfg = lookup_config(tmp_path, target_dir, "nxdi", extra="nxdi: {speculation_mode: fused}\n")
    with pytest.raises(UsageError, match="speculation_mode: unfused"):
        load_generator(load_config(cfg))


def test_a_draft_method_without_a_draft_section_is_a_located_config_error(tmp_path, target_dir):
    from neuron_spec.errors import ConfigError

    path = lookup_config(tmp_path, target_dir, "reference", method="draft")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problem = err.value.problems[0]
    assert (
        problem.path == "draft" and "method: ngram" in problem.fix and "missing" in problem.message
    )
