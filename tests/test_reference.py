"""The reference backend on tiny random Llama pairs built here: greedy speculative output
equals the target's own greedy decoding, token for token, with real KV caches."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from neuron_spec.backends.reference import HFRunner
from neuron_spec.config.spec import SamplingSpec
from neuron_spec.engine.acceptors import GreedyAcceptor, LosslessAcceptor
from neuron_spec.engine.loop import speculative_generate

pytestmark = pytest.mark.reference
VOCAB = 96


def tiny_llama(seed: int, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg).double().eval()  # float64: no argmax ties from rounding


@pytest.fixture(scope="module")
def pair() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    target = tiny_llama(0)
    draft = copy.deepcopy(target)  # a perturbed copy: accepts often, not always
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in draft.parameters():
            param.add_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.003)
    return target, draft


def greedy_reference(model, prompt: list[int], n: int, eos: set[int] = frozenset()) -> list[int]:
    """The target alone, recomputing the whole sequence each step (no cache at all)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt in eos:
                break
    return ids[len(prompt) :]


PROMPTS = [[1, 5, 9, 3], [2, 7], [4, 4, 4, 8, 10, 11, 12]]


@pytest.mark.parametrize("gamma", [1, 2, 4, 7])
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_speculative_equals_target_greedy(pair, gamma, batch):
    target, draft = pair
    prompts = PROMPTS[:batch]
    res = speculative_generate(
        HFRunner(target),
        HFRunner(draft),
        GreedyAcceptor(),
        prompts,
        draft_tokens=gamma,
        max_new_tokens=24,
    )
    assert res.tokens == [greedy_reference(target, p, 24) for p in prompts]
    accepted = sum(sum(s.accepted) for s in res.steps)
    drafted = sum(s.drafted * len(s.accepted) for s in res.steps)
    assert 0 < accepted < drafted  # rejections and rollbacks really happened


def test_eos_inside_the_output_per_row(pair):
    target, draft = pair
    refs = [greedy_reference(target, p, 24) for p in PROMPTS]
    eos = refs[1][5]  # a token the second row emits at position 6
    expect = [greedy_reference(target, p, 24, {eos}) for p in PROMPTS]
    res = speculative_generate(
        HFRunner(target),
        HFRunner(draft),
        GreedyAcceptor(),
        PROMPTS,
        draft_tokens=3,
        max_new_tokens=24,
        eos_token_ids=[eos],
    )
    assert res.tokens == expect
    assert res.finished_by_eos[1] and len(res.tokens[1]) <= 6


def test_identical_draft_accepts_everything_and_catches_up(pair):
    target, _ = pair
    res = speculative_generate(
        HFRunner(target),
        HFRunner(copy.deepcopy(target)),
        GreedyAcceptor(),
        [PROMPTS[0]],
        draft_tokens=4,
        max_new_tokens=20,
    )
    assert res.tokens[0] == greedy_reference(target, PROMPTS[0], 20)
    assert all(s.accepted[0] == s.drafted for s in res.steps)


def test_cache_holds_exactly_the_committed_tokens(pair):
    target, draft = pair
    t_runner, d_runner = HFRunner(target), HFRunner(draft)
    res = speculative_generate(
        t_runner, d_runner, GreedyAcceptor(), [PROMPTS[2]], draft_tokens=4, max_new_tokens=16
    )
    # every committed token but the last is live in the target's cache; nothing else is
    assert int(t_runner.n_live[0]) == len(PROMPTS[2]) + len(res.tokens[0]) - 1
    assert t_runner.length == t_runner.cache.get_seq_length()
    assert bool(t_runner.mask.all())  # batch 1: rejected columns were cropped, not masked


def test_sampled_generation_is_seeded_and_reproducible(pair):
    target, draft = pair

    def once(seed: int) -> list[list[int]]:
        acc = LosslessAcceptor(SamplingSpec(temperature=1.0, seed=seed))
        return speculative_generate(
            HFRunner(target), HFRunner(draft), acc, PROMPTS, draft_tokens=3, max_new_tokens=12
        ).tokens

    assert once(5) == once(5)
    assert once(5) != once(6)


def test_a_tokenizer_class_this_transformers_lacks_loads_from_tokenizer_json(tmp_path):
    """transformers 5 writes `TokenizersBackend`, which 4.57 lacks: the tokenizer still loads."""
    import json
    import shutil

    from neuron_spec.sources.hf import auto_tokenizer

    from .neuron_fixtures import make_checkpoint

    src = make_checkpoint(tmp_path / "m", seed=0)
    d = tmp_path / "tok"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, d / name)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "NoSuchTokenizerClass"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = auto_tokenizer(str(d))
    assert tok("w1 w2").input_ids == auto_tokenizer(str(src))("w1 w2").input_ids


@pytest.mark.parametrize("compact", [True, False])
def test_a_continuous_batch_on_real_caches_equals_each_prompt_alone(pair, compact, monkeypatch):
    """Rows join a running batch of real KV caches between steps, leave on their own, and
    reuse freed slots; the dead columns they leave are compacted away; every row still
    equals the target's own greedy decoding, and a seeded sampled row equals itself alone."""
    from neuron_spec.backends import reference
    from neuron_spec.engine.loop import Batch, Row

    target, draft = pair
    if not compact:  # the contrast: nothing dropped, ever
        monkeypatch.setattr(reference.HFRunner, "_compact", lambda self, always=False: None)
    t_run, d_run = HFRunner(target), HFRunner(draft)
    batch = Batch(t_run, d_run, 3, draft_tokens=3)
    prompts = [[1, 5, 9, 3], [2, 7], [4, 4, 4, 8, 10, 11, 12], [6], [3, 3, 9], [8, 1]] * 3
    budgets = [40, 6, 30, 25, 9, 35] * 3
    sampled = SamplingSpec(temperature=0.9, seed=7)
    waiting = [
        Row(
            p,
            n,
            acceptor=LosslessAcceptor(SamplingSpec(temperature=0.9, seed=7))
            if i == 4
            else GreedyAcceptor(),
        )
        for i, (p, n) in enumerate(zip(prompts, budgets, strict=True))
    ]
    rows, longest_cache = list(waiting), 0
    while waiting or batch.busy:
        while waiting and batch.free_slots():
            batch.admit(waiting.pop(0))
        batch.step()
        longest_cache = max(longest_cache, t_run.length)
    for i, (row, p, n) in enumerate(zip(rows, prompts, budgets, strict=True)):
        if i != 4:
            assert row.tokens == greedy_reference(target, p, n)
    alone = speculative_generate(
        HFRunner(target),
        HFRunner(draft),
        LosslessAcceptor(sampled),
        [prompts[4]],
        draft_tokens=3,
        max_new_tokens=budgets[4],
    )
    assert rows[4].tokens == alone.tokens[0]
    # compacted, the cache never grows far past its longest live row (7 + 30 + drafts);
    # without it, it holds every row that ever lived in the slot
    assert (longest_cache <= 2 * 64 + 8) is compact


def test_a_batch_that_empties_and_refills_with_other_row_counts(pair):
    """Every row leaves (no live column at all), then waves of 1, 3 and 2 rows: the caches
    follow the rows each time, and every row is still the target's greedy decoding."""
    from neuron_spec.engine.loop import Batch, Row

    target, draft = pair
    t_run = HFRunner(target)
    batch = Batch(t_run, HFRunner(draft), 3, draft_tokens=2)
    for wave in ([[1, 2]], [[3], [4, 5, 6], [7, 8]], [[9, 9], [2]], [[5]]):
        rows = [Row(p, 6, acceptor=GreedyAcceptor()) for p in wave]
        for row in rows:
            batch.admit(row)
        while batch.busy:
            batch.step()
        assert [r.tokens for r in rows] == [greedy_reference(target, p, 6) for p in wave]
        rows_held = {layer.keys.shape[0] for layer in t_run.cache.layers}
        assert rows_held == {t_run.mask.shape[0]}  # the cache's rows follow the mask's


def test_the_draft_cache_follows_the_rows_while_it_is_not_fed(pair):
    """Rows come and go while steps run without drafts (the draft is not fed, its cache
    holds no column at all); when drafting resumes, the draft's cache has the rows' count."""
    from neuron_spec.engine.loop import Batch, Row
    from neuron_spec.engine.policy import LengthPolicy

    class DraftAlone(LengthPolicy):  # drafts only with one row, as a measured policy may decide
        def choose(self, rows, plans):
            return self.gamma_max if rows <= 1 else 0

    target, draft = pair
    policy = DraftAlone(gamma_max=2, draft_passes=True)
    batch = Batch(HFRunner(target), HFRunner(draft), 3, draft_tokens=2, policy=policy)
    first = Row([1, 2], 4, acceptor=GreedyAcceptor())
    batch.admit(first)
    while batch.busy:
        batch.step()
    rows = [Row(p, n, acceptor=GreedyAcceptor()) for p, n in (([3], 3), ([4, 5], 6), ([6], 12))]
    for row in rows:
        batch.admit(row)
    while batch.busy:  # three rows: no drafts; they leave one by one; the last drafts alone
        batch.step()
    assert any(s.drafted == 0 for s in batch.steps) and batch.steps[-1].drafted > 0
    assert [r.tokens for r in rows] == [greedy_reference(target, r.prompt, r.max_new) for r in rows]
