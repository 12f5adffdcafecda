"""The NxD Inference backend: the only code that imports neuronx_distributed_inference.

It executes plan.py's load plan, once surface.py has found in the installed release (0.8, 0.9,
or 0.10, which has no public source) everything the plan drives: checkpoints prepared once
(neuron_common.py), each NxDI application built from validated NeuronConfig keywords,
compiled into the artifact cache or loaded from it, then driven through `forward()`:
- unfused: neuron-spec's engine over a draft and a target Runner (runner.py), exactly lossless;
- fused: round by round over the one fused graph (fused.py), greedy on the device;
- the target alone (--draft-tokens 0, bench's baseline): a plain target (context encoding +
  token generation), compiled and loaded the first time it is asked for.

Compiled artifacts cannot be stale: NxDI's load() never compares model.pt with the config it
loads with, so each entry is keyed by NxDI's own serialized config (with the checkpoint paths
taken out), the NxDI and neuronx-cc versions and the instance family. A changed draft_tokens,
tp, length, dtype or mode is another key, so it compiles anew; the same config loads.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...engine.acceptors import Acceptor
from ...engine.loop import Decode, EngineResult, StreamCallback
from ...errors import BackendUnavailableError, GenerationError, UsageError
from ..artifacts import ArtifactCache, ArtifactError
from ..neuron_common import decode_batches, decode_rows, neuron_generator, prepare_checkpoint
from ..neuron_plan import CC_DIST, artifact_root, cache_key, installed_version
from .batch_runner import NxdiBatchRunner
from .fused import fused_generate
from .plan import NXDI_DIST, NxdiModel, NxdiPlan, build_nxdi_plan
from .runner import NxdiRunner
from .surface import check_surface, import_failure

if TYPE_CHECKING:
    from ...config.spec import ConfigFile
    from ..base import Generator, Progress

INSTALL_HINT = (
    "neuronx-distributed-inference is not installed in this Python environment (it is not on "
    "PyPI). AWS's Neuron Deep Learning AMIs ship it in "
    "/opt/aws_neuronx_venv_pytorch_2_9_nxd_inference: for Inf2 and Trn1 the SDK 2.31 AMI (the "
    "one AWS names now) or 2.28 (also /opt/aws_neuronx_venv_pytorch_2_8_nxd_inference on Ubuntu "
    "22.04); scripts/launch.sh finds it and `neuron-spec doctor` checks a host. See "
    "docs/neuron.md."
)
PATH_KEYS = ("_name_or_path", "draft_model_path", "model_path")


def import_nxdi() -> tuple[dict[str, Any], str]:
    """The NxDI classes neuron-spec uses, and the installed version."""
    try:
        cfg = importlib.import_module("neuronx_distributed_inference.models.config")
        llama = importlib.import_module("neuronx_distributed_inference.models.llama.modeling_llama")
        adapter = importlib.import_module("neuronx_distributed_inference.utils.hf_adapter")
    except ImportError as exc:
        installed = installed_version(NXDI_DIST)
        if installed:  # there, but it does not import: say what is missing
            raise import_failure(installed, exc) from None
        raise BackendUnavailableError(f"{INSTALL_HINT} ({exc})") from None
    version = installed_version(NXDI_DIST)
    if not version:
        raise BackendUnavailableError(
            "cannot tell which neuronx-distributed-inference is installed"
        )
    classes = {
        "NeuronConfig": cfg.NeuronConfig,
        "FusedSpecNeuronConfig": cfg.FusedSpecNeuronConfig,
        "LlamaInferenceConfig": llama.LlamaInferenceConfig,
        "NeuronLlamaForCausalLM": llama.NeuronLlamaForCausalLM,
        "load_pretrained_config": adapter.load_pretrained_config,
    }
    return classes, version


def normalised_config(serialized: str) -> Any:
    """NxDI's serialized config without the checkpoint paths (where weights are read from
    does not change what was compiled)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in PATH_KEYS}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(json.loads(serialized))


class NxdiPair:
    """The loaded applications, ready to generate (a Backend)."""

    name = "nxdi"
    device = "neuron"
    width_cost = 0.05  # a decode step is memory-bound: the window's tokens cost little

    def __init__(self, cfg: ConfigFile, progress: Progress | None = None):
        self.cfg = cfg
        self.say = progress or (lambda _m: None)
        self.nxdi, self.version = import_nxdi()
        self.cc_version = installed_version(CC_DIST)
        self.plan: NxdiPlan = build_nxdi_plan(cfg, self.version, self.cc_version)
        check_surface(self.nxdi, self.version, self.plan)  # before anything is prepared
        self.cache = ArtifactCache(artifact_root(cfg), cfg.spec.compile.s3_mirror)
        self.events: list[tuple[str, str]] = []  # (role, "loaded" | "compiled")
        self.family = _family(cfg)
        self.batch = cfg.spec.target.batch_size
        self.pad_token_id = 0  # set by the Generator once the tokenizer is known
        self._check_batch()
        for name, value in self.plan.env.items():
            os.environ.setdefault(name, value)
        for m in self.plan.models:
            prepare_checkpoint(m.role, m.prepare, m.source, m.checkpoint, self.say, self.cache.warn)
        self.draft: Any = None
        self.plain: Any = None
        if self.plan.mode == "fused":
            self.target = self._application(self.plan.target, fused_draft=self._fused_draft())
        else:  # unfused: the draft only when proposals come from it (else the target alone)
            if self.plan.draft is not None:
                self.draft = self._application(self.plan.draft)
            self.target = self._application(self.plan.target)

    def _fused_draft(self) -> NxdiModel:
        if self.plan.draft is None:
            raise UsageError(
                "nxdi: {speculation_mode: fused} compiles the draft model into the target's "
                f"graph; speculation.method: {self.cfg.spec.speculation.method} has none. Fix: "
                "speculation_mode: unfused (the target's speculation graph verifies the "
                "lookup's proposals)."
            )
        return self.plan.draft

    def _check_batch(self) -> None:
        """Batch > 1 runs through neuron-spec's engine (unfused), one batch size for both."""
        spec = self.cfg.spec
        draft_batch = self.batch if spec.draft_model is None else spec.draft_model.batch_size
        if self.batch == 1 and draft_batch == 1:
            return
        why = None
        if self.plan.mode == "fused":
            why = (
                "NxDI's fused draft loop is batch 1 (its draft mask fills one column for all rows)"
            )
        elif draft_batch != self.batch:
            why = f"draft.batch_size={draft_batch} differs from target.batch_size={self.batch}"
        if why:
            raise UsageError(
                f"batch_size > 1 with speculation on NxD Inference: {why}. Fix: nxdi: "
                "{speculation_mode: unfused} with one batch_size for draft and target; or "
                "batch_size: 1."
            )

    # --- building, compiling, loading ----------------------------------------------------

    def _config(self, m: NxdiModel) -> Any:
        nc = self.nxdi["NeuronConfig"](**m.neuron_config)
        load = self.nxdi["load_pretrained_config"](m.checkpoint)
        # rope_theta is required by LlamaInferenceConfig; transformers 5 moved it into
        # rope_parameters, so it is passed as read from the checkpoint's config.json.
        return self.nxdi["LlamaInferenceConfig"](
            nc, load_config=load, rope_theta=rope_theta(m.checkpoint)
        )

    def _application(self, m: NxdiModel, fused_draft: NxdiModel | None = None) -> Any:
        config = self._config(m)
        app_cls = self.nxdi["NeuronLlamaForCausalLM"]
        if fused_draft is not None:
            config.fused_spec_config = self.nxdi["FusedSpecNeuronConfig"](
                app_cls._model_cls,
                draft_config=self._config(fused_draft),
                draft_model_path=fused_draft.checkpoint,
            )
        model = app_cls(m.checkpoint, config)
        material = {
            "neuron_config.json": normalised_config(config.to_json_string()),
            "neuronx_distributed_inference": self.version,
            "neuronx_cc": self.cc_version,
            "instance_family": self.family,
            "NEURON_CC_FLAGS": self.cfg.spec.compile.cc_flags
            or os.environ.get("NEURON_CC_FLAGS", ""),
        }
        key = cache_key(material)
        entry = self.cache.lookup(key)
        if entry is None:
            self.say(f"{m.role}: compiling with NxDI (tens of minutes for a 70B model)")
            description = {"role": m.role, "model": m.source, "backend": "nxdi", "key": key}
            try:
                entry = self.cache.store(key, lambda d: model.compile(str(d)), description)
            except (OSError, ArtifactError) as exc:
                raise GenerationError(
                    f"{m.role}: compiling into the artifact cache {self.cache.root} failed "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            self.events.append((m.role, "compiled"))
        else:
            self.say(f"{m.role}: loading compiled artifacts from {entry}")
            self.events.append((m.role, "loaded"))
        model.load(str(entry))
        return model

    # --- generation ------------------------------------------------------------------------

    def warnings(self) -> list[str]:
        return list(self.cache.warnings)

    def device_memory_peak(self) -> int | None:
        return None  # NxD Inference does not report what the NeuronCores hold (neuron-top does)

    @property
    def vocab_size(self) -> int:
        return int(self.target.config.vocab_size)

    def decode(
        self, prompts: Sequence[Sequence[int]], acceptor: Acceptor, how: Decode
    ) -> EngineResult:
        self._check(acceptor, how.draft_tokens)
        if self.batch > 1:
            return self._engine_batches(prompts, acceptor, how)

        def one(prompt: Sequence[int], callback: StreamCallback | None) -> EngineResult:
            return self._one(prompt, acceptor, how, callback)

        return decode_rows(prompts, how.on_tokens, one, "NxDI")

    def verify_width(self, gamma: int) -> int:
        """A speculating target has only its window-wide graph: every step costs one."""
        return self.plan.window

    def _check(self, acceptor: Any, draft_tokens: int) -> None:
        window = self.plan.window
        if draft_tokens not in (0, window - 1) and self.plan.mode == "fused":
            raise UsageError(
                f"the fused graph was compiled for draft_tokens={window - 1}; set "
                "speculation.draft_tokens in the config and load again (or 0: the target alone)"
            )
        if draft_tokens >= window:
            raise UsageError(
                f"the target was compiled for draft_tokens={window - 1} (window k={window}); "
                "more needs its own compiled graph: set speculation.draft_tokens and load again"
            )
        sampling = getattr(acceptor, "sampling", None)
        greedy = type(acceptor).__name__ == "GreedyAcceptor" or (
            sampling is not None and sampling.temperature == 0
        )
        if self.plan.mode == "fused" and draft_tokens and not greedy:
            raise UsageError(
                "fused speculation accepts greedily on the device: send temperature 0, or set "
                "nxdi: {speculation_mode: unfused} for sampling (exactly lossless)"
            )

    def _one(
        self,
        prompt: Sequence[int],
        acceptor: Acceptor,
        how: Decode,
        callback: StreamCallback | None,
    ) -> EngineResult:
        plan, pad = self.plan, how.pad_token_id
        if how.draft_tokens == 0:
            target = self._runner(self._plain(), pad, window=None, length=plan.n_positions)
            return how.run(target, None, acceptor, [prompt], callback)
        if plan.mode == "fused":
            if how.min_new_tokens:
                raise UsageError(
                    "min_tokens is not supported by fused speculation, which accepts and stops "
                    "at EOS on the device; set nxdi: {speculation_mode: unfused}"
                )
            return fused_generate(
                self.target, prompt, window=plan.window,
                context_length=int(self.target.neuron_config.max_context_length),
                compiled_length=plan.compiled_length, max_new=how.max_new_tokens,
                eos=how.eos_token_ids, pad=pad, on_tokens=callback, cancelled=how.cancelled,
            )  # fmt: skip
        target = self._runner(self.target, pad, window=plan.window, length=plan.compiled_length)
        draft = None
        if self.draft is not None:
            draft = self._runner(self.draft, pad, window=None, length=plan.n_positions)
        return how.run(target, draft, acceptor, [prompt], callback)

    def batch_runners(self, slots: int) -> tuple[NxdiBatchRunner, NxdiBatchRunner | None] | None:
        """Target and draft runners for a continuous batch of `slots` rows (serve), when the
        models were compiled for a batch; None otherwise."""
        if self.batch == 1 or slots > self.batch:
            return None
        return self._batch_pair(self.pad_token_id)

    def _batch_pair(self, pad: int) -> tuple[NxdiBatchRunner, NxdiBatchRunner | None]:
        plan = self.plan
        target = self._batch_runner(self.target, pad, plan.window, plan.compiled_length)
        if self.draft is None:
            return target, None
        return target, self._batch_runner(self.draft, pad, None, plan.n_positions)

    def _batch_runner(
        self, model: Any, pad: int, window: int | None, length: int
    ) -> NxdiBatchRunner:
        return NxdiBatchRunner(
            model, vocab_size=self.vocab_size, compiled_length=length,
            context_length=int(model.neuron_config.max_context_length),
            compiled_batch=self.batch, pad_token_id=pad, window=window,
        )  # fmt: skip

    def _engine_batches(
        self, prompts: Sequence[Sequence[int]], acceptor: Acceptor, how: Decode
    ) -> EngineResult:
        """Prompts in batches of the compiled size, each one engine batch at per-row
        positions (batch_runner.py). The target alone runs the plain target at batch B."""
        pad = how.pad_token_id
        target: NxdiBatchRunner
        draft: NxdiBatchRunner | None
        if how.draft_tokens == 0:
            target = self._batch_runner(self._plain(), pad, None, self.plan.n_positions)
            draft = None
        else:
            target, draft = self._batch_pair(pad)

        def run(group: list[list[int]], callback: StreamCallback | None) -> EngineResult:
            return how.run(target, draft, acceptor, group, callback)

        return decode_batches(prompts, self.batch, how.on_tokens, run, "NxDI")

    def _runner(self, model: Any, pad: int, *, window: int | None, length: int) -> NxdiRunner:
        return NxdiRunner(
            model,
            vocab_size=self.vocab_size,
            compiled_length=length,
            context_length=int(model.neuron_config.max_context_length),
            pad_token_id=pad,
            window=window,
        )

    def _plain(self) -> Any:
        """The target without speculation, compiled and loaded the first time it is needed."""
        if self.plain is None:
            self.plain = self._application(self.plan.plain_target)
        return self.plain


def rope_theta(checkpoint: str) -> float:
    """The checkpoint's RoPE base, wherever its config.json keeps it (10000.0: Llama's default)."""
    try:
        data = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 10000.0
    params = data.get("rope_parameters") if isinstance(data, dict) else None
    value = data.get("rope_theta") or (params or {}).get("rope_theta") or 10000.0
    return float(value)


def _family(cfg: ConfigFile) -> str:
    instance = cfg.spec.instance
    if instance == "auto":
        from ...host.facts import resolve_host

        instance = resolve_host("auto").instance or "unknown"
    return instance.split(".")[0]


def load(cfg: ConfigFile, progress: Progress | None = None) -> Generator:
    pair = NxdiPair(cfg, progress)
    target = pair.plan.target
    tok_dir = target.tokenizer or target.checkpoint
    gen = neuron_generator(
        cfg, pair, target.checkpoint, tok_dir, max_prompt_tokens=pair.plan.max_context_length
    )
    pair.pad_token_id = gen.pad_token_id
    return gen
