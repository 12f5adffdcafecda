"""`neuron-spec verify`: on the reference backend (the demo model), against the
transformers-neuronx and NxD Inference doubles (with doctor recordings standing for the host),
and with a doubled defect that makes speculative output differ from the target alone's. Each
run's report holds every figure, `plan --from-bench` reads it, and a failed check exits 1
naming what failed (for a divergence: the prompt and the token)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from neuron_spec.cli.main import main
from neuron_spec.host import probe
from neuron_spec.planning.agreement import agreement, first_divergence
from neuron_spec.planning.verify import cache_outcome
from neuron_spec.planning.verify_prompts import PROMPTS

from .conftest import ROOT
from .neuron_fixtures import (
    clean_neuron_env,  # noqa: F401  (autouse: the Neuron environment undone)
    make_checkpoint,
    use_double,
    use_nxdi_double,
)

pytestmark = pytest.mark.reference
HOSTS = Path(__file__).parent / "hosts"
NEW = 6  # tokens per prompt and way: the doubles compute with a tiny Llama, on the CPU


# --- the pure parts ----------------------------------------------------------------------------


def test_first_divergence_is_the_first_differing_token_or_where_one_output_ends():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([4], [5]) == 0
    assert first_divergence([1, 2], [1, 2, 3]) == 2  # one stopped early (an EOS it took)
    assert first_divergence([], []) is None


def test_agreement_names_the_first_divergent_prompt_and_token():
    result = agreement([[1, 2, 3], [7, 8, 9, 10], [5]], [[1, 2, 3], [7, 8, 0, 10], [6]])
    assert not result["equal"] and result["prompts_equal"] == 1
    assert result["first_divergence"] == {"prompt": 1, "token": 2}
    second = result["per_prompt"][1]["first_divergence"]
    assert second == {"token": 2, "speculative": [9, 10], "target": [0, 10]}
    assert result["per_prompt"][2]["first_divergence"]["token"] == 0
    assert agreement([[1]], [[1]])["first_divergence"] is None


def test_cache_outcome_says_hit_miss_or_partial_only_where_something_compiles():
    assert cache_outcome([]) == "not applicable"
    assert cache_outcome([("draft", "loaded"), ("target", "loaded")]) == "hit"
    assert cache_outcome([("draft", "compiled"), ("target", "compiled")]) == "miss"
    assert cache_outcome([("draft", "loaded"), ("target", "compiled")]) == "partial"


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify-pair")
    target = make_checkpoint(root / "target", seed=0)
    draft = make_checkpoint(root / "draft", seed=0, noise=0.003, base=target)
    return target, draft


def recorded_host(monkeypatch, name: str) -> None:
    """The doctor reads this recorded DLAMI instead of running this machine's tools."""
    monkeypatch.setattr(probe, "live_outputs", lambda _disk: probe.read_recording(HOSTS / name))


def write_config(tmp_path: Path, pair, backend: str, instance: str, tp: int, extra: str = ""):
    target, draft = pair
    path = tmp_path / f"{backend}.yaml"
    path.write_text(
        f"instance: {instance}\nbackend: {backend}\n"
        f"target: {{model: {target}, amp: f32, tp_degree: {tp}, n_positions: 128}}\n"
        f"draft: {{model: {draft}, amp: f32, tp_degree: {tp}, n_positions: 128}}\n"
        "speculation: {draft_tokens: 3, acceptor: greedy, adaptive: false}\n"
        "sampling: {temperature: 0.7, seed: 4}\n"  # verify decodes greedily all the same
        "generation: {max_new_tokens: 20, max_prompt_tokens: 64, eos_token_id: 1}\n"
        f"compile: {{artifact_cache: {tmp_path / 'compiled'}}}\n{extra}"
    )
    return path


def verify(config: Path, out: Path, *more: str) -> tuple[int, dict]:
    code = main(["verify", str(config), "--out", str(out), "--max-new-tokens", str(NEW), *more])
    return code, json.loads(out.read_text(encoding="utf-8"))


FIGURES = {
    "TTFT p50 ms, target alone", "TTFT p50 ms, speculative", "TPOT p50 ms, target alone",
    "TPOT p90 ms, target alone", "TPOT p50 ms, speculative", "TPOT p90 ms, speculative",
    "tokens/s, target alone", "tokens/s, speculative", "speedup", "acceptance", "alpha",
}  # fmt: skip


def assert_complete(report: dict, backend: str) -> None:
    """Every field the report promises, with values that belong to this run."""
    assert report["kind"] == "neuron-spec verify" and report["ok"] is True
    assert report["failed"] == [] and report["exit_code"] == 0
    assert report["backend"] == backend and report["prompts"] == len(PROMPTS)
    checks = report["checks"]
    assert list(checks) == ["doctor", "preflight", "load", "generate", "agreement"]
    assert all(c["status"] in ("passed", "skipped") for c in checks.values())
    for way in ("speculative", "target_only"):
        m = report["measured"][way]
        assert m["prompts"] == len(PROMPTS) and 0 < m["new_tokens"] <= NEW * len(PROMPTS)
        assert m["ttft_ms"]["p50"] > 0 and m["tpot_ms"]["p50"] > 0 and m["tokens_per_s"] > 0
        assert m["tpot_ms"]["p90"] >= m["tpot_ms"]["p50"]
    spec = report["measured"]["speculative"]
    assert spec["drafted"] > 0 and 0 <= spec["acceptance_rate"] <= 1
    # alpha's sample: the steps that proposed (each row step here, but where the budget left
    # no room), whatever their length
    assert 0 < spec["alpha_steps"] <= spec["target_passes"] and 0 <= spec["alpha"] <= 1
    assert report["measured"]["target_only"]["drafted"] == 0
    assert {row["figure"] for row in report["comparison"]} == FIGURES
    agree = checks["agreement"]["data"]
    assert agree["equal"] and agree["first_divergence"] is None
    assert agree["tokens_compared"] == spec["new_tokens"]
    row = report["speculative"][0]
    assert row["outputs_match_target"] is True and 0 <= row["alpha"] <= 1
    assert row["speedup"] == pytest.approx(
        spec["tokens_per_s"] / report["measured"]["target_only"]["tokens_per_s"], rel=0.01
    )
    memory = report["memory"]
    assert memory["host_peak_bytes"] > 100 * 2**20  # torch alone holds more than this
    assert memory["device_note"]
    versions = report["versions"]
    assert versions["python"] and versions["packages"]["torch"] == torch.__version__


def plan_reads(config: Path, report: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["plan", str(config), "--from-bench", str(report), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --- against the doubles -----------------------------------------------------------------------


def test_verify_on_transformers_neuronx(tmp_path, monkeypatch, pair, capsys):
    use_double(monkeypatch, "0.13.1216", tmp_path / "meta")
    recorded_host(monkeypatch, "inf2.48xlarge-sdk2.25")
    config = write_config(tmp_path, pair, "neuronx", "inf2.48xlarge", 24)
    code, report = verify(config, tmp_path / "report.json")
    assert code == 0, report["checks"]
    assert_complete(report, "neuronx")
    assert report["checks"]["doctor"]["status"] == "passed"
    assert report["checks"]["load"]["data"]["cache"] == "miss"
    assert report["versions"]["packages"]["transformers-neuronx"] == "0.13.1216"
    assert report["versions"]["neuron_sdk"] == "2.25.0"
    assert report["memory"]["device_peak_bytes"] is None
    assert report["memory"]["device_note"].startswith("unknown")
    predicted = report["predicted"]  # the planner's figures for an inf2.48xlarge at tp 24
    assert predicted["tp_degree"] == 24 and predicted["target"]["tpot_ms"] > 0
    beside = {r["figure"]: r["predicted"] for r in report["comparison"]}
    assert beside["TPOT p50 ms, target alone"] == predicted["target"]["tpot_ms"]
    assert beside["speedup"] == predicted["speculative"]["speedup"]
    summary = capsys.readouterr().out
    assert summary.startswith("neuron-spec verify: PASS")
    assert "agreement  passed" in summary and "transformers-neuronx 0.13.1216" in summary
    plan = plan_reads(config, tmp_path / "report.json", capsys)
    assert plan["performance"]["alpha"] == report["speculative"][0]["alpha"]
    assert plan["performance"]["alpha_source"].startswith("measured")


@pytest.mark.parametrize("mode", ["unfused", "fused"])
def test_verify_on_nxd_inference_and_a_second_run_hits_the_cache(
    tmp_path, monkeypatch, pair, capsys, mode
):
    use_nxdi_double(monkeypatch, tmp_path / "meta", "0.8.16251")
    recorded_host(monkeypatch, "trn1.32xlarge-sdk2.28")
    config = write_config(
        tmp_path, pair, "nxdi", "trn1.32xlarge", 32, f"nxdi: {{speculation_mode: {mode}}}\n"
    )
    code, report = verify(config, tmp_path / "first.json")
    assert code == 0, report["checks"]
    assert_complete(report, "nxdi")
    assert report["speculation"]["mode"] == mode
    assert report["checks"]["load"]["data"]["cache"] == "miss"
    # the target alone's own graphs come on first use, in the warm-up, timed apart (here
    # compiled, or loaded: the unfused draft has the same shapes and NxDI's key has no paths)
    warm = report["checks"]["generate"]["data"]["warm_up"]
    assert [m["role"] for m in warm["models"]] == ["plain-target"] and warm["seconds"] > 0
    assert report["versions"]["neuron_sdk"] == "2.28"
    code, again = verify(config, tmp_path / "second.json")
    assert code == 0
    assert again["checks"]["load"]["data"]["cache"] == "hit"
    assert again["checks"]["generate"]["data"]["warm_up"]["cache"] == "hit"
    if mode == "unfused":  # fused: NxDI times no draft pass apart, so c is unknown
        plan = plan_reads(config, tmp_path / "second.json", capsys)
        assert plan["performance"]["alpha_source"].startswith("measured")


def defective_speculation_graph(monkeypatch, at_position: int) -> None:
    """A doubled defect: the target's speculation graph puts the second most likely token
    first at one absolute position; its context and token-generation graphs (the target
    alone's) are right."""
    from neuronx_distributed_inference.models import model_base

    right = model_base.NeuronBaseForCausalLM._graph

    def graph(self, hf, kv, tag, input_ids, attention_mask, position_ids, seq_ids):
        logits = right(self, hf, kv, tag, input_ids, attention_mask, position_ids, seq_ids)
        if tag == model_base.SPEC:
            for b, positions in enumerate(position_ids.tolist()):
                for j, p in enumerate(positions):
                    if p == at_position:
                        second = int(logits[b, j].topk(2).indices[1])
                        logits[b, j, second] = logits[b, j].max() + 1.0
        return logits

    monkeypatch.setattr(model_base.NeuronBaseForCausalLM, "_graph", graph)


def test_a_speculation_graph_defect_fails_verify_naming_the_first_divergence(
    tmp_path, monkeypatch, pair, capsys
):
    from transformers import AutoTokenizer

    use_nxdi_double(monkeypatch, tmp_path / "meta", "0.8.16251")
    recorded_host(monkeypatch, "trn1.32xlarge-sdk2.28")
    config = write_config(tmp_path, pair, "nxdi", "trn1.32xlarge", 32)
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(pair[0])(list(PROMPTS)).input_ids]
    at = max(lengths) + 1  # inside the longest prompt's output only
    defective_speculation_graph(monkeypatch, at)
    code, report = verify(config, tmp_path / "report.json")
    assert code == 1
    assert report["ok"] is False and report["failed"] == ["agreement"]
    agree = report["checks"]["agreement"]["data"]
    # the logits at position `at` choose the token at position at + 1: the output's
    # (at + 1 - prompt length)-th token, where the output reaches it
    longest = lengths.index(max(lengths))
    found = [(r["first_divergence"] or {}).get("token") for r in agree["per_prompt"]]
    assert found == [2 if i == longest else None for i in range(len(PROMPTS))]
    assert agree["first_divergence"] == {"prompt": longest, "token": 2}
    out = capsys.readouterr().out
    assert "FAIL (agreement; exit 1)" in out
    assert f"prompt {longest + 1} diverges at token 2" in out
    assert "measured" in report  # the figures are kept for the bug report
    assert main(["plan", str(config), "--from-bench", str(tmp_path / "report.json")]) == 2
    assert "failed its checks (agreement)" in capsys.readouterr().err


def test_a_host_the_doctor_refuses_stops_before_loading(tmp_path, monkeypatch, pair, capsys):
    use_nxdi_double(monkeypatch, tmp_path / "meta", "0.8.16251")
    recorded_host(monkeypatch, "inf2.48xlarge-sdk2.25")  # transformers-neuronx only: no NxDI
    config = write_config(tmp_path, pair, "nxdi", "trn1.32xlarge", 32)
    code, report = verify(config, tmp_path / "report.json", "--json")
    assert code == 1 and report["failed"] == ["doctor"]
    assert json.loads(capsys.readouterr().out) == report  # --json: the report on stdout
    assert list(report["checks"]) == ["doctor"]
    assert "nxdi-missing" in report["checks"]["doctor"]["summary"]
    assert not (tmp_path / "compiled").exists()  # nothing was compiled or loaded
    assert report["memory"]["device_note"] == "unknown: nothing was loaded"


# --- the report file ---------------------------------------------------------------------------


def test_a_report_path_that_cannot_be_written_is_refused_before_anything_runs(
    tmp_path, monkeypatch, pair, capsys
):
    use_nxdi_double(monkeypatch, tmp_path / "meta", "0.8.16251")
    config = write_config(tmp_path, pair, "nxdi", "trn1.32xlarge", 32)
    assert main(["verify", str(config), "--out", str(tmp_path / "no" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["verify", str(config), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (tmp_path / "compiled").exists()


def test_a_failed_write_leaves_the_earlier_report_whole(tmp_path, monkeypatch, pair, capsys):
    use_nxdi_double(monkeypatch, tmp_path / "meta", "0.8.16251")
    recorded_host(monkeypatch, "inf2.48xlarge-sdk2.25")  # the doctor stops it: nothing loads
    config = write_config(tmp_path, pair, "nxdi", "trn1.32xlarge", 32)
    out = tmp_path / "reports" / "verify.json"
    out.parent.mkdir()
    out.write_text('{"earlier": true}\n')

    def full_disk(_src, _dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    code = main(["verify", str(config), "--out", str(out), "--max-new-tokens", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "the report could not be written (No space left on device)" in err
    assert out.read_text() == '{"earlier": true}\n'
    assert [p.name for p in out.parent.iterdir()] == ["verify.json"]  # no temporary left


# --- the reference backend, on the demo model --------------------------------------------------


@pytest.mark.slow
@pytest.mark.model
def test_verify_on_the_demo_config(tmp_path, demo_checkpoint, capsys):
    config = ROOT / "configs" / "demo-cpu.yaml"
    code, report = verify(config, tmp_path / "demo.json")
    assert code == 0, report["checks"]
    assert_complete(report, "reference")
    assert report["checks"]["doctor"]["status"] == "skipped"
    assert report["checks"]["load"]["data"]["cache"] == "not applicable"
    assert report["predicted"] is None and "NeuronCores only" in report["prediction_note"]
    assert report["memory"]["device_note"].startswith("none")
    plan = plan_reads(config, tmp_path / "demo.json", capsys)
    assert plan["ok"] is True
