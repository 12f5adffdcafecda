"""How many tokens to propose, step by step: the speculation length that maximises measured
output tokens per second at the batch's current occupancy.

For a step of proposal length g (0 = no speculation), row r emits on average
L(g_r) = 1 + a_r (1 - b_r^g_r) / (1 - b_r) tokens, where a_r is how often the row's first
proposal is kept, b_r how often a later one is once those before it were, and g_r = min(g,
what the row can propose). The two differ for lookups: the first token is a guess (is the
earlier occurrence the one that continues here?) and the later ones follow a span once it is
found (on the demo's input-grounded prompts: 0.6 for the first, 0.85-0.95 for the next
fifteen), so one rate for all would cut proposals that would have been kept. For a draft
model they come out about equal (the classic (1 - α^(g + 1)) / (1 - α)). The step costs the
target's pass at the width the backend verifies g with (g + 1 on the reference backend; the
compiled window k on Neuron, whatever g is), plus g passes of a draft model when there is one,
plus the host's own time.
The length chosen is the one with the most expected tokens per second.

Every cost is measured, not assumed: moving averages of the target's pass time per (rows,
width), of a draft pass per rows, and of the host's time per step. A width's average counts
only while it is recent (measured within the last FRESH_PASSES passes at its occupancy; once
not, its next measurement starts it afresh): a pass slowed by a moment of contention would
otherwise make its width look dear for good, since a width that looks dear is not chosen and
so never measured again. A width not measured (or not lately) at this occupancy is estimated
from the widths that are (linear in the width), else from a prior that a token of width costs
`token_share` of a one-token pass (the backend's guess: a CPU's matrix products grow with the
width, an accelerator's memory-bound pass barely does); the first step that uses it measures
it. At an occupancy with nothing measured yet, the costs measured at the nearest occupancy
stand in for its own (the choice compares lengths at one occupancy, so the shape of the costs
is what counts): a batch that only ever reaches its widest occupancy in the steps that encode
new prompts, which measure nothing, still chooses from what it knows. With nothing measured
at all, the longest proposal is tried first.

Acceptance rates come from the rows (`RowAcceptance`): from what was accepted, and for
proposals that cost nothing (prompt lookup, suffix matching) also from the part of a proposal
a row did not offer, checked against the token the target then emitted (so a length cut
short still learns whether the next token would have been kept). A draft model's rows learn only
when they propose, so when the policy has stopped proposing it re-tries now and then, ever more
rarely while the tries confirm it (as TCP backs off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PRIOR_ALPHA = 0.5  # acceptance before a row or the batch has evidence
PRIOR_TRIALS = 2.0  # weight of the batch-wide estimate in a row's own
DECAY = 0.97  # of old evidence per new trial (about 30 trials remembered)
WEIGHT = 0.3  # of a new measurement in a cost's moving average
PROBE_RATIO = 30.0  # time without proposing per second a re-try costs (doubled, up to x16)
FRESH_PASSES = 64  # a width's measured cost counts while measured within this many passes


def expected_tokens(first: float, gamma: int, later: float | None = None) -> float:
    """Mean tokens a row emits in a step that offers gamma proposals (one at least), the first
    kept with probability `first`, each later one, once those before it were, with `later`
    (the same as `first` when not given)."""
    if gamma <= 0:
        return 1.0
    first = min(max(first, 0.0), 1.0)
    later = min(max(first if later is None else later, 0.0), 0.999999)
    return float(1 + first * (1 - later**gamma) / (1 - later))


@dataclass
class Trials:
    """Decayed successes and trials of one kind of position."""

    successes: float = 0.0
    trials: float = 0.0

    def add(self, successes: int, trials: int) -> None:
        if trials <= 0:
            return
        scale = DECAY**trials
        self.successes = self.successes * scale + successes
        self.trials = self.trials * scale + trials

    def rate(self, prior: float) -> float:
        return (self.successes + PRIOR_TRIALS * prior) / (self.trials + PRIOR_TRIALS)


@dataclass
class RowAcceptance:
    """A row's recent acceptance, the first position apart from the later ones (one trial per
    position offered, up to and including the first refused)."""

    first: Trials = field(default_factory=Trials)
    later: Trials = field(default_factory=Trials)

    @classmethod
    def known(
        cls, first: float, later: float | None = None, trials: float = 100.0
    ) -> RowAcceptance:
        """Evidence of `trials` steps that kept the first proposal at rate `first` and each
        later one at `later` (default: `first`)."""
        later = first if later is None else later
        return cls(Trials(first * trials, trials), Trials(later * trials, trials))

    def add(self, accepted: int, offered: int) -> None:
        """A step offered `offered` proposals and `accepted` of them were kept."""
        if offered <= 0:
            return
        self.first.add(int(accepted >= 1), 1)
        if accepted >= 1 and offered > 1:
            kept = accepted - 1
            self.later.add(kept, kept + (1 if accepted < offered else 0))

    def alphas(self, prior: tuple[float, float]) -> tuple[float, float]:
        """(first, later) rates, each pulled towards its prior while evidence is thin."""
        return self.first.rate(prior[0]), self.later.rate(prior[1])


class _Average:
    """A moving average (the first value taken as it is)."""

    def __init__(self) -> None:
        self.value: float | None = None

    def add(self, x: float, weight: float = WEIGHT) -> None:
        self.value = x if self.value is None else self.value + weight * (x - self.value)


def _nearest(rows: int, measured: set[int]) -> int | None:
    """The measured occupancy nearest to `rows` (itself when measured; a tie: the larger)."""
    return min(measured, key=lambda r: (abs(r - rows), -r), default=None)


@dataclass
class RowPlan:
    """What the policy knows of one row for one step."""

    acceptance: RowAcceptance
    cap: int  # the most tokens it can propose now (its proposer, its budget)
    pinned: bool = False  # proposes `cap` whatever the policy chooses (a seeded sampled row)


@dataclass
class LengthPolicy:
    """Chooses each step's proposal length; learns costs and acceptance as steps run.

    `verify_width(g)`: the width the backend's target pass has for g proposals;
    `draft_passes`: proposing g tokens costs g passes of a draft model (else nothing)."""

    gamma_max: int
    verify_width: Callable[[int], int] = lambda g: g + 1
    draft_passes: bool = False
    token_share: float = 0.5  # a token of verify width, as a share of a one-token pass
    verify: dict[tuple[int, int], _Average] = field(default_factory=dict)
    draft: dict[int, _Average] = field(default_factory=dict)  # a proposed token's share
    host: dict[int, _Average] = field(default_factory=dict)
    batch_acceptance: RowAcceptance = field(default_factory=RowAcceptance)
    idle_seconds: float = 0.0  # step time since a draft model last proposed
    backoff: int = 1
    passes: dict[int, int] = field(default_factory=dict)  # target passes measured per rows
    measured_at: dict[tuple[int, int], int] = field(default_factory=dict)  # (rows, width)

    # --- measurements ------------------------------------------------------------------------

    def observe_verify(self, rows: int, width: int, seconds: float) -> None:
        key, now = (rows, width), self.passes.get(rows, 0)
        if now - self.measured_at.get(key, now) >= FRESH_PASSES:
            del self.verify[key]  # not counted any more: the new measurement starts afresh
        self.verify.setdefault(key, _Average()).add(seconds)
        self.passes[rows] = self.measured_at[key] = now + 1

    def observe_draft(self, rows: int, seconds: float) -> None:
        self.draft.setdefault(rows, _Average()).add(seconds)

    def observe_host(self, rows: int, seconds: float) -> None:
        self.host.setdefault(rows, _Average()).add(max(seconds, 0.0))

    def observe_acceptance(self, accepted: int, offered: int) -> None:
        self.batch_acceptance.add(accepted, offered)

    # --- estimates ---------------------------------------------------------------------------

    def verify_seconds(self, rows: int, width: int) -> float | None:
        """The target pass at (rows, width): measured, else interpolated in the width, else
        from the one-token pass and the prior; at the nearest measured occupancy when nothing
        is known at these rows; None when nothing is known at all."""
        rows = _nearest(rows, {r for r, _ in self.verify}) or rows
        known = self._recent(rows)
        exact = dict(known).get(width)
        if exact is not None:
            return exact
        if not known:
            return None
        if len(known) == 1:
            w0, v0 = known[0]
            one = v0 / (1 + self.token_share * (w0 - 1))
            return one * (1 + self.token_share * (width - 1))
        below = [(w, v) for w, v in known if w < width]
        above = [(w, v) for w, v in known if w > width]
        (w1, v1), (w2, v2) = (
            (below[-1], above[0]) if below and above
            else (known[-2], known[-1]) if below else (known[0], known[1])
        )  # fmt: skip
        slope = max((v2 - v1) / (w2 - w1), 0.0)
        return max(v1 + slope * (width - w1), 0.0)

    def _recent(self, rows: int) -> list[tuple[int, float]]:
        """(width, seconds) measured at `rows`, by width: those measured within FRESH_PASSES
        passes, or every one when none was."""
        known = sorted(
            (w, a.value) for (r, w), a in self.verify.items() if r == rows and a.value is not None
        )
        now = self.passes.get(rows, 0)
        fresh = [(w, v) for w, v in known if now - self.measured_at[(rows, w)] < FRESH_PASSES]
        return fresh or known

    def step_seconds(self, rows: int, gamma: int) -> float | None:
        verify = self.verify_seconds(rows, self.verify_width(gamma))
        if verify is None:
            return None
        host = self.host.get(_nearest(rows, set(self.host)) or rows)
        extra = host.value if host is not None and host.value is not None else 0.0
        if self.draft_passes and gamma > 0:
            draft = self.draft.get(_nearest(rows, set(self.draft)) or rows)
            one = draft.value if draft is not None and draft.value is not None else verify / 2
            extra += gamma * one
        return verify + extra

    # --- the choice --------------------------------------------------------------------------

    def choose(self, rows: int, plans: Sequence[RowPlan]) -> int:
        """The step's proposal length for `rows` computed rows (0 .. gamma_max)."""
        longest = min(self.gamma_max, max((p.cap for p in plans), default=0))
        if longest == 0:
            return 0
        prior = self.batch_acceptance.alphas((PRIOR_ALPHA, PRIOR_ALPHA))
        rates = [p.acceptance.alphas(prior) for p in plans]
        best, best_rate = 0, -1.0
        for gamma in range(longest + 1):
            # nothing measured at any occupancy: every length looks as cheap, so the longest
            # (the most tokens) is tried first, and its step measures the pass
            seconds = self.step_seconds(rows, gamma) or 1.0
            tokens = sum(
                expected_tokens(first, min(gamma, p.cap), later)
                for (first, later), p in zip(rates, plans, strict=True)
            )
            rate = tokens / max(seconds, 1e-9)
            if rate > best_rate * (1 + 1e-9):  # a tie goes to the shorter proposal
                best, best_rate = gamma, rate
        return self._probe(rows, best, longest)

    def _probe(self, rows: int, chosen: int, longest: int) -> int:
        """A draft model's acceptance is learned only by proposing: after a stretch of steps
        without, propose once. A re-try happens once the time spent without proposing is
        PROBE_RATIO x backoff times what the re-try costs, so re-trying takes at most about a
        thirtieth of the time (a draft that does not pay costs at most ~3 % over the target
        alone); each re-try that does not win proposing back doubles the backoff
        (up to 16x)."""
        if not self.draft_passes:
            return chosen
        if chosen > 0:
            self.idle_seconds, self.backoff = 0.0, 1
            return chosen
        self.idle_seconds += self.step_seconds(rows, 0) or 0.0
        cost = self.step_seconds(rows, longest) or 0.0
        if self.idle_seconds < PROBE_RATIO * self.backoff * cost:
            return 0
        self.idle_seconds, self.backoff = 0.0, min(2 * self.backoff, 16)
        return longest
