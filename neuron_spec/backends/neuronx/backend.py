"""transformers-neuronx backend: with its two loop helpers beside it, the only code that
drives transformers_neuronx.

It executes the load plan (loadplan.py): checkpoints are prepared once (a .bin converted to
the split format, a GGUF file de-quantized to safetensors, an s3:// prefix downloaded), then
each model is built, compiled or loaded from the artifact cache, and put on the NeuronCores.
Generation runs one of two loops over the same compiled pair (`speculation.loop`):
- `library` (library.py): SpeculativeGenerator.sample, made safe from outside;
- `engine` (runner.py): neuron-spec's own engine over forward/speculative_forward; at a
  compiled batch size above 1 (0.12+), batch_runner.py runs the rows of a call together at
  per-row positions.
Both return the engine's result type, so metrics are computed one way for every backend.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...engine.acceptors import Acceptor
from ...engine.loop import Decode, EngineResult, StreamCallback
from ...errors import BackendUnavailableError, UsageError
from ..artifacts import ArtifactCache, ArtifactError
from ..neuron_common import (
    decode_batches,
    decode_rows,
    neuron_generator,
    prepare_checkpoint,
)
from ..neuron_plan import artifact_root
from .batch_runner import NeuronxBatchRunner
from .library import LibraryPair, run_library
from .plan import LoadPlan, ModelLoad, build_load_plan
from .runner import NeuronxRunner

if TYPE_CHECKING:
    from ...config.spec import ConfigFile
    from ..base import Generator, Progress

INSTALL_HINT = (
    "transformers-neuronx is not installed in this Python environment. It is not on PyPI (the "
    "PyPI name is a placeholder). The AWS Deep Learning AMIs (Neuron) up to SDK 2.25 ship it "
    "in a virtual environment under /opt/aws_neuronx_venv_* (2.25: "
    "/opt/aws_neuronx_venv_pytorch_2_7_transformers); later AMIs do not. scripts/launch.sh "
    "finds that environment; `neuron-spec doctor` checks a host. See docs/neuron.md."
)


def import_tnx() -> tuple[Any, str]:
    """Import transformers_neuronx lazily; return (module, version)."""
    try:
        tnx = importlib.import_module("transformers_neuronx")
    except ImportError as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} ({exc})") from None
    from ..neuron_plan import installed_version
    from .plan import TNX_DIST

    version = installed_version(TNX_DIST) or str(getattr(tnx, "__version__", "") or "")
    if not version:
        raise BackendUnavailableError("cannot tell which transformers-neuronx version is installed")
    return tnx, version


def speculation_api(tnx_speculation: Any) -> str:
    """'v2' when SpeculativeGenerator.sample takes pad_token_id (0.12 on), else 'v1'.
    Decided by what the installed library does, never by its version number."""
    params = inspect.signature(tnx_speculation.SpeculativeGenerator.sample).parameters
    return "v2" if "pad_token_id" in params else "v1"


def _takes(fn: Any, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def check_cc_flags(configured: str | None, environ: Mapping[str, str]) -> None:
    """The flags the compiler sees are the ones in the cache key: an exported NEURON_CC_FLAGS
    that differs from compile.cc_flags is refused, never silently preferred."""
    exported = environ.get("NEURON_CC_FLAGS")
    if configured and exported is not None and exported.strip() != configured.strip():
        raise UsageError(
            f"NEURON_CC_FLAGS is exported as {exported!r} but compile.cc_flags is "
            f"{configured!r}; neuronx-cc would compile with the exported value while the "
            "artifact cache is keyed on the configured one. Fix: unset NEURON_CC_FLAGS, or "
            "make compile.cc_flags match it."
        )


def _to_neuron(model: Any) -> str | None:
    """to_neuron() on a model given cached artifacts; the problem when a graph has no NEFF.
    Returning (not raising) drops the traceback, which would keep the model alive."""
    try:
        model.to_neuron()
    except FileNotFoundError as exc:
        return str(exc)
    return None


class NeuronxPair:
    """Draft and target loaded on NeuronCores, ready to generate (a Backend)."""

    name = "neuronx"
    device = "neuron"
    width_cost = 0.05  # a decode step is memory-bound: the window's tokens cost little

    def __init__(self, cfg: ConfigFile, progress: Progress | None = None):
        self.cfg = cfg
        self.say = progress or (lambda _m: None)
        spec = cfg.spec
        check_cc_flags(spec.compile.cc_flags, os.environ)
        self.tnx, self.version = import_tnx()
        self.api = speculation_api(importlib.import_module("transformers_neuronx.speculation"))
        self.plan: LoadPlan = build_load_plan(cfg, tnx_version=self.version)
        self.loop = spec.speculation.loop
        self.batch = spec.target.batch_size
        self.pad_token_id = 0  # set by the Generator once the tokenizer is known
        draft_model = spec.draft_model
        self._check_batch(self.batch if draft_model is None else draft_model.batch_size)
        if self.loop == "library" and draft_model is None:
            raise UsageError(
                f"speculation.loop: library runs transformers-neuronx's SpeculativeGenerator, "
                f"which drafts with a draft model; speculation.method: "
                f"{spec.speculation.method} has none. Fix: speculation.loop: engine."
            )
        self.n_positions = spec.n_positions
        self.cache = ArtifactCache(artifact_root(cfg), spec.compile.s3_mirror)
        self.events: list[tuple[str, str]] = []  # (role, "loaded" | "compiled")
        for name, value in self.plan.env.items():
            os.environ.setdefault(name, value)  # the runtime reads them at load
        self.draft = None if self.plan.draft is None else self._load(self.plan.draft)
        self.target = self._load(self.plan.target)

    def _check_batch(self, draft_batch: int) -> None:
        """Batch > 1 runs only through the engine, on 0.12+, with one batch size for both."""
        if self.batch == 1 and draft_batch == 1:
            return
        why = None
        if self.loop != "engine":
            why = "SpeculativeGenerator.sample gives every row row 0's accepted length"
        elif not _version_at_least(self.version, (0, 12)):
            why = f"transformers-neuronx {self.version} has no batched speculation graphs"
        elif draft_batch != self.batch:
            why = f"draft.batch_size={draft_batch} differs from target.batch_size={self.batch}"
        if why:
            raise UsageError(
                f"batch_size > 1 with speculation: {why}. Fix: speculation.loop: engine on "
                "transformers-neuronx 0.12 or newer, with one batch_size for draft and target; "
                "or batch_size: 1."
            )

    # --- loading ---------------------------------------------------------------------------

    def _prepare(self, ml: ModelLoad) -> None:
        """Bring a checkpoint into a format transformers-neuronx loads, once, atomically."""
        done = prepare_checkpoint(
            ml.role, ml.prepare, ml.source, ml.checkpoint, self.say, self.cache.warn
        )
        if not done:  # a .bin checkpoint: transformers-neuronx wants the split format
            Path(ml.checkpoint).parent.mkdir(parents=True, exist_ok=True)
            self._split(ml.source or ml.model, Path(ml.checkpoint))

    def _split(self, source: str, final: Path) -> None:
        self.say(f"converting {source} to the split format (once)")
        from transformers import AutoModelForCausalLM

        module = importlib.import_module("transformers_neuronx.module")
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
        try:
            # Keep the checkpoint's dtype (transformers 4.x would widen it to f32, doubling
            # host memory); the keyword was renamed in 4.56.
            import transformers

            key = "dtype" if _version_at_least(transformers.__version__, (4, 56)) else "torch_dtype"
            hf = AutoModelForCausalLM.from_pretrained(source, **{key: "auto"})
            module.save_pretrained_split(hf, str(tmp))
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _build(self, ml: ModelLoad) -> Any:
        kwargs = dict(ml.kwargs)
        if ml.rows_apart:  # batch > 1: each row at its own positions, prompts into one slot
            slots = self.tnx.ContinuousBatchingConfig(max_num_seqs=kwargs["batch_size"])
            kwargs["neuron_config"] = self.tnx.NeuronConfig(
                padding_side="right", continuous_batching=slots
            )
        model = self.tnx.LlamaForSampling.from_pretrained(ml.checkpoint, **kwargs)
        if ml.window is not None:
            if _takes(model.enable_speculative_decoder, "batch_sizes"):
                model.enable_speculative_decoder(ml.window, batch_sizes=ml.batch_sizes)
            else:  # 0.10.0.21
                model.enable_speculative_decoder(ml.window)
        return model

    def _load(self, ml: ModelLoad) -> Any:
        self._prepare(ml)
        description = {"role": ml.role, "model": ml.model, **ml.key_material}
        hit = self.cache.lookup(ml.cache_key)
        if hit is not None:
            self.say(f"{ml.role}: loading compiled artifacts from {hit}")
            model = self._build(ml)
            model.load(str(hit))
            problem = _to_neuron(model)
            if problem is None:
                self.events.append((ml.role, "loaded"))
                return model
            self.cache.warn(
                f"{ml.role}: cached artifacts do not match ({problem}); compiling again"
            )
            self.cache.discard(ml.cache_key)
            # to_neuron() loaded the weights before it looked for the NEFFs: free them
            # before a second copy is loaded.
            del model
            gc.collect()
        self.say(f"{ml.role}: compiling with neuronx-cc (tens of minutes for a 70B model)")
        model = self._build(ml)
        model.to_neuron()
        try:
            self.cache.store(ml.cache_key, lambda d: model.save(str(d)), description)
        except (OSError, ArtifactError) as exc:  # the compiled model is kept either way
            self.cache.warn(
                f"{ml.role}: the compiled artifacts could not be saved under {self.cache.root} "
                f"({type(exc).__name__}: {exc}); this run uses the model in memory, and the "
                "next one compiles again"
            )
        self.events.append((ml.role, "compiled"))
        return model

    # --- generation ------------------------------------------------------------------------

    def decode(
        self, prompts: Sequence[Sequence[int]], acceptor: Acceptor, how: Decode
    ) -> EngineResult:
        self._check_draft_tokens(how.draft_tokens)
        if self.batch > 1:
            return self._engine_batches(prompts, acceptor, how)

        def one(prompt: Sequence[int], callback: StreamCallback | None) -> EngineResult:
            if self.loop == "engine":
                return self._engine(prompt, acceptor, how, callback)
            return self._library(prompt, acceptor, how, callback)

        return decode_rows(prompts, how.on_tokens, one, "transformers-neuronx")

    def verify_width(self, gamma: int) -> int:
        """A step of gamma proposals runs the compiled window; none, one token (the token
        generation graph)."""
        return self.plan.window if gamma > 0 else 1

    def _check_draft_tokens(self, draft_tokens: int) -> None:
        window = self.plan.window
        allowed = range(window) if self.loop == "engine" else (0, window - 1)
        if draft_tokens not in allowed:
            smaller = (
                " The engine loop also runs any smaller value." if self.loop != "engine" else ""
            )
            raise UsageError(
                f"the target was compiled for draft_tokens={window - 1} (window k={window}); "
                f"draft_tokens={draft_tokens} needs its own compiled graph: set "
                f"speculation.draft_tokens in the config and load again.{smaller}"
            )

    def _engine(
        self,
        prompt: Sequence[int],
        acceptor: Acceptor,
        how: Decode,
        callback: StreamCallback | None,
    ) -> EngineResult:
        vocab = self.vocab_size()
        target = NeuronxRunner(self.target, self.n_positions, vocab, self.plan.window)
        draft = None if self.draft is None else NeuronxRunner(self.draft, self.n_positions, vocab)
        return how.run(target, draft, acceptor, [list(prompt)], callback)

    def batch_runners(
        self, slots: int
    ) -> tuple[NeuronxBatchRunner, NeuronxBatchRunner | None] | None:
        """Target and draft runners for a continuous batch of `slots` rows (serve), when the
        models were compiled for a batch (the engine loop); None otherwise."""
        if self.batch == 1 or self.loop != "engine" or slots > self.batch:
            return None
        return self._batch_pair(self.pad_token_id)

    def _batch_pair(self, pad: int) -> tuple[NeuronxBatchRunner, NeuronxBatchRunner | None]:
        vocab, size = self.vocab_size(), self.batch
        target = NeuronxBatchRunner(
            self.target, self.n_positions, vocab, size, self.plan.window, pad
        )
        if self.draft is None:
            return target, None
        return target, NeuronxBatchRunner(self.draft, self.n_positions, vocab, size, None, pad)

    def _engine_batches(
        self, prompts: Sequence[Sequence[int]], acceptor: Acceptor, how: Decode
    ) -> EngineResult:
        """Prompts in batches of the compiled size, each one engine batch at per-row
        positions (batch_runner.py)."""
        target, draft = self._batch_pair(how.pad_token_id)

        def run(group: list[list[int]], callback: StreamCallback | None) -> EngineResult:
            return how.run(target, draft, acceptor, group, callback)

        return decode_batches(prompts, self.batch, how.on_tokens, run, "transformers-neuronx")

    def warnings(self) -> list[str]:
        return list(self.cache.warnings)

    def device_memory_peak(self) -> int | None:
        return None  # transformers-neuronx does not say what the cores hold (neuron-top does)

    def vocab_size(self) -> int:
        config = getattr(self.target, "config", None)
        if isinstance(config, dict):
            return int(config.get("vocab_size") or 0)
        return int(getattr(config, "vocab_size", 0) or 0)

    def _library(
        self,
        prompt: Sequence[int],
        acceptor: Acceptor,
        how: Decode,
        callback: StreamCallback | None,
    ) -> EngineResult:
        if how.min_new_tokens:
            raise UsageError(
                "min_tokens is not supported by the library loop (speculation.loop: library), "
                "whose speculative loop stops at EOS itself; use speculation.loop: engine"
            )
        pair = LibraryPair(self.draft, self.target, self.api, self.plan.window, self.n_positions)
        rec, start = run_library(
            pair,
            prompt,
            acceptor,
            speculate=how.draft_tokens > 0,
            max_new=how.max_new_tokens,
            eos=list(how.eos_token_ids),
            pad=how.pad_token_id,
            on_tokens=callback,
            cancelled=how.cancelled,
        )
        steps = rec.steps(start)
        first = rec.puts[0].at if rec.tokens else None
        result = EngineResult([rec.tokens], [rec.by_eos], steps, start, [first])
        result.target_step_seconds = [s.seconds for s in steps[1:] if s.drafted]
        return result


def load(cfg: ConfigFile, progress: Progress | None = None) -> Generator:
    pair = NeuronxPair(cfg, progress)
    tok_dir = pair.plan.target.tokenizer or pair.plan.target.checkpoint
    gen = neuron_generator(cfg, pair, pair.plan.target.checkpoint, tok_dir)
    pair.pad_token_id = gen.pad_token_id
    return gen


def _version_at_least(version: str, floor: tuple[int, ...]) -> bool:
    from ..neuron_plan import parse_version

    return parse_version(version)[: len(floor)] >= floor
