"""Reference backend: PyTorch + Hugging Face transformers, on CPU or CUDA.

Loads draft and target from a checkpoint directory (safetensors or .bin) or a .gguf file and
runs them through neuron-spec's speculative engine with real KV caches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config.spec import ConfigFile
from ..engine.acceptors import Acceptor
from ..engine.loop import Decode, EngineResult
from ..errors import ConfigError, ConfigProblem
from ..sources.hf import eos_ids, load_model, pad_id, require_torch
from .base import Generator, Progress, RunnerPair
from .cpu_attention import use_grouped_attention
from .cpu_linear import ENV as CPU_LINEAR_ENV
from .cpu_linear import one_row_plain, pack_linears, wanted
from .cpu_threads import THREADS_ENV, ThreadChooser, usable_cores


def pick_device() -> str:
    """NEURON_SPEC_DEVICE if set (cpu, cuda, cuda:1), else CUDA when present, else CPU."""
    forced = os.environ.get("NEURON_SPEC_DEVICE")
    if forced:
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"


def _crop(cache: Any, length: int) -> None:
    """Keep the first `length` cache columns (works with transformers 4.x and 5.x)."""
    current = cache.get_seq_length()
    if length < current:
        cache.crop(length - current)  # negative: remove that many from the end


COMPACT_MIN_COLUMNS = 64
SCORE_CHUNK = 256  # prompt positions per pass when scoring: their logits are (256, V) floats


def _holds_rows(layer: Any) -> bool:
    """Whether a cache layer holds (rows, heads, columns, dim) tensors yet: transformers
    starts a layer empty (None, or a 1-D empty tensor) until its first update."""
    keys = getattr(layer, "keys", None)
    return keys is not None and keys.dim() == 4


def _new_cache() -> Any:
    """A cache that grows in place (`kv_cache`), or transformers' own where its cache layers
    are not made as `kv_cache` expects (transformers 4.x)."""
    try:
        from .kv_cache import growing_cache
    except ImportError:
        from transformers import DynamicCache

        return DynamicCache()
    return growing_cache()


class HFRunner:
    """One transformers causal LM with a KV cache (`kv_cache`) and a per-row live-column mask."""

    def __init__(self, model: Any, device: str | None = None, threads: ThreadChooser | None = None):
        self.model = model
        self.threads = threads  # on the CPU: how many threads each pass uses
        # transformers 5.x names the cache argument and output `cache`; 4.x `past_key_values`
        import inspect

        params = inspect.signature(model.forward).parameters
        self.cache_name = "cache" if "cache" in params else "past_key_values"
        self.device = device or str(next(model.parameters()).device)
        self.vocab_size = int(model.config.vocab_size)
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.bool)
        self.n_live = torch.zeros(0, dtype=torch.long)

    def reset(self, batch: int) -> None:
        self.cache = _new_cache()
        self.mask = torch.zeros((batch, 0), dtype=torch.bool)
        self.n_live = torch.zeros(batch, dtype=torch.long)

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def feed(self, tokens: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
        positions = (self.n_live.unsqueeze(1) + mask.long().cumsum(dim=1) - 1).clamp(min=0)
        full_mask = torch.cat([self.mask, mask], dim=1)

        def forward() -> Any:
            return self.model(
                input_ids=tokens.to(self.device),
                attention_mask=full_mask.long().to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                logits_to_keep=keep,
                **{self.cache_name: self.cache},
            )

        if self.threads is None:
            out = forward()
        else:
            out = self.threads.run(id(self.model), tokens.numel(), forward)
        self.cache = getattr(out, self.cache_name)
        self.mask = full_mask
        self.n_live = self.n_live + mask.long().sum(dim=1)
        logits: torch.Tensor = out.logits[:, -keep:].float().cpu()  # (B, keep, V)
        return logits

    def invalidate_from(self, start: torch.Tensor) -> None:
        columns = torch.arange(self.length).unsqueeze(0)  # (1, T)
        self.mask = self.mask & (columns < start.unsqueeze(1))
        keep = min(self.length, int(start.max()))
        _crop(self.cache, keep)
        self.mask = self.mask[:, :keep]
        self.n_live = self.mask.long().sum(dim=1)
        self._compact()

    def arrange(self, index: list[int | None]) -> None:
        """Make row i the current row index[i], or a new empty row where it is None: rows
        that left a continuous batch are dropped, new ones start with no live column."""
        src = torch.tensor([len(self.mask) if i is None else i for i in index], dtype=torch.long)
        empty = torch.zeros((1, self.length), dtype=torch.bool)
        self.mask = torch.cat([self.mask, empty])[src]
        self.n_live = self.mask.long().sum(dim=1)
        for layer in self.cache.layers:
            if _holds_rows(layer):  # also when no column is left: the rows still count
                where = src.to(layer.keys.device)
                for name in ("keys", "values"):
                    held = getattr(layer, name)
                    blank = held.new_zeros((1, *held.shape[1:]))
                    setattr(layer, name, torch.cat([held, blank]).index_select(0, where))
        # Membership changed (rare, beside steps): drop every column no row uses, so a row
        # that starts alone sees exactly the cache it would see in a fresh batch.
        self._compact(always=True)

    def _compact(self, always: bool = False) -> None:
        """Drop columns that are dead in every row (rows that left a continuous batch leave
        them anywhere, not only at the end) once they are a large share of the cache, so
        a long-running batch's cache stays as long as its longest live row."""
        used = self.mask.any(dim=0)
        dead = int(self.length - int(used.sum()))
        if dead == 0 or (not always and dead < max(COMPACT_MIN_COLUMNS, self.length // 2)):
            return
        index = used.nonzero().flatten()
        for layer in self.cache.layers:
            if _holds_rows(layer):
                where = index.to(layer.keys.device)
                layer.keys = layer.keys.index_select(-2, where)
                layer.values = layer.values.index_select(-2, where)
        self.mask = self.mask[:, index]


class ReferenceBackend:
    """The pair as transformers models on the CPU or a GPU: the engine drives their caches
    directly, and a continuous batch of any size uses the same two runners."""

    name = "reference"

    def __init__(self, target: HFRunner, draft: HFRunner | None, device: str):
        self.target, self.draft, self.device = target, draft, device
        self.width_cost = 0.5 if device == "cpu" else 0.05
        self.events: list[tuple[str, str]] = []  # checkpoints load as they are: nothing compiles

    def decode(
        self, prompts: Sequence[Sequence[int]], acceptor: Acceptor, how: Decode
    ) -> EngineResult:
        return how.run(self.target, self.draft, acceptor, prompts)

    def verify_width(self, gamma: int) -> int:
        return gamma + 1

    def batch_runners(self, slots: int) -> RunnerPair | None:
        return self.target, self.draft

    def prompt_logits(self, ids: Sequence[int]) -> Iterator[torch.Tensor]:
        """The target's logits after each prompt token but the last ((n, V) per chunk of at
        most SCORE_CHUNK positions, in order), through a cache of its own: the batch's rows
        are left as they are."""
        runner = HFRunner(self.target.model, self.device, self.target.threads)
        runner.reset(1)
        with torch.inference_mode():
            for at in range(0, len(ids) - 1, SCORE_CHUNK):
                part = torch.tensor([list(ids[at : min(at + SCORE_CHUNK, len(ids) - 1)])])
                live = torch.ones_like(part, dtype=torch.bool)
                yield runner.feed(part, live, part.shape[1])[0]

    def warnings(self) -> list[str]:
        return []

    def device_memory_peak(self) -> int | None:
        if not self.device.startswith("cuda"):
            return None  # the models are in host memory
        return int(torch.cuda.max_memory_allocated(self.device))


def load(cfg: ConfigFile, progress: Progress | None = None) -> Generator:
    """Load target and draft with transformers; return a Generator on HF runners."""
    require_torch()
    spec = cfg.spec
    say = progress or (lambda _msg: None)
    device = pick_device()
    threads, pack = None, False
    if device == "cpu":
        pack = wanted(os.environ)  # a mistyped value stops here, before anything loads
        threads = ThreadChooser.for_machine(os.environ, usable_cores(), torch.set_num_threads)
    if threads is not None:
        torch.set_num_threads(threads.counts[0])
        counts = " or ".join(map(str, threads.counts))
        say(f"CPU threads: {counts}, measured per pass (set {THREADS_ENV} to fix)")
    loaded = {}
    for role, m in spec.models():  # the draft only when proposals come from it
        say(f"loading {role} {m.model} ({m.amp}, {device})")
        path_field = f"{role}.model"
        loaded[role] = load_model(m.model, m.amp, cfg.base_dir, m.tokenizer, device, path_field)
    target, draft = loaded["target"], loaded.get("draft")
    if device == "cpu":
        for role, model in loaded.items():
            if use_grouped_attention(model.model):
                say(f"{role}: grouped-query attention reads shared key/value heads in place")
    if device == "cpu" and pack:
        for role, model in loaded.items():
            if pack_linears(model.model, os.environ):
                one = ", one-row products on PyTorch's (faster here)"
                one = one if one_row_plain(model.model) else ""
                say(f"{role}: linear layers on oneDNN{one} (set {CPU_LINEAR_ENV} to change)")
    t_vocab = target.model.config.vocab_size
    d_vocab = t_vocab if draft is None else draft.model.config.vocab_size
    if t_vocab != d_vocab:
        raise ConfigError(
            [
                ConfigProblem(
                    "draft.model",
                    f"the draft's vocabulary ({d_vocab}) differs from the target's ({t_vocab}).",
                    "use a draft that shares the target's tokenizer.",
                )
            ]
        )
    tok = target.tokenizer
    where = Path(target.path)
    eos = eos_ids(
        spec.generation.eos_token_id, where if where.is_dir() else None, tok, target.model
    )
    draft_runner = None if draft is None else HFRunner(draft.model, device, threads)
    backend = ReferenceBackend(HFRunner(target.model, device, threads), draft_runner, device)
    return Generator(cfg, backend, tok, eos, pad_id(tok, eos))
