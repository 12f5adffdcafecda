"""The planner reproduces the seed's figures and recommendations."""

from __future__ import annotations

from neuron_spec.config.spec import load_config
from neuron_spec.planning.plan import plan

from .conftest import CONFIGS, host

GB16 = 16e9


def _plan(name: str, instance: str):
    cfg = load_config(CONFIGS / name)
    return plan(cfg.spec, host(instance), cfg.base_dir).to_dict()


def test_trn1_bf16_seed_figures_and_recommendation():
    p = _plan("trn1-llama2-70b-7b-bf16.yaml", "trn1.32xlarge")
    t, d = p["models"]["target"], p["models"]["draft"]
    assert t["tp_degree"] == d["tp_degree"] == 32
    assert t["total_bytes"] / GB16 > 10 and d["total_bytes"] / GB16 > 2
    assert 180e9 <= t["total_bytes"] + d["total_bytes"] <= 220e9
    assert t["min_cores"] > 10 and d["min_cores"] > 2
    assert p["recommendation"]["target"]["tp_degree"] == 32
    assert p["recommendation"]["draft"]["tp_degree"] == 32
    assert 16 in t["fitting_tps"] and 8 not in t["fitting_tps"]  # the 70B could use tp 16


def test_trn1_fp32_seed_figures_and_recommendation():
    p = _plan("trn1-llama2-70b-7b-fp32.yaml", "trn1.32xlarge")
    t, d = p["models"]["target"], p["models"]["draft"]
    assert t["total_bytes"] / GB16 > 18 and d["total_bytes"] / GB16 > 3
    assert 330e9 <= t["total_bytes"] + d["total_bytes"] <= 390e9
    assert t["fitting_tps"] == [32]  # the 70B needs tp 32 in f32
    assert p["recommendation"]["target"]["tp_degree"] == 32
    assert p["recommendation"]["draft"]["tp_degree"] == 32


def test_inf2_bf16_recommends_tp24():
    p = _plan("inf2-llama2-70b-7b-bf16.yaml", "inf2.48xlarge")
    assert p["recommendation"]["target"]["tp_degree"] == 24
    assert p["recommendation"]["draft"]["tp_degree"] == 24
    assert p["layout"]["visible_cores"] == "0-23"


def test_same_config_on_a_too_small_instance_has_no_recommendation():
    p = _plan("trn1-llama2-70b-7b-bf16.yaml", "inf2.8xlarge")
    assert p["recommendation"]["target"]["tp_degree"] is None
    assert "does not fit" in p["recommendation"]["reasons"][0]


def test_speculation_table_uses_configured_gamma():
    p = _plan("trn1-llama2-70b-7b-bf16.yaml", "trn1.32xlarge")
    sp = p["speculation"]
    assert sp["draft_tokens"] == 6 and sp["window"] == 7
    assert 0.1 < sp["c_estimate"] < 0.3
    best = {r["alpha"]: r["best_draft_tokens"] for r in sp["by_alpha"]}
    assert best[0.9] > best[0.6]
