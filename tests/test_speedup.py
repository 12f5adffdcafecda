from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuron_spec.engine.speedup import (
    alpha_from_mean_tokens,
    best_gamma,
    expected_speedup,
    mean_tokens_per_pass,
)


@pytest.mark.parametrize(
    ("alpha", "c", "gamma", "speedup"),
    [(0.8, 0.1, 6, 2.47), (0.7, 0.2, 3, 1.58), (0.9, 0.05, 13, 4.67)],
)
def test_examples_from_the_algorithm_notes(alpha, c, gamma, speedup):
    g, s = best_gamma(alpha, c)
    assert g == gamma
    assert s == pytest.approx(speedup, abs=0.01)


def test_speculation_helps_only_when_alpha_exceeds_c():
    assert best_gamma(0.15, 0.2)[1] < 1.0
    assert best_gamma(0.5, 0.2)[1] > 1.0


@given(st.floats(0.0, 0.999), st.integers(1, 16))
def test_alpha_inversion_round_trips(alpha, gamma):
    mean = mean_tokens_per_pass(alpha, gamma)
    back = alpha_from_mean_tokens(mean, gamma)
    assert mean_tokens_per_pass(back, gamma) == pytest.approx(mean, abs=1e-7)


def test_edges():
    assert alpha_from_mean_tokens(1.0, 4) == 0.0
    assert alpha_from_mean_tokens(5.0, 4) == 1.0
    assert expected_speedup(1.0, 4, 0.0) == 5.0
    with pytest.raises(ValueError):
        mean_tokens_per_pass(1.5, 3)
