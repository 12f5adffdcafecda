"""transformers-neuronx backend: the only module that imports transformers_neuronx.

It executes the load plan (loadplan.py) and wraps SpeculativeGenerator.sample so that users get
the same `generate` output and metrics as on the reference backend:
- the prompt is removed from the output (sample returns it);
- sequence_length is prompt + max_new_tokens;
- v2's output is padded to sequence_length with pad_token_id: the real length is taken from
  the first EOS, never inferred from padding;
- EOS lists (Llama-3.1) are reduced to one id for the library and checked in full here;
- drafted/accepted counts come from the acceptor's own records, since the library counts
  accepted tokens with count_nonzero and so miscounts a real token id 0.
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..acceptors import SampledDraftProvider
from ..artifacts import ArtifactCache
from ..engine import EngineResult, GenerationCancelled, StepRecord
from ..errors import BackendUnavailableError, GenerationError, UsageError
from ..loadplan import LoadPlan, ModelLoad, api_generation, artifact_root, build_load_plan

if TYPE_CHECKING:
    from ..config import ConfigFile
    from ..generate import Generator
    from . import Progress

INSTALL_HINT = (
    "transformers-neuronx is not installed in this Python environment. It is not on PyPI (the "
    "PyPI name is a placeholder); it ships with the AWS Deep Learning AMI Neuron (SDK 2.18 to "
    "2.25) in /opt/aws_neuronx_venv_transformers_neuronx, or comes from Neuron's own package "
    "index (pip install transformers-neuronx --extra-index-url "
    "https://pip.repos.neuron.amazonaws.com). scripts/launch.sh uses the DLAMI environment "
    "when it exists. See docs/neuron.md."
)


def import_tnx() -> tuple[Any, str]:
    """Import transformers_neuronx lazily; return (module, version)."""
    try:
        tnx = importlib.import_module("transformers_neuronx")
    except ImportError as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} ({exc})") from None
    from ..loadplan import TNX_DIST, installed_version

    version = installed_version(TNX_DIST) or str(getattr(tnx, "__version__", "") or "")
    if not version:
        raise BackendUnavailableError("cannot tell which transformers-neuronx version is installed")
    return tnx, version


class _Streamer:
    """Receives tokens from SpeculativeGenerator.sample as they are accepted."""

    def __init__(self, on_tokens: Any, acceptor: Any, window: int, api: str, cancelled: Any = None):
        self.on_tokens = on_tokens
        self.cancelled = cancelled
        self.acceptor = acceptor
        self.window = window
        self.api = api
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        import torch

        if self.cancelled is not None and self.cancelled():
            raise GenerationCancelled()  # propagates out of sample(): the request is gone
        tokens = torch.as_tensor(value).reshape(-1).tolist()
        self.times.append(time.perf_counter())
        if self.api == "v2" and len(tokens) == self.window and self.acceptor.calls:
            tokens = tokens[: self.acceptor.calls[-1][1] + 1]  # v2 streams zero-padded blocks
        if self.on_tokens is not None and tokens:
            self.on_tokens(0, [int(t) for t in tokens])

    def end(self) -> None:
        pass


class NeuronxPair:
    """Draft and target loaded on NeuronCores, ready to generate."""

    def __init__(self, cfg: ConfigFile, progress: Progress | None = None):
        self.cfg = cfg
        self.say = progress or (lambda _m: None)
        self.tnx, self.version = import_tnx()
        self.api = api_generation(self.version)
        self.plan: LoadPlan = build_load_plan(cfg, tnx_version=self.version)
        spec = cfg.spec
        self.cache = ArtifactCache(artifact_root(cfg), spec.compile.s3_mirror)
        self.events: list[tuple[str, str]] = []  # (role, "loaded" | "compiled")
        for name, value in self.plan.env.items():
            os.environ.setdefault(name, value)  # the runtime reads them at load; never override
        self.draft = self._load(self.plan.draft)
        self.target = self._load(self.plan.target)

    # --- loading ---------------------------------------------------------------------------

    def _prepare(self, ml: ModelLoad) -> None:
        """Convert a .bin checkpoint once into the split format (atomically)."""
        if ml.prepare in ("catalog", "missing"):
            raise UsageError(
                f"{ml.role}.model: {ml.checkpoint} cannot be loaded; "
                "run `neuron-spec validate` for details."
            )
        if ml.prepare != "split" or Path(ml.checkpoint).is_dir():
            return
        self.say(f"converting {ml.model} to the split format (once)")
        from transformers import AutoModelForCausalLM

        module = importlib.import_module("transformers_neuronx.module")
        final = Path(ml.checkpoint)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
        try:
            hf = AutoModelForCausalLM.from_pretrained(ml.model)
            module.save_pretrained_split(hf, str(tmp))
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _build(self, ml: ModelLoad) -> Any:
        model = self.tnx.LlamaForSampling.from_pretrained(ml.checkpoint, **ml.kwargs)
        if ml.window is not None:
            if self.api == "v1":
                model.enable_speculative_decoder(ml.window)
            else:
                model.enable_speculative_decoder(ml.window, batch_sizes=ml.batch_sizes)
        return model

    def _load(self, ml: ModelLoad) -> Any:
        self._prepare(ml)
        description = {"role": ml.role, "model": ml.model, **ml.key_material}
        hit = self.cache.lookup(ml.cache_key)
        if hit is not None:
            self.say(f"{ml.role}: loading compiled artifacts from {hit}")
            model = self._build(ml)
            model.load(str(hit))
            try:
                model.to_neuron()
                self.events.append((ml.role, "loaded"))
                return model
            except FileNotFoundError as exc:  # a graph whose hash has no NEFF: stale entry
                self.cache.warnings.append(
                    f"{ml.role}: cached artifacts do not match ({exc}); compiling again"
                )
                self.cache.discard(ml.cache_key)
        self.say(f"{ml.role}: compiling with neuronx-cc (tens of minutes for a 70B model)")
        model = self._build(ml)
        model.to_neuron()
        self.cache.store(ml.cache_key, lambda d: model.save(str(d)), description)
        self.events.append((ml.role, "compiled"))
        return model

    # --- generation ------------------------------------------------------------------------

    def decode(
        self,
        prompts: Sequence[Sequence[int]],
        acceptor: Any,
        *,
        draft_tokens: int,
        max_new_tokens: int,
        eos_token_ids: Sequence[int] = (),
        pad_token_id: int = 0,
        on_tokens: Any = None,
        cancelled: Any = None,
    ) -> EngineResult:
        window = self.plan.window
        if draft_tokens not in (0, window - 1):
            raise UsageError(
                f"the target was compiled for draft_tokens={window - 1} (window k={window}); "
                f"draft_tokens={draft_tokens} needs its own compiled graph: set "
                "speculation.draft_tokens in the config and load again."
            )
        start = time.perf_counter()
        rows: list[list[int]] = []
        steps: list[StepRecord] = []
        firsts: list[float | None] = []
        by_eos: list[bool] = []
        for row, prompt in enumerate(prompts):
            callback = None if on_tokens is None else (lambda _r, t, row=row: on_tokens(row, t))
            tokens, row_steps, first = self._one(
                prompt,
                acceptor,
                draft_tokens,
                max_new_tokens,
                eos_token_ids,
                pad_token_id,
                callback,
                cancelled,
            )
            eos_hit = bool(tokens) and tokens[-1] in set(eos_token_ids)
            rows.append(tokens)
            by_eos.append(eos_hit)
            firsts.append(first)
            steps.extend(row_steps)
        result = EngineResult(rows, by_eos, steps, start, firsts)
        result.end = time.perf_counter()
        return result

    def _one(
        self,
        prompt: Sequence[int],
        acceptor: Any,
        draft_tokens: int,
        max_new: int,
        eos_ids: Sequence[int],
        pad: int,
        on_tokens: Any,
        cancelled: Any = None,
    ) -> tuple[list[int], list[StepRecord], float | None]:
        import torch

        ids = torch.tensor([list(prompt)], dtype=torch.long)
        seq_len = len(prompt) + max_new
        eos = list(eos_ids)
        t0 = time.perf_counter()
        try:
            if draft_tokens == 0:
                out = self._target_only(ids, seq_len, acceptor, eos)
                streamer = None
            else:
                streamer = _Streamer(on_tokens, acceptor, self.plan.window, self.api, cancelled)
                out = self._speculate(ids, seq_len, acceptor, eos, pad, streamer)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise GenerationError(f"transformers-neuronx generation failed: {exc}") from exc
        new = [int(t) for t in torch.as_tensor(out).reshape(-1).tolist()[len(prompt) :]]
        cut = next((i for i, t in enumerate(new) if t in set(eos)), None)
        new = new[: cut + 1] if cut is not None else new[:max_new]
        elapsed = time.perf_counter() - t0
        calls = list(acceptor.calls) if draft_tokens else []
        acceptor.calls.clear()
        # The library emits some tokens outside the acceptor: the first one (the target's
        # context encoding) and the plain decoding it finishes with near sequence_length.
        spec_steps = [(d, a) for d, a in calls]
        extra = max(0, len(new) - sum(a + 1 for _, a in spec_steps))
        plan = [(0, 0)] * min(1, extra) + spec_steps + [(0, 0)] * max(0, extra - 1)
        share = elapsed / max(1, len(plan))
        steps, left = [], len(new)
        for drafted, accepted in plan:  # emitted counts capped at what was kept (EOS, budget)
            emitted = min(accepted + 1, left)
            left -= emitted
            steps.append(StepRecord(share, drafted, [accepted], [emitted]))
        first = streamer.times[0] if streamer and streamer.times else (t0 + share if new else None)
        if draft_tokens == 0 and on_tokens is not None and new:
            on_tokens(0, new)
        return new, steps, first

    def _target_only(self, ids: Any, seq_len: int, acceptor: Any, eos: list[int]) -> Any:
        s = acceptor.sampling
        kwargs: dict[str, Any] = (
            {"top_k": 1}
            if s.temperature == 0
            else {
                "top_k": s.top_k if s.top_k > 0 else 0,
                "top_p": float(s.top_p),
                "temperature": float(s.temperature),
            }
        )
        if eos:
            kwargs["eos_token_override"] = eos[0]
        return self.target.sample(ids, sequence_length=seq_len, **kwargs)

    def _speculate(
        self, ids: Any, seq_len: int, acceptor: Any, eos: list[int], pad: int, streamer: _Streamer
    ) -> Any:
        import torch

        speculation = importlib.import_module("transformers_neuronx.speculation")
        draft: Any = self.draft
        if getattr(acceptor, "samples_draft", False) and acceptor.sampling.temperature > 0:
            draft = SampledDraftProvider(self.draft, acceptor)
        generator = speculation.SpeculativeGenerator(draft, self.target, self.plan.window, acceptor)
        kwargs: dict[str, Any] = {"sequence_length": seq_len, "streamer": streamer}
        if eos:
            kwargs["eos_token_id"] = eos[0]  # the library takes one id; the rest are checked here
        if self.api == "v2":
            kwargs["pad_token_id"] = pad
            kwargs["attention_mask"] = torch.ones_like(ids)
        return generator.sample(ids, **kwargs)


def load_neuronx_generator(cfg: ConfigFile, progress: Progress | None = None) -> Generator:
    from ..generate import Generator
    from .reference import load_tokenizer

    pair = NeuronxPair(cfg, progress)
    tok_dir = pair.plan.target.tokenizer or pair.plan.target.checkpoint
    tok = load_tokenizer(tok_dir)
    spec = cfg.spec
    eos_override = spec.generation.eos_token_id
    if eos_override is not None:
        eos = list(eos_override) if isinstance(eos_override, list) else [eos_override]
    else:
        value = tok.eos_token_id
        eos = [int(value)] if value is not None else []
        eos = _config_eos(Path(pair.plan.target.checkpoint)) or eos
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    gen = Generator(cfg, None, None, tok, eos, int(pad), device="neuron", decoder=pair.decode)
    gen.backend = pair
    return gen


def _config_eos(checkpoint: Path) -> list[int]:
    import json

    for name in ("generation_config.json", "config.json"):
        f = checkpoint / name
        if f.is_file():
            try:
                value = json.loads(f.read_text(encoding="utf-8")).get("eos_token_id")
            except (OSError, ValueError):
                continue
            if value is not None:
                return [int(v) for v in value] if isinstance(value, list) else [int(value)]
    return []
