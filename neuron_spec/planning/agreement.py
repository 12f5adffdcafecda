"""Greedy agreement: speculative output against the target alone's, token by token. With greedy
decoding a correct speculative loop emits exactly the target's greedy tokens, so the first
position where the two differ is where something went wrong (or where a near tie between the
two most likely tokens came out differently in two compiled graphs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SHOWN_TOKENS = 8  # tokens of each output shown from the first divergence on


def first_divergence(spec: Sequence[int], target: Sequence[int]) -> int | None:
    """The first index where the two outputs differ (one ending before the other counts);
    None when they are equal."""
    for i, (a, b) in enumerate(zip(spec, target, strict=False)):
        if a != b:
            return i
    return None if len(spec) == len(target) else min(len(spec), len(target))


def compare_prompt(index: int, spec: Sequence[int], target: Sequence[int]) -> dict[str, Any]:
    """One prompt's agreement: tokens compared, equal or not, and the first divergence with
    the tokens each output has from there."""
    at = first_divergence(spec, target)
    row: dict[str, Any] = {
        "prompt": index,
        "speculative_tokens": len(spec),
        "target_tokens": len(target),
        "equal": at is None,
        "first_divergence": None,
    }
    if at is not None:
        row["first_divergence"] = {
            "token": at,
            "speculative": list(spec[at : at + SHOWN_TOKENS]),
            "target": list(target[at : at + SHOWN_TOKENS]),
        }
    return row


def agreement(spec: Sequence[Sequence[int]], target: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Every prompt's agreement, and the first divergent (prompt, token) over the set."""
    rows = [compare_prompt(i, s, t) for i, (s, t) in enumerate(zip(spec, target, strict=True))]
    diverged = [r for r in rows if not r["equal"]]
    first = diverged[0] if diverged else None
    return {
        "equal": not diverged,
        "prompts_equal": len(rows) - len(diverged),
        "prompts": len(rows),
        "tokens_compared": sum(min(r["speculative_tokens"], r["target_tokens"]) for r in rows),
        "first_divergence": (
            None
            if first is None
            else {"prompt": first["prompt"], "token": first["first_divergence"]["token"]}
        ),
        "per_prompt": rows,
    }
