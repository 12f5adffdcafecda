"""Expected speedup of speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

gamma (draft tokens per step) and alpha (per-token acceptance probability) as in the papers.
Pure Python: used by the planner, which must not import torch.
"""

from __future__ import annotations

MAX_GAMMA = 16


def mean_tokens_per_pass(alpha: float, gamma: int) -> float:
    """Expected tokens emitted per target pass: (1 - alpha^(gamma+1)) / (1 - alpha)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """S(alpha, gamma, c) = (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1)).

    c is the draft's step time divided by the target's.
    """
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    return mean_tokens_per_pass(alpha, gamma) / (gamma * c + 1.0)


def best_gamma(alpha: float, c: float, max_gamma: int = MAX_GAMMA) -> tuple[int, float]:
    """The gamma in 1..max_gamma maximising S, and that S (no closed form exists)."""
    return max(
        ((g, expected_speedup(alpha, g, c)) for g in range(1, max_gamma + 1)),
        key=lambda gs: gs[1],
    )


def alpha_from_counts(accepted: int, refused: int) -> float | None:
    """alpha's maximum-likelihood estimate from steps of any proposal length: each step offers
    its proposals in order until the first refused one, so its likelihood is alpha^accepted x
    (1 - alpha)^(1 if one was refused), and over every step alpha = accepted / (accepted +
    refused). None before any proposal was judged."""
    judged = accepted + refused
    return accepted / judged if judged else None
