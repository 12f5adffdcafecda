"""The transformers-neuronx load plan, as data.

Every keyword argument transformers-neuronx receives is built here from the validated spec,
never passed through from the user: LlamaForSampling.from_pretrained silently ignores unknown
keyword arguments, so a typo would compile the wrong model without a word.

The plan is what `neuron-spec generate CONFIG --dry-run` prints and what backends/neuronx/backend.py
executes, in this order (neuron-api.md):
  draft:  from_pretrained -> [load(cached dir)] -> to_neuron -> [save(new cache entry)]
  target: from_pretrained -> enable_speculative_decoder(window) -> [load] -> to_neuron -> [save]
  SpeculativeGenerator(draft, target, window, acceptor).sample(...)
Building it imports nothing from transformers-neuronx, so it runs anywhere.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.spec import ConfigFile, ModelSpec
from ..sources.checkpoint import ResolvedModel, resolve_model

TNX_DIST = "transformers-neuronx"
CC_DIST = "neuronx-cc"
V2_FROM = (0, 12)  # transformers-neuronx 0.12 (Neuron SDK 2.20) has the batched (v2) loop


def installed_version(dist: str) -> str | None:
    """A distribution's version from its metadata, without importing it."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:8]:
        digits = "".join(ch for ch in piece if "0" <= ch <= "9")[:12]  # ASCII digits only
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def api_generation(tnx_version: str | None) -> str:
    """'v1' (0.10-0.11) or 'v2' (0.12-0.13) by version number, for messages and the dry run
    only: the backend decides by the library's behaviour (SpeculativeGenerator.sample's
    signature), never by this."""
    if tnx_version is None:
        return "unknown"
    return "v2" if parse_version(tnx_version)[:2] >= V2_FROM else "v1"


def _int_or_list(values: tuple[int, ...]) -> int | list[int]:
    return values[0] if len(values) == 1 else list(values)


def from_pretrained_kwargs(m: ModelSpec) -> dict[str, Any]:
    """The exact keyword arguments for LlamaForSampling.from_pretrained."""
    kwargs: dict[str, Any] = {
        "n_positions": _int_or_list(m.n_positions),
        "batch_size": m.batch_size,
        "amp": m.amp,
        "tp_degree": m.tp_degree,
    }
    if m.context_length_estimate is not None:
        kwargs["context_length_estimate"] = _int_or_list(m.context_length_estimate)
    return kwargs


@dataclass(frozen=True)
class ModelLoad:
    role: str
    model: str  # as written in the config
    checkpoint: str  # directory transformers-neuronx loads (after any conversion)
    tokenizer: str | None  # where the tokenizer comes from (the original directory)
    prepare: str  # "direct" | "split" | "gguf" | "s3" | "catalog" | "missing"
    kwargs: dict[str, Any]
    window: int | None  # enable_speculative_decoder(window) on the target; None for the draft
    batch_sizes: list[int] | None
    cache_key: str
    key_material: dict[str, Any]
    source: str = ""  # what prepare reads: the .bin directory, the .gguf file or the s3 URL
    # NeuronConfig(padding_side='right', continuous_batching=...) at batch > 1: 2-D cache
    # ids, rows at their own positions, a prompt encoded into one slot (0.12+)
    rows_apart: bool = False

    def calls(self, api: str) -> list[str]:
        var = self.role
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        out = []
        if self.prepare == "split":
            out.append(
                f"transformers_neuronx.module.save_pretrained_split("
                f"LlamaForCausalLM.from_pretrained({self.model!r}), {self.checkpoint!r})"
            )
        elif self.prepare == "gguf":
            out.append(f"# once: {self.source} de-quantized to safetensors in {self.checkpoint}")
        elif self.prepare == "s3":
            out.append(f"# once: {self.source} downloaded to {self.checkpoint}")
        if self.rows_apart:
            args += (
                ", neuron_config=NeuronConfig(padding_side='right', continuous_batching="
                f"ContinuousBatchingConfig(max_num_seqs={self.kwargs.get('batch_size')}))"
            )
        out.append(f"{var} = LlamaForSampling.from_pretrained({self.checkpoint!r}, {args})")
        if self.window is not None:
            if api == "v1":
                out.append(f"{var}.enable_speculative_decoder({self.window})")
            else:
                out.append(
                    f"{var}.enable_speculative_decoder({self.window}, "
                    f"batch_sizes={self.batch_sizes!r})"
                )
        out.append(f"{var}.load(<artifact cache>/{self.cache_key})   # only on a cache hit")
        out.append(f"{var}.to_neuron()")
        out.append(f"{var}.save(<artifact cache>/{self.cache_key})   # only on a cache miss")
        return out


@dataclass(frozen=True)
class LoadPlan:
    api: str
    tnx_version: str | None
    cc_version: str | None
    env: dict[str, str]
    draft: ModelLoad
    target: ModelLoad
    window: int
    acceptor: str
    draft_provider: str
    notes: list[str] = field(default_factory=list)

    def calls(self) -> list[str]:
        api = self.api if self.api != "unknown" else "v2"
        return [
            *self.draft.calls(api),
            *self.target.calls(api),
            f"generator = SpeculativeGenerator({self.draft_provider}, target, "
            f"k={self.window}, acceptor={self.acceptor})",
            "generator.sample(input_ids, sequence_length=prompt + max_new_tokens, ...)",
        ]

    def to_dict(self) -> dict[str, Any]:
        def model(m: ModelLoad) -> dict[str, Any]:
            return {
                "model": m.model,
                "checkpoint": m.checkpoint,
                "tokenizer": m.tokenizer,
                "prepare": m.prepare,
                "from_pretrained_kwargs": m.kwargs,
                "speculation_window": m.window,
                "cache_key": m.cache_key,
            }

        return {
            "backend": "neuronx",
            "api": self.api,
            "transformers_neuronx": self.tnx_version,
            "neuronx_cc": self.cc_version,
            "env": self.env,
            "draft": model(self.draft),
            "target": model(self.target),
            "calls": self.calls(),
            "notes": self.notes,
        }


def _fingerprint(resolved: ResolvedModel) -> str:
    """What identifies the weights' architecture: config.json contents, or the catalog row."""
    if resolved.kind == "directory":
        cfg = Path(resolved.location) / "config.json"
        if cfg.is_file():
            return hashlib.sha256(cfg.read_bytes()).hexdigest()
    if resolved.architecture is not None:
        return f"catalog:{resolved.architecture.name}"
    return f"unresolved:{resolved.spec_model}"


def cache_key(material: dict[str, Any]) -> str:
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def split_dir(resolved: ResolvedModel, cache_root: Path) -> Path:
    ident = hashlib.sha256(resolved.location.encode()).hexdigest()[:16]
    return cache_root / "split" / f"{Path(resolved.location).name}-{ident}"


def prepared_dir(resolved: ResolvedModel, cache_root: Path) -> Path:
    """Where a GGUF file is converted, or an s3:// checkpoint downloaded, for the Neuron
    backend (beside the compiled artifacts)."""
    ident = hashlib.sha256(resolved.location.encode()).hexdigest()[:16]
    name = Path(resolved.location.rstrip("/")).name or "checkpoint"
    return cache_root / resolved.kind / f"{name}-{ident}"


def planned_env(cfg: ConfigFile) -> dict[str, str]:
    """The environment launch.sh exports: the core layout and the compiler settings."""
    spec = cfg.spec
    cores = max(spec.target.tp_degree, spec.draft.tp_degree)
    env = {"NEURON_RT_VISIBLE_CORES": "0" if cores == 1 else f"0-{cores - 1}"}
    if spec.compile.cc_flags:
        env["NEURON_CC_FLAGS"] = spec.compile.cc_flags
    if spec.compile.neuron_cache_url:
        env["NEURON_COMPILE_CACHE_URL"] = os.path.expanduser(spec.compile.neuron_cache_url)
    return env


def cache_dir(setting: str, base_dir: Path) -> Path:
    """compile.artifact_cache as a path: ~ and $VARS expanded, relative to the config."""
    p = Path(os.path.expandvars(os.path.expanduser(setting)))
    return p if p.is_absolute() else base_dir / p


def artifact_root(cfg: ConfigFile) -> Path:
    return cache_dir(cfg.spec.compile.artifact_cache, cfg.base_dir)


def build_load_plan(
    cfg: ConfigFile,
    tnx_version: str | None = None,
    cc_version: str | None = None,
    env: dict[str, str] | None = None,
) -> LoadPlan:
    spec = cfg.spec
    tnx_version = tnx_version if tnx_version is not None else installed_version(TNX_DIST)
    cc_version = cc_version if cc_version is not None else installed_version(CC_DIST)
    api = api_generation(tnx_version)
    env = dict(env if env is not None else os.environ)
    notes: list[str] = []
    window = spec.speculation.window
    compiler = {
        "transformers_neuronx": tnx_version,
        "neuronx_cc": cc_version,
        "NEURON_CC_FLAGS": spec.compile.cc_flags or env.get("NEURON_CC_FLAGS", ""),
    }

    def model_load(role: str, m: ModelSpec) -> ModelLoad:
        return _model_load(cfg, role, m, window if role == "target" else None, compiler, notes)

    draft = model_load("draft", spec.draft)
    target = model_load("target", spec.target)
    acceptor = spec.speculation.acceptor
    provider = (
        "SampledDraftProvider(draft)"
        if acceptor == "lossless" and spec.sampling.temperature > 0
        else "draft (argmax drafts)"
    )
    if api == "unknown":
        notes.append(
            "transformers-neuronx is not installed here: the calls are shown for "
            "API v2 (0.12 on); v1 (0.10, 0.11) differs in enable_speculative_decoder and "
            "sample. Versions in the cache key are filled in at load time."
        )
    return LoadPlan(
        api=api,
        tnx_version=tnx_version,
        cc_version=cc_version,
        env=planned_env(cfg),
        draft=draft,
        target=target,
        window=window,
        acceptor=acceptor,
        draft_provider=provider,
        notes=notes,
    )


def _model_load(
    cfg: ConfigFile,
    role: str,
    m: ModelSpec,
    window: int | None,
    compiler: dict[str, str | None],
    notes: list[str],
) -> ModelLoad:
    """How one model loads: its checkpoint (prepared first, or as it is), tokenizer,
    from_pretrained arguments and compiled-artifact cache key. `window` is the target's
    speculation window (None for the draft); `notes` gathers what the user should know."""
    resolved = resolve_model(m.model, cfg.base_dir, m.architecture)
    prepare, checkpoint, tokenizer = _preparation(
        role, m.model, resolved, artifact_root(cfg), notes
    )
    if m.tokenizer:
        tokenizer = str(Path(os.path.expanduser(m.tokenizer)))
    kwargs = from_pretrained_kwargs(m)
    batch_sizes = [m.batch_size] if window is not None else None
    material = {
        "role": role,
        "weights": _fingerprint(resolved),
        "from_pretrained": kwargs,
        "window": window,
        "batch_sizes": batch_sizes,
        "neuron_config": (
            f"padding_side=right,continuous_batching={m.batch_size}" if m.batch_size > 1 else None
        ),
        **compiler,
    }
    return ModelLoad(
        role=role,
        model=m.model,
        checkpoint=checkpoint,
        tokenizer=tokenizer,
        prepare=prepare,
        kwargs=kwargs,
        window=window,
        batch_sizes=batch_sizes,
        cache_key=cache_key(material),
        key_material=material,
        source=resolved.location,
        rows_apart=m.batch_size > 1,
    )


def _preparation(
    role: str, model: str, resolved: ResolvedModel, root: Path, notes: list[str]
) -> tuple[str, str, str | None]:
    """What has to happen to a checkpoint before from_pretrained reads it: (how, the directory
    it loads from, the tokenizer directory)."""
    if resolved.kind == "catalog":
        notes.append(
            f"{role}.model is a catalog name: set it to the checkpoint directory before loading."
        )
        return "catalog", f"<checkpoint directory of {model}>", None
    if resolved.problem:
        notes.append(f"{role}: {resolved.problem}.")
        return "missing", resolved.location, None
    if resolved.kind in ("gguf", "s3"):
        checkpoint = str(prepared_dir(resolved, root))
        what = "de-quantized to safetensors" if resolved.kind == "gguf" else "downloaded"
        notes.append(f"{role}: {resolved.location} is {what} once, into {checkpoint}.")
        return resolved.kind, checkpoint, checkpoint
    if resolved.lazy_loadable is False and resolved.kind == "directory":
        checkpoint = str(split_dir(resolved, root))
        notes.append(
            f"{role}: {resolved.weights} is converted once to the split format "
            f"in {checkpoint}; the tokenizer stays in {resolved.location}."
        )
        return "split", checkpoint, resolved.location
    return "direct", resolved.location, resolved.location
