"""The config records: strict types, every problem at once, validation on every construction."""

from __future__ import annotations

import dataclasses
import math

import pytest

from neuron_spec.config.schema import Invalid
from neuron_spec.config.spec import DeploymentSpec, GenerationSpec, ModelSpec, SamplingSpec

PAIR = {"target": {"model": "llama-2-70b"}, "draft": {"model": "llama-2-7b"}}


def _issues(data: object) -> dict[str, str]:
    with pytest.raises(Invalid) as exc:
        DeploymentSpec.from_data(data)
    return {".".join(map(str, i.loc)): i.kind for i in exc.value.issues}


def test_defaults_fill_what_the_data_leaves_out():
    spec = DeploymentSpec.from_data(PAIR)
    assert spec.instance == "auto" and spec.target.tp_degree == 1
    assert spec.target.n_positions == (2048,) and spec.speculation.draft_tokens == 4
    assert spec.target.keys_given == {"model"}
    assert spec.keys_given == {"target", "draft"}


@pytest.mark.parametrize(
    ("value", "ok"),
    [(8, True), (True, False), ("8", False), (8.0, False), (0, False), (1025, False)],
)
def test_integers_are_strict_and_bounded(value, ok):
    data = {**PAIR, "target": {"model": "llama-2-70b", "tp_degree": value}}
    if ok:
        assert DeploymentSpec.from_data(data).target.tp_degree == value
    else:
        kind = _issues(data)["target.tp_degree"]
        assert kind == (
            "range" if isinstance(value, int) and not isinstance(value, bool) else "type"
        )


@pytest.mark.parametrize(
    ("value", "ok"), [(1, True), (0.5, True), (False, False), ("0.5", False), (math.nan, False)]
)
def test_numbers_take_ints_but_not_bools_strings_or_nan(value, ok):
    data = {**PAIR, "sampling": {"temperature": value}}
    if ok:
        temperature = DeploymentSpec.from_data(data).sampling.temperature
        assert temperature == value and isinstance(temperature, float)
    else:
        assert "sampling.temperature" in _issues(data)


def test_every_problem_is_collected_with_its_kind():
    data = {
        "instance": "trn9",
        "target": {"model": "llama-2-70b", "amp": "fp8", "colour": 1},
        "speculation": [1, 2],
    }
    assert _issues(data) == {
        "instance": "value",
        "target.amp": "type",
        "target.colour": "unknown",
        "draft": "missing",
        "speculation": "mapping",
    }


def test_int_or_list_fields_take_either():
    assert GenerationSpec.from_data({"eos_token_id": 2}).eos_token_id == 2
    assert GenerationSpec.from_data({"eos_token_id": [2, 7]}).eos_token_id == [2, 7]
    with pytest.raises(Invalid):
        GenerationSpec.from_data({"eos_token_id": [2, "x"]})


def test_constructing_in_code_validates_too():
    assert SamplingSpec(temperature=1).temperature == 1.0
    with pytest.raises(Invalid) as exc:
        SamplingSpec(temperature=-1.0, top_p=0.0)
    assert [i.loc for i in exc.value.issues] == [("temperature",), ("top_p",)]


def test_replace_validates_and_keeps_the_record_frozen():
    spec = DeploymentSpec.from_data(PAIR)
    changed = spec.replace(backend="reference")
    assert changed.backend == "reference" and spec.backend == "neuronx"
    assert "backend" in changed.keys_given
    with pytest.raises(Invalid):
        spec.replace(backend="cuda")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.target.tp_degree = 8  # type: ignore[misc]


def test_records_compare_by_value():
    a = ModelSpec.from_data({"model": "llama-2-7b", "n_positions": [512, 1024]})
    b = ModelSpec(model="llama-2-7b", n_positions=(512, 1024))
    assert a == b and hash(a) == hash(b)
    assert a != b.replace(tp_degree=2)
