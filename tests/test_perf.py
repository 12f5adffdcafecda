"""The latency and cost planner: physical limits, the speculative step model, the CLI's
performance and cost sections, and the ranking of instances."""

from __future__ import annotations

import json

import pytest

from neuron_spec.cli.main import main
from neuron_spec.config.catalog import ARCHITECTURES, INSTANCES, TP_RULES
from neuron_spec.planning import perf
from neuron_spec.preflight.memory import kv_heads_shardable

from .conftest import CONFIGS

TRN1 = str(CONFIGS / "trn1-llama2-70b-7b-bf16.yaml")


def _cases():
    for inst in INSTANCES.values():
        for arch in ARCHITECTURES.values():
            for tp in TP_RULES[inst.platform].candidates(inst.cores):
                if kv_heads_shardable(arch, tp):
                    yield pytest.param(inst, arch, tp, id=f"{inst.name}-{arch.name}-tp{tp}")


@pytest.mark.parametrize(("inst", "arch", "tp"), list(_cases()))
def test_no_prediction_beats_the_bandwidth_floor(inst, arch, tp):
    family = perf.FAMILIES[inst.platform]
    for amp in ("bf16", "f32"):
        floor = perf.floor_s(arch, amp, tp, family)
        weights = perf._weights_and_kv(arch, amp, tp, 1)[0]
        assert floor == pytest.approx(weights / (tp * family.hbm_bytes_per_s))
        for positions in (1, 2048):
            step = perf.decode_step_s(arch, amp, tp, family, positions)
            assert step >= floor
            assert perf.verify_step_s(arch, amp, tp, family, positions, 5) > step


def test_fitted_constants_are_physical_and_say_what_they_were_fitted_on():
    decode, prefill = perf.calibration()
    assert 0 < decode.efficiency <= 1 and 0 < prefill.efficiency <= 1
    assert decode.overhead_s >= 0 and decode.layer_s >= 0 and prefill.layer_s >= 0
    assert len(decode.fitted_on) == len(perf.PUBLISHED)
    assert all("inf2.48xlarge" in label for label in decode.fitted_on)


def test_leave_one_out_accuracy_meets_the_targets():
    rows = perf.PUBLISHED
    tpot_ok = ttft_ok = 0
    for i, row in enumerate(rows):
        ttft, tpot = perf.predict(row, perf.fit(rows[:i] + rows[i + 1 :]))
        tpot_ok += abs(tpot / row.tpot_ms - 1) <= 0.25
        ttft_ok += abs(ttft / row.ttft_ms - 1) <= 0.35
    assert tpot_ok >= 0.8 * len(rows) and ttft_ok >= 0.7 * len(rows)


def test_the_verification_pass_grows_with_the_window():
    arch, family = ARCHITECTURES["llama-2-70b"], perf.FAMILIES["trn1"]
    steps = [perf.verify_step_s(arch, "bf16", 32, family, 512, k) for k in (1, 2, 5, 9)]
    assert steps[0] == pytest.approx(perf.decode_step_s(arch, "bf16", 32, family, 512))
    assert steps == sorted(steps) and steps[-1] < 1.25 * steps[0]  # a little more, not k times


def _plan(capsys, *extra):
    code = main(["plan", TRN1, "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_plan_reports_performance_cost_and_a_best_gamma(capsys):
    code, body = _plan(capsys, "--alpha", "0.8")
    p, cost = body["performance"], body["cost"]
    assert code == 0
    assert p["instance"] == "trn1.32xlarge" and p["tp_degree"] == 32
    assert p["target"]["tpot_ms"] > p["target"]["floor_ms"] > 0 and p["target"]["ttft_ms"] > 0
    assert 0 < p["draft"]["tpot_ms"] < p["target"]["tpot_ms"]
    assert [r["gamma"] for r in p["speculative"]] == list(range(1, 9))
    best = next(r for r in p["speculative"] if r["gamma"] == p["best_gamma"])
    assert best["speedup"] > 1 and p["speculation_pays"] is True
    assert best["tpot_ms"] == min(r["tpot_ms"] for r in p["speculative"])
    assert cost["usd_per_hour"] == 21.50
    assert cost["usd_per_million_tokens"] == cost["speculative_usd_per_million_tokens"]
    assert cost["speculative_usd_per_million_tokens"] < cost["target_only_usd_per_million_tokens"]


def test_with_alpha_0_speculation_is_slower_than_the_target_alone(capsys):
    _, body = _plan(capsys, "--alpha", "0")
    p = body["performance"]
    assert all(r["tpot_ms"] > p["target"]["tpot_ms"] for r in p["speculative"])
    assert p["speculation_pays"] is False
    assert (
        body["cost"]["usd_per_million_tokens"] == body["cost"]["target_only_usd_per_million_tokens"]
    )


def test_price_override_and_measured_alpha_and_c_from_bench(capsys, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "speculative": [
                    {"draft_tokens": 2, "alpha": 0.5, "c": 0.4},
                    {"draft_tokens": 4, "alpha": 0.9, "c": 0.1},
                ],
                "best_draft_tokens": 4,
            }
        )
    )
    _, body = _plan(capsys, "--from-bench", str(bench), "--price", "10")
    p = body["performance"]
    assert p["alpha"] == 0.9 and p["c"] == 0.1 and p["c_source"] == "measured (bench)"
    assert p["draft"]["tpot_ms"] == pytest.approx(0.1 * p["target"]["tpot_ms"], rel=1e-3)
    assert body["cost"]["usd_per_hour"] == 10 and body["cost"]["source"] == "--price"
    bench.write_text("[1, 2]")
    assert main(["plan", TRN1, "--from-bench", str(bench)]) == 2
    assert "not the JSON of `neuron-spec bench --json`" in capsys.readouterr().err


def test_compare_all_ranks_every_instance_where_the_pair_fits(capsys):
    code = main(["plan", TRN1, "--compare", "all", "--alpha", "0.8", "--json"])
    body = json.loads(capsys.readouterr().out)["compare"]
    assert code == 0
    ranked = [r["instance"] for r in body["ranked"]]
    excluded = {e["instance"]: e["reason"] for e in body["excluded"]}
    assert set(ranked) | set(excluded) == set(INSTANCES)
    assert set(excluded) == {"inf2.xlarge", "inf2.8xlarge", "trn1.2xlarge"}
    assert all("does not fit" in why for why in excluded.values())
    priced = [r["usd_per_million_tokens"] for r in body["ranked"] if r["usd_per_hour"]]
    assert priced == sorted(priced) and len(priced) == 4
    assert body["ranked"][-1]["instance"] == "trn2.48xlarge"  # no on-demand price: last
    assert "pass --price" in body["ranked"][-1]["price_source"]
    for r in body["ranked"]:
        assert r["min_tp"] <= r["tp_degree"]
    assert main(["plan", TRN1, "--compare", "inf2.48xlarge,p5.48xlarge"]) == 2


def test_a_tp_the_instance_refuses_is_not_the_one_predicted(capsys):
    inf2 = str(CONFIGS / "inf2-llama2-70b-7b-bf16.yaml")  # tp 24: not a trn1 topology
    code = main(["plan", inf2, "--instance", "trn1.32xlarge", "--json"])
    body = json.loads(capsys.readouterr().out)
    assert code == 1 and body["performance"]["tp_degree"] == 32  # the recommended one


def test_the_planner_models_nxdi_s_two_modes_apart(write_config, capsys):
    """Fused runs the draft k times per round (one call), unfused gamma (+1 when all accepted):
    at the same alpha the fused TPOT is the higher, and both differ from the library's count."""
    from neuron_spec.config.spec import load_config
    from neuron_spec.planning.perfplan import draft_runs

    assert draft_runs(4, 0.5, "fused") == 5.0
    assert draft_runs(4, 0.5, "unfused") == 4.0 + 0.5**4
    assert draft_runs(4, 0.5, None) == 4.0
    base = (CONFIGS / "trn1-llama2-70b-7b-nxdi.yaml").read_text()
    tpots = {}
    for mode in ("unfused", "fused"):
        path = write_config(base.replace("speculation_mode: unfused", f"speculation_mode: {mode}"))
        assert load_config(path).spec.nxdi.speculation_mode == mode
        assert main(["plan", str(path), "--alpha", "0.8", "--json"]) == 0
        perf = json.loads(capsys.readouterr().out)["performance"]
        assert perf["speculation_mode"] == mode
        tpots[mode] = {r["gamma"]: r["tpot_ms"] for r in perf["speculative"]}
    assert all(tpots["fused"][g] > tpots["unfused"][g] for g in tpots["fused"])


@pytest.mark.parametrize("alpha", [0.5, 0.8, 0.95, 0.99])
def test_the_gamma_table_extends_past_the_best_gamma(capsys, alpha):
    """The best gamma reported is never the table's last row (up to gamma 16)."""
    cfg = CONFIGS / "trn1-llama2-70b-7b-bf16.yaml"
    assert main(["plan", str(cfg), "--alpha", str(alpha), "--json"]) == 0
    perf = json.loads(capsys.readouterr().out)["performance"]
    gammas = [r["gamma"] for r in perf["speculative"]]
    assert gammas == list(range(1, len(gammas) + 1)) and len(gammas) >= 8
    assert perf["best_gamma"] < gammas[-1] or gammas[-1] == 16


def test_compare_carries_each_setups_findings_and_ranks_none_with_an_error(capsys):
    cfg = CONFIGS / "trn1-llama2-70b-7b-bf16.yaml"
    assert main(["plan", str(cfg), "--compare", "all", "--json"]) == 0
    ranking = json.loads(capsys.readouterr().out)["compare"]
    assert ranking["ranked"]
    for r in ranking["ranked"]:
        assert "findings" in r
        assert not any(f["severity"] == "error" for f in r["findings"])
    inf2_24 = next(r for r in ranking["ranked"] if r["instance"] == "inf2.24xlarge")
    assert {f["code"] for f in inf2_24["findings"]} == {"tp-undocumented"}  # tp 12
    assert main(["plan", str(cfg), "--compare", "all"]) == 0
    assert "`validate` warns: tp-undocumented" in capsys.readouterr().out


def test_plan_speaks_gib_and_says_trn2_is_extrapolated_in_text(capsys):
    cfg = CONFIGS / "trn1-llama2-70b-7b-bf16.yaml"
    assert main(["plan", str(cfg), "--instance", "trn2.48xlarge"]) == 0
    out = capsys.readouterr().out
    assert "extrapolated" in out
    table = out.split("layout:")[0]
    assert " GiB" in table and " GB " not in table


@pytest.mark.parametrize("prompt_tokens", [128, 1024])
def test_one_source_for_step_time_tpot_and_c(capsys, prompt_tokens):
    """The memory table's decode step, the performance section's target TPOT, and both c's are
    the same numbers in one plan output."""
    cfg = CONFIGS / "trn1-llama2-70b-7b-bf16.yaml"
    args = ["plan", str(cfg), "--alpha", "0.8", "--prompt-tokens", str(prompt_tokens), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    perf = out["performance"]
    assert out["models"]["target"]["estimated_step_ms"] == round(perf["target"]["tpot_ms"], 2)
    assert out["speculation"]["c_estimate"] == perf["c"]


def test_the_planner_at_batch_b(capsys, tmp_path):
    """A batch reads the weights once: the step grows slowly, aggregate tokens/s nearly with
    the batch, and speculation's best gamma shrinks as verification stops being free."""
    assert main(["plan", TRN1, "--alpha", "0.8", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    table = one["performance"]["batching"]
    batches = [r["batch"] for r in table]
    assert batches[0] == 1 and batches == sorted(batches) and len(batches) >= 4
    first = table[0]
    assert first["target_tokens_per_s"] == one["performance"]["target"]["tokens_per_s"]
    assert first["speculative_tokens_per_s"] == one["performance"]["speculative_tokens_per_s"]
    steps = [r["target_tpot_ms"] for r in table]
    rates = [r["target_tokens_per_s"] for r in table]
    assert steps == sorted(steps) and steps[-1] < 2 * steps[0]  # memory-bound: weights once
    assert rates == sorted(rates) and rates[-1] > 0.5 * batches[-1] * rates[0]
    gammas = [r["best_gamma"] for r in table]
    assert gammas == sorted(gammas, reverse=True) and gammas[-1] < gammas[0]
    # transformers-neuronx's engine loop and NxDI's unfused mode batch; fused decodes batch 1
    assert all(r["runs_here"] for r in table)
    nxdi = CONFIGS / "trn1-llama2-70b-7b-nxdi.yaml"
    assert main(["plan", str(nxdi), "--alpha", "0.8", "--json"]) == 0
    nxdi_table = json.loads(capsys.readouterr().out)["performance"]["batching"]
    assert all(r["runs_here"] for r in nxdi_table)
    fused = tmp_path / "fused.yaml"
    fused.write_text(
        nxdi.read_text().replace("speculation_mode: unfused", "speculation_mode: fused")
    )
    assert main(["plan", str(fused), "--alpha", "0.8", "--json"]) == 0
    fused_table = json.loads(capsys.readouterr().out)["performance"]["batching"]
    assert [r["runs_here"] for r in fused_table] == [True] + [False] * (len(fused_table) - 1)
    assert main(["plan", TRN1, "--alpha", "0.8", "--batch", "8", "--json"]) == 0
    eight = json.loads(capsys.readouterr().out)
    assert eight["performance"]["batch_size"] == 8
    at8 = next(r for r in table if r["batch"] == 8)
    assert eight["performance"]["target"]["tokens_per_s"] == at8["target_tokens_per_s"]
    # the memory table sizes 8 rows of KV cache, and the preflight says what refuses them
    kv1 = one["models"]["target"]["kv_cache_bytes"]
    assert eight["models"]["target"]["kv_cache_bytes"] == 8 * kv1
    said = {f["code"]: f["severity"] for f in eight["findings"]}
    assert said["batch-speculation"] == "info"  # runs through the engine, on 0.12+


def test_the_batching_table_stops_where_the_pair_no_longer_fits(capsys):
    from neuron_spec.preflight.memory import model_memory

    assert main(["plan", TRN1, "--alpha", "0.8", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    perf_ = body["performance"]
    largest = perf_["batching"][-1]["batch"]
    budget = body["host"]["memory_per_core_bytes"]
    tp = perf_["tp_degree"]

    def used(batch):
        return sum(
            model_memory(ARCHITECTURES[a], tp=tp, amp="bf16", n_positions=2048,
                         batch_size=batch).per_core_bytes
            for a in ("llama-2-70b", "llama-2-7b")
        )  # fmt: skip

    assert used(largest) <= budget
    assert largest == 64 or used(largest * 2) > budget


def test_compare_ranks_each_setup_at_its_cheapest_batch_it_runs(capsys, tmp_path):
    nxdi = CONFIGS / "trn1-llama2-70b-7b-nxdi.yaml"
    for config in (TRN1, str(nxdi)):  # TNx's engine loop and NxDI's unfused mode batch
        assert main(["plan", config, "--compare", "all", "--alpha", "0.8", "--json"]) == 0
        ranked = json.loads(capsys.readouterr().out)["compare"]["ranked"]
        priced = [r for r in ranked if r["usd_per_hour"]]
        assert priced and all(r["batch_size"] > 1 for r in priced)
        assert all("predicted_best_batch" not in r for r in priced)
    fused = tmp_path / "fused.yaml"
    fused.write_text(
        nxdi.read_text().replace("speculation_mode: unfused", "speculation_mode: fused")
    )
    assert main(["plan", str(fused), "--compare", "all", "--alpha", "0.8", "--json"]) == 0
    for r in json.loads(capsys.readouterr().out)["compare"]["ranked"]:
        if r["usd_per_hour"]:
            assert r["batch_size"] == 1  # NxDI's fused mode decodes batch 1
            predicted = r["predicted_best_batch"]
            assert predicted["batch_size"] > 1
            assert predicted["usd_per_million_tokens"] < r["usd_per_million_tokens"]


@pytest.mark.parametrize(
    "row",
    [
        '{"draft_tokens": 4, "alpha": 0.7, "c": 1e308}',
        '{"draft_tokens": 4, "alpha": 0.7, "c": Infinity}',
        '{"draft_tokens": 4, "alpha": NaN, "c": 0.2}',
        '{"draft_tokens": 4, "alpha": 0.7, "c": 0}',
        '{"draft_tokens": 4, "alpha": true, "c": 0.2}',
    ],
)
def test_a_bench_file_with_values_out_of_range_is_a_usage_error(capsys, tmp_path, row):
    bench = tmp_path / "bench.json"
    bench.write_text('{"speculative": [' + row + '], "best_draft_tokens": 4}')
    assert main(["plan", TRN1, "--from-bench", str(bench), "--json"]) == 2
    said = json.loads(capsys.readouterr().out)["message"]
    assert str(bench) in said and "alpha in [0, 1] and c in (0, 10]" in said


def test_a_huge_bench_file_is_not_read_whole(capsys, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text('{"pad": "' + "x" * (2 << 20) + '"}')
    assert main(["plan", TRN1, "--from-bench", str(bench)]) == 2
    assert "bytes" in capsys.readouterr().err
