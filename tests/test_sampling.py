"""Sampling math: warping, the vectorised step against its loop form, and the distribution
of speculative sampling measured with chi-square tests."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from neuron_spec.config.spec import SamplingSpec
from neuron_spec.engine.acceptors import (
    GreedyAcceptor,
    LosslessAcceptor,
    NeuronxDefaultAcceptor,
    make_acceptor,
)
from neuron_spec.engine.loop import speculative_generate
from neuron_spec.engine.sampling import greedy_step, speculative_step, speculative_step_loop, warp

from .stubs import ChainLookup, StubRunner

pytestmark = pytest.mark.reference

# A test passes the chi-square check when p >= P_ACCEPT; a deviation must give p <= P_DEVIATE.
# Seeds are fixed, so each outcome is deterministic.
P_ACCEPT = 1e-3
P_DEVIATE = 1e-8


def test_warp_greedy_is_one_hot():
    probs = warp(torch.tensor([[0.1, 3.0, 2.0]]), 0.0)
    assert probs.tolist() == [[0.0, 1.0, 0.0]]


def test_warp_top_k_and_top_p():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    assert (warp(logits, 1.0, top_k=2) > 0).tolist() == [True, True, False, False]
    assert torch.allclose(warp(logits, 1.0, top_k=2), torch.tensor([2 / 3, 1 / 3, 0, 0]))
    # top_p 0.7: 0.5 < 0.7, 0.5 + 0.25 >= 0.7 -> keep two
    assert (warp(logits, 1.0, top_p=0.7) > 0).tolist() == [True, True, False, False]
    # top_p smaller than the best token still keeps it
    assert (warp(logits, 1.0, top_p=0.1) > 0).tolist() == [True, False, False, False]
    assert torch.allclose(warp(logits, 1.0), torch.tensor([0.5, 0.25, 0.15, 0.1]))
    hot = warp(logits, 0.5)
    assert hot[0] > 0.5 and torch.isclose(hot.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("seed", range(8))
def test_vectorised_step_equals_loop(seed):
    g = torch.Generator().manual_seed(seed)
    batch, gamma, vocab = 6, 4, 7
    q = torch.softmax(torch.randn(batch, gamma, vocab, generator=g), dim=-1)
    p = torch.softmax(torch.randn(batch, gamma + 1, vocab, generator=g), dim=-1)
    drafts = torch.multinomial(q.reshape(-1, vocab), 1, generator=g).reshape(batch, gamma)
    a = speculative_step(drafts, q, p, torch.Generator().manual_seed(100 + seed))
    b = speculative_step_loop(drafts, q, p, torch.Generator().manual_seed(100 + seed))
    assert torch.equal(a[1], b[1])
    for row in range(batch):
        n = int(a[1][row])
        assert torch.equal(a[0][row, :n], b[0][row, :n])
        assert torch.equal(a[0][row, : n - 1], drafts[row, : n - 1])


def test_greedy_step():
    logits = torch.zeros(2, 4, 5)
    for pos, tok in enumerate([1, 2, 3, 4]):
        logits[:, pos, tok] = 1.0
    tokens, counts = greedy_step(torch.tensor([[1, 2, 0], [1, 2, 3]]), logits)
    assert counts.tolist() == [3, 4]
    assert tokens[0, :3].tolist() == [1, 2, 3] and tokens[1].tolist() == [1, 2, 3, 4]


def test_acceptor_shapes_v1_and_v2():
    acc = GreedyAcceptor()
    k, vocab = 4, 6
    target = torch.zeros(k, vocab)
    for pos, tok in enumerate([3, 1, 5, 2]):
        target[pos, tok] = 5.0
    draft_ids = torch.tensor([[3, 1, 4]])
    v1 = acc(draft_ids, torch.zeros(k - 1, vocab), target)  # v1: 2-D scores
    assert v1.tolist() == [[3, 1, 5]]
    v2 = acc(
        torch.cat([draft_ids, torch.tensor([[0, 0, 0]])]),
        torch.zeros(2, k - 1, vocab),
        torch.stack([target, target]),
    )  # v2: 3-D, zero right-padded (bs, k)
    assert v2.dtype == torch.int64 and v2.shape == (2, k)
    assert v2.tolist() == [[3, 1, 5, 0], [3, 0, 0, 0]]


def test_custom_acceptor_by_import_path():
    acc = make_acceptor("neuron_spec.engine.acceptors:GreedyAcceptor", SamplingSpec())
    assert isinstance(acc, GreedyAcceptor)


# --- distribution tests on Markov-chain stubs ----------------------------------------------

VOCAB, STEPS, ROWS = 5, 4, 6000


def chains(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(VOCAB, VOCAB, generator=g) * 1.5
    draft = target + torch.randn(VOCAB, VOCAB, generator=g) * 1.0  # a rough draft
    return target, draft


def exact_marginals(table: torch.Tensor, start: int, sampling: SamplingSpec) -> list[torch.Tensor]:
    """P(token at position t) for t = 1..STEPS under the warped target chain."""
    trans = warp(table, sampling.temperature, sampling.top_k, sampling.top_p).double()
    dist = torch.zeros(VOCAB, dtype=torch.double)
    dist[start] = 1.0
    out = []
    for _ in range(STEPS):
        dist = dist @ trans
        out.append(dist)
    return out


def sampled_tokens(acceptor, target: torch.Tensor, draft: torch.Tensor, gamma: int) -> torch.Tensor:
    res = speculative_generate(
        StubRunner(target),
        StubRunner(draft),
        acceptor,
        [[0]] * ROWS,
        draft_tokens=gamma,
        max_new_tokens=STEPS,
    )
    return torch.tensor(res.tokens)  # (ROWS, STEPS)


def chi2_p_value(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness of fit of token samples to probabilities; tokens the
    distribution forbids must never appear."""
    observed = torch.bincount(samples, minlength=VOCAB).double()
    keep = probs > 0
    assert observed[~keep].sum() == 0, "sampled a token the distribution forbids"
    p = probs[keep].double()
    expected = p / p.sum() * observed[keep].sum()
    return float(chisquare(observed[keep].numpy(), expected.numpy()).pvalue)


def worst_p_value(tokens: torch.Tensor, marginals: list[torch.Tensor]) -> float:
    return min(chi2_p_value(tokens[:, t], probs) for t, probs in enumerate(marginals))


SETTINGS = {
    "t1": SamplingSpec(temperature=1.0, seed=11),
    "t0.7-top3": SamplingSpec(temperature=0.7, top_k=3, seed=12),
    "t0.9-top_p0.8": SamplingSpec(temperature=0.9, top_p=0.8, seed=13),
}


# Every setting at both draft lengths: two of the six in the fast loop, all in the full loop.
FAST_SAMPLES = {(1, "t0.7-top3"), (3, "t0.9-top_p0.8")}


@pytest.mark.parametrize(
    ("gamma", "name"),
    [
        pytest.param(g, n, id=f"{g}-{n}", marks=[] if (g, n) in FAST_SAMPLES else pytest.mark.slow)
        for g in (1, 3)
        for n in SETTINGS
    ],
)
def test_lossless_matches_the_target_distribution(name, gamma):
    sampling = SETTINGS[name]
    target, draft = chains(seed=3)
    tokens = sampled_tokens(LosslessAcceptor(sampling), target, draft, gamma)
    assert worst_p_value(tokens, exact_marginals(target, 0, sampling)) >= P_ACCEPT


def test_neuronx_default_deviates_from_the_target_distribution():
    sampling = SamplingSpec(temperature=1.0, seed=21)
    target, draft = chains(seed=3)
    tokens = sampled_tokens(NeuronxDefaultAcceptor(sampling), target, draft, 3)
    assert worst_p_value(tokens, exact_marginals(target, 0, sampling)) <= P_DEVIATE


def test_lossless_at_temperature_zero_is_greedy():
    target, draft = chains(seed=4)
    sampling = SamplingSpec(temperature=0.0)
    tokens = sampled_tokens(LosslessAcceptor(sampling), target, draft, 2)
    greedy = [int(target[0].argmax())]
    for _ in range(STEPS - 1):
        greedy.append(int(target[greedy[-1]].argmax()))
    assert (tokens == torch.tensor(greedy)).all()


class _TnxLikeDraft:
    """LlamaForSampling's forward shape: (input_ids, cache_ids, start_ids) -> (batch, vocab),
    here a Markov chain over the last input token; records the cache_ids it was given."""

    def __init__(self, table: torch.Tensor):
        self.table = table
        self.calls: list[list[int] | None] = []

    def __call__(self, input_ids, cache_ids, start_ids):
        self.calls.append(None if cache_ids is None else cache_ids.reshape(-1).tolist())
        return self.table[input_ids[:, -1]]


def test_sampled_draft_provider_follows_the_draft_provider_contract():
    from neuron_spec.engine.acceptors import SampledDraftProvider

    table, _ = chains(seed=5)
    greedy = SampledDraftProvider(_TnxLikeDraft(table), LosslessAcceptor(SamplingSpec()))
    token, scores = greedy(torch.tensor([[0, 1, 2]]), 4)  # context encoding
    assert token.shape == (1, 1) and scores.shape == (1, VOCAB)
    model = _TnxLikeDraft(table)
    greedy.model = model
    tokens, scores = greedy(torch.tensor([[3]]), 3, cache_ids=torch.tensor([7]))
    assert tokens.shape == (1, 3) and scores.shape == (3, 1, VOCAB)
    chain = [3]
    for _ in range(3):
        chain.append(int(table[chain[-1]].argmax()))
    assert tokens[0].tolist() == chain[1:]  # temperature 0: argmax drafts
    assert model.calls == [[7], [8], [9]]  # one position further each call


def test_sampled_draft_provider_samples_from_the_warped_draft():
    from neuron_spec.engine.acceptors import SampledDraftProvider

    table, _ = chains(seed=5)
    sampling = SamplingSpec(temperature=0.8, top_k=3, seed=9)
    provider = SampledDraftProvider(_TnxLikeDraft(table), LosslessAcceptor(sampling))
    draws = torch.cat(
        [provider(torch.tensor([[2]]), 1, cache_ids=torch.tensor([5]))[0] for _ in range(4000)]
    ).flatten()
    assert chi2_p_value(draws, warp(table[2], 0.8, 3)) >= P_ACCEPT


# --- proposals without a draft model: point masses -----------------------------------------


def test_the_point_mass_step_is_the_speculative_step_with_one_hot_q():
    from neuron_spec.engine.sampling import point_mass_step

    g = torch.Generator().manual_seed(5)
    p = torch.softmax(torch.randn(64, 4, VOCAB, generator=g), dim=-1)
    ids = torch.randint(0, VOCAB, (64, 3), generator=g)
    q = torch.nn.functional.one_hot(ids, VOCAB).double()
    a = point_mass_step(ids, p, torch.Generator().manual_seed(9))
    b = speculative_step(ids, q, p.double(), torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


class _DraftChain(ChainLookup):
    """Proposes the draft chain's argmax continuation: deterministic, so a point mass, and
    often right."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def follow(self, token):
        return int(self.table[token].argmax())


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("proposer", ["chain", "ngram"])
def test_lossless_with_point_mass_proposals_matches_the_target_distribution(name, proposer):
    """Proposals from a lookup are certain (q = δ(x)): accepted with probability p(x), and
    on refusal the token is drawn from p without x. The output is the target's distribution
    (chi-square at every position), for a proposer that is often right and for prompt lookup."""
    from neuron_spec.engine.proposers import PromptLookup

    sampling = SETTINGS[name]
    target, draft = chains(seed=3)
    prompt = [1, 2, 3, 4, 1, 0, 2, 0]  # unigram matches: prompt lookup proposes often
    make = (lambda: _DraftChain(draft)) if proposer == "chain" else (lambda: PromptLookup(1, 2))
    res = speculative_generate(
        StubRunner(target), make(), LosslessAcceptor(sampling), [prompt] * ROWS,
        draft_tokens=3, max_new_tokens=STEPS,
    )  # fmt: skip
    proposed = sum(sum(s.row_drafted or []) for s in res.steps)
    assert proposed > ROWS  # proposals were offered and verified
    tokens = torch.tensor(res.tokens)
    assert worst_p_value(tokens, exact_marginals(target, 0, sampling)) >= P_ACCEPT
