from __future__ import annotations

import pytest

from neuron_spec.engine.speedup import (
    alpha_from_counts,
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


def test_edges():
    assert expected_speedup(1.0, 4, 0.0) == 5.0
    with pytest.raises(ValueError):
        mean_tokens_per_pass(1.5, 3)


@pytest.mark.parametrize("alpha", [0.2, 0.6, 0.9])
def test_alpha_from_counts_recovers_alpha_from_steps_of_mixed_lengths(alpha):
    """Steps of random lengths 1..6 (as an adaptive length proposes), each token accepted with
    probability alpha until the first refusal: the pooled estimate finds alpha, where tokens per
    pass at the longest length would not."""
    import random

    rng = random.Random(7)
    accepted = refused = 0
    for _ in range(20_000):
        length = rng.randint(1, 6)
        kept = 0
        while kept < length and rng.random() < alpha:
            kept += 1
        accepted += kept
        refused += int(kept < length)
    assert alpha_from_counts(accepted, refused) == pytest.approx(alpha, abs=0.01)
    assert alpha_from_counts(0, 0) is None and alpha_from_counts(5, 0) == 1.0
