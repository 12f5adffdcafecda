"""What every preflight rule works with: a Finding (severity, code, field, message, fix), the
Report of all of them, and the Context a rule reads (the spec, the host, the resolved models and
their memory per NeuronCore). Every code a rule may emit is registered here, with its title;
docs/findings/<code>.md explains each."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config.catalog import Architecture
from ..config.spec import DeploymentSpec, ModelSpec
from ..host.facts import HostFacts
from ..sources.checkpoint import ResolvedModel, resolve_model
from .memory import ModelMemory, model_memory

Severity = Literal["error", "warning", "info"]
ORDER = {"error": 0, "warning": 1, "info": 2}

# Every code a rule may emit, with a one-line title. docs/findings/<code>.md explains each.
FINDING_CODES: dict[str, str] = {
    "host-unknown": "instance is 'auto' but this machine is not a known Neuron instance",
    "tp-unsupported": "tp_degree is not a core count the Neuron runtime accepts on this platform",
    "tp-undocumented": "tp_degree is accepted but outside the values the libraries document",
    "tp-exceeds-cores": "tp_degree is larger than the instance's NeuronCores",
    "tp-mismatch": "draft and target tp_degree differ in one process",
    "tp-default": "tp_degree is not set and falls back to 1",
    "kv-heads-indivisible": "KV heads cannot be split evenly over tp_degree",
    "memory-over-budget": "the models do not fit the NeuronCore memory budget",
    "memory-high": "the models use more than 90 % of a NeuronCore's memory",
    "batch-speculation": "batch_size > 1 with speculation on a Neuron backend",
    "context-estimate": "context_length_estimate exceeds n_positions",
    "sequence-too-long": "prompt + new tokens do not fit n_positions",
    "window-overflow": "the speculation window can run past n_positions",
    "positions-beyond-model": "n_positions exceeds what the model was trained for",
    "vocab-mismatch": "draft and target vocabularies differ",
    "architecture-unsupported": "the model is not a Llama (LlamaForSampling only)",
    "architecture-unknown": "the model's architecture could not be determined",
    "eos-list": "the model has several EOS ids; transformers-neuronx takes one",
    "token-id-zero": "token id 0 is a real token; transformers-neuronx counts it as padding",
    "checkpoint-missing": "the checkpoint cannot be found or read",
    "checkpoint-no-weights": "the checkpoint directory has config.json but no weights yet",
    "hub-unavailable": "the Hugging Face Hub repo cannot be read (offline, gated, missing)",
    "hub-model": "the model is a Hugging Face Hub repo, sized from its config.json",
    "checkpoint-catalog": "the model is a catalog name: sized, but not loadable",
    "checkpoint-not-lazy": "the checkpoint is loaded whole into host memory",
    "draft-not-smaller": "the draft is not smaller than the target",
    "speculation-method": "the proposal method cannot run with this loop or speculation mode",
    "draft-unused": "a draft model is configured but the proposal method does not load it",
    "acceptor-ignores-sampling": "the acceptor ignores the configured sampling settings",
    "cores-idle": "some NeuronCores of the instance stay idle",
    "library-loop-defects": "the library loop has defects neuron-spec cannot fix from outside",
    "checkpoint-prepared": "the checkpoint is converted or downloaded once before loading",
    "artifact-cache-unusable": "compile.artifact_cache cannot be created or written, or is full",
    # host checks (`neuron-spec doctor`)
    "not-neuron-host": "no NeuronCores: not an inf2/trn1 host, or its Neuron tools are missing",
    "tnx-missing": "transformers-neuronx is not installed in this Python environment",
    "tnx-version": "transformers-neuronx is too old for speculation, or no SDK shipped it",
    "component-missing": "a Neuron component transformers-neuronx needs is not installed",
    "components-unshipped": "installed Neuron components no SDK release shipped together",
    "driver-not-loaded": "the Neuron kernel driver is not loaded, or an older one is",
    "cores-busy": "another process holds NeuronCores",
    "host-ram-low": "host memory is short of what loading the pair needs",
    "disk-low": "disk space is short of what preparing the checkpoints writes",
    "neuron-sdk": "the Neuron SDK release this host's components match",
    "probe-unreadable": "a recorded or live tool output could not be read",
    "nxdi-fused-sampling": "NxDI's fused graph is greedy: it cannot sample or run this acceptor",
    "nxdi-fused-tp": "fused speculation needs a draft tp that divides the target's",
    "nxdi-fused-dtype": "fused speculation needs one dtype for draft and target",
    "nxdi-gqa-small-tp": "NxDI 0.8 fails to compile a GQA model at tp below its KV heads",
    "nxdi-release": "the NxD Inference release installed is not the one for this platform",
    "nxdi-missing": "neuronx-distributed-inference is not installed in this Python environment",
    "nxdi-transformers-pin": "transformers is not the version NxD Inference pins",
}
# Findings that say the config asks for something impossible rather than that this host or
# these models fall short: the commands that load (generate, serve, bench) exit 2 on them.
USAGE_CODES = frozenset({"nxdi-fused-sampling", "hub-unavailable", "speculation-method"})
# Findings that say a model named in the config cannot be read at all: every command,
# validate and plan included, exits 2 on them.
INPUT_CODES = frozenset({"hub-unavailable"})


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    path: str  # dotted field path in the config
    message: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.code not in FINDING_CODES:  # a programming error: every code is documented
            raise ValueError(f"unregistered finding code {self.code!r}")

    def to_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "code": self.code,
            "path": self.path,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    host: HostFacts

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Context:
    spec: DeploymentSpec
    host: HostFacts
    models: dict[str, ResolvedModel]
    memory: dict[str, ModelMemory] = field(default_factory=dict)  # at the configured tp
    base_dir: Path = field(default_factory=Path.cwd)  # relative config paths resolve here
    local: bool = False  # this machine is where the pair loads: check its directories

    @property
    def neuronx(self) -> bool:
        """transformers-neuronx: its own rules (topology list, KV-head sharding, loops)."""
        return self.spec.backend == "neuronx"

    @property
    def nxdi(self) -> bool:
        return self.spec.backend == "nxdi"

    @property
    def neuron(self) -> bool:
        """Either Neuron library: the rules about NeuronCores, memory and checkpoints."""
        return self.spec.neuron

    def arch(self, role: str) -> Architecture | None:
        """The role's architecture; None when unknown or when the role loads no model."""
        found = self.models.get(role)
        return None if found is None else found.architecture

    def model_spec(self, role: str) -> ModelSpec:
        return dict(self.spec.models())[role]


def build_context(spec: DeploymentSpec, host: HostFacts, base_dir: Path) -> Context:
    models = {role: resolve_model(m.model, base_dir, m.architecture) for role, m in spec.models()}
    memory = {}
    for role, m in spec.models():
        arch = models[role].architecture
        if arch is not None:
            memory[role] = model_memory(
                arch,
                tp=m.tp_degree,
                amp=m.amp,
                n_positions=m.max_positions,
                batch_size=m.batch_size,
            )
    return Context(spec, host, models, memory, base_dir)


Rule = Callable[[Context], Iterator[Finding]]


def registry() -> tuple[list[Rule], Callable[[Rule], Rule]]:
    """A list of rules and the decorator that adds a rule to it (each rule module has one)."""
    rules: list[Rule] = []

    def rule(fn: Rule) -> Rule:
        rules.append(fn)
        return fn

    return rules, rule
