"""The speculative engine on stub models: exact counts, rollback, EOS, budgets."""

from __future__ import annotations

import pytest

from neuron_spec.acceptors import GreedyAcceptor
from neuron_spec.engine import speculative_generate
from neuron_spec.generate import compute_metrics

from .stubs import StubRunner, next_token_table

pytestmark = pytest.mark.reference
V = 10


def succ(prev: int) -> int:
    return (prev + 1) % V


def run(draft_fn, *, gamma: int, max_new: int, prompts=((0,),), eos=()):
    target = StubRunner(next_token_table(succ, V))
    draft = StubRunner(next_token_table(draft_fn, V))
    res = speculative_generate(
        target,
        draft,
        GreedyAcceptor(),
        [list(p) for p in prompts],
        draft_tokens=gamma,
        max_new_tokens=max_new,
        eos_token_ids=eos,
    )
    return res, compute_metrics(res, sum(len(p) for p in prompts), gamma)


def test_always_accept_exact_counts():
    res, m = run(succ, gamma=4, max_new=20)
    assert res.tokens[0] == [(i + 1) % V for i in range(20)]
    assert (m.target_passes, m.drafted, m.accepted) == (4, 16, 16)
    assert m.acceptance_rate == 1.0 and m.mean_tokens_per_pass == 5.0
    assert m.per_position_acceptance == [1.0] * 4 and m.alpha == 1.0


def test_never_accept_exact_counts():
    res, m = run(lambda p: (p + 2) % V, gamma=4, max_new=10)
    assert res.tokens[0] == [(i + 1) % V for i in range(10)]
    # gamma shrinks near the budget: remaining 10..5 -> 4 drafts, then 3, 2, 1, 0
    assert (m.target_passes, m.drafted, m.accepted) == (10, 30, 0)
    assert m.acceptance_rate == 0.0 and m.alpha == 0.0
    assert m.per_position_acceptance == [0.0] * 4


def test_sometimes_accept_exact_counts():
    # the draft is wrong exactly when the previous token is a multiple of 3
    res, m = run(lambda p: (p + 2) % V if p % 3 == 0 else succ(p), gamma=2, max_new=9)
    assert res.tokens[0] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    # steps: [1] (rejected at once), [2,3,4], [5,6,7], then gamma 1: [8,9]
    assert [s.emitted[0] for s in res.steps] == [1, 3, 3, 2]
    assert (m.target_passes, m.drafted, m.accepted) == (4, 7, 5)
    assert m.per_position_acceptance == pytest.approx([3 / 4, 2 / 3])


def test_eos_stops_a_row_and_is_kept():
    res, _ = run(succ, gamma=3, max_new=50, eos=(6,))
    assert res.tokens[0] == [1, 2, 3, 4, 5, 6] and res.finished_by_eos == [True]


def test_batch_rows_accept_differently_and_stay_exact():
    draft_fn = lambda p: (p + 2) % V if p in (3, 7) else succ(p)  # noqa: E731
    prompts = ((0,), (2, 5), (8,))
    res, _ = run(draft_fn, gamma=3, max_new=12, prompts=prompts, eos=(9,))
    expect = []
    for p in prompts:
        seq, prev = [], p[-1]
        while len(seq) < 12:
            prev = succ(prev)
            seq.append(prev)
            if prev == 9:
                break
        expect.append(seq)
    assert res.tokens == expect
    assert res.finished_by_eos == [True, True, True]
    # each step's accepted counts are per row; some step had rows accepting differently
    assert any(len(set(s.accepted)) > 1 for s in res.steps)


def test_target_only_when_no_draft():
    target = StubRunner(next_token_table(succ, V))
    res = speculative_generate(
        target, None, GreedyAcceptor(), [[0]], draft_tokens=4, max_new_tokens=5
    )
    assert res.tokens == [[1, 2, 3, 4, 5]] and len(res.steps) == 5
    assert all(s.drafted == 0 for s in res.steps)


def test_rollback_never_recomputes_the_prompt():
    target = StubRunner(next_token_table(succ, V))
    draft = StubRunner(next_token_table(lambda p: (p + 2) % V, V))
    prompt = list(range(8)) * 4
    speculative_generate(
        target, draft, GreedyAcceptor(), [prompt], draft_tokens=3, max_new_tokens=6
    )
    # every live column of the target holds the prompt once, then the generated tokens
    cols = [c for c, _ in target.live[0]]
    assert cols == sorted(cols) and len(target.live[0]) == len(prompt) + 5
    assert [t for _, t in target.live[0]][: len(prompt)] == prompt


def test_empty_prompt_is_refused():
    target = StubRunner(next_token_table(succ, V))
    with pytest.raises(ValueError):
        speculative_generate(target, None, GreedyAcceptor(), [[]], draft_tokens=0, max_new_tokens=3)
