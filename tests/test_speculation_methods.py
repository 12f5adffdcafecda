"""What the user sees of the proposal methods: the preflight, the memory plan, the dry run and
the planner know a lookup loads no draft model; generate, the server's usage and /metrics say
what was proposed and kept, by method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuron_spec.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
NGRAM_70B = str(ROOT / "configs" / "trn1-llama2-70b-ngram.yaml")
PAIR_70B = str(ROOT / "configs" / "trn1-llama2-70b-7b-bf16.yaml")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_plan_of_a_lookup_has_no_draft_model(capsys):
    code, out, _ = run(capsys, "plan", NGRAM_70B, "--json")
    pair_code, pair_out, _ = run(capsys, "plan", PAIR_70B, "--json")
    assert code == pair_code == 0
    body, pair = json.loads(out), json.loads(pair_out)
    assert list(body["models"]) == ["target"] and set(pair["models"]) == {"target", "draft"}
    # the target has the cores to itself: less per core than with the draft beside it
    assert body["layout"]["per_core_bytes"] < pair["layout"]["per_core_bytes"]
    assert body["speculation"]["c_estimate"] == 0
    perf = body["performance"]
    assert perf["draft"] is None and perf["c"] == 0 and perf["speculation_method"] == "ngram"
    assert perf["best_speedup"] > pair["performance"]["best_speedup"]  # no draft passes


def test_the_dry_run_of_a_lookup_compiles_the_target_alone(capsys):
    code, out, _ = run(capsys, "generate", NGRAM_70B, "--dry-run", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["draft"] is None and plan["speculation_method"] == "ngram"
    assert not any(c.startswith("draft") for c in plan["calls"])
    assert any("ngram lookup" in c for c in plan["calls"])
    assert "target.enable_speculative_decoder(7, batch_sizes=[1])" in plan["calls"]


def _findings(capsys, tmp_path: Path, text: str) -> dict[str, dict]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _code, out, _ = run(capsys, "validate", str(path), "--json")
    return {f["code"]: f for f in json.loads(out)["findings"]}


LOOKUP = """\
instance: trn1.32xlarge
backend: {backend}
target: {{model: llama-2-70b, amp: bf16, tp_degree: 32}}
{draft}speculation: {{method: ngram{loop}}}
{nxdi}"""


def test_the_preflight_says_what_a_lookup_leaves_out_and_cannot_run(capsys, tmp_path):
    draft = "draft: {model: llama-2-7b, amp: bf16, tp_degree: 32}\n"
    found = _findings(capsys, tmp_path, LOOKUP.format(backend="neuronx", draft=draft, loop="",
                                                     nxdi=""))  # fmt: skip
    assert found["draft-unused"]["severity"] == "info"
    assert "tp-mismatch" not in found and "draft-not-smaller" not in found
    found = _findings(capsys, tmp_path, LOOKUP.format(backend="neuronx", draft="",
                                                     loop=", loop: library", nxdi=""))  # fmt: skip
    assert found["speculation-method"]["severity"] == "error"
    assert found["speculation-method"]["path"] == "speculation.loop"
    found = _findings(capsys, tmp_path, LOOKUP.format(
        backend="nxdi", draft="", loop="", nxdi="nxdi: {speculation_mode: fused}\n"))  # fmt: skip
    assert found["speculation-method"]["path"] == "nxdi.speculation_mode"


@pytest.mark.reference
def test_generate_json_says_the_method_and_each_rows_proposals(capsys, tmp_path):
    from .tiny_model import tiny_pair_yaml

    config = tiny_pair_yaml(tmp_path)
    text = config.read_text().replace(
        "speculation: {draft_tokens: 3, acceptor: lossless}",
        "speculation: {method: ngram, draft_tokens: 4, adaptive: false}",
    )
    text = text.replace("draft: {model: ./draft, amp: f32, n_positions: 512}\n", "")
    config.write_text(text)
    prompts = ["the quick brown fox the quick brown", "hello world hello world hello"]
    code, out, err = run(capsys, "generate", str(config), "--json", "--quiet",
                         "--prompt", prompts[0], "--prompt", prompts[1])  # fmt: skip
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert metrics["method"] == "ngram"
    assert sum(r["drafted"] for r in metrics["per_row"]) == metrics["drafted"] > 0


@pytest.mark.reference
def test_the_server_reports_proposals_in_usage_and_metrics_by_method(tmp_path):
    import httpx

    from .tiny_model import InProcessServer, tiny_pair_yaml

    config = tiny_pair_yaml(tmp_path)
    config.write_text(
        config.read_text().replace(
            "speculation: {draft_tokens: 3, acceptor: lossless}",
            "speculation: {method: suffix, draft_tokens: 4, adaptive: false}",
        )
    )
    server = InProcessServer(config, slots=2)
    try:
        body = {"prompt": "hello world, hello world, hello world,", "max_tokens": 12,
                "temperature": 0.0}  # fmt: skip
        answer = server.post("/v1/completions", **body).json()
        usage = answer["usage"]
        assert usage["proposed_tokens"] == answer["speculation"]["drafted"]
        assert usage["accepted_tokens"] == answer["speculation"]["accepted"]
        assert answer["speculation"]["method"] == "suffix"
        metrics = httpx.get(server.url + "/metrics").text
        name = 'neuron_spec_proposed_tokens_total{method="suffix"}'
        line = next(x for x in metrics.splitlines() if x.startswith(name))
        assert float(line.split()[-1]) == usage["proposed_tokens"]
    finally:
        server.stop()
