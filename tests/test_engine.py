"""The speculative engine on stub models: exact counts, rollback, EOS, budgets."""

from __future__ import annotations

import pytest

from neuron_spec.engine.acceptors import GreedyAcceptor
from neuron_spec.engine.generation import compute_metrics
from neuron_spec.engine.loop import speculative_generate

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


# --- continuous batching: rows that live independently -----------------------------------


def _alone(prompt, max_new, eos=()):
    """What a row gives decoded alone (target greedy: succ of the last token)."""
    seq, prev = [], prompt[-1]
    while len(seq) < max_new:
        prev = succ(prev)
        seq.append(prev)
        if prev in eos:
            break
    return seq


def test_rows_join_and_leave_a_running_batch_at_step_boundaries():
    from neuron_spec.engine.loop import Batch, Row

    draft_fn = lambda p: (p + 2) % V if p in (3, 7) else succ(p)  # noqa: E731
    target = StubRunner(next_token_table(succ, V))
    draft = StubRunner(next_token_table(draft_fn, V))
    batch = Batch(target, draft, 3, draft_tokens=3, acceptor=GreedyAcceptor())
    waiting = [
        Row([0], 9),
        Row([2, 5], 4, eos=frozenset({8})),
        Row([1, 1, 1, 1, 4], 7),
        Row([6], 12),
        Row([9, 9], 2),
    ]
    prompts = {id(r): list(r.prompt) for r in waiting}
    finished, steps, joined_late = [], 0, False
    while waiting or batch.busy:
        while waiting and batch.free_slots():
            joined_late |= steps > 0
            batch.admit(waiting.pop(0))
        for row in batch.step():
            finished.append(row)
        steps += 1
        # the cache invariant, per occupied slot: every committed token but the to-do one,
        # and nothing of the rows that held the slot before
        for b, row in enumerate(batch.rows):
            if row is not None:
                assert [t for _, t in target.live[b]] == prompts[id(row)] + row.tokens[:-1]
        assert steps < 100
    assert joined_late  # some rows were admitted while others were mid-generation
    assert len(finished) == 5
    for row in finished:
        assert row.tokens == _alone(prompts[id(row)], row.max_new, row.eos)
    eos_row = next(r for r in finished if r.eos)
    assert eos_row.result.finished_by_eos == [True] and eos_row.tokens[-1] == 8
    # each row's own record counts only its steps; its drafted/accepted are its own
    for row in finished:
        assert sum(s.emitted[0] for s in row.result.steps) == len(row.tokens)


def test_a_row_that_stops_leaves_and_the_others_go_on():
    from neuron_spec.engine.loop import Batch, Row

    target = StubRunner(next_token_table(succ, V))
    draft = StubRunner(next_token_table(succ, V))
    batch = Batch(target, draft, 2, draft_tokens=2, acceptor=GreedyAcceptor())
    stopper = Row([0], 20, on_tokens=lambda new: 4 in new)  # a stop string, say
    other = Row([5], 8)
    batch.admit(stopper)
    batch.admit(other)
    done = []
    while batch.busy:
        done.extend(batch.step())
    assert done[0] is stopper and 4 in stopper.tokens and len(stopper.tokens) < 20
    assert other.tokens == _alone([5], 8)


def test_a_cancelled_row_frees_its_slot_without_disturbing_the_rest():
    from neuron_spec.engine.loop import Batch, Row

    target = StubRunner(next_token_table(succ, V))
    batch = Batch(target, None, 2, draft_tokens=0, acceptor=GreedyAcceptor())
    flag = {"gone": False}
    leaving = Row([0], 30, cancelled=lambda: flag["gone"])
    staying = Row([3], 10)
    batch.admit(leaving)
    batch.admit(staying)
    batch.step()
    flag["gone"] = True
    gone = batch.cancel_requested()
    assert gone == [leaving] and leaving.was_cancelled and batch.free_slots() == [0]
    late = Row([7], 3)
    assert batch.admit(late) == 0
    while batch.busy:
        batch.step()
    assert staying.tokens == _alone([3], 10) and late.tokens == _alone([7], 3)


def test_each_row_samples_with_its_own_acceptor():
    """Sampled rows in one batch draw exactly what each draws alone with the same seed."""
    import torch

    from neuron_spec.config.spec import SamplingSpec
    from neuron_spec.engine.acceptors import LosslessAcceptor

    torch.manual_seed(0)
    table_t, table_d = torch.randn(V, V) * 2, torch.randn(V, V) * 2

    def run_rows(specs):
        target, draft = StubRunner(table_t), StubRunner(table_d)
        accs = [LosslessAcceptor(SamplingSpec(temperature=t, seed=s)) for t, s in specs]
        return speculative_generate(
            target,
            draft,
            accs[0],
            [[1], [2], [3]][: len(specs)],
            draft_tokens=3,
            max_new_tokens=15,
            acceptors=accs,
        ).tokens

    together = run_rows([(0.8, 11), (0.0, 0), (1.3, 5)])
    alone = []
    for i, spec in enumerate([(0.8, 11), (0.0, 0), (1.3, 5)]):
        target, draft = StubRunner(table_t), StubRunner(table_d)
        acc = LosslessAcceptor(SamplingSpec(temperature=spec[0], seed=spec[1]))
        alone.append(
            speculative_generate(
                target, draft, acc, [[i + 1]], draft_tokens=3, max_new_tokens=15
            ).tokens[0]
        )
    assert together == alone
    assert len({tuple(t) for t in together}) == 3
