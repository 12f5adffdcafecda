"""The transformers-neuronx double reproduces the library's behaviour, defects included.

Each test names a behaviour of the real Python code (aws-neuron/transformers-neuronx:
speculation.py, sampling.py, llama/model.py, base.py, decoder.py, bucket.py at the commits
of each release the double reproduces); the backend's tests then run against exactly that.
"""

from __future__ import annotations

import gc
import importlib.metadata
import inspect
from pathlib import Path

import pytest
import torch

from .neuron_fixtures import make_checkpoint, reset_cores, use_double

pytestmark = pytest.mark.reference
V10, V11, V12, V13 = "0.10.0.21", "0.11.351", "0.12.313", "0.13.322"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("double")
    target = make_checkpoint(root / "target", seed=0)
    draft = make_checkpoint(root / "draft", seed=0, noise=0.003, base=target)
    return target, draft


@pytest.fixture(autouse=True)
def _unload():
    yield
    import sys

    for name in list(sys.modules):
        if name.startswith("transformers_neuronx"):
            del sys.modules[name]


class Collect:
    def __init__(self):
        self.puts: list[torch.Tensor] = []
        self.ended = False

    def put(self, value):
        self.puts.append(torch.as_tensor(value).clone())

    def end(self):
        self.ended = True


def load(path, n_positions=64, window=None, tp=2, batch_sizes=None):
    from transformers_neuronx import LlamaForSampling

    m = LlamaForSampling.from_pretrained(
        str(path), n_positions=n_positions, amp="f32", tp_degree=tp
    )
    if window is not None:
        m.enable_speculative_decoder(window, batch_sizes=batch_sizes)
    m.to_neuron()
    return m


def pair(ckpt, n_positions=64, window=4):
    target, draft = ckpt
    return load(draft, n_positions), load(target, n_positions, window)


PROMPT = torch.tensor([[1, 8, 20, 33, 14]])


# --- versions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version,module_says,has_pad",
    [(V11, "0.10.x", False), (V12, "0.12.x", True), (V13, "0.13.x", True)],
)
def test_version_metadata_and_api_signature(monkeypatch, version, module_says, has_pad):
    use_double(monkeypatch, version)
    import transformers_neuronx
    from transformers_neuronx.speculation import SpeculativeGenerator

    assert transformers_neuronx.__version__ == module_says  # version.py lags; metadata doesn't
    assert importlib.metadata.version("transformers-neuronx") == version
    assert ("pad_token_id" in inspect.signature(SpeculativeGenerator.sample).parameters) is has_pad


# --- the speculation loops ------------------------------------------------------------------


@pytest.mark.parametrize("version", [V11, V13])
def test_first_token_is_the_targets_argmax_whatever_the_acceptor(monkeypatch, ckpt, version):
    use_double(monkeypatch, version)
    from transformers_neuronx.speculation import SpeculativeGenerator

    draft, target = pair(ckpt)
    argmax = int(target(PROMPT).argmax())

    class Never:  # rejects every draft and emits token 7
        def __call__(self, draft_ids, draft_scores, target_scores):
            return torch.tensor([[7, 0, 0, 0]]) if version == V13 else torch.tensor([[7]])

    for _ in range(5):
        out = SpeculativeGenerator(draft, target, 4, Never()).sample(PROMPT, sequence_length=12)
        assert int(out[0, PROMPT.shape[1]]) == argmax


def test_v1_scores_reach_the_acceptor_unchanged_and_v2_transposes(monkeypatch, ckpt):
    seen = {}

    class Spy:
        def __call__(self, draft_ids, draft_scores, target_scores):
            seen.setdefault("shapes", (tuple(draft_scores.shape), tuple(target_scores.shape)))
            raise RuntimeError("stop")

    class Provider:  # returns (k-1, 1, V): the shape v2 expects from a provider
        def __init__(self, model):
            self.model = model

        def __call__(self, ids, k, cache_ids=None, start_ids=None):
            scores = self.model(ids, cache_ids, start_ids)
            if cache_ids is None:
                return scores.argmax(1, keepdim=True), scores
            return scores.argmax(1, keepdim=True).repeat(1, k), scores.unsqueeze(0).repeat(k, 1, 1)

    for version, expected in ((V11, ((3, 1, 96), (4, 96))), (V13, ((1, 3, 96), (1, 4, 96)))):
        seen.clear()
        use_double(monkeypatch, version)
        from transformers_neuronx.speculation import SpeculativeGenerator

        draft, target = pair(ckpt)
        with pytest.raises(RuntimeError, match="stop"):
            SpeculativeGenerator(Provider(draft), target, 4, Spy()).sample(PROMPT, 20)
        assert seen["shapes"] == expected
        reset_cores()


def test_v1_finishes_with_a_greedy_tail_that_is_not_streamed(monkeypatch, ckpt):
    use_double(monkeypatch, V11)
    from transformers_neuronx.speculation import SpeculativeGenerator

    draft, target = pair(ckpt)
    s = Collect()
    out = SpeculativeGenerator(draft, target, 4).sample(PROMPT, sequence_length=20, streamer=s)
    streamed = torch.cat([p.reshape(-1) for p in s.puts])
    assert out.shape == (1, 20)  # the prompt included
    generated = out[0, PROMPT.shape[1] :]
    assert len(streamed) < len(generated)  # the tail never reached the streamer
    assert torch.equal(streamed, generated[: len(streamed)])
    assert s.ended


def test_v2_streams_the_prompt_then_padded_blocks_past_the_end(monkeypatch, ckpt):
    use_double(monkeypatch, V13)
    from transformers_neuronx.speculation import SpeculativeGenerator

    draft, target = pair(ckpt)
    s = Collect()
    out = SpeculativeGenerator(draft, target, 4).sample(PROMPT, sequence_length=20, streamer=s)
    assert out.shape == (1, 20)
    assert torch.equal(s.puts[0], PROMPT)  # the prompt, echoed
    assert s.puts[1].shape == (1, 1)
    assert all(p.shape == (1, 4) for p in s.puts[2:])  # zero-padded (bs, k) blocks
    streamed_new = sum(int(torch.count_nonzero(p)) for p in s.puts[1:])
    assert streamed_new > 20 - PROMPT.shape[1]  # the last block runs past sequence_length
    # it speculated while below sequence_length: positions up to sequence_length + k - 2
    assert max(start + width - 1 for _, start, width in target.calls) > 19


def test_v2_positions_past_n_positions_raise_stop_iteration(monkeypatch, ckpt):
    use_double(monkeypatch, V13)
    from transformers_neuronx.speculation import SpeculativeGenerator

    draft, target = pair(ckpt, n_positions=32)
    with pytest.raises(StopIteration):
        SpeculativeGenerator(draft, target, 4).sample(PROMPT, sequence_length=32)
    reset_cores()
    use_double(monkeypatch, V11)  # v1 finishes with plain decoding: no overrun
    from transformers_neuronx.speculation import SpeculativeGenerator as V1Generator

    draft, target = pair(ckpt, n_positions=32)
    assert V1Generator(draft, target, 4).sample(PROMPT, sequence_length=32).shape == (1, 32)


def test_v2_advances_by_count_nonzero_so_id_0_is_lost_and_the_cache_corrupted(monkeypatch, ckpt):
    use_double(monkeypatch, V13)
    from transformers_neuronx.speculation import SpeculativeGenerator

    draft, target = pair(ckpt)

    class ZeroOnce:  # the first step's only token is id 0 (as "!" is in Llama-3)
        calls = 0

        def __call__(self, draft_ids, draft_scores, target_scores):
            ZeroOnce.calls += 1
            out = torch.zeros((1, 4), dtype=torch.int64)
            out[0, 0] = 0 if ZeroOnce.calls == 1 else 9
            return out

    out = SpeculativeGenerator(draft, target, 4, ZeroOnce()).sample(PROMPT, sequence_length=9)
    p = PROMPT.shape[1]
    first = int(out[0, p])
    # the id-0 token never made it into the output: the next block overwrote it
    assert out[0, p + 1 :].tolist() == [9, 9, 9]
    # and the KV slot of the first new token (position p) was overwritten with id 0
    assert first != 0 and target.kv[0][p] == 0


def test_eos_list_fails_inside_the_speculation_loop(monkeypatch, ckpt):
    for version in (V11, V13):
        use_double(monkeypatch, version)
        from transformers_neuronx.speculation import SpeculativeGenerator

        draft, target = pair(ckpt)
        with pytest.raises(RuntimeError, match="broadcast"):
            SpeculativeGenerator(draft, target, 4).sample(PROMPT, 20, eos_token_id=[2, 3])
        reset_cores()


# --- LlamaForSampling.sample -----------------------------------------------------------------


@pytest.mark.parametrize("version", [V11, V13])
def test_sample_validates_top_k_temperature_and_top_p(monkeypatch, ckpt, version):
    use_double(monkeypatch, version)
    target = load(ckpt[0])
    with pytest.raises(ValueError, match="top_k has to be a strictly positive int"):
        target.sample(PROMPT, sequence_length=10, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        target.sample(PROMPT, sequence_length=10, temperature=1)
    with pytest.raises(ValueError, match="top_p"):
        target.sample(PROMPT, sequence_length=10, top_p=1)
    out = target.sample(PROMPT, sequence_length=10, top_k=None, temperature=0.8)
    assert out.shape == (1, 10)


def test_sample_takes_an_eos_list_from_0_12_only(monkeypatch, ckpt):
    use_double(monkeypatch, V13)
    target = load(ckpt[0])
    greedy = target.sample(PROMPT, sequence_length=12, top_k=1)[0, PROMPT.shape[1] :].tolist()
    stop = greedy[3]
    out = target.sample(PROMPT, 12, top_k=1, eos_token_override=[95, stop])
    assert out[0, PROMPT.shape[1] :].tolist() == greedy[: greedy.index(stop) + 1]
    reset_cores()
    use_double(monkeypatch, V11)
    target = load(ckpt[0])
    with pytest.raises(TypeError):
        target.sample(PROMPT, 12, top_k=1, eos_token_override=[95, stop])


# --- graphs, compilation, artifacts ----------------------------------------------------------


def test_speculation_graph_lookup_is_by_nearest_window(monkeypatch, ckpt):
    use_double(monkeypatch, V13)
    target = load(ckpt[0], window=[3, 7])
    window = torch.tensor([[4, 5, 6]])
    # speculation_length is never matched against the (k, batch) keys: the input's width is
    out = target.speculative_forward(window, torch.arange(5, 8), None, speculation_length=6)
    assert out.shape == (3, 96, 1)  # the k=3 graph ran, not a k=6 one
    with pytest.raises(AssertionError, match="different shapes"):  # nearest is k=7
        target.speculative_forward(torch.tensor([[4, 5, 6, 7, 8]]), torch.arange(5, 10), None, 5)
    with pytest.raises(KeyError):  # only an unregistered batch size is a KeyError
        target.speculative_forward(torch.tensor([[4, 5, 6]] * 2), torch.arange(5, 8), None, 3)
    reset_cores()
    use_double(monkeypatch, V10)  # 0.10.0.21 looks the window up exactly
    from transformers_neuronx import LlamaForSampling

    old = LlamaForSampling.from_pretrained(str(ckpt[0]), n_positions=64, amp="f32")
    old.enable_speculative_decoder(4)
    with pytest.raises(TypeError):
        old.enable_speculative_decoder(4, batch_sizes=[1])
    old.to_neuron()
    with pytest.raises(KeyError):
        old.speculative_forward(torch.tensor([[4, 5, 6]]), torch.arange(5, 8), None, 3)


def test_enabling_speculation_after_to_neuron_registers_a_graph_never_compiled(
    monkeypatch, ckpt, tmp_path
):
    use_double(monkeypatch, V13)
    target = load(ckpt[0])
    target.enable_speculative_decoder(4)  # no error
    with pytest.raises(AttributeError):
        target.speculative_forward(torch.tensor([[4, 5, 6, 7]]), torch.arange(5, 9), None, 4)
    with pytest.raises(AssertionError, match="not been successfully compiled"):
        target.save(str(tmp_path / "neffs"))


def test_neff_names_hash_the_hlo_only(monkeypatch, ckpt, tmp_path):
    use_double(monkeypatch, V13)
    names = []
    for flags in ("-O1", "-O2"):
        monkeypatch.setenv("NEURON_CC_FLAGS", flags)
        reset_cores()
        m = load(ckpt[0], window=4)
        m.save(str(tmp_path / flags))
        names.append(sorted(p.name for p in (tmp_path / flags).iterdir()))
        del m
    assert names[0] == names[1]  # the flags are not in the name: the caller's key must be
    assert all(len(n) == len("0123456789abcdef0123.neff") for n in names[0])
    reset_cores()
    from transformers_neuronx import LlamaForSampling

    m = LlamaForSampling.from_pretrained(str(ckpt[0]), n_positions=64, amp="f32")
    m.enable_speculative_decoder(4)
    m.load(str(tmp_path / "-O1"))
    m.to_neuron()  # -O1 artifacts load silently under -O2: nothing in the name says otherwise


def test_a_failed_load_keeps_the_weights_until_the_model_is_freed(monkeypatch, ckpt, tmp_path):
    use_double(monkeypatch, V13)
    import transformers_neuronx._runtime as runtime
    from transformers_neuronx import LlamaForSampling

    target = load(ckpt[0])
    stale = LlamaForSampling.from_pretrained(str(ckpt[0]), n_positions=64, amp="f32")
    stale.load(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="Did not find directory"):
        stale.to_neuron()
    assert runtime.resident_models() == 2  # the weights were loaded before the NEFFs
    assert target is not None
    retry = LlamaForSampling.from_pretrained(str(ckpt[0]), n_positions=64, amp="f32")
    with pytest.raises(RuntimeError, match="NRT_RESOURCE"):
        retry.to_neuron()
    del stale
    gc.collect()
    retry.to_neuron()


def test_unknown_kwargs_are_silently_ignored_and_shapes_checked(monkeypatch, ckpt):
    use_double(monkeypatch, V13)
    from transformers_neuronx import LlamaForSampling

    m = LlamaForSampling.from_pretrained(str(ckpt[0]), n_positions=128, tp_degre=8)
    assert m.ignored_kwargs == {"tp_degre": 8} and m.tp_degree == 2  # the default
    with pytest.raises(TypeError):
        LlamaForSampling.from_pretrained(str(ckpt[0]), n_positions="128")
    with pytest.raises(AssertionError):
        LlamaForSampling.from_pretrained(str(ckpt[0]), n_positions=128, context_length_estimate=256)
    a = load(ckpt[1], tp=8)
    b = LlamaForSampling.from_pretrained(str(ckpt[0]), n_positions=128, amp="f32", tp_degree=16)
    with pytest.raises(RuntimeError, match="nrt_load_collectives"):
        b.to_neuron()
    assert a(PROMPT).shape == (1, 96)


def _batch_model(path, right: bool, batch: int = 2):
    from transformers_neuronx import LlamaForSampling, NeuronConfig

    config = NeuronConfig(padding_side="right" if right else "left")
    m = LlamaForSampling.from_pretrained(
        str(path), n_positions=64, amp="f32", tp_degree=2, batch_size=batch, neuron_config=config
    )
    m.enable_speculative_decoder(3, batch_sizes=[batch])
    m.to_neuron()
    return m


@pytest.mark.parametrize("version", [V12, V13])
def test_2d_cache_ids_put_each_row_at_its_own_positions_in_its_start_ids_slot(
    monkeypatch, ckpt, version
):
    """padding_side='right': rows at different positions in one call; row b writes the slot
    start_ids[b] names, and start_ids defaults to zeros: every row then writes slot 0."""
    use_double(monkeypatch, version)
    reset_cores()
    m = _batch_model(ckpt[0], right=True)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    m.speculative_forward(ids, torch.tensor([[0, 1, 2], [4, 5, 6]]), None, 3)
    assert sorted(m.kv) == [0] and sorted(m.kv[0]) == [0, 1, 2, 4, 5, 6]  # the trap
    m.kv.clear()
    out = m.speculative_forward(
        ids, torch.tensor([[0, 1, 2], [4, 5, 6]]), torch.arange(2, dtype=torch.int32), 3
    )
    assert out.shape[0] == 3 and out.shape[2] == 2  # (k, V, batch)
    assert m.kv[0] == {0: 5, 1: 6, 2: 7} and m.kv[1] == {4: 8, 5: 9, 6: 10}
    assert m.row_positions[-1] == [0, 4]
    # context encoding: each row's logits at its largest cache id (the vectorized last token)
    m.kv.clear()
    ctx = torch.tensor([[11, 12, 13], [14, 15, 15]])
    cache = torch.tensor([[0, 1, 2], [0, 1, 1]])  # row 1's last real token at position 1
    got = m(ctx, cache, torch.arange(2, dtype=torch.int32))
    alone = m(torch.tensor([[14, 15]]).repeat(2, 1), torch.tensor([[0, 1], [0, 1]]),
              torch.arange(2, dtype=torch.int32))  # fmt: skip
    assert torch.allclose(got[1], alone[1])


def test_2d_cache_ids_need_padding_side_right(monkeypatch, ckpt):
    use_double(monkeypatch, V13)
    reset_cores()
    m = _batch_model(ckpt[0], right=False)
    with pytest.raises(AssertionError, match="different shapes"):
        m(torch.tensor([[5], [6]]), torch.tensor([[3], [7]]), None)


def _cb_model(path, batch: int = 3, **kwargs):
    from transformers_neuronx import ContinuousBatchingConfig, LlamaForSampling, NeuronConfig

    config = NeuronConfig(continuous_batching=ContinuousBatchingConfig(max_num_seqs=batch))
    assert config.padding_side == "right"  # continuous batching forces it
    m = LlamaForSampling.from_pretrained(
        str(path), n_positions=64, tp_degree=2, batch_size=batch, neuron_config=config, **kwargs
    )
    m.enable_speculative_decoder(3, batch_sizes=[batch])
    m.to_neuron()
    return m


def _slots(n):
    return torch.arange(n, dtype=torch.int32)


@pytest.mark.parametrize("version", [V12, V13])
def test_continuous_batching_encodes_a_prompt_into_one_slot(monkeypatch, ckpt, version):
    """The prompt graph is batch 1: forward(ids (1, n), cache ids from 0, start_ids=[slot])
    writes only that slot; several prompts run one after another, each into its own. Without
    continuous batching there is no batch-1 graph for a model compiled for 3."""
    use_double(monkeypatch, version)
    reset_cores()
    m = _cb_model(ckpt[0])
    m(torch.tensor([[5, 6], [7, 8], [9, 10]]), torch.tensor([[0, 1]] * 3), _slots(3))
    assert [m.kv[s][1] for s in range(3)] == [6, 8, 10]
    m(torch.tensor([[21, 22, 23]]), torch.tensor([[0, 1, 2]]), torch.tensor([1], dtype=torch.int32))
    assert m.kv[1] == {0: 21, 1: 22, 2: 23} and m.kv[0] == {0: 5, 1: 6}  # slot 0 kept
    reset_cores()
    static = _batch_model(ckpt[0], right=True, batch=3)
    with pytest.raises(KeyError):
        static(torch.tensor([[21, 22]]), torch.tensor([[0, 1]]), torch.tensor([1]))


@pytest.mark.parametrize("version", [V12, V13])
def test_continuous_batching_one_token_call_overwrites_the_slots_it_leaves_out(
    monkeypatch, ckpt, version
):
    """Token generation is padded to max_num_seqs with token 0 at cache id 0 for every slot
    not in the call, so position 0 of those live slots is overwritten. A one-token prompt
    takes this path too (only more than one token at cache id 0 is a prompt)."""
    use_double(monkeypatch, version)
    reset_cores()
    m = _cb_model(ckpt[0])
    m(torch.tensor([[5, 6], [7, 8], [9, 10]]), torch.tensor([[0, 1]] * 3), _slots(3))
    m(torch.tensor([[30]]), torch.tensor([[2]]), torch.tensor([1], dtype=torch.int32))
    assert m.kv[1][2] == 30 and m.kv[0][0] == 0 and m.kv[2][0] == 0  # slots 0, 2 clobbered
    m(torch.tensor([[5, 6], [7, 8], [9, 10]]), torch.tensor([[0, 1]] * 3), _slots(3))
    m(torch.tensor([[31], [32], [33]]), torch.tensor([[2], [2], [2]]), _slots(3))
    assert [m.kv[s][0] for s in range(3)] == [5, 7, 9]  # the full batch keeps them


@pytest.mark.parametrize("version", [V12, V13])
def test_continuous_batching_one_token_call_needs_cache_ids_in_input_ids_dtype(
    monkeypatch, ckpt, version
):
    """base._prepare_for_continuous_batching builds the full batch's cache ids as zeros in
    input_ids' dtype and scatter_s the caller's cache ids into them: int64 ids with int32
    cache ids raise torch's RuntimeError before anything runs; one dtype for both runs."""
    use_double(monkeypatch, version)
    reset_cores()
    m = _cb_model(ckpt[0])
    m(torch.tensor([[5, 6], [7, 8], [9, 10]]), torch.tensor([[0, 1]] * 3), _slots(3))
    step = torch.tensor([[40], [41], [42]])  # int64, as a tokenizer gives them
    with pytest.raises(RuntimeError, match=r"scatter\(\): Expected self.dtype to be equal to src"):
        m(step, torch.full((3, 1), 2, dtype=torch.int32), _slots(3))
    assert 2 not in m.kv[0]  # nothing ran
    assert m(step, torch.full((3, 1), 2), _slots(3)).shape == (3, 96)
    assert [m.kv[s][2] for s in range(3)] == [40, 41, 42]
    ids32, pos32 = step.to(torch.int32), torch.full((3, 1), 3, dtype=torch.int32)
    assert m(ids32, pos32, _slots(3)).shape == (3, 96)


@pytest.mark.parametrize("version", [V12, V13])
def test_continuous_batching_asserts_what_does_not_fit_a_context_bucket(monkeypatch, ckpt, version):
    """Under continuous batching a prompt call wider than the largest context bucket is
    asserted (without it, context() would encode the first bucket and feed the rest one
    token at a time); so is a speculation window wider than it, and a speculation call of
    a batch size with no graph. No context buckets at all: the comparison with None fails."""
    use_double(monkeypatch, version)
    reset_cores()
    m = _cb_model(ckpt[0])  # n_positions 64: one context bucket of 32
    slot = torch.tensor([1], dtype=torch.int32)
    with pytest.raises(AssertionError, match=r"invalid input prompt length \(33 <= 32\)"):
        m(torch.full((1, 33), 7), torch.arange(33).unsqueeze(0), slot)
    assert m(torch.full((1, 32), 7), torch.arange(32).unsqueeze(0), slot).shape == (1, 96)
    with pytest.raises(AssertionError, match="invalid batch size for speculative forward"):
        m.speculative_forward(torch.full((2, 3), 7), torch.tensor([[1, 2, 3]] * 2), _slots(2), 3)
    reset_cores()
    narrow = _cb_model(ckpt[0], context_length_estimate=2)
    with pytest.raises(AssertionError, match=r"invalid input prompt length \(3 <= 2\)"):
        narrow.speculative_forward(
            torch.full((3, 3), 7), torch.tensor([[1, 2, 3]] * 3), _slots(3), 3
        )
    reset_cores()
    none = _cb_model(ckpt[0], context_length_estimate=0)
    with pytest.raises(TypeError):
        none(torch.full((1, 2), 7), torch.arange(2).unsqueeze(0), slot)
    one_token = none(torch.full((3, 1), 7), torch.zeros((3, 1), dtype=torch.long), _slots(3))
    assert one_token.shape == (3, 96)  # token generation needs no context bucket


@pytest.mark.parametrize("version", [V12, V13])
def test_continuous_batching_seq_ids_out_of_order(monkeypatch, ckpt, version):
    """A full batch with start_ids out of order: 0.13 returns each row's logits by seq id,
    0.12 returns them in slot order (row 0 gets slot 0's), so ids are kept in order."""
    use_double(monkeypatch, version)
    reset_cores()
    m = _cb_model(ckpt[0])
    m(torch.tensor([[5, 6], [7, 8], [9, 10]]), torch.tensor([[0, 1]] * 3), _slots(3))
    step = torch.tensor([[40], [41], [42]])
    in_order = m(step, torch.tensor([[2], [2], [2]]), _slots(3))
    m(torch.tensor([[5, 6], [7, 8], [9, 10]]), torch.tensor([[0, 1]] * 3), _slots(3))
    swapped = m(step[[2, 1, 0]], torch.tensor([[2], [2], [2]]), torch.tensor([2, 1, 0]))
    if version == V13:
        assert torch.allclose(swapped[0], in_order[2])  # picked by seq id
    else:
        assert torch.allclose(swapped[0], in_order[0])  # slot order


@pytest.mark.parametrize("version", [V12, V13])
def test_continuous_batching_speculation_with_row_0_at_position_0_is_refused(
    monkeypatch, ckpt, version
):
    use_double(monkeypatch, version)
    reset_cores()
    m = _cb_model(ckpt[0])
    ids = torch.tensor([[5, 6, 7]] * 3)
    with pytest.raises(AssertionError, match="different shapes"):
        m.speculative_forward(ids, torch.tensor([[0, 1, 2], [4, 5, 6], [4, 5, 6]]), _slots(3), 3)
    out = m.speculative_forward(ids, torch.tensor([[1, 2, 3], [4, 5, 6], [4, 5, 6]]), _slots(3), 3)
    assert out.shape[0] == 3 and out.shape[2] == 3


@pytest.mark.parametrize("version", [V12, V13])
def test_continuous_batching_speculation_of_fewer_than_k_tokens_writes_at_the_last_context_slot(
    monkeypatch, ckpt, version
):
    """Fewer than k tokens: the cache ids are padded with max(context buckets) - 1 and the
    ids with 0, so every row writes token 0 at that position."""
    use_double(monkeypatch, version)
    reset_cores()
    m = _cb_model(ckpt[0])
    last = max(m.context_buckets) - 1
    for s in range(3):
        m.kv.setdefault(s, {})[last] = 77
    out = m.speculative_forward(
        torch.tensor([[5, 6]] * 3), torch.tensor([[1, 2], [4, 5], [4, 5]]), _slots(3), 3
    )
    assert out.shape[0] == 3
    assert [m.kv[s][last] for s in range(3)] == [0, 0, 0] and m.kv[0][2] == 6


def test_a_bsh_cache_layout_breaks_the_speculation_graph(monkeypatch, ckpt):
    """layers/attention_utils.update_indices_speculative reads `indices` before setting it
    on the BSH branch (0.12 and 0.13): tracing the speculation graph fails."""
    use_double(monkeypatch, V13)
    reset_cores()
    from transformers_neuronx import LlamaForSampling, NeuronConfig

    config = NeuronConfig(padding_side="right", cache_layout="BSH")
    m = LlamaForSampling.from_pretrained(
        str(ckpt[0]), n_positions=64, amp="f32", tp_degree=2, batch_size=2, neuron_config=config
    )
    m.enable_speculative_decoder(3, batch_sizes=[2])
    with pytest.raises(UnboundLocalError, match="indices"):
        m.to_neuron()
    reset_cores()
    plain = LlamaForSampling.from_pretrained(
        str(ckpt[0]), n_positions=64, amp="f32", tp_degree=2, batch_size=2, neuron_config=config
    )
    plain.to_neuron()  # no speculation graph: nothing traces that branch
