"""The reference backend on the CPU: oneDNN-packed linear layers and the measured thread count."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from neuron_spec.backends.cpu_linear import PackedLinear, pack_linears
from neuron_spec.backends.cpu_threads import FIRST_GAP, ThreadChooser, cpu_threads, size_class
from neuron_spec.backends.reference import HFRunner
from neuron_spec.engine.acceptors import GreedyAcceptor
from neuron_spec.engine.loop import speculative_generate
from neuron_spec.errors import UsageError

pytestmark = pytest.mark.reference


def small_llama(dtype: torch.dtype = torch.float32, bias: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        attention_bias=bias, mlp_bias=bias,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).to(dtype).eval()


def _onednn_here() -> bool:
    try:
        PackedLinear(torch.nn.Linear(8, 8))
    except RuntimeError:
        return False
    return True


def test_cpu_threads_leave_room_for_a_busy_machine():
    assert cpu_threads({}, 2) == 1 and cpu_threads({}, 1) == 1 and cpu_threads({}, 16) == 8
    assert cpu_threads({"NEURON_SPEC_THREADS": "3"}, 2) == 3
    assert cpu_threads({"OMP_NUM_THREADS": "2"}, 16) is None  # the user's choice stands
    with pytest.raises(UsageError, match="NEURON_SPEC_THREADS"):
        cpu_threads({"NEURON_SPEC_THREADS": "many"}, 2)


def test_the_chooser_offers_half_and_all_cores_unless_the_user_fixed_a_count():
    set_to: list[int] = []
    assert ThreadChooser.for_machine({}, 8, set_to.append).counts == (4, 8)  # type: ignore[union-attr]
    assert ThreadChooser.for_machine({}, 1, set_to.append).counts == (1,)  # type: ignore[union-attr]
    fixed = ThreadChooser.for_machine({"NEURON_SPEC_THREADS": "2"}, 8, set_to.append)
    assert fixed is not None and fixed.counts == (2,)
    assert ThreadChooser.for_machine({"OMP_NUM_THREADS": "3"}, 8, set_to.append) is None


class Machine:
    """A fake machine: a pass's seconds depend on the thread count and on how busy it is."""

    def __init__(self) -> None:
        self.now, self.threads, self.busy = 0.0, 1, False
        self.used: list[int] = []

    def set_threads(self, n: int) -> None:
        self.threads = n

    def clock(self) -> float:
        return self.now

    def chooser(self) -> ThreadChooser:
        return ThreadChooser((1, 2), self.set_threads, self.clock)

    def pass_(self) -> None:
        quiet = {1: 0.10, 2: 0.06}  # two threads win when the machine is quiet
        busy = {1: 0.11, 2: 0.30}  # and collapse when another process takes a core
        self.now += (busy if self.busy else quiet)[self.threads]
        self.used.append(self.threads)


def test_the_chooser_uses_the_faster_count_and_follows_the_machine_when_it_turns_busy():
    m = Machine()
    chooser = m.chooser()
    for _ in range(40):
        chooser.run(1, 8, m.pass_)
    assert m.used[:2] == [1, 2]  # each count measured once
    assert m.used[2:].count(2) >= 36  # then two threads, save the re-tries of one
    m.busy = True
    m.used.clear()
    for _ in range(200):
        chooser.run(1, 8, m.pass_)
    # the collapse shows at once in the average; later re-tries of two threads back off
    assert m.used[:3].count(1) >= 2
    assert m.used[20:].count(2) <= 5
    m.busy, m.used = False, []
    for _ in range(600):
        chooser.run(1, 8, m.pass_)
    assert m.used[-100:].count(2) >= 95  # quiet again: noticed at a re-try


def test_the_chooser_keeps_each_pass_size_and_model_apart():
    m = Machine()
    chooser = m.chooser()
    chooser.run(1, 1, m.pass_)
    chooser.run(1, 16, m.pass_)
    chooser.run(2, 1, m.pass_)
    assert m.used == [1, 1, 1]  # three new (model, size) pairs, each tried at one thread first
    assert size_class(1) != size_class(2) != size_class(4)
    assert size_class(3) == size_class(4) and size_class(5) == size_class(8)
    assert len(chooser.records) == 3 and all(r.gap == FIRST_GAP for r in chooser.records.values())


def test_a_packed_linear_computes_what_torch_does():
    linear = torch.nn.Linear(64, 96)
    x = torch.randn(2, 5, 64)
    try:
        packed = PackedLinear(linear)
    except RuntimeError as exc:  # the path is PyTorch's; pack_linears declines it then
        pytest.skip(f"this PyTorch has no oneDNN linear path: {exc}")
    with torch.inference_mode():
        assert torch.allclose(packed(x), linear(x), atol=1e-5)
        assert packed(x).shape == (2, 5, 96)


def test_packing_keeps_greedy_decoding_and_declines_what_it_cannot_do():
    model = small_llama()
    plain = small_llama()
    count = pack_linears(model, {})
    if count == 0:
        pytest.skip("this PyTorch has no oneDNN linear path")
    assert count == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    prompts = [[1, 5, 9, 3], [2, 7, 7, 7, 7]]

    def greedy(m: LlamaForCausalLM) -> list[list[int]]:
        return speculative_generate(
            HFRunner(m), None, GreedyAcceptor(), prompts, draft_tokens=0, max_new_tokens=12
        ).tokens

    assert greedy(model) == greedy(plain)
    assert pack_linears(small_llama(), {"NEURON_SPEC_CPU_LINEAR": "default"}) == 0
    assert pack_linears(small_llama(torch.float64), {}) == 0  # f32 only


def test_loading_on_the_cpu_packs_f32_models_and_says_how_threads_are_chosen(tmp_path, monkeypatch):
    from neuron_spec.backends import reference
    from neuron_spec.backends.base import Generator
    from neuron_spec.backends.cpu_linear import PackedLinear as Packed
    from neuron_spec.config.spec import load_config
    from tests.tiny_model import tiny_pair_yaml

    monkeypatch.setenv("NEURON_SPEC_DEVICE", "cpu")
    for name in ("NEURON_SPEC_THREADS", "OMP_NUM_THREADS", "NEURON_SPEC_CPU_LINEAR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(reference, "usable_cores", lambda: 4)
    monkeypatch.setattr(torch, "set_num_threads", lambda _n: None)  # the suite's own stays
    said: list[str] = []
    gen: Generator = reference.load(load_config(tiny_pair_yaml(tmp_path)), said.append)
    assert "CPU threads: 2 or 4, measured per pass (set NEURON_SPEC_THREADS to fix)" in said
    backend = gen.backend
    assert isinstance(backend, reference.ReferenceBackend) and backend.draft is not None
    assert backend.target.threads is backend.draft.threads is not None
    if not _onednn_here():
        pytest.skip("this PyTorch has no oneDNN linear path")
    assert any(isinstance(m, Packed) for m in backend.target.model.modules())
    assert any(
        line.startswith("target: linear layers on oneDNN")
        and line.endswith("(set NEURON_SPEC_CPU_LINEAR to change)")
        for line in said
    ), said
    out = gen.generate("Hello", max_new_tokens=6, temperature=0.0)
    assert len(out.token_ids[0]) == 6 or out.finished_by_eos[0]
    assert backend.target.threads.records  # the passes were measured


def test_the_chooser_sets_the_count_in_each_thread_that_runs_a_pass():
    """PyTorch's count is per OS thread: a serving thread must set its own."""
    import threading

    set_in: list[tuple[int, int]] = []
    chooser = ThreadChooser((1,), lambda n: set_in.append((threading.get_ident(), n)))
    chooser.run(1, 1, lambda: None)
    chooser.run(1, 1, lambda: None)
    worker = threading.Thread(target=lambda: chooser.run(1, 1, lambda: None))
    worker.start()
    worker.join()
    assert [n for _t, n in set_in] == [1, 1] and set_in[0][0] != set_in[1][0]


def test_a_mistyped_linear_choice_is_refused_with_its_name():
    with pytest.raises(UsageError, match=r"NEURON_SPEC_CPU_LINEAR='mkl'.*onednn"):
        pack_linears(small_llama(), {"NEURON_SPEC_CPU_LINEAR": "mkl"})


def test_a_new_pass_size_starts_with_what_its_nearest_size_chose_then_checks_it():
    m = Machine()
    chooser = m.chooser()
    for _ in range(20):
        chooser.run(1, 8, m.pass_)  # two threads learned faster at 5-8 tokens
    m.used.clear()
    for _ in range(3):
        chooser.run(1, 40, m.pass_)  # a prompt-sized pass, never seen
    assert m.used == [2, 1, 2]  # borrowed, the other measured at once, the faster kept
    assert chooser.records[(1, size_class(40))].best() == 2
    m.used.clear()
    chooser.run(2, 40, m.pass_)  # another model borrows nothing: the fewest, then the other
    chooser.run(2, 40, m.pass_)
    assert m.used == [1, 2]


def test_row_counts_round_up_to_a_few_per_doubling():
    from neuron_spec.backends.cpu_linear import padded_rows

    assert [padded_rows(n) for n in (1, 8, 16)] == [1, 8, 16]
    assert [padded_rows(n) for n in (17, 20, 21, 33, 300, 1000)] == [20, 20, 24, 40, 320, 1024]
    assert all(n <= padded_rows(n) <= n * 1.25 for n in range(1, 5000))
    counts = {padded_rows(n) for n in range(1, 4097)}
    assert len(counts) <= 16 + 4 * 8  # every prompt length up to 4096 meets at most these


def test_a_packed_linear_pads_odd_row_counts_and_returns_only_the_real_rows():
    linear = torch.nn.Linear(64, 32)
    try:
        packed = PackedLinear(linear)
    except RuntimeError as exc:
        pytest.skip(f"this PyTorch has no oneDNN linear path: {exc}")
    x = torch.randn(1, 37, 64)  # 37 rows run as 40
    with torch.inference_mode():
        assert packed(x).shape == (1, 37, 32)
        assert torch.allclose(packed(x), linear(x), atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_packing_releases_the_checkpoint_file_and_keeps_the_model_exact(tmp_path, bias):
    """safetensors loads through a file mapping: once packed, nothing of the model may keep
    it open (biases and buffers included), and the model still computes what it did."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    if not _onednn_here():
        pytest.skip("this PyTorch has no oneDNN linear path")
    small_llama(bias=bias).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    plain = None
    ids = torch.tensor([[1, 5, 9, 3] * 6])  # 24 rows: padded to 24, and 1 row at the end
    maps = Path("/proc/self/maps")

    def mapped() -> int:
        return maps.read_text().count(str(tmp_path)) if maps.exists() else 0

    import gc

    del plain
    gc.collect()
    held = mapped()  # `model`'s mapping, when this transformers maps the file
    assert pack_linears(model, {}) == 2 * 7 + 1
    gc.collect()
    assert mapped() == 0, f"{held} mapping(s) of the checkpoint before, still open after"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.inference_mode():
        assert torch.allclose(model(ids).logits, plain(ids).logits, atol=1e-4)
    assert all(not k.endswith("packed") for k in model.state_dict())


def test_a_kept_plain_weight_serves_one_row_products_exactly_and_packed_the_rest():
    linear = torch.nn.Linear(64, 96)
    try:
        packed = PackedLinear(linear, keep_plain=True)
    except RuntimeError as exc:
        pytest.skip(f"this PyTorch has no oneDNN linear path: {exc}")
    one, three = torch.randn(1, 1, 64), torch.randn(1, 3, 64)
    with torch.inference_mode():
        assert torch.equal(packed(one), torch.nn.functional.linear(one, linear.weight, linear.bias))
        assert packed(one).shape == (1, 1, 96)
        assert torch.allclose(packed(three), linear(three), atol=1e-5)
        bare = PackedLinear(linear)  # no plain weight: one row goes through oneDNN too
        assert bare.plain is None and torch.allclose(bare(one), linear(one), atol=1e-5)
    assert set(packed.state_dict()) == set()  # this machine's layouts, not a checkpoint's


def _plain_kept(model: LlamaForCausalLM) -> dict[str, bool]:
    return {n: m.plain is not None for n, m in model.named_modules() if isinstance(m, PackedLinear)}


def test_plain_weights_are_kept_only_where_one_row_measured_faster_and_they_fit(monkeypatch):
    from neuron_spec.backends import cpu_linear

    if not _onednn_here():
        pytest.skip("this PyTorch has no oneDNN linear path")
    monkeypatch.setattr(cpu_linear, "plain_one_row_faster", lambda _layers: True)
    auto = {"NEURON_SPEC_CPU_LINEAR": "auto"}
    model = small_llama()
    assert pack_linears(model, auto) == 2 * 7 + 1 and cpu_linear.one_row_plain(model)
    kept = _plain_kept(model)
    assert kept.pop("lm_head") is False  # the head's one-row products: the same time either way
    # per block: q, k and v stacked as one, o, gate and up stacked as one, down
    assert len(kept) == 2 * 4 and all(kept.values())
    for env in ({}, {"NEURON_SPEC_CPU_LINEAR": "onednn"}, {"NEURON_SPEC_CPU_LINEAR": " ONEDNN "}):
        model = small_llama()
        assert pack_linears(model, env) == 15 and not cpu_linear.one_row_plain(model)
    monkeypatch.setattr(cpu_linear, "_memory_bytes", lambda: 400_000)  # the copies: 295 kB
    model = small_llama()
    assert pack_linears(model, {"NEURON_SPEC_CPU_LINEAR": "auto"}) == 15
    assert not cpu_linear.one_row_plain(model)
    monkeypatch.setattr(cpu_linear, "_memory_bytes", lambda: None)  # unknown: not a reason
    monkeypatch.setattr(cpu_linear, "plain_one_row_faster", lambda _layers: False)
    model = small_llama()
    assert pack_linears(model, auto) == 15 and not cpu_linear.one_row_plain(model)


@pytest.mark.parametrize(
    ("plain_s", "packed_s", "faster"), [(1.0, 2.0, True), (0.95, 1.0, False), (2.0, 1.0, False)]
)
def test_the_one_row_choice_keeps_pytorchs_path_only_when_clearly_faster(
    monkeypatch, plain_s, packed_s, faster
):
    from neuron_spec.backends import cpu_linear

    if not _onednn_here():
        pytest.skip("this PyTorch has no oneDNN linear path")
    timed: list[str] = []

    def seconds(run):
        run()  # each round still runs
        timed.append(run.__name__)
        return plain_s if run.__name__ == "plain_round" else packed_s

    monkeypatch.setattr(cpu_linear, "_seconds", seconds)
    layers = [torch.nn.Linear(64, 96), torch.nn.Linear(96, 64)]
    assert cpu_linear.plain_one_row_faster(layers) is faster
    assert timed[:2] == ["plain_round", "packed_round"]  # taking turns
    assert timed.count("plain_round") == timed.count("packed_round") == cpu_linear.ONE_ROW_ROUNDS


def _fused_pair(bias: bool = False) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    if not _onednn_here():
        pytest.skip("this PyTorch has no oneDNN linear path")
    model, plain = small_llama(bias=bias), small_llama(bias=bias)
    assert pack_linears(model, {}) == 2 * 7 + 1
    return model, plain


@pytest.mark.parametrize("bias", [False, True])
def test_sibling_layers_are_packed_as_one_and_compute_what_they_did(bias):
    from neuron_spec.backends.cpu_linear import FusedPart

    model, plain = _fused_pair(bias)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    parts = [attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj]
    assert all(isinstance(p, FusedPart) for p in parts)
    assert attn.q_proj.group is attn.k_proj.group is attn.v_proj.group
    assert mlp.gate_proj.group is mlp.up_proj.group is not attn.q_proj.group
    assert isinstance(attn.o_proj, PackedLinear) and isinstance(mlp.down_proj, PackedLinear)
    ids = torch.tensor([[1, 5, 9, 3, 7, 7, 2]])
    with torch.inference_mode():
        assert torch.allclose(model(ids).logits, plain(ids).logits, atol=1e-5)
    x = torch.randn(1, 3, 64)  # outside inference mode too, and each part against its layer
    ref = plain.model.layers[0].self_attn
    for part, layer in ((attn.q_proj, ref.q_proj), (attn.k_proj, ref.k_proj)):
        assert part(x).shape == layer(x).shape
        assert torch.allclose(part(x), layer(x), atol=1e-5)
    assert set(model.state_dict()) <= set(plain.state_dict())  # no layout saved


def _counted_attention(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, Any, list[int]]:
    """A packed model's first attention, the plain one's, its q/k/v group, and a list that
    grows by one for each product the group computes."""
    model, plain = _fused_pair()
    attn, ref = model.model.layers[0].self_attn, plain.model.layers[0].self_attn
    group = attn.q_proj.group
    products: list[int] = []
    inner = group.packed.forward
    monkeypatch.setattr(group.packed, "forward", lambda x: products.append(1) or inner(x))
    return attn, ref, group, products


def test_a_part_reuses_its_groups_product_only_for_the_same_tensor_once(monkeypatch):
    attn, ref, group, products = _counted_attention(monkeypatch)
    x, y = torch.randn(1, 2, 64), torch.randn(1, 2, 64)
    with torch.inference_mode():
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        assert len(products) == 1  # one product for the three
        assert group.pending.source is None  # all taken: nothing held
        for got, layer in ((q, ref.q_proj), (k, ref.k_proj), (v, ref.v_proj)):
            assert torch.allclose(got, layer(x), atol=1e-5)
        q = attn.q_proj(x)
        assert torch.allclose(attn.k_proj(y), ref.k_proj(y), atol=1e-5)  # another tensor
        assert torch.allclose(attn.q_proj(x), ref.q_proj(x), atol=1e-5)  # q taken already
        assert len(products) == 4
    z = torch.randn(1, 2, 64)
    attn.q_proj(z)
    z.mul_(2)  # changed in place between the parts: counted outside inference mode
    assert torch.allclose(attn.v_proj(z), ref.v_proj(z), atol=1e-5)


def test_siblings_that_differ_are_packed_one_by_one():
    if not _onednn_here():
        pytest.skip("this PyTorch has no oneDNN linear path")
    from neuron_spec.backends.cpu_linear import FusedPart

    model = small_llama()
    attn = model.model.layers[0].self_attn
    attn.k_proj = torch.nn.Linear(64, 32, bias=True)  # a bias where q and v have none
    model.model.layers[1].mlp.up_proj = torch.nn.Linear(64, 128).double()  # not packed
    assert pack_linears(model, {}) == 2 * 7 + 1 - 1
    assert not isinstance(attn.q_proj, FusedPart) and isinstance(attn.k_proj, PackedLinear)
    mlp = model.model.layers[1].mlp
    assert isinstance(mlp.gate_proj, PackedLinear) and type(mlp.up_proj) is torch.nn.Linear
    assert isinstance(model.model.layers[1].self_attn.q_proj, FusedPart)


def test_each_thread_keeps_its_own_pending_product(monkeypatch):
    import threading

    attn, ref, _group, products = _counted_attention(monkeypatch)
    x, y = torch.randn(1, 2, 64), torch.randn(1, 2, 64)
    got: list[torch.Tensor] = []
    with torch.inference_mode():
        attn.q_proj(x)  # this thread now holds x's k and v

        def other() -> None:
            with torch.inference_mode():
                attn.q_proj(y)
                got.append(attn.k_proj(y))

        worker = threading.Thread(target=other)
        worker.start()
        worker.join()
        assert torch.allclose(got[0], ref.k_proj(y), atol=1e-5)
        assert torch.allclose(attn.k_proj(x), ref.k_proj(x), atol=1e-5)
    assert len(products) == 2  # one per thread: neither thread's product displaced the other's
