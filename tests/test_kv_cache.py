"""The reference backend's KV cache that grows in place (`backends/kv_cache.py`)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from neuron_spec.backends import kv_cache, reference
from neuron_spec.backends.reference import HFRunner
from neuron_spec.engine.acceptors import GreedyAcceptor
from neuron_spec.engine.loop import Batch, Row

from .test_reference import greedy_reference, tiny_llama

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def model():
    return tiny_llama(3)


def _feed(runner: HFRunner, tokens: list[list[int]], keep: int = 1) -> torch.Tensor:
    ids = torch.tensor(tokens)
    return runner.feed(ids, torch.ones_like(ids, dtype=torch.bool), keep)


def test_the_cache_is_written_in_place_and_keeps_room_bounded(model, monkeypatch):
    """After the prompt, passes write into the same buffer (no copy of what is held), a crop
    keeps it, and a new buffer has at most a quarter more room than it holds, or MIN_SPARE."""
    monkeypatch.setattr(kv_cache, "MIN_SPARE", 4)
    runner = HFRunner(model)
    runner.reset(1)
    _feed(runner, [list(range(1, 41))])
    layer = runner.cache.layers[0]
    assert isinstance(layer, kv_cache.GrowingLayer)
    buffer = layer.keys.data_ptr()
    assert layer.key_buffer.shape[-2] == 40 + 10  # a quarter more than it holds
    for _ in range(3):
        _feed(runner, [[5, 6, 7]], keep=3)
        runner.invalidate_from(torch.tensor([runner.length - 2]))  # two proposals refused
        assert layer.keys.data_ptr() == buffer
    assert runner.length == 43 and layer.keys.shape[-2] == 43
    for _ in range(8):  # past the room: one new buffer, a quarter larger again
        _feed(runner, [[9]])
    assert layer.keys.data_ptr() != buffer
    assert layer.key_buffer.shape[-2] == 51 + 12
    assert layer.keys.shape[-2] == runner.length == 51


def test_growing_and_concatenating_caches_give_identical_logits(model, monkeypatch):
    """Prompt, speculative widths, refusals cropped, rows joining and leaving (the runner
    replaces the layers' tensors): every pass's logits equal those of transformers' own
    concatenating cache, bit for bit."""
    monkeypatch.setattr(kv_cache, "MIN_SPARE", 2)  # new buffers often

    def script(runner: HFRunner) -> list[torch.Tensor]:
        out = []
        runner.reset(2)
        out.append(_feed(runner, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], keep=5))
        for width in (4, 1, 6, 2):
            out.append(_feed(runner, [[11] * width, [12] * width], keep=width))
            runner.invalidate_from(torch.tensor([runner.length - 1, runner.length - width]))
        runner.arrange([1, None, 0])  # row 0 moves, a new empty row joins
        new = torch.tensor([[13, 14], [15, 16], [17, 18]])
        mask = torch.tensor([[True, True], [True, True], [False, True]])
        out.append(runner.feed(new, mask, 2))
        runner.arrange([2, 0])  # a row leaves: dead columns are compacted away
        out.append(_feed(runner, [[19, 20, 21], [22, 23, 24]], keep=3))
        return out

    grown = script(HFRunner(model))
    monkeypatch.setattr(reference, "_new_cache", DynamicCache)
    plain = script(HFRunner(model))
    assert len(grown) == len(plain)
    for a, b in zip(grown, plain, strict=True):
        assert torch.equal(a, b)


def test_a_continuous_batch_on_growing_caches_is_each_rows_greedy_decoding(model, monkeypatch):
    """Rows join and leave a running batch while buffers are outgrown again and again."""
    monkeypatch.setattr(kv_cache, "MIN_SPARE", 1)
    target = model
    batch = Batch(HFRunner(target), HFRunner(tiny_llama(4)), 2, draft_tokens=3)
    prompts = [[1, 5, 9, 3], [2, 7], [4, 4, 4, 8], [6]]
    rows = [Row(p, 12, acceptor=GreedyAcceptor()) for p in prompts]
    waiting = list(rows)
    while waiting or batch.busy:
        while waiting and batch.free_slots():
            batch.admit(waiting.pop(0))
        batch.step()
    assert [r.tokens for r in rows] == [greedy_reference(target, p, 12) for p in prompts]


# --- grouped-query attention without copies (`backends/cpu_attention.py`) -----------------------


def _verify_passes(model) -> list[torch.Tensor]:
    """Two rows (one with a masked-out column), a prompt, then passes of several tokens."""
    runner = HFRunner(model)
    runner.reset(2)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    mask = torch.tensor([[True] * 5, [False, True, True, True, True]])
    out = [runner.feed(ids, mask, 5)]
    for width in (4, 1, 7):
        out.append(_feed(runner, [[11 + width] * width, [12] * width], keep=width))
    return out


def test_grouped_attention_gives_the_same_logits_without_copying_heads(monkeypatch):
    import copy

    from transformers.integrations import sdpa_attention

    from neuron_spec.backends.cpu_attention import NAME, use_grouped_attention

    plain = tiny_llama(5)  # 4 query heads share 2 key/value heads
    grouped = copy.deepcopy(plain)
    assert use_grouped_attention(grouped) and grouped.config._attn_implementation == NAME
    expected = _verify_passes(plain)

    def no_copies(*_args, **_kwargs):
        raise AssertionError("grouped keys and values were copied per query head")

    monkeypatch.setattr(sdpa_attention, "repeat_kv", no_copies)
    got = _verify_passes(grouped)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="copied per query head"):
        _verify_passes(plain)  # the contrast: transformers' own attention copies them


def test_only_sdpa_models_with_grouped_heads_switch():
    from transformers import LlamaConfig, LlamaForCausalLM

    from neuron_spec.backends.cpu_attention import use_grouped_attention

    def llama(kv_heads: int, attention: str) -> LlamaForCausalLM:
        cfg = LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=kv_heads,
        )  # fmt: skip
        return LlamaForCausalLM._from_config(cfg, attn_implementation=attention)

    assert use_grouped_attention(llama(2, "sdpa"))
    assert not use_grouped_attention(llama(4, "sdpa"))  # no shared heads: nothing to copy
    eager = llama(2, "eager")
    assert not use_grouped_attention(eager)  # a user's choice of attention stands
    assert eager.config._attn_implementation == "eager"


def test_a_cache_made_in_inference_mode_still_serves_passes_outside_it(model):
    """Buffers of inference mode cannot be written outside it: a pass there gets new ones."""
    grown, plain = HFRunner(model), HFRunner(model)
    plain_cache = DynamicCache()
    grown.reset(1)
    plain.reset(1)
    plain.cache = plain_cache
    with torch.inference_mode():
        a = _feed(grown, [[1, 2, 3, 4]], keep=4)
        b = _feed(plain, [[1, 2, 3, 4]], keep=4)
    assert torch.equal(a, b)
    with torch.no_grad():
        a = _feed(grown, [[5, 6]], keep=2)
        b = _feed(plain, [[5, 6]], keep=2)
    assert torch.equal(a, b)
    assert not grown.cache.layers[0].key_buffer.is_inference()


def test_grouped_attention_is_left_to_model_types_known_to_need_nothing_else(monkeypatch):
    """A model type whose code checks the attention's name (Gemma's family does) keeps
    transformers' own; so does everything under PyTorch 2.5 (no grouped heads in SDPA)."""
    from transformers import GemmaConfig, GemmaForCausalLM

    from neuron_spec.backends import cpu_attention

    cfg = GemmaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=4,
    )  # fmt: skip
    gemma = GemmaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    assert not cpu_attention.use_grouped_attention(gemma)
    assert gemma.config._attn_implementation == "sdpa"
    monkeypatch.setattr(torch, "__version__", "2.4.1+cpu")
    llama = tiny_llama(6)
    assert not cpu_attention.use_grouped_attention(llama)
    assert llama.config._attn_implementation == "sdpa"
