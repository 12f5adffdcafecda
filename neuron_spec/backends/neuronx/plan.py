"""The transformers-neuronx load plan, as data.

Every keyword argument transformers-neuronx receives is built here from the validated spec,
never passed through from the user: LlamaForSampling.from_pretrained silently ignores unknown
keyword arguments, so a typo would compile the wrong model without a word.

The plan is what `neuron-spec generate CONFIG --dry-run` prints and what backend.py executes, in
this order (transformers-neuronx's speculative decoding guide):
  draft:  from_pretrained -> [load(cached dir)] -> to_neuron -> [save(new cache entry)]
  target: from_pretrained -> enable_speculative_decoder(window) -> [load] -> to_neuron -> [save]
  SpeculativeGenerator(draft, target, window, acceptor).sample(...)
Building it imports nothing from transformers-neuronx, so it runs anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config.spec import ConfigFile, ModelSpec
from ...sources.checkpoint import resolve_model
from ..neuron_plan import (
    CC_DIST,
    PlanView,
    artifact_root,
    cache_key,
    fingerprint,
    installed_version,
    parse_version,
    planned_env,
    preparation,
)

TNX_DIST = "transformers-neuronx"
V2_FROM = (0, 12)  # transformers-neuronx 0.12 (Neuron SDK 2.20) has the batched (v2) loop


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
    draft: ModelLoad | None  # None: proposals come from a lookup, no draft model loads
    target: ModelLoad
    window: int
    acceptor: str
    draft_provider: str
    loop: str = "engine"
    method: str = "draft"
    notes: list[str] = field(default_factory=list)

    def calls(self) -> list[str]:
        api = self.api if self.api != "unknown" else "v2"
        loads = [c for m in self.models for c in m.calls(api)]
        if self.loop == "library":
            return [
                *loads,
                f"generator = SpeculativeGenerator({self.draft_provider}, target, "
                f"k={self.window}, acceptor={self.acceptor})",
                "generator.sample(input_ids, sequence_length=prompt + max_new_tokens, ...)",
            ]
        proposals = (
            f"draft(ids, cache_ids) one token at a time, {self.draft_provider}"
            if self.draft is not None
            else f"{self.method} lookup on the host (no draft model)"
        )
        return [
            *loads,
            f"neuron-spec's engine: proposals from {proposals}; target.speculative_forward("
            f"ids, cache_ids, start_ids, {self.window}) verifies them (target(...) one token "
            "when a step proposes none); acceptance and sampling on the host",
        ]

    @property
    def models(self) -> tuple[ModelLoad, ...]:
        return (self.target,) if self.draft is None else (self.draft, self.target)

    def view(self, config: str) -> PlanView:
        version = self.tnx_version or "not installed here"
        return PlanView(
            title=f"load plan for {config} (transformers-neuronx {version}, API {self.api})",
            facts=[],
            env=self.env,
            sections=[
                ("calls, in order", self.calls()),
                (
                    "compiled-artifact cache keys",
                    [f"{m.role}: {m.cache_key}" for m in self.models],
                ),
            ],
            notes=self.notes,
        )

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
            "speculation_method": self.method,
            "loop": self.loop,
            "draft": None if self.draft is None else model(self.draft),
            "target": model(self.target),
            "calls": self.calls(),
            "notes": self.notes,
        }


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

    draft = None if spec.draft_model is None else model_load("draft", spec.draft_model)
    target = model_load("target", spec.target)
    acceptor = spec.speculation.acceptor
    sampled = acceptor == "lossless" and spec.sampling.temperature > 0
    if spec.speculation.loop == "library":
        provider = "SampledDraftProvider(draft)" if sampled else "draft (argmax drafts)"
    else:
        provider = "drafts sampled from its warped distribution" if sampled else "argmax drafts"
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
        loop=spec.speculation.loop,
        method=spec.speculation.method,
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
    prepare, checkpoint, tokenizer = preparation(role, m.model, resolved, artifact_root(cfg), notes)
    if m.tokenizer:
        tokenizer = str(Path(os.path.expanduser(m.tokenizer)))
    kwargs = from_pretrained_kwargs(m)
    batch_sizes = [m.batch_size] if window is not None else None
    material = {
        "role": role,
        "weights": fingerprint(resolved),
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
