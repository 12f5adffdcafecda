"""The memory model: TNx padding, and the seed's observations on trn1.32xlarge at tp 32."""

from __future__ import annotations

import pytest

from neuron_spec.config.catalog import ARCHITECTURES, GIB
from neuron_spec.preflight.memory import model_memory, padded_parameters, padded_shape

L70, L7 = ARCHITECTURES["llama-2-70b"], ARCHITECTURES["llama-2-7b"]
SEED_GB = 16e9  # the seed counts cores as observed size / 16 GB


def test_padding_matches_hardware_notes():
    assert padded_parameters(L70, 32) / 1e9 == pytest.approx(73.0, abs=0.05)
    assert padded_parameters(L70, 24) / 1e9 == pytest.approx(73.0, abs=0.05)
    assert padded_parameters(L7, 24) / 1e9 == pytest.approx(7.82, abs=0.005)
    assert padded_parameters(L7, 32) == L7.parameters()  # divides evenly: no padding


def test_gqa_kv_heads_replicate_up_to_tp():
    s = padded_shape(L70, 32)
    assert (s.heads, s.kv_heads, s.kv_replicated) == (64, 32, True)
    s = padded_shape(L70, 8)
    assert (s.kv_heads, s.kv_replicated) == (8, False)
    s = padded_shape(L7, 24)  # MHA: K/V padded along with Q
    assert (s.heads, s.kv_heads, s.intermediate, s.vocab) == (48, 48, 11016, 32016)


def _seed(amp: str):
    t = model_memory(L70, tp=32, amp=amp, n_positions=2048, batch_size=1)
    d = model_memory(L7, tp=32, amp=amp, n_positions=2048, batch_size=1)
    return t, d


@pytest.mark.parametrize("budget", [SEED_GB, 16 * GIB], ids=["16GB", "16GiB"])
def test_seed_observations_bf16(budget):
    t, d = _seed("bf16")
    assert t.total_bytes / budget > 10
    assert d.total_bytes / budget > 2
    assert 180e9 <= t.total_bytes + d.total_bytes <= 220e9


@pytest.mark.parametrize("budget", [SEED_GB, 16 * GIB], ids=["16GB", "16GiB"])
def test_seed_observations_fp32(budget):
    t, d = _seed("f32")
    assert t.total_bytes / budget > 18
    assert d.total_bytes / budget > 3
    assert 330e9 <= t.total_bytes + d.total_bytes <= 390e9


def test_kv_cache_scales_with_positions_and_batch():
    a = model_memory(L7, tp=8, amp="bf16", n_positions=1024, batch_size=1)
    b = model_memory(L7, tp=8, amp="bf16", n_positions=2048, batch_size=2)
    assert b.kv_cache_bytes == 4 * a.kv_cache_bytes
    # 2 (K,V) x 32 layers x 32 heads x 128 x 1024 positions x 2 bytes
    assert a.kv_cache_bytes == 2 * 32 * 32 * 128 * 1024 * 2


def test_f32_doubles_weights():
    a = model_memory(L7, tp=8, amp="bf16", n_positions=128, batch_size=1)
    b = model_memory(L7, tp=8, amp="f32", n_positions=128, batch_size=1)
    assert b.weight_bytes == 2 * a.weight_bytes


def test_70b_bf16_does_not_fit_tp8_but_fits_tp16():
    assert (
        model_memory(L70, tp=8, amp="bf16", n_positions=2048, batch_size=1).per_core_bytes
        > 16 * GIB
    )
    assert (
        model_memory(L70, tp=16, amp="bf16", n_positions=2048, batch_size=1).per_core_bytes
        < 16 * GIB
    )
