"""The NxD Inference load plan, as data: what `generate --dry-run` prints and what backend.py
executes. It imports nothing from neuronx_distributed_inference, so it runs anywhere.

Every NeuronConfig keyword is built here from the validated spec: NeuronConfig only logs a
warning for a keyword it does not know, so a typo would compile the wrong model silently.
- `torch_dtype` is always passed: without it the checkpoint's dtype replaces it (Llama-2 ships
  float16).
- Lengths: NxDI's `max_context_length` is the prompt budget (never equal to the speculation
  width k: a context bucket of width k is traced as a speculation graph). The compiled length
  `seq_len` is n_positions, plus k - 1 on a speculating model: with no single-token target
  graph every verify pass writes k positions, so the last tokens of a full-length sequence
  need that headroom. Positions at or past n_positions are only ever filler, never committed.
- unfused: the draft compiles context encoding + token generation, the target context encoding
  + a speculation graph of width k = draft_tokens + 1, on-device sampling off (the host gets
  every logit, so sampling is exact). fused: one application, on-device greedy sampling.
- plain target (target alone: bench's baseline, --draft-tokens 0): context encoding + token
  generation, compiled only when asked for.
- batch_size B > 1 (unfused): continuous batching (`is_continuous_batching`, a context
  encoding of batch 1 into one seq id), speculation and token generation at batch B.
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
    installed_version,
    planned_env,
    preparation,
)

NXDI_DIST = "neuronx-distributed-inference"
DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class NxdiModel:
    """One NxDI application to build: its checkpoint, NeuronConfig keywords, and role."""

    role: str  # "target" | "draft" | "fused" | "plain-target"
    checkpoint: str
    prepare: str  # direct | gguf | s3 | catalog | missing
    source: str
    neuron_config: dict[str, Any]
    tokenizer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "checkpoint": self.checkpoint,
            "prepare": self.prepare,
            "neuron_config": self.neuron_config,
        }


@dataclass
class NxdiPlan:
    mode: str  # "unfused" | "fused"
    window: int  # k = draft_tokens + 1
    n_positions: int
    compiled_length: int
    max_context_length: int
    nxdi_version: str | None
    cc_version: str | None
    env: dict[str, str]
    target: NxdiModel
    draft: NxdiModel | None  # None: a lookup proposes, no draft model loads
    plain_target: NxdiModel
    notes: list[str] = field(default_factory=list)

    @property
    def models(self) -> tuple[NxdiModel, ...]:
        return (self.target,) if self.draft is None else (self.draft, self.target)

    def calls(self) -> list[str]:
        cfg = "LlamaInferenceConfig(NeuronConfig(**kw), load_config=load_pretrained_config(path))"
        if self.mode == "fused":
            return [
                f"draft_config = {cfg.replace('path', 'draft')}",
                "config = " + cfg.replace("path", "target"),
                "config.fused_spec_config = FusedSpecNeuronConfig("
                "NeuronLlamaForCausalLM._model_cls, draft_config=draft_config, "
                "draft_model_path=draft)",
                "model = NeuronLlamaForCausalLM(target, config)",
                "model.compile(<cache entry>)  # on a cache miss",
                "model.load(<cache entry>)",
                "model(input_ids, attention_mask, position_ids, seq_ids) round by round: "
                "fused_outputs = [accepted, next id, next mask, next position]",
            ]
        target = f"target = NeuronLlamaForCausalLM(target, {cfg.replace('path', 'target')})"
        if self.draft is None:  # a lookup proposes: the target's speculation graph alone
            return [
                target,
                "target.compile(<entry>)  # on a cache miss",
                "target.load(<entry>)",
                "neuron-spec's engine: proposals from a lookup on the host (no draft model), "
                "target(...) width k verify passes, logits to the host, acceptance and "
                "sampling on the host",
            ]
        return [
            f"draft = NeuronLlamaForCausalLM(draft, {cfg.replace('path', 'draft')})",
            target,
            "draft.compile(<entry>), target.compile(<entry>)  # each on a cache miss",
            "draft.load(<entry>), target.load(<entry>)",
            "neuron-spec's engine: target(...) width k verify passes, draft(...) one token at "
            "a time, logits to the host, acceptance and sampling on the host",
        ]

    def view(self, config: str) -> PlanView:
        version = self.nxdi_version or "not installed here"
        keywords = [f"{m.role} ({m.checkpoint}): {m.neuron_config}" for m in self.models]
        return PlanView(
            title=f"load plan for {config} (NxD Inference {version}, {self.mode} speculation, "
            f"k={self.window})",
            facts=[
                f"lengths: n_positions {self.n_positions}; target compiled for "
                f"{self.compiled_length} (k - 1 positions of headroom); prompts up to "
                f"{self.max_context_length} tokens"
            ],
            env=self.env,
            sections=[
                ("NeuronConfig keywords", keywords),
                ("calls, in order", self.calls()),
                (
                    "compiled-artifact cache",
                    [
                        "keyed at load by NxDI's serialized config (paths left out), the NxDI and "
                        "neuronx-cc versions and the instance family"
                    ],
                ),
            ],
            notes=self.notes,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": "nxdi",
            "speculation_mode": self.mode,
            "window": self.window,
            "n_positions": self.n_positions,
            "compiled_length": self.compiled_length,
            "max_context_length": self.max_context_length,
            "nxdi_version": self.nxdi_version,
            "neuronx_cc_version": self.cc_version,
            "env": self.env,
            "models": [m.to_dict() for m in self.models],
            "calls": self.calls(),
            "notes": self.notes,
        }


def context_length(cfg: ConfigFile) -> int:
    """The prompt budget NxDI's context encoding is compiled for."""
    spec = cfg.spec
    n = spec.n_positions
    window = spec.speculation.window
    budget = spec.generation.max_prompt_tokens or max(
        1, n - spec.generation.max_new_tokens - window
    )
    return min(budget, n)


def _context_for(context: int, speculation: int) -> int:
    """A speculating model's context bucket may not equal k: NxDI would trace it as a
    speculation graph (NeuronBaseModel._is_context_encoding). One more position avoids it."""
    return context + 1 if speculation and context == speculation else context


def neuron_config_kwargs(
    m: ModelSpec, *, seq_len: int, context: int, speculation: int, fused: bool
) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "batch_size": m.batch_size,
        "seq_len": seq_len,
        "max_context_length": min(_context_for(context, speculation), seq_len),
        "torch_dtype": DTYPES[m.amp],
        "tp_degree": m.tp_degree,
        "padding_side": "right",
    }
    if speculation:
        kw["speculation_length"] = speculation
    if m.batch_size > 1 and not fused:
        # a new row's context encoding writes only its own slot (it must carry one seq id),
        # so rows join a running batch while the others keep their KV (batch_runner.py)
        kw["is_continuous_batching"] = True
        kw["ctx_batch_size"] = 1
    if fused:
        kw["enable_fused_speculation"] = True
        kw["on_device_sampling_config"] = {"do_sample": False, "top_k": 1}
    return kw


def build_nxdi_plan(
    cfg: ConfigFile, nxdi_version: str | None = None, cc_version: str | None = None
) -> NxdiPlan:
    spec = cfg.spec
    mode = spec.nxdi.speculation_mode
    window = spec.speculation.window
    n = spec.n_positions
    compiled = n + window - 1
    context = context_length(cfg)
    notes: list[str] = []

    def model(role: str, m: ModelSpec, speculation: int, fused: bool, length: int) -> NxdiModel:
        resolved = resolve_model(m.model, cfg.base_dir, m.architecture)
        said = notes if role != "plain-target" else []  # the target's notes cover it
        prepare, checkpoint, tokenizer = preparation(
            role, m.model, resolved, artifact_root(cfg), said
        )
        if prepare == "split":  # NxDI reads pytorch_model.bin itself
            prepare, checkpoint, tokenizer = "direct", resolved.location, resolved.location
        if m.tokenizer:
            tokenizer = str(Path(os.path.expanduser(m.tokenizer)))
        kw = neuron_config_kwargs(
            m, seq_len=length, context=context, speculation=speculation, fused=fused
        )
        return NxdiModel(role, checkpoint, prepare, resolved.location, kw, tokenizer)

    target = model("target", spec.target, window, mode == "fused", compiled)
    # the draft never needs the headroom (it is fed one token at a time, below n_positions), so
    # its compiled graphs do not depend on draft_tokens
    draft = None if spec.draft_model is None else model("draft", spec.draft_model, 0, False, n)
    plain = model("plain-target", spec.target, 0, False, n)
    nxdi_version = nxdi_version if nxdi_version is not None else installed_version(NXDI_DIST)
    if nxdi_version is None:
        notes.append(
            "neuronx-distributed-inference is not installed here: versions in the cache key "
            "are filled in at load time."
        )
    return NxdiPlan(
        mode=mode,
        window=window,
        n_positions=n,
        compiled_length=compiled,
        max_context_length=context,
        nxdi_version=nxdi_version,
        cc_version=cc_version if cc_version is not None else installed_version(CC_DIST),
        env=planned_env(cfg),
        target=target,
        draft=draft,
        plain_target=plain,
        notes=notes,
    )
