"""The NxD Inference double does what each release's source does (neuronx-distributed-inference
0.8 at cd3abf3, 0.9 at c63afe0 and ef2731e): each behaviour neuron-spec relies on or works around,
one test each, over both releases where the path is shared; then each 0.8 -> 0.9 difference."""

from __future__ import annotations

import logging

import pytest
import torch

from .neuron_fixtures import NXDI_RELEASE, NXDI_RELEASES, make_checkpoint, use_nxdi_double

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("nxdi") / "m", seed=0)


@pytest.fixture
def nxdi(request, monkeypatch, tmp_path):
    """The double's (config, llama, adapter) modules at 0.8.16251, or at the release a test
    parametrizes it with (indirect): a release, or (release, source commit)."""
    param = getattr(request, "param", NXDI_RELEASE)
    release, source = param if isinstance(param, tuple) else (param, None)
    use_nxdi_double(monkeypatch, tmp_path / "meta", release, source)
    import neuronx_distributed_inference.models.config as config
    import neuronx_distributed_inference.models.llama.modeling_llama as llama
    import neuronx_distributed_inference.utils.hf_adapter as adapter

    return config, llama, adapter


def _app(nxdi, ckpt, tmp_path, **kw):
    config, llama, adapter = nxdi
    base = {"seq_len": 16, "max_context_length": 8, "torch_dtype": "float32", "tp_degree": 2}
    nc = config.NeuronConfig(**{**base, **kw})
    cfg = llama.LlamaInferenceConfig(
        nc, load_config=adapter.load_pretrained_config(str(ckpt)), rope_theta=10000.0
    )
    model = llama.NeuronLlamaForCausalLM(str(ckpt), cfg)
    model.compile(str(tmp_path / "compiled"))
    model.load(str(tmp_path / "compiled"))
    return model


def _cte(model, ids):
    n = len(ids)
    return model(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones((1, n), dtype=torch.long),
        position_ids=torch.arange(n).reshape(1, -1),
        seq_ids=torch.zeros(1, dtype=torch.long),
    )


def test_neuron_config_only_warns_on_unknown_keywords(nxdi, caplog):
    config, _, _ = nxdi
    with caplog.at_level(logging.WARNING):
        nc = config.NeuronConfig(tp_degree=8, speculaton_length=4)  # a typo
    assert nc.speculation_length == 0 and "Unexpected keyword arguments" in caplog.text
    assert nc.world_size == 8 and nc.max_length == nc.seq_len == 128


def test_without_torch_dtype_the_checkpoints_dtype_is_adopted(nxdi, tmp_path):
    config, llama, adapter = nxdi
    from transformers import LlamaConfig

    hf = LlamaConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, dtype="float16")
    nc = config.NeuronConfig()
    llama.LlamaInferenceConfig(
        nc, load_config=adapter.load_pretrained_config(hf_config=hf), rope_theta=10000.0
    )
    assert nc.torch_dtype == torch.float16
    given = config.NeuronConfig(torch_dtype="float32")
    llama.LlamaInferenceConfig(
        given, load_config=adapter.load_pretrained_config(hf_config=hf), rope_theta=10000.0
    )
    assert given.torch_dtype == torch.float32
    with pytest.raises(ValueError, match="only one of"):
        llama.LlamaInferenceConfig(
            config.NeuronConfig(), load_config=adapter.load_pretrained_config()
        )


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_graph_inventory_per_mode(nxdi, ckpt, tmp_path):
    plain = _app(nxdi, ckpt, tmp_path / "a")
    spec = _app(nxdi, ckpt, tmp_path / "b", speculation_length=4)
    assert [m.tag for m in plain.models] == ["context_encoding_model", "token_generation_model"]
    assert [m.tag for m in spec.models] == ["context_encoding_model", "speculation_model"]
    assert spec.speculation_model.width == 4


def test_a_speculative_target_has_no_token_generation_graph(nxdi, ckpt, tmp_path):
    model = _app(nxdi, ckpt, tmp_path, speculation_length=4)
    _cte(model, [1, 5, 9])
    with pytest.raises(AttributeError):
        model(
            input_ids=torch.tensor([[4]]),
            attention_mask=torch.ones((1, 3), dtype=torch.long),
            position_ids=torch.tensor([[3]]),
            seq_ids=torch.zeros(1, dtype=torch.long),
        )


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_routing_and_output_shapes_with_sampling_off(nxdi, ckpt, tmp_path):
    model = _app(nxdi, ckpt, tmp_path, speculation_length=4)
    out = _cte(model, [1, 5, 9])
    assert out.logits.shape == (1, 1, 96) and out.logits.dtype == torch.float32
    assert out.tokens is out.logits
    out = model(
        input_ids=torch.tensor([[4, 5, 6, 7]]),
        attention_mask=torch.ones((1, 3), dtype=torch.long),
        position_ids=torch.arange(3, 7).reshape(1, -1),
        seq_ids=torch.zeros(1, dtype=torch.long),
    )
    assert out.logits.shape == (1, 4, 96)


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_a_missing_attention_mask_is_inferred_from_position_ids(nxdi, ckpt, tmp_path):
    """preprocess_inputs infers the mask (_infer_attention_mask): one token at position p
    sees positions below p; a window of k sees only its first k cached positions (1 where
    a position id is at least its column); without position_ids too, an AssertionError."""
    model = _app(nxdi, ckpt, tmp_path)
    prompt = _cte(model, [1, 5, 9, 4])
    inferred = model(
        input_ids=torch.tensor([[1, 5, 9, 4]]), position_ids=torch.arange(4).reshape(1, -1)
    )
    assert torch.equal(inferred.logits, prompt.logits)
    step = {"input_ids": torch.tensor([[6]]), "position_ids": torch.tensor([[4]])}
    given = model(**step, attention_mask=torch.ones((1, 4), dtype=torch.long))
    assert torch.equal(model(**step).logits, given.logits)
    with pytest.raises(AssertionError, match="need to call forward with position_ids"):
        model(input_ids=torch.tensor([[6]]))
    window = _app(nxdi, ckpt, tmp_path / "w", speculation_length=2)
    _cte(window, [1, 5, 9, 4])
    ids, positions = torch.tensor([[6, 2]]), torch.tensor([[4, 5]])
    short = window(input_ids=ids, position_ids=positions).logits
    first_two = window(
        input_ids=ids, position_ids=positions, attention_mask=torch.ones((1, 2), dtype=torch.long)
    ).logits
    assert torch.equal(short, first_two)


def test_on_device_greedy_returns_int32_tokens(nxdi, ckpt, tmp_path):
    model = _app(nxdi, ckpt, tmp_path, on_device_sampling_config={"top_k": 1})
    out = _cte(model, [1, 5, 9])
    assert out.logits is None and out.tokens.dtype == torch.int32 and out.tokens.shape == (1,)


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_buckets_refuse_what_does_not_fit(nxdi, ckpt, tmp_path):
    model = _app(nxdi, ckpt, tmp_path, speculation_length=4)
    with pytest.raises(ValueError, match="exceeds largest bucket"):
        _cte(model, list(range(1, 10)))  # 9 tokens, max_context_length 8
    _cte(model, [1, 5, 9])
    ok = model(
        input_ids=torch.tensor([[4, 5, 6, 7]]),
        attention_mask=torch.ones((1, 12), dtype=torch.long),
        position_ids=torch.arange(12, 16).reshape(1, -1),
        seq_ids=torch.zeros(1, dtype=torch.long),
    )  # fmt: skip  12 + 4 == 16: the largest
    assert ok.logits.shape == (1, 4, 96)
    with pytest.raises(ValueError, match="exceeds largest bucket"):
        model(
            input_ids=torch.tensor([[4, 5, 6, 7]]),
            attention_mask=torch.ones((1, 13), dtype=torch.long),
            position_ids=torch.arange(13, 17).reshape(1, -1),
            seq_ids=torch.zeros(1, dtype=torch.long),
        )


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_a_one_token_prompt_reads_a_pad_slot(nxdi, ckpt, tmp_path):
    """Pads carry position 1 and context encoding returns the first maximal position id."""
    from transformers import LlamaForCausalLM

    model = _app(nxdi, ckpt, tmp_path)
    got = _cte(model, [7]).logits[0, -1]
    hf = LlamaForCausalLM.from_pretrained(ckpt).eval()
    with torch.no_grad():
        right = hf(torch.tensor([[7]])).logits[0, -1]
        pad_slot = hf(torch.tensor([[7, 0]]), position_ids=torch.tensor([[0, 1]])).logits[0, -1]
    assert torch.allclose(got, pad_slot, atol=1e-5) and not torch.allclose(got, right, atol=1e-3)


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_kv_is_positional_and_reset_clears_nothing(nxdi, ckpt, tmp_path):
    model = _app(nxdi, ckpt, tmp_path, speculation_length=2)
    _cte(model, [1, 5, 9])
    model(
        input_ids=torch.tensor([[4, 8]]),
        attention_mask=torch.ones((1, 3), dtype=torch.long),
        position_ids=torch.tensor([[3, 4]]),
        seq_ids=torch.zeros(1, dtype=torch.long),
    )
    assert model.kv[0][3] == 4 and model.kv[0][4] == 8
    # a rejected draft at 4 is overwritten by the next pass from there
    model(
        input_ids=torch.tensor([[6, 2]]),
        attention_mask=torch.ones((1, 4), dtype=torch.long),
        position_ids=torch.tensor([[4, 5]]),
        seq_ids=torch.zeros(1, dtype=torch.long),
    )
    assert model.kv[0][4] == 6
    model.reset()
    assert model.kv[0][4] == 6 and model.kv_cache_populated is False


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_fused_outputs_pad_with_minus_one_and_count_by_position(nxdi, ckpt, tmp_path):
    config, llama, adapter = nxdi
    draft_nc = config.NeuronConfig(seq_len=16, max_context_length=8, torch_dtype="float32")
    draft_cfg = llama.LlamaInferenceConfig(
        draft_nc, load_config=adapter.load_pretrained_config(str(ckpt)), rope_theta=10000.0
    )
    nc = config.NeuronConfig(
        seq_len=16,
        max_context_length=8,
        torch_dtype="float32",
        speculation_length=4,
        enable_fused_speculation=True,
        on_device_sampling_config={"top_k": 1},
    )
    cfg = llama.LlamaInferenceConfig(
        nc, load_config=adapter.load_pretrained_config(str(ckpt)), rope_theta=10000.0
    )
    cfg.fused_spec_config = config.FusedSpecNeuronConfig(
        llama.NeuronLlamaForCausalLM._model_cls, draft_config=draft_cfg, draft_model_path=str(ckpt)
    )
    model = llama.NeuronLlamaForCausalLM(str(ckpt), cfg)
    assert [m.tag for m in model.models] == ["context_encoding_model", "fused_speculation_model"]
    model.compile(str(tmp_path / "f"))
    model.load(str(tmp_path / "f"))
    first = _cte(model, [1, 5, 9]).fused_outputs
    assert first[0].shape == (1, 4) and first[0][0, 1:].tolist() == [-1, -1, -1]
    assert int(first[3]) == 3
    out = model(
        input_ids=first[1],
        attention_mask=torch.ones((1, 3), dtype=torch.long),
        position_ids=first[3],
        seq_ids=torch.zeros(1, dtype=torch.long),
    ).fused_outputs
    n = int(out[3]) - 3
    assert n == 4  # the draft is the target itself: every draft accepted
    assert (out[0] == -1).sum() == 0


def test_fused_mode_refuses_differing_dtypes(nxdi, ckpt):
    config, llama, adapter = nxdi
    draft = llama.LlamaInferenceConfig(
        config.NeuronConfig(torch_dtype="float32"),
        load_config=adapter.load_pretrained_config(str(ckpt)),
        rope_theta=10000.0,
    )
    cfg = llama.LlamaInferenceConfig(
        config.NeuronConfig(
            torch_dtype="bfloat16",
            speculation_length=4,
            enable_fused_speculation=True,
            on_device_sampling_config={},
        ),
        load_config=adapter.load_pretrained_config(str(ckpt)),
        rope_theta=10000.0,
    )
    cfg.fused_spec_config = config.FusedSpecNeuronConfig(
        llama.NeuronLlamaForCausalLM._model_cls, draft_config=draft, draft_model_path=str(ckpt)
    )
    with pytest.raises(ValueError, match="cast-type must be set to 'as-declared'"):
        llama.NeuronLlamaForCausalLM(str(ckpt), cfg)


def test_load_does_not_check_the_compiled_model_against_the_config(nxdi, ckpt, tmp_path):
    one = _app(nxdi, ckpt, tmp_path, speculation_length=4)
    config, llama, adapter = nxdi
    nc = config.NeuronConfig(seq_len=64, max_context_length=32, torch_dtype="float32")
    cfg = llama.LlamaInferenceConfig(
        nc, load_config=adapter.load_pretrained_config(str(ckpt)), rope_theta=10000.0
    )
    other = llama.NeuronLlamaForCausalLM(str(ckpt), cfg)
    other.load(str(tmp_path / "compiled"))  # compiled for another length: loads anyway
    assert other.hf is not None and one.speculation_model.width == 4


def test_cpu_mode_refuses_speculation(nxdi, ckpt, tmp_path):
    config, llama, adapter = nxdi
    cfg = llama.LlamaInferenceConfig(
        config.NeuronConfig(speculation_length=4, torch_dtype="float32"),
        load_config=adapter.load_pretrained_config(str(ckpt)),
        rope_theta=10000.0,
    )
    with pytest.raises(NotImplementedError, match="Speculation is not yet supported"):
        llama.NeuronLlamaForCausalLM(str(ckpt), cfg).to_cpu()


def test_the_generation_adapter_reads_an_undefined_name(nxdi, ckpt, tmp_path):
    model = _app(nxdi, ckpt, tmp_path)
    _, _, adapter = nxdi
    with pytest.raises(NameError, match="tensor_capture_hook"):
        adapter.HuggingFaceGenerationAdapter(model).generate(torch.tensor([[1, 5]]))


def _rows_cte(model, ids, seq_ids):
    """Context encoding of one prompt per row, right-padded, positions 0 on the pads."""
    width = max(len(p) for p in ids)
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in ids])
    tokens = torch.tensor([p + [0] * (width - len(p)) for p in ids])
    positions = torch.tensor([list(range(len(p))) + [0] * (width - len(p)) for p in ids])
    return model(input_ids=tokens, attention_mask=mask, position_ids=positions, seq_ids=seq_ids)


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_continuous_batching_needs_a_context_encoding_of_one_seq_id(nxdi, ckpt, tmp_path):
    with pytest.raises(AssertionError, match="only supports single seq_id"):
        _app(nxdi, ckpt, tmp_path, batch_size=2, is_continuous_batching=True)  # ctx batch 2


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_one_rows_context_encoding_rewrites_the_others_without_continuous_batching(
    nxdi, ckpt, tmp_path
):
    plain = _app(nxdi, ckpt, tmp_path / "plain", batch_size=3)
    _rows_cte(plain, [[5, 6], [7, 8, 9], [3]], torch.arange(3))
    assert [plain.kv[1][p] for p in range(3)] == [7, 8, 9]
    _rows_cte(plain, [[11, 12]], torch.tensor([2]))  # one row: padded with copies of it
    assert [plain.kv[b][0] for b in range(3)] == [11, 11, 11]  # rows 0 and 1 are lost
    cb = _app(
        nxdi, ckpt, tmp_path / "cb", batch_size=3, is_continuous_batching=True, ctx_batch_size=1
    )
    _rows_cte(cb, [[5, 6], [7, 8, 9], [3]], torch.arange(3))  # three batch-1 runs in turn
    _rows_cte(cb, [[11, 12]], torch.tensor([2]))
    assert [cb.kv[b][0] for b in range(3)] == [5, 7, 11]  # only slot 2 was written


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_a_batched_call_holding_position_0_in_any_row_is_context_encoding(nxdi, ckpt, tmp_path):
    model = _app(
        nxdi, ckpt, tmp_path, batch_size=2, speculation_length=3, is_continuous_batching=True,
        ctx_batch_size=1,
    )  # fmt: skip
    _rows_cte(model, [[5, 6, 7], [8, 9]], torch.arange(2))
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    at_3 = model(input_ids=ids, attention_mask=mask, position_ids=torch.tensor([[3, 4, 5],
                 [2, 3, 4]]), seq_ids=torch.arange(2))  # fmt: skip
    assert at_3.logits.shape[:2] == (2, 3)  # the speculation graph: k logits per row
    at_0 = model(input_ids=ids, attention_mask=mask, position_ids=torch.tensor([[3, 4, 5],
                 [0, 1, 2]]), seq_ids=torch.arange(2))  # fmt: skip
    assert at_0.logits.shape[:2] == (2, 1)  # routed to context encoding
    assert [model.kv[0][p] for p in range(3)] == [1, 2, 3]  # ... which rewrote row 0 from 0


# --- what changed from 0.8 (cd3abf3) to 0.9 (c63afe0) and the 2.29-v2 sync (ef2731e) -----------

V2 = ("0.9.17334", "ef2731e")
EVERY_SOURCE = [*NXDI_RELEASES, V2]


@pytest.mark.parametrize(
    ("nxdi", "module_version"),
    [("0.8.16251", "0.8.0"), ("0.9.17334", "0.9.0"), (V2, "0.9.0"), ("0.10.18399", "0.10.0")],
    indirect=["nxdi"],
)
def test_the_module_says_its_line_and_only_the_metadata_the_release(nxdi, module_version):
    """_version.py holds major.minor.0; the build number is only in the distribution metadata,
    which is what the backend reads."""
    import importlib.metadata

    from neuronx_distributed_inference._version import __version__

    from neuron_spec.backends.nxdi.backend import import_nxdi

    assert __version__ == module_version
    release = importlib.metadata.version("neuronx-distributed-inference")
    assert release.startswith(module_version[:-1]) and release != module_version
    assert import_nxdi()[1] == release


@pytest.mark.parametrize("nxdi", EVERY_SOURCE, indirect=True)
def test_0_9_neuron_config_writes_the_platform_target_into_the_environment(nxdi, monkeypatch):
    """c63afe0 NeuronConfig._setup_kernel_target_platform: NKI kernels read the target from
    NEURON_PLATFORM_TARGET_OVERRIDE; an unset one is set for the whole process."""
    import os

    from neuronx_distributed_inference import _release

    config, _, _ = nxdi
    config.NeuronConfig(tp_degree=2)
    got = os.environ.get("NEURON_PLATFORM_TARGET_OVERRIDE")
    assert got == ("trn1" if _release.AT_LEAST_0_9 else None)
    monkeypatch.setenv("NEURON_PLATFORM_TARGET_OVERRIDE", "trn2")
    config.NeuronConfig()
    assert os.environ["NEURON_PLATFORM_TARGET_OVERRIDE"] == "trn2"  # a set one is kept


@pytest.mark.parametrize(("nxdi", "trn1", "trn2"), [("0.8.16251", False, False),
                         ("0.9.17334", False, True)], indirect=["nxdi"])  # fmt: skip
def test_the_top_k_kernel_is_on_by_default_except_on_trn1_from_0_9(nxdi, monkeypatch, trn1, trn2):
    config, _, _ = nxdi
    assert config.OnDeviceSamplingConfig(top_k=1).top_k_kernel_enabled is trn1
    monkeypatch.setenv("NEURON_PLATFORM_TARGET_OVERRIDE", "trn2")
    assert config.OnDeviceSamplingConfig(top_k=1).top_k_kernel_enabled is trn2
    assert config.OnDeviceSamplingConfig(top_k_kernel_enabled=False).top_k_kernel_enabled is False


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_0_9_knows_enable_ve_data_parallel(nxdi, caplog):
    from neuronx_distributed_inference import _release

    config, _, _ = nxdi
    with caplog.at_level(logging.WARNING):
        config.NeuronConfig(enable_ve_data_parallel=True)
    assert ("Unexpected keyword arguments" in caplog.text) is not _release.AT_LEAST_0_9


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_compile_takes_disable_fail_fast_from_0_9(nxdi, ckpt, tmp_path):
    from neuronx_distributed_inference import _release

    config, llama, adapter = nxdi
    cfg = llama.LlamaInferenceConfig(
        config.NeuronConfig(seq_len=16, max_context_length=8, torch_dtype="float32"),
        load_config=adapter.load_pretrained_config(str(ckpt)),
        rope_theta=10000.0,
    )
    model = llama.NeuronLlamaForCausalLM(str(ckpt), cfg)
    if _release.AT_LEAST_0_9:
        model.compile(str(tmp_path / "c"), disable_fail_fast=True)
        assert (tmp_path / "c" / "model.pt").is_file()
    else:
        with pytest.raises(TypeError, match="disable_fail_fast"):
            model.compile(str(tmp_path / "c"), disable_fail_fast=True)


@pytest.mark.parametrize("nxdi", EVERY_SOURCE, indirect=True)
def test_forward_takes_the_library_keywords_only_and_the_hook_from_ef2731e(nxdi, ckpt, tmp_path):
    from neuronx_distributed_inference import _release

    model = _app(nxdi, ckpt, tmp_path)
    step = {
        "input_ids": torch.tensor([[1, 5, 9]]),
        "attention_mask": torch.ones((1, 3), dtype=torch.long),
        "position_ids": torch.arange(3).reshape(1, -1),
        "seq_ids": torch.zeros(1, dtype=torch.long),
    }
    with pytest.raises(TypeError, match="unexpected keyword argument 'cache_ids'"):
        model(**step, cache_ids=None)  # no **kwargs in any release
    if _release.ADAPTER_FIXED:
        out = model(**step, tensor_capture_hook=lambda *_: None)
        assert out.captured_tensors is None and out.logits.shape == (1, 1, 96)
    else:
        with pytest.raises(TypeError, match="tensor_capture_hook"):
            model(**step, tensor_capture_hook=None)
        assert not hasattr(model(**step), "captured_tensors")


@pytest.mark.parametrize("nxdi", EVERY_SOURCE, indirect=True)
def test_the_generation_adapter_runs_only_from_ef2731e(nxdi, ckpt, tmp_path):
    """fcb5a86, cd3abf3, c63afe0: prepare_inputs_for_generation reads a name defined nowhere;
    ef2731e reads it from the kwargs and forward() takes it."""
    from neuronx_distributed_inference import _release

    model = _app(nxdi, ckpt, tmp_path)
    _, _, adapter = nxdi
    generation = adapter.HuggingFaceGenerationAdapter(model)
    if _release.ADAPTER_FIXED:
        out = generation.generate(torch.tensor([[1, 5]]))
        assert out.logits.shape == (1, 1, 96) and out.captured_tensors is None
    else:
        with pytest.raises(NameError, match="tensor_capture_hook"):
            generation.generate(torch.tensor([[1, 5]]))


@pytest.mark.parametrize("release", NXDI_RELEASES)
def test_0_9_imports_the_nki_packages_with_the_llama_model(monkeypatch, tmp_path, release):
    """c63afe0 models/llama/modeling_llama.py: `import nki.language as nl`, `from nkilib...`
    at import time; an environment without them cannot import the model at all."""
    import importlib
    import sys

    use_nxdi_double(monkeypatch, tmp_path / "meta", release)
    monkeypatch.setitem(sys.modules, "nkilib", None)
    name = "neuronx_distributed_inference.models.llama.modeling_llama"
    if release.startswith("0.9"):
        with pytest.raises(ImportError, match="nkilib"):
            importlib.import_module(name)
    else:
        assert importlib.import_module(name).NeuronLlamaForCausalLM
