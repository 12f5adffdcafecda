"""Shared helpers for tests of the Neuron backend: a tiny Llama checkpoint with its own
tokenizer (built here, no download), and the transformers_neuronx test double."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

DOUBLE = Path(__file__).parent / "tnx_double"
WORDS = [f"w{i}" for i in range(93)]


def make_checkpoint(
    directory: Path,
    seed: int = 0,
    noise: float = 0.0,
    base: Path | None = None,
    bin_format: bool = False,
) -> Path:
    """A 2-layer Llama with a word-level tokenizer over 96 ids, saved to directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if base is not None:
        model.load_state_dict(LlamaForCausalLM.from_pretrained(base).state_dict())
    if noise:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise)
    model.save_pretrained(directory)
    if bin_format:
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    fast.save_pretrained(directory)
    return directory


def dist_info(root: Path, version: str, name: str = "transformers-neuronx") -> Path:
    """The distribution metadata a pip-installed package has: for transformers-neuronx the
    only place its full version is written (the module's __version__ says '0.10.x' for 0.11)."""
    meta = root / f"{name.replace('-', '_')}-{version}.dist-info"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def use_double(monkeypatch, version: str, tmp_root: Path | None = None) -> None:
    """Put the double on sys.path at `version`, freshly imported, with a clean runtime."""
    import tempfile

    monkeypatch.setenv("TNX_DOUBLE_VERSION", version)
    monkeypatch.syspath_prepend(str(DOUBLE))
    meta_root = dist_info(tmp_root or Path(tempfile.mkdtemp(prefix="tnx-meta-")), version)
    monkeypatch.syspath_prepend(str(meta_root))
    for name in list(sys.modules):
        if name == "transformers_neuronx" or name.startswith("transformers_neuronx."):
            monkeypatch.delitem(sys.modules, name)
    import transformers_neuronx._runtime as runtime

    runtime.reset()


def reset_cores() -> None:
    """A new process, as far as the double's NeuronCores are concerned."""
    import transformers_neuronx._runtime as runtime

    runtime.reset()


NXDI_DOUBLE = Path(__file__).parent / "nxdi_double"
NXDI_RELEASE = "0.8.16251"  # Neuron SDK 2.28, source commit cd3abf3
# The releases the double plays with public source: 0.8 (cd3abf3) and 0.9 (c63afe0)
NXDI_RELEASES = ("0.8.16251", "0.9.17334")


def use_nxdi_double(
    monkeypatch, tmp_root: Path, release: str = NXDI_RELEASE, source: str | None = None
) -> None:
    """Put the NxD Inference double on sys.path at `release` (its distribution metadata says
    so; `source` picks another commit's behaviour, e.g. ef2731e), freshly imported, its events
    cleared. The environment variable the 0.9 NeuronConfig writes is restored afterwards."""
    monkeypatch.setenv("NXDI_DOUBLE_RELEASE", release)
    if source:
        monkeypatch.setenv("NXDI_DOUBLE_SOURCE", source)
    else:
        monkeypatch.delenv("NXDI_DOUBLE_SOURCE", raising=False)
    monkeypatch.setenv("NEURON_PLATFORM_TARGET_OVERRIDE", "")  # undone at teardown
    monkeypatch.delenv("NEURON_PLATFORM_TARGET_OVERRIDE")
    monkeypatch.syspath_prepend(str(NXDI_DOUBLE))
    meta = dist_info(tmp_root, release, "neuronx-distributed-inference")
    monkeypatch.syspath_prepend(str(meta))
    for name in list(sys.modules):
        if name.split(".")[0] in ("neuronx_distributed_inference", "nki", "nkilib"):
            monkeypatch.delitem(sys.modules, name)
    import neuronx_distributed_inference._runtime as runtime

    runtime.reset()


def drive_continuous_batch(batch, pending, alone) -> bool:
    """Admit `pending` (prompt, (row, finish)) pairs into `batch` as slots free up, a new one
    only every third step while others decode (as `serve` admits arrivals), and check each
    finished row against `alone(prompt)`. True when some row joined a running batch."""
    done, joined_late, steps = {}, False, 0
    pending = list(pending)
    while pending or batch.busy:
        while pending and batch.free_slots() and (steps % 3 == 0 or not batch.busy):
            prompt, (row, finish) = pending.pop(0)
            joined_late |= batch.busy
            batch.admit(row)
            done[id(row)] = (prompt, finish)
        for row in batch.step():
            prompt, finish = done.pop(id(row))
            assert finish().token_ids[0] == alone(prompt), prompt
        steps += 1
        assert steps < 200
    assert not done
    return joined_late


@pytest.fixture(autouse=True)
def clean_neuron_env(monkeypatch):
    """Autouse in every module that imports it: the Neuron backends export the planned layout
    for the runtime (NEURON_*), undone after each test, and the library doubles are unloaded
    (the next test picks its own release)."""
    for name in list(os.environ):
        if name.startswith("NEURON_"):
            monkeypatch.delenv(name)
    yield
    for name in list(os.environ):
        if name.startswith("NEURON_"):
            del os.environ[name]
    for name in list(sys.modules):
        if name.startswith(("transformers_neuronx", "neuronx_distributed_inference")):
            del sys.modules[name]
