"""generate / bench through the CLI (in this process: `neuron_spec.cli.main.main`) on a tiny
random pair saved to disk: the target as safetensors, the draft as pytorch_model.bin, both with
a word-level tokenizer. One test runs `python -m neuron_spec` as a process, for its start-up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from neuron_spec.cli.main import main

from .neuron_fixtures import make_checkpoint

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def tiny_pair_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pair")
    target = make_checkpoint(root / "target", seed=0)
    draft = make_checkpoint(root / "draft", seed=0, noise=0.01, base=target, bin_format=True)
    assert (draft / "pytorch_model.bin").is_file()
    config = root / "pair.yaml"
    config.write_text(
        "backend: reference\n"
        "target: {model: ./target, amp: f32, n_positions: 512}\n"
        "draft: {model: ./draft, amp: f32, n_positions: 512}\n"
        "speculation: {draft_tokens: 3, acceptor: greedy}\n"
        "generation: {max_new_tokens: 12, max_prompt_tokens: 64}\n"
    )
    return config


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """`neuron-spec ARGS` in this process: its exit code and what it printed."""

    def run(*args: str) -> Ran:
        code = main(list(args))
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def test_validate_warns_about_the_bin_checkpoint(tiny_pair_config, cli):
    proc = cli("validate", str(tiny_pair_config), "--json")
    body = json.loads(proc.stdout)
    assert proc.returncode == 0
    codes = {f["code"]: f["path"] for f in body["findings"]}
    assert codes.get("checkpoint-not-lazy") == "draft.model"


def test_generate_stream_prints_the_same_text(tiny_pair_config, cli):
    as_json = json.loads(
        cli("generate", str(tiny_pair_config), "--prompt", "w1 w2 w3", "--json").stdout
    )
    streamed = cli("generate", str(tiny_pair_config), "--prompt", "w1 w2 w3", "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.startswith(as_json["text"])
    assert "accepted / drafted" in streamed.stdout
    assert len(as_json["token_ids"]) == 12


def test_bench_json(tiny_pair_config, tmp_path, cli):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2 w3\n\nw40 w41\n")
    proc = cli(
        "bench",
        str(tiny_pair_config),
        "--draft-tokens",
        "1,3",
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "8",
        "--methods",
        "draft,ngram",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["prompts"] == 2 and report["repeat"] == 3
    # the configured method (draft) at each length and adaptive up to the longest; another
    # method at the configured draft_tokens (3), fixed and adaptive up to the longest
    settings = [(r["method"], r["draft_tokens"], r["adaptive"]) for r in report["speculative"]]
    assert settings == [("draft", 1, False), ("draft", 3, False), ("draft", 3, True),
                        ("ngram", 3, False), ("ngram", 3, True)]  # fmt: skip
    for row in [report["baseline"], *report["speculative"]]:
        assert row["runs"] == 3
        assert row["tokens_per_s_min"] <= row["tokens_per_s"] <= row["tokens_per_s_max"]
        assert row["spread_pct"] >= 0
    for row in report["speculative"]:
        assert row["outputs_match_target"] is True  # greedy: identical to target-only
        assert row["speedup"] > 0
        if not row["adaptive"]:
            assert row["c"] is not None and row["predicted_speedup"] > 0
        if row["drafted"]:  # an adaptive setting may have chosen never to propose
            assert 0.0 <= row["alpha"] <= 1.0
        else:
            assert row["adaptive"] and row["acceptance_rate"] is None
    best = max(report["speculative"], key=lambda r: r["speedup"])
    assert report["best"] == {k: best[k] for k in ("method", "adaptive", "draft_tokens", "speedup")}


def test_generate_stops_on_a_preflight_error_before_loading(tiny_pair_config, tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    text = tiny_pair_config.read_text().replace("./draft", str(tmp_path / "missing"))
    bad.write_text(text.replace("./target", str(tiny_pair_config.parent / "target")))
    proc = cli("generate", str(bad), "--prompt", "x")
    assert proc.returncode == 1
    assert "checkpoint-missing" in proc.stderr and "before loading" in proc.stderr


def test_neuronx_without_the_library_says_how_to_get_it(tmp_path, cli, monkeypatch):
    for name in list(sys.modules):  # a test double another test imported is not installed
        if name.split(".")[0] == "transformers_neuronx":
            monkeypatch.delitem(sys.modules, name)
    cfg = tmp_path / "n.yaml"
    shutil.copy(Path(__file__).parent.parent / "configs" / "trn1-llama2-70b-7b-bf16.yaml", cfg)
    proc = cli("generate", str(cfg), "--prompt", "x")
    assert proc.returncode == 2
    assert "transformers-neuronx is not installed" in proc.stderr
    assert "Deep Learning AMI" in proc.stderr and "Traceback" not in proc.stderr


LONG_PROMPT = " ".join(f"w{i}" for i in range(600))  # more tokens than n_positions=512


def test_generate_and_bench_refuse_a_prompt_past_n_positions(tiny_pair_config, tmp_path, cli):
    proc = cli("generate", str(tiny_pair_config), "--prompt", LONG_PROMPT)
    assert proc.returncode == 2, proc.stderr
    assert "n_positions=512" in proc.stderr and "Traceback" not in proc.stderr
    prompts = tmp_path / "long.txt"
    prompts.write_text(f"w1 w2\n{LONG_PROMPT}\n")
    proc = cli("bench", str(tiny_pair_config), "--prompts", str(prompts), "--draft-tokens", "2")
    assert proc.returncode == 2, proc.stderr
    assert "n_positions=512" in proc.stderr and "Traceback" not in proc.stderr


def test_generate_says_the_preflight_warnings_once_and_quiet_hides_them(tiny_pair_config, cli):
    args = ("generate", str(tiny_pair_config), "--prompt", "w1 w2", "--max-new-tokens", "2")
    # greedy acceptor with a temperature from the command line: the preflight sees the flag
    loud = cli(*args, "--temperature", "0.9")
    assert loud.returncode == 0, loud.stderr
    warned = [line for line in loud.stderr.splitlines() if line.startswith("warning ")]
    assert sorted(w.split()[1] for w in warned) == [
        "acceptor-ignores-sampling",
        "checkpoint-not-lazy",
        "draft-not-smaller",  # the tiny pair is two same-size models
    ]
    assert "temperature=0.9 is ignored" in loud.stderr
    quiet = cli(*args, "--temperature", "0.9", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert "warning " not in quiet.stderr and quiet.stdout.startswith("w1 w2")


def test_piped_bench_table_has_every_header_whole(tiny_pair_config, cli):
    proc = cli("bench", str(tiny_pair_config), "--draft-tokens", "2", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout and "…" not in proc.stdout
    head = next(line for line in proc.stdout.splitlines() if "method" in line and "length" in line)
    for column in ("tokens/s", "min..max", "speedup", "predicted", "acceptance", "same output"):
        assert column in head, head


def test_draft_tokens_0_runs_the_target_alone(tiny_pair_config, cli):
    """The baseline users compare a speedup against: no draft call, the target's greedy text."""
    alone = cli(
        "generate", str(tiny_pair_config), "--prompt", "w1 w2 w3", "--draft-tokens", "0",
        "--temperature", "0.8", "--json",
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    body = json.loads(alone.stdout)
    assert body["metrics"]["drafted"] == 0 and len(body["token_ids"]) == 12
    greedy = [
        json.loads(
            cli("generate", str(tiny_pair_config), "--prompt", "w1 w2 w3", "--draft-tokens", g,
                "--json").stdout
        )["token_ids"]
        for g in ("0", "3")
    ]  # fmt: skip
    assert greedy[0] == greedy[1]


@pytest.mark.slow
def test_a_prompt_that_cannot_fit_is_refused_before_anything_loads(tiny_pair_config):
    """A 3000-word prompt: exit 2 naming n_positions, in well under the time a load takes,
    counting the start of `python -m neuron_spec` (torch is not even imported)."""
    import time

    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "neuron_spec", "generate", str(tiny_pair_config), "--prompt",
         " ".join(["w1"] * 3000)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    took = time.perf_counter() - start
    assert proc.returncode == 2 and "n_positions=512" in proc.stderr
    assert "Nothing was loaded" in proc.stderr and took < 6.0, took  # 0.3 s on an idle machine


def test_a_prompt_that_cannot_fit_is_refused_without_loading(tiny_pair_config, cli, monkeypatch):
    """The same refusal in this process: the loader is never called."""
    from neuron_spec import backends

    def never(*_args, **_kwargs):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(backends, "load_generator", never)
    ran = cli("generate", str(tiny_pair_config), "--prompt", " ".join(["w1"] * 3000))
    assert ran.returncode == 2 and "n_positions=512" in ran.stderr
    assert "Nothing was loaded" in ran.stderr and "Traceback" not in ran.stderr


def test_several_prompts_decode_as_one_batch_with_per_row_figures(tiny_pair_config, cli):
    prompts = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10"]
    args = [a for p in prompts for a in ("--prompt", p)]
    proc = cli("generate", str(tiny_pair_config), *args, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["token_ids"]) == len(out["finished_by_eos"]) == len(out["text"]) == 3
    rows = out["metrics"]["per_row"]
    assert sum(r["drafted"] for r in rows) == out["metrics"]["drafted"] > 0
    assert sum(r["accepted"] for r in rows) == out["metrics"]["accepted"]
    # one batch: the target passes are shared, fewer than the rows' steps one by one
    alone = [
        json.loads(cli("generate", str(tiny_pair_config), "--prompt", p, "--json").stdout)
        for p in prompts
    ]
    assert [a["token_ids"] for a in alone] == out["token_ids"]
    assert out["metrics"]["target_passes"] < sum(a["metrics"]["target_passes"] for a in alone)
