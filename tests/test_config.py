"""Config loading: the shape users write, and errors that say where and how to fix."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuron_spec.config.spec import (
    DeploymentSpec,
    json_schema,
    load_config,
    load_config_text,
    spec_from_data,
)
from neuron_spec.errors import ConfigError

from .conftest import BASE_CONFIG, CONFIGS


def test_base_config_loads_typed_and_frozen():
    cfg = load_config_text(BASE_CONFIG)
    spec = cfg.spec
    assert spec.target.tp_degree == 32 and spec.target.amp == "bf16"
    assert spec.speculation.draft_tokens == 6
    assert spec.speculation.window == 7  # the compiled window k = gamma + 1
    assert spec.target.n_positions == (2048,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.target.tp_degree = 8  # type: ignore[misc]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert isinstance(load_config(path).spec, DeploymentSpec)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_the_json_schema_accepts_the_shipped_configs(path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("tp_degree: 32,", 'tp_degree: "32",', "tp_degree"),
        ("amp: bf16,", "amp: bf17,", "amp"),
        ("draft_tokens: 6", "draft_tokens: 0", "draft_tokens"),
        ("draft_tokens: 6", "draft_tokens: 6, colour: red", "colour"),
    ],
)
def test_the_json_schema_and_the_loader_refuse_the_same_mistakes(old, new, field):
    jsonschema = pytest.importorskip("jsonschema")
    text = BASE_CONFIG.replace(old, new, 1)
    assert text != BASE_CONFIG
    with pytest.raises(jsonschema.ValidationError) as schema_err:
        jsonschema.validate(yaml.safe_load(text), json_schema())
    assert field in str(schema_err.value)
    assert any(p.path.endswith(field) for p in _problems(text))


def _problems(text: str) -> list:
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "x.yaml")
    return exc.value.problems


def test_unknown_key_says_did_you_mean_with_line():
    [p] = _problems(
        BASE_CONFIG.replace(
            "tp_degree: 32, n_positions: 2048, batch_size: 1}\ndraft",
            "tp_degre: 32, n_positions: 2048, batch_size: 1}\ndraft",
        )
    )
    assert p.path == "target.tp_degre"
    assert "Did you mean 'tp_degree'" in p.message
    assert p.line == 3 and p.file == "x.yaml"


def test_every_problem_is_reported_at_once():
    text = (
        BASE_CONFIG.replace(
            "amp: bf16, tp_degree: 32, n_positions: 2048, batch_size: 1}\nspeculation",
            "amp: bf17, tp_degree: 32, n_positions: 2048, batch_size: 1}\nspeculation",
        )
        .replace("trn1.32xlarge", "trn1.32xlarg")
        .replace("draft_tokens: 6", "draft_tokens: 0")
    )
    problems = _problems(text)
    paths = {p.path for p in problems}
    assert paths == {"instance", "draft.amp", "speculation.draft_tokens"}
    inst = next(p for p in problems if p.path == "instance")
    assert "Did you mean 'trn1.32xlarge'" in inst.message and inst.line == 1


def test_a_misspelt_choice_suggests_the_close_one_not_quotes():
    [p] = _problems(BASE_CONFIG.replace("amp: bf16, tp_degree: 32", "amp: bf17, tp_degree: 32", 1))
    assert p.path == "target.amp" and "'f32', 'f16', 'bf16'" in p.message
    assert p.fix == "Did you mean 'bf16'?"


def test_unknown_catalog_model_suggests_the_close_one():
    [p] = _problems(BASE_CONFIG.replace("model: llama-2-7b,", "model: llama-2-7bb,"))
    assert p.path == "draft.model" and "Did you mean 'llama-2-7b'" in p.message
    assert p.line == 4


def test_yaml_syntax_error_has_line_and_column():
    [p] = _problems("instance: trn1.32xlarge\ntarget: {model: llama-2-70b\ndraft: x\n")
    assert "YAML syntax error" in p.message
    assert p.line is not None and p.line >= 2 and p.column is not None


def test_duplicate_keys_are_errors():
    [p] = _problems(BASE_CONFIG + "instance: inf2.48xlarge\n")
    assert p.path == "instance" and p.line == 8 and "twice" in p.message


def test_a_duplicate_key_does_not_hide_the_other_problems():
    text = (
        "instance: trn1.32xlarge\n"
        "target: {model: llama-2-70b, tp_degree: 32}\n"
        "target: {model: llama-2-70b, tp_degree: 32, colour: red}\n"
        "draft: {model: llama-2-7b, tp_degree: 32, bogus: 1}\n"
        "speculation: {draft_tokens: 0}\n"
    )
    problems = _problems(text)
    assert [(p.path, p.line) for p in problems] == [
        ("target", 3),
        ("target.colour", 3),
        ("draft.bogus", 4),
        ("speculation.draft_tokens", 5),
    ]
    assert "twice" in problems[0].message


def test_quoted_numbers_and_bools_are_rejected():
    text = BASE_CONFIG.replace(
        "tp_degree: 32, n_positions: 2048, batch_size: 1}\ndraft",
        'tp_degree: "32", n_positions: 2048, batch_size: true}\ndraft',
    )
    problems = _problems(text)
    assert {p.path for p in problems} == {"target.tp_degree", "target.batch_size"}
    assert any("without quotes" in p.fix for p in problems)


def test_missing_required_section():
    [p] = _problems("instance: trn1.32xlarge\ntarget: {model: llama-2-70b}\n")
    assert p.path == "draft" and "missing" in p.message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "42\n", "null\n"])
def test_non_mapping_documents(text):
    [p] = _problems(text)
    assert "mapping" in p.message


def test_buckets_must_increase_and_context_estimate_zero_allowed():
    [p] = _problems(
        BASE_CONFIG.replace(
            "n_positions: 2048, batch_size: 1}\nspec",
            "n_positions: [512, 256], batch_size: 1}\nspec",
        )
    )
    assert p.path == "draft.n_positions" and "increasing" in p.message
    ok = load_config_text(
        BASE_CONFIG.replace(
            "batch_size: 1}\nspec", "batch_size: 1, context_length_estimate: 0}\nspec"
        )
    )
    assert ok.spec.draft.context_length_estimate == (0,)


def test_custom_acceptor_path_accepted_and_garbage_rejected():
    ok = load_config_text(BASE_CONFIG.replace("acceptor: lossless", "acceptor: my.pkg:Acc"))
    assert ok.spec.speculation.acceptor == "my.pkg:Acc"
    [p] = _problems(BASE_CONFIG.replace("acceptor: lossless", "acceptor: lossles"))
    assert "Did you mean 'lossless'" in p.message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


def test_yaml_is_loaded_safely():
    [p] = _problems("!!python/object/apply:os.system ['echo pwned']\n")
    assert "YAML" in p.message


# --- property-based: the loader's only outcomes are a spec or a ConfigError ------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_base = yaml.safe_load(BASE_CONFIG)
_paths = [(k, None) for k in _base] + [
    (k, kk) for k, v in _base.items() if isinstance(v, dict) for kk in v
]


@st.composite
def mutated_configs(draw):
    data = yaml.safe_load(BASE_CONFIG)
    for _ in range(draw(st.integers(1, 4))):
        key, sub = draw(st.sampled_from(_paths))
        action = draw(st.sampled_from(["set", "delete", "rename"]))
        holder = data if sub is None else data.get(key)
        name = key if sub is None else sub
        if not isinstance(holder, dict) or name not in holder:
            continue
        if action == "set":
            holder[name] = draw(_values)
        elif action == "delete":
            del holder[name]
        else:
            holder[name + draw(st.text(min_size=1, max_size=3))] = holder.pop(name)
    return data


def _load_only_spec_or_config_error(text: str) -> None:
    try:
        cfg = load_config_text(text)
    except ConfigError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
    else:
        assert isinstance(cfg.spec, DeploymentSpec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_mutated_configs(data):
    _load_only_spec_or_config_error(yaml.safe_dump(data))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text(text):
    _load_only_spec_or_config_error(text)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=120).map(
        lambda b: BASE_CONFIG[: len(b) % len(BASE_CONFIG)] + b.decode("latin-1")
    )
)
def test_truncated_and_corrupted_yaml(text):
    _load_only_spec_or_config_error(text)


@settings(max_examples=200, deadline=None)
@given(_values)
def test_random_data(data):
    with contextlib.suppress(ConfigError):
        spec_from_data(data)


def test_deep_nesting_is_a_config_error():
    with pytest.raises(ConfigError):
        load_config_text("a: " + "[" * 5000 + "]" * 5000)


@pytest.mark.parametrize(
    ("key", "value", "want"),
    [
        ("k", 4, 3),
        ("speculation_length", 7, 6),
        ("num_speculative_tokens", 5, 5),
        ("num_assistant_tokens", 4, 4),
        ("gamma", 6, 6),
    ],
)
def test_speculation_lengths_from_other_stacks_get_the_exact_draft_tokens(key, value, want):
    from neuron_spec.config.spec import load_config_text

    text = (
        "instance: trn1.32xlarge\n"
        "target: {model: llama-2-70b, tp_degree: 32}\n"
        "draft: {model: llama-2-7b, tp_degree: 32}\n"
        f"speculation: {{{key}: {value}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    (problem,) = info.value.problems
    assert problem.path == f"speculation.{key}" and problem.line == 4
    assert f"draft_tokens: {want}}}" in problem.fix


# --- YAML tags: whatever a tag does to a value, the outcome is a located config error ---------

# The config written out block style, one field a line: (dotted path, line) for each leaf.
_BLOCK = yaml.safe_dump(_base, sort_keys=False, default_flow_style=False)


def _block_fields() -> list[tuple[str, int]]:
    fields, section = [], ""
    for number, line in enumerate(_BLOCK.splitlines(), start=1):
        key, _, value = line.strip().partition(":")
        if not line.startswith(" "):
            section = key
            if value.strip():
                fields.append((key, number))
        else:
            fields.append((f"{section}.{key}", number))
    return fields


_FIELDS = _block_fields()


def _tagged(path: str, line: int, tagged: str) -> str:
    lines = _BLOCK.splitlines()
    head = lines[line - 1].partition(":")[0]
    lines[line - 1] = f"{head}: {tagged}"
    return "\n".join(lines) + "\n"


TAGS = [
    "!!float", "!!int", "!!bool", "!!str", "!!null", "!!binary", "!!timestamp", "!!set",
    "!!omap", "!!pairs", "!!seq", "!!map", "!!merge", "!!value", "!!python/name:os.system",
    "!!python/object:os.system", "!!python/object/apply:os.system", "!!python/tuple",
    "!!python/bytes", "!foo", "!<tag:yaml.org,2002:float>", "!<!bar>", "!foo%1b[31m",
]  # fmt: skip
TAG_VALUES = [
    "", "maybe", "0x", "0b", "1e999", "\"-\"", "\"%%%\"", "2024-13-45", "2024-01-01", ".nan", "~",
    "[1, 2]", "{a: 1}", "[a: 1]", "[[1, 2]]", "{a, b}", "[]", "{}", "aGVsbG8=", "5",
]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "tagged"),
    [
        ("sampling.seed", "!!float"),
        ("backend", "!!float"),
        ("sampling.seed", "!!timestamp maybe"),
        ("sampling.seed", "!!int"),
        ("target.tp_degree", "!!int"),
        ("sampling.top_p", "!!bool"),
        ("speculation.draft_tokens", "!!binary"),
        ("sampling.seed", "!!set"),
        ("sampling.seed", "!!omap"),
        ("sampling.seed", "!!pairs"),
        ("target.model", "!!python/name:os.system"),
        ("instance", "!foo"),
        ("instance", "!foo bar"),
        ("sampling.seed", "!!omap [1, 2]"),
    ],
)
def test_a_tag_without_a_usable_value_is_a_located_error_naming_the_field(field, tagged):
    line = dict(_FIELDS)[field]
    [p] = _problems(_tagged(field, line, tagged))
    assert p.line == line and p.file == "x.yaml", p
    assert p.path == field or p.path.startswith(field + "["), p  # an item of it: field[0]


def test_a_tag_problem_shows_the_tag_escaped():
    line = dict(_FIELDS)["instance"]
    [p] = _problems(_tagged("instance", line, "!foo%1b[31m x"))
    assert "\x1b" not in p.message and "\\x1b" in p.message and p.path == "instance"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_FIELDS),
    st.sampled_from(TAGS),
    st.one_of(
        st.sampled_from(TAG_VALUES),
        st.from_regex(r"[A-Za-z0-9_.+][A-Za-z0-9_.+-]{0,9}", fullmatch=True),
    ),
)
def test_any_tag_on_any_field_loads_or_is_located_at_that_field(where, tag, value):
    path, line = where
    try:
        load_config_text(_tagged(path, line, f"{tag} {value}".strip()), "x.yaml")
    except ConfigError as exc:
        assert all(p.line is not None and p.message for p in exc.problems), exc.problems
        assert any(p.path == path or p.path.startswith(path + ".") or
                   p.path.startswith(path + "[") for p in exc.problems), exc.problems  # fmt: skip


def test_a_value_yaml_reads_as_a_bad_date_is_located_with_a_quote_fix():
    line = dict(_FIELDS)["target.model"]
    [p] = _problems(_tagged("target.model", line, "2024-13-45"))
    assert (p.path, p.line) == ("target.model", line)
    assert "as a timestamp" in p.message and "quote it" in p.fix
