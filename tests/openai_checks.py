"""Checks of the server that both the in-process tests (tiny model) and the process tests
(the real model) make, through the `openai` SDK."""

from __future__ import annotations

from typing import Any

import pytest


def assert_streamed_logprobs_are_the_plain_ones(client: Any, model: str, out: Any) -> None:
    """A streamed chat request with logprobs: each event carries the logprobs of the tokens its
    text completes, and together they are those of `out`, the same request not streamed: the
    same tokens, their log-probabilities to float rounding (the engine chooses each step's
    proposal length as it measures, and a pass of another width rounds differently)."""
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=2, stream=True,
    )  # fmt: skip
    streamed, text = [], ""
    for event in stream:
        choice = event.choices[0]
        text += choice.delta.content or ""
        if choice.logprobs is not None and choice.logprobs.content:
            streamed.extend(choice.logprobs.content)
    content = out.choices[0].logprobs.content
    assert text == out.choices[0].message.content
    assert [c.token for c in streamed] == [c.token for c in content]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=1e-4)
