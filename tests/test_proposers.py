"""Proposers without a draft model: prompt lookup over a row's own tokens, and suffix matching
over earlier outputs kept in bounded memory; the engine's output with them is the target's."""

from __future__ import annotations

import pytest

from neuron_spec.engine.proposers import NgramIndex, PromptLookup, SuffixLookup, SuffixStore


def test_the_longest_latest_match_is_proposed():
    index = NgramIndex(1, 3)
    index.extend([5, 6, 7, 8, 1, 6, 7, 9, 2, 6, 7])
    # "6 7" ended twice before: the latest continues with 9; "x 6 7" (3-gram) never repeats
    assert index.lookup(4) == (2, [9, 2, 6, 7])
    index.extend([8])  # "6 7 8" matches its first occurrence, continuing with 1
    assert index.lookup(3) == (3, [1, 6, 7])


def test_no_match_no_proposal_and_never_the_suffix_itself():
    index = NgramIndex(2, 4)
    index.extend([1, 2, 3, 4])
    assert index.lookup(5) == (0, [])  # "3 4" occurs only as the suffix
    index.extend([1, 2])
    assert index.lookup(5) == (2, [3, 4, 1, 2])


def test_the_suffix_store_forgets_its_oldest_outputs_within_its_bound():
    store = SuffixStore(1, 3, max_tokens=12)
    store.add([1, 2, 3, 4, 5])
    assert store.match([9, 2, 3], 3) == (2, [4, 5])
    store.add([7, 8, 9, 10, 11])
    store.add([20, 21, 22, 23, 24])  # over 12 tokens: the first output is forgotten
    assert store.match([2, 3], 3) == (0, [])
    assert store.match([8, 9], 2) == (2, [10, 11])
    assert len(store) <= 12 + 1
    keys_before = len(store.after)
    for i in range(200):
        store.add([100 + i, 101 + i, 102 + i])
    assert len(store) <= 13 and len(store.after) <= 3 * 13  # bounded, whatever it has seen
    assert keys_before > 0


def test_a_match_never_runs_into_the_next_output():
    store = SuffixStore(1, 2, max_tokens=100)
    store.add([1, 2])
    store.add([3, 4])
    assert store.match([1], 5) == (1, [2])


def test_suffix_lookup_prefers_the_longer_match_and_learns_from_finished_rows():
    store = SuffixStore(1, 4, max_tokens=1000)
    lookup = SuffixLookup(store, 1, 4)
    lookup.admit(0, [1, 2, 3, 9, 1, 2])
    assert lookup.candidates([0], 3) == [[3, 9, 1]]  # its own "1 2" continues with 3
    lookup.leave(0, [1, 2, 3, 9, 1, 2, 3, 7])
    lookup.admit(1, [4, 9, 1, 2, 3])
    # the earlier output holds "9 1 2 3" (4 tokens) followed by 7; its own prompt holds less
    assert lookup.candidates([1], 2) == [[7]]
    lookup.leave(1, None)  # a cancelled row teaches nothing
    assert len(store) == 9


@pytest.mark.reference
@pytest.mark.parametrize("lookup_class", ["ngram", "suffix"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_greedy_output_with_a_lookup_is_the_targets(lookup_class, adaptive):
    """A target that repeats a cycle its prompt shows: the lookup proposes the cycle, most of
    it is accepted, and the output is the target's own greedy decoding, at batch 3 with rows
    of different prompts."""
    from neuron_spec.engine.acceptors import GreedyAcceptor
    from neuron_spec.engine.loop import speculative_generate
    from neuron_spec.engine.policy import LengthPolicy

    from .stubs import StubRunner, next_token_table

    vocab = 12
    table = next_token_table(lambda p: (p * 5 + 1) % vocab, vocab)
    prompts = [[0, 1, 6, 7, 0], [3, 4], [5]]
    store = SuffixStore(1, 4, 1000)
    make = (lambda: PromptLookup(1, 4)) if lookup_class == "ngram" else (
        lambda: SuffixLookup(store, 1, 4)
    )  # fmt: skip
    res = speculative_generate(
        StubRunner(table), make(), GreedyAcceptor(), prompts, draft_tokens=4,
        max_new_tokens=30, policy=LengthPolicy(4) if adaptive else None,
    )  # fmt: skip
    alone = speculative_generate(
        StubRunner(table), None, GreedyAcceptor(), prompts, draft_tokens=0, max_new_tokens=30
    )
    assert res.tokens == alone.tokens
    accepted = sum(sum(s.accepted) for s in res.steps)
    assert accepted > 20
    assert len(res.steps) < len(alone.steps)
