"""The speculation length policy: the math, the estimates, and what it chooses on stub models
whose passes take measured time (a width that costs more than it returns is given up; a free,
accurate proposer is used to the full; a draft model is re-tried ever more rarely)."""

from __future__ import annotations

import itertools

import pytest

from neuron_spec.engine.policy import (
    FRESH_PASSES,
    LengthPolicy,
    RowAcceptance,
    RowPlan,
    expected_tokens,
)

V = 10


def test_expected_tokens_is_the_truncated_geometric_mean():
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(0.5, 0) == 1.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens(1.0, 4) == pytest.approx(5.0, rel=1e-3)


def test_a_rows_acceptance_follows_its_recent_trials():
    acc = RowAcceptance()
    assert acc.alphas((0.3, 0.4)) == pytest.approx((0.3, 0.4))  # no evidence: the priors
    for _ in range(20):
        acc.add(accepted=4, offered=4)  # every proposal kept
    assert min(acc.alphas((0.3, 0.3))) > 0.9
    for _ in range(100):
        acc.add(accepted=0, offered=4)  # then none: the old evidence fades
    assert acc.alphas((0.3, 0.3))[0] < 0.15


def test_two_rates_expected_tokens():
    # the first proposal kept half the time, each later one (once reached) always
    assert expected_tokens(0.5, 4, later=1.0) == pytest.approx(1 + 0.5 * 4, rel=1e-4)
    assert expected_tokens(0.5, 2, later=0.5) == expected_tokens(0.5, 2)
    assert expected_tokens(0.0, 4, later=1.0) == 1.0


def test_first_and_later_positions_are_learned_apart():
    acc = RowAcceptance()
    for _ in range(60):
        acc.add(accepted=0, offered=8)  # a wrong guess half the time...
        acc.add(accepted=8, offered=8)  # ...and a span followed to the end when right
    first, later = acc.alphas((0.5, 0.5))
    assert first == pytest.approx(0.5, abs=0.05)
    assert later > 0.95


def test_a_guessed_first_token_does_not_cut_a_reliable_span():
    """Lookups: the first proposal is kept 60 % of the time, the next ones 90 %. One pooled
    rate (about 0.8) makes a long proposal look poorer than it is; the two rates choose it."""
    policy = _policy_with({1: 0.062, 17: 0.102}, gamma_max=16)  # 2.5 ms a token of width
    pooled = RowPlan(RowAcceptance.known(0.8), 16)
    split = RowPlan(RowAcceptance.known(0.6, later=0.9), 16)
    assert policy.choose(1, [split]) > policy.choose(1, [pooled])
    assert policy.choose(1, [split]) >= 12


def _policy_with(costs: dict[int, float], gamma_max: int = 6, **kw) -> LengthPolicy:
    policy = LengthPolicy(gamma_max, **kw)
    for width, seconds in costs.items():
        policy.observe_verify(1, width, seconds)
    return policy


def _plan(alpha: float, cap: int = 6) -> RowPlan:
    """A row with plenty of evidence that each proposal is kept with probability alpha."""
    return RowPlan(RowAcceptance.known(alpha), cap)


def test_poor_acceptance_and_costly_width_choose_no_speculation():
    policy = _policy_with({1: 0.010, 7: 0.030})  # width 7 costs 3x a token
    assert policy.choose(1, [_plan(0.1)]) == 0
    assert policy.choose(1, [_plan(0.95)]) > 0


def test_a_fixed_width_backend_proposes_all_it_can():
    """On Neuron the verify graph has the compiled width whatever is proposed: proposing
    costs nothing more, so any acceptance at all is worth every token."""
    policy = _policy_with({7: 0.030}, verify_width=lambda g: 7)
    assert policy.choose(1, [_plan(0.2)]) == 6
    assert policy.choose(1, [_plan(0.2, cap=2)]) == 2  # no more than the proposer has


def test_unmeasured_widths_are_interpolated_then_tried():
    policy = _policy_with({1: 0.010, 9: 0.050}, gamma_max=8)
    assert policy.verify_seconds(1, 5) == pytest.approx(0.030)
    assert policy.verify_seconds(1, 11) == pytest.approx(0.060)
    assert LengthPolicy(8).verify_seconds(4, 1) is None  # nothing known at all
    assert LengthPolicy(8).choose(4, [_plan(0.5)] * 4) == 6  # so the longest is tried first


def test_a_pass_slowed_by_contention_stops_counting_once_other_widths_are_measured_since():
    """A width measured once during a moment of contention looks dear and so is not chosen,
    which would never measure it again: after FRESH_PASSES passes at other widths it is
    estimated from those, is chosen again and measured afresh."""
    policy = _policy_with({1: 0.010, 5: 0.012, 9: 0.014}, gamma_max=8)  # memory-bound
    row = _plan(0.95, cap=8)
    assert policy.choose(1, [row]) == 8
    policy.observe_verify(1, 9, 0.900)  # a spike at width 9: 0.280 after the moving average
    assert policy.verify_seconds(1, 9) > 0.2 and policy.choose(1, [row]) == 4
    for _ in range(FRESH_PASSES - 1):
        policy.observe_verify(1, 5, 0.012)  # the policy's choice, measured as before
    assert policy.verify_seconds(1, 9) > 0.2  # still recent
    policy.observe_verify(1, 1, 0.010)
    assert policy.verify_seconds(1, 9) == pytest.approx(0.014)  # from widths 1 and 5
    assert policy.choose(1, [row]) == 8
    policy.observe_verify(1, 9, 0.015)  # measured afresh: the spike is forgotten
    assert policy.verify_seconds(1, 9) == pytest.approx(0.015)
    for _ in range(2 * FRESH_PASSES):
        policy.observe_verify(2, 5, 0.020)  # another occupancy's passes age nothing here
    assert policy.verify_seconds(1, 9) == pytest.approx(0.015)
    only = _policy_with({9: 0.900})
    for _ in range(2 * FRESH_PASSES):
        only.observe_verify(2, 1, 0.010)
    assert only.verify_seconds(1, 9) == pytest.approx(0.900)  # nothing fresher: the old stands


def test_an_unmeasured_occupancy_borrows_the_nearest_measured_one():
    """A batch that reaches 8 rows only in steps that encode prompts (which measure nothing)
    decides at 8 rows from what it measured at 7 and 2, not by trying the longest."""
    policy = LengthPolicy(4, draft_passes=True)
    for rows, (one, five) in {7: (0.114, 0.195), 2: (0.060, 0.090)}.items():
        policy.observe_verify(rows, 1, one)
        policy.observe_verify(rows, 5, five)
    policy.observe_draft(7, 0.25)  # a bf16 draft at 7 rows: dearer than the target's pass
    policy.observe_draft(2, 0.03)
    assert policy.verify_seconds(8, 1) == pytest.approx(0.114)
    assert policy.step_seconds(8, 4) == pytest.approx(0.195 + 4 * 0.25)
    assert policy.choose(8, [_plan(0.8)] * 8) == 0
    assert policy.step_seconds(3, 4) == pytest.approx(0.090 + 4 * 0.03)  # 2 is nearer
    assert policy.choose(3, [_plan(0.8)] * 3) > 0


def test_a_draft_model_is_re_tried_ever_more_rarely_and_cheaply():
    policy = _policy_with({1: 0.010, 5: 0.012}, gamma_max=4, draft_passes=True)
    policy.observe_draft(1, 0.1)  # a proposed token costs 10 target passes: never worth it
    plans = [_plan(0.5)]
    chosen = [policy.choose(1, plans) for _ in range(60000)]
    tries = [i for i, g in enumerate(chosen) if g > 0]
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert tries and gaps == sorted(gaps) and gaps[-1] > 7 * gaps[0]  # backoff doubles to 16x
    spent = len(tries) * policy.step_seconds(1, 4)
    total = spent + (len(chosen) - len(tries)) * policy.step_seconds(1, 0)
    assert spent < 0.04 * total  # re-trying costs at most about a thirtieth of the time


# --- on stub models ------------------------------------------------------------------------


class _Clock:
    """The engine's clock in a test: time passes only when a model runs, so the costs the
    policy measures are exactly the stub's, whatever else the machine is doing."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Timed:
    """A stub runner whose feed takes `fixed + per_token x width` seconds of the clock."""

    def __init__(self, inner, fixed: float, per_token: float, clock: _Clock):
        self.inner, self.fixed, self.per_token, self.clock = inner, fixed, per_token, clock
        self.vocab_size = inner.vocab_size
        self.widths: list[int] = []

    def reset(self, batch):
        self.inner.reset(batch)

    @property
    def length(self):
        return self.inner.length

    def feed(self, tokens, mask, keep):
        self.widths.append(tokens.shape[1])
        self.clock.now += self.fixed + self.per_token * tokens.shape[1]
        return self.inner.feed(tokens, mask, keep)

    def invalidate_from(self, start):
        self.inner.invalidate_from(start)


@pytest.mark.reference
@pytest.mark.parametrize("right", [True, False])
def test_the_engine_learns_whether_proposing_pays(right, monkeypatch):
    """Width costs: a token of width adds a third of a one-token pass. Proposals that are
    always right are used to the full; proposals that are always wrong are given up after a
    few steps (checked against the emitted token, not by proposing). Greedy output is the
    target's either way."""
    from neuron_spec.engine.acceptors import GreedyAcceptor
    from neuron_spec.engine.loop import speculative_generate

    from .stubs import ChainLookup, StubRunner, next_token_table

    class Fixed(ChainLookup):  # always right or always wrong, by construction
        def follow(self, token):
            return (token + 1) % V if right else (token + 5) % V

    clock = _Clock()
    for module in ("loop", "runner", "proposers"):
        monkeypatch.setattr(f"neuron_spec.engine.{module}.time", clock)
    table = next_token_table(lambda p: (p + 1) % V, V)
    target = _Timed(StubRunner(table), fixed=0.006, per_token=0.002, clock=clock)
    policy = LengthPolicy(6)
    res = speculative_generate(
        target, Fixed(), GreedyAcceptor(), [[0]], draft_tokens=6, max_new_tokens=150,
        policy=policy,
    )  # fmt: skip
    assert res.tokens[0] == [(i + 1) % V for i in range(150)]
    late = [s.drafted for s in res.steps[len(res.steps) // 2 :]]
    if right:
        assert sorted(late)[len(late) // 2] == 6 and len(res.steps) < 40
    else:
        assert sum(g > 0 for g in late) <= 2 and len(res.steps) >= 140


@pytest.mark.reference
@pytest.mark.parametrize("next_kept", [True, False])
def test_a_cut_proposal_still_learns_whether_it_would_have_gone_on(next_kept):
    """A lookup row offered 2 of its 4 proposed tokens and both were kept: the token the
    target emitted after them is checked against the third, so the row learns whether a
    longer proposal would have paid (without this, a length once cut would stay cut)."""
    from types import SimpleNamespace

    from neuron_spec.engine.acceptors import CallableAcceptor, GreedyAcceptor
    from neuron_spec.engine.loop import Batch

    from .stubs import ChainLookup, StubRunner, next_token_table

    table = next_token_table(lambda p: (p + 1) % V, V)
    batch = Batch(
        StubRunner(table), ChainLookup(), 1, draft_tokens=6, acceptor=GreedyAcceptor(),
        policy=LengthPolicy(6),
    )  # fmt: skip

    def row(acceptor=None):
        return SimpleNamespace(acceptance=RowAcceptance(), acceptor=acceptor)

    def later(r):
        return (r.acceptance.later.successes, r.acceptance.later.trials)

    r = row()
    bonus = 3 if next_kept else 7
    batch._acceptance(0, r, accepted=2, offered=2, candidate=[1, 2, 3, 4], new=[1, 2, bonus])
    assert (r.acceptance.first.successes, r.acceptance.first.trials) == (1, 1)
    assert later(r) == ((2 if next_kept else 1), 2)
    # one refused within what was offered: nothing is known past it
    r = row()
    batch._acceptance(0, r, accepted=1, offered=2, candidate=[1, 2, 3, 4], new=[1, 9])
    assert later(r) == (0, 1)
    # the whole candidate offered: nothing past it to check
    r = row()
    batch._acceptance(0, r, accepted=2, offered=2, candidate=[1, 2], new=[1, 2, 3])
    assert later(r) == (1, 1)
    # none offered: its first token is checked
    r = row()
    batch._acceptance(0, r, accepted=0, offered=0, candidate=[1, 2], new=[1 if next_kept else 5])
    assert r.acceptance.first.successes == (1 if next_kept else 0)
    # a user's acceptor may keep a point mass by its own rule: nothing past what was offered
    r = row(CallableAcceptor(lambda *a: None))
    batch._acceptance(0, r, accepted=2, offered=2, candidate=[1, 2, 3, 4], new=[1, 2, 3])
    assert later(r) == (1, 1)
