"""A model's own config.json (or GGUF header) from a local directory or the Hub is outside
input: sizes of 1e308, zero heads, a model_type holding terminal escapes. Each value sizing
reads is checked against its range; one outside is a config error (exit 2) naming the file, the
key and what is allowed, never an internal error, and no text from the file reaches the
terminal raw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from neuron_spec.cli.main import main
from neuron_spec.errors import ConfigError
from neuron_spec.sources.checkpoint import SIZE_RANGES, architecture_from_hf_config

ESC = "\x1b[31mred\x1b]0;title\x07"
LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128009],
}

HOSTILE: list[tuple[str, Any, str]] = [
    ("hidden_size", 1e308, "a whole number from 1 to 262144"),
    ("hidden_size", float("inf"), "a whole number from 1 to 262144"),
    ("intermediate_size", 10**40, "a whole number from 1 to 1048576"),
    ("num_attention_heads", 0, "a whole number from 1 to 4096"),
    ("num_hidden_layers", -5, "a whole number from 1 to 4096"),
    ("num_key_value_heads", 0, "a whole number from 1 to 4096"),
    ("num_key_value_heads", 64, "a divisor of num_attention_heads (32)"),
    ("num_key_value_heads", 5, "a divisor of num_attention_heads (32)"),
    ("vocab_size", "x", "a whole number from 1 to 16777216"),
    ("vocab_size", True, "a whole number from 1 to 16777216"),
    ("vocab_size", 3.5, "a whole number from 1 to 16777216"),
    ("max_position_embeddings", 1e30, "a whole number from 1 to 16777216"),
    ("head_dim", 0, "a whole number from 1 to 4096"),
    ("hidden_size", 4097, "a multiple of num_attention_heads (32)"),
    ("bos_token_id", -1, "a whole number from 0 to 2147483647"),
    ("eos_token_id", [1, "two"], "a whole number from 0 to 2147483647"),
    ("eos_token_id", list(range(100)), "a token id or a list of at most 64"),
    ("tie_word_embeddings", "yes", "true or false"),
    ("model_type", ESC, "a name of letters, digits"),
    ("model_type", ["llama"], "a name of letters, digits"),
]


def _pair(tmp_path: Path, target: dict[str, Any]) -> Path:
    for role, cfg in (("target", target), ("draft", LLAMA)):
        (tmp_path / role).mkdir(exist_ok=True)
        (tmp_path / role / "config.json").write_text(json.dumps(cfg))
    path = tmp_path / "pair.yaml"
    path.write_text(
        "instance: trn1.32xlarge\nbackend: nxdi\n"
        "target: {model: ./target, amp: bf16, tp_degree: 32}\n"
        "draft: {model: ./draft, amp: bf16, tp_degree: 32}\n"
    )
    return path


@pytest.mark.parametrize(("key", "value", "allowed"), HOSTILE, ids=[f"{k}-{i}" for i, (k, _, _)
                         in enumerate(HOSTILE)])  # fmt: skip
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_a_config_json_value_out_of_range_is_exit_2_naming_file_key_and_range(
    tmp_path, capsys, command, key, value, allowed
):
    cfg = _pair(tmp_path, {**LLAMA, key: value})
    assert main([command, str(cfg), "--json"]) == 2
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    (problem,) = json.loads(out)["problems"]
    assert problem["path"] == key and problem["file"] == str(tmp_path / "target" / "config.json")
    assert allowed in problem["message"] and problem["fix"]


def test_the_human_message_shows_an_escape_sequence_escaped(tmp_path, capsys):
    cfg = _pair(tmp_path, {**LLAMA, "model_type": ESC})
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[31mred" in err and "model_type" in err


def test_values_inside_the_ranges_are_read_as_before():
    arch = architecture_from_hf_config({**LLAMA, "hidden_size": 4096.0, "head_dim": None}, "m")
    assert arch.hidden_size == 4096 and arch.head_dim is None and arch.num_kv_heads == 8
    assert arch.eos_token_id == (128001, 128009) and arch.model_type == "llama"
    bare = {k: v for k, v in LLAMA.items() if k not in ("num_key_value_heads", "model_type")}
    arch = architecture_from_hf_config(bare, "m")
    assert arch.num_kv_heads == 32 and arch.model_type == "unknown"


def test_every_range_holds_the_largest_published_llama():
    llama_405b = {
        "hidden_size": 16384,
        "intermediate_size": 53248,
        "num_hidden_layers": 126,
        "num_attention_heads": 128,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
    }
    for key, value in llama_405b.items():
        low, high = SIZE_RANGES[key]
        assert low <= value <= high // 4, key  # room to spare
    arch = architecture_from_hf_config({**LLAMA, **llama_405b}, "405b")
    assert 400e9 < arch.parameters() < 410e9


def test_a_missing_size_is_still_an_unreadable_checkpoint_not_a_crash(tmp_path, capsys):
    cfg = _pair(tmp_path, {k: v for k, v in LLAMA.items() if k != "hidden_size"})
    assert main(["validate", str(cfg), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)["findings"]
    missing = [f for f in found if f["path"] == "target.model"]
    assert missing[0]["code"] == "checkpoint-missing" and "'hidden_size'" in missing[0]["message"]


def test_a_huge_local_config_json_is_not_read_whole(tmp_path, capsys):
    cfg = _pair(tmp_path, LLAMA)
    (tmp_path / "target" / "config.json").write_text('{"pad": "' + "x" * (2 << 20) + '"}')
    assert main(["validate", str(cfg), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)["findings"]
    [f] = [f for f in found if f["path"] == "target.model"]
    assert "bytes" in f["message"] and "allowed" in f["message"]


def test_the_error_is_a_config_error_in_process():
    with pytest.raises(ConfigError) as info:
        architecture_from_hf_config({**LLAMA, "num_attention_heads": 0}, "m", "/x/config.json")
    (problem,) = info.value.problems
    assert problem.render().startswith("num_attention_heads (/x/config.json): ")
