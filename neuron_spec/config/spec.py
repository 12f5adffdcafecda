"""The deployment config: YAML on disk -> a frozen, typed DeploymentSpec.

Loading collects every problem before raising, and locates each one by file, line and dotted
field path. Structural checks live here (types, ranges, unknown keys and names); rules about
whether a deployment will run on a given host live in preflight.py.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ..errors import ConfigError, ConfigProblem
from .catalog import INSTANCES, architecture_names, find_architecture
from .schema import (
    AnyOf,
    Bool,
    Choice,
    Custom,
    Float,
    Int,
    Invalid,
    Issue,
    ListOf,
    Loc,
    Nested,
    Nullable,
    Record,
    Str,
    dotted,
    spec,
)
from .yamlread import DuplicateKeys, parse_yaml, show

Amp = Literal["f32", "f16", "bf16"]
Loop = Literal["library", "engine"]
Method = Literal["draft", "ngram", "suffix"]
Backend = Literal["neuronx", "nxdi", "reference"]
SpeculationMode = Literal["unfused", "fused"]
BUILTIN_ACCEPTORS = ("greedy", "lossless", "neuronx-default")
_CUSTOM_ACCEPTOR = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
MAX_DRAFT_TOKENS = 31
MAX_NGRAM = 16
MAX_SUFFIX_TOKENS = 1 << 24
# The longest sequence any config may ask for: 8x Llama 3.1's 131072-token context. Anything
# longer is a typo, and unbounded lengths overflow the memory model's floats.
MAX_POSITIONS = 1 << 20
MAX_MESSAGE = 500  # characters of one problem's message; values in it are shown by show()


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """' Did you mean 'x'?' or '' when nothing is close. A word naming a model family
    ('llama-3.2-...') is matched within that family first."""
    import difflib

    family = re.match(r"^([a-z]+-?\d+(?:\.\d+)?)", word.lower())
    if family:
        same = [c for c in choices if c.lower().startswith(family.group(1))]
        close = difflib.get_close_matches(word.lower(), [c.lower() for c in same], n=1, cutoff=0.5)
        if close:
            return f" Did you mean '{next(c for c in same if c.lower() == close[0])}'?"
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" Did you mean '{lowered[close[0]]}'?" if close else ""


def _positions(value: object) -> tuple[int, ...]:
    """An int or a strictly increasing list of ints >= 1 (transformers-neuronx buckets)."""
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise ValueError("must be a positive integer or a non-empty list of them")
    out: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(
                f"{show(item)} is not an integer; expected a positive integer or a list of them"
            )
        if item < 1:
            raise ValueError(f"{show(item)} is not positive; lengths start at 1")
        if item > MAX_POSITIONS:
            raise ValueError(
                f"{show(item)} is more than {MAX_POSITIONS} positions (Llama 3.1's context "
                "is 131072)"
            )
        out.append(item)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"buckets {show(out)} must be strictly increasing")
    return tuple(out)


def _optional_positions(value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if value == 0 or value == [0] or value == (0,):
        return (0,)  # transformers-neuronx: 0 turns prompt-encoding buckets off
    return _positions(value)


_INT_OR_LIST_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_POSITIONS},
        {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": MAX_POSITIONS},
            "minItems": 1,
        },
    ]
}
POSITIONS = Custom(_positions, "int or list of int", _INT_OR_LIST_SCHEMA)
OPTIONAL_POSITIONS = Custom(
    _optional_positions,
    "int or list of int or null",
    {"anyOf": [*_INT_OR_LIST_SCHEMA["anyOf"], {"type": "null"}]},
)


_CATALOG_MODELS = (
    "llama-2-7b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3-8b",
    "llama-3-70b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3.3-70b",
    "smollm2-135m",
)


MAX_PATH, MAX_NAME = 4096, 255  # Linux PATH_MAX and NAME_MAX, in bytes


def check_path(value: str) -> str:
    """A path the operating system can take, or a ValueError saying why not."""
    encoded = value.encode("utf-8", "surrogatepass")
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if len(encoded) > MAX_PATH or longest > MAX_NAME:
        raise ValueError(
            f"the path {show(value)} is too long for the file system ({len(encoded)} bytes; "
            f"at most {MAX_PATH}, and {MAX_NAME} per name). Fix: use a shorter path."
        )
    return value


def looks_like_path(value: str) -> bool:
    return (
        "/" in value
        or "\\" in value
        or value.startswith((".", "~", "$"))
        or value.lower().endswith(".gguf")
        or value.startswith("s3://")
    )


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return check_path(v)


def _known_model(v: str) -> str:
    if find_architecture(v):
        return v
    if looks_like_path(v):
        return check_path(v)
    raise ValueError(
        f"{show(v)} is neither a catalog model nor a path."
        f"{did_you_mean(v[:100], architecture_names())}"
        f" Fix: use a catalog name ({', '.join(_CATALOG_MODELS)}) or a path to a "
        f"checkpoint directory (write ./{v[:60]} for a directory next to the config)."
    )


def _known_architecture(v: str) -> str:
    if find_architecture(v):
        return v
    raise ValueError(
        f"{show(v)} is not a catalog architecture.{did_you_mean(v, architecture_names())}"
        f" Fix: use one of {', '.join(_CATALOG_MODELS)}."
    )


def _known_acceptor(v: str) -> str:
    if v in BUILTIN_ACCEPTORS or _CUSTOM_ACCEPTOR.match(v):
        return v
    raise ValueError(
        f"{show(v)} is not an acceptor.{did_you_mean(v, BUILTIN_ACCEPTORS)} Fix: use "
        f"{', '.join(BUILTIN_ACCEPTORS)}, or 'package.module:ClassName' for your own."
    )


def _s3_url(v: str) -> str:
    from ..util.s3names import uri_problem

    broken = uri_problem(v)
    if broken or not _S3_URL.match(v):
        raise ValueError(
            f"{show(v)} is not a usable S3 URL: {broken or 'it names no bucket'}. Fix: write "
            "s3://bucket-name/optional/prefix."
        )
    return v


def _known_instance(v: str) -> str:
    if v == "auto" or v in INSTANCES:
        return v
    raise ValueError(
        f"{show(v)} is not a known instance type.{did_you_mean(v, list(INSTANCES))}"
        f" Fix: use 'auto' or one of {', '.join(INSTANCES)}."
    )


@dataclass(frozen=True, kw_only=True)
class ModelSpec(Record):
    """One model of the pair (draft or target), as LlamaForSampling loads it."""

    model: str = spec(
        Str(),
        description="A catalog name (e.g. llama-2-70b), a local checkpoint directory holding "
        "config.json, a .gguf file, a Hugging Face Hub repo id (ORG/NAME) or an s3:// URL. "
        "Relative paths are relative to the config file.",
        checks=(_not_blank, _known_model),
    )
    architecture: str | None = spec(
        Nullable(Str()),
        None,
        "Catalog name to size the model by when its config.json is not at hand "
        "(e.g. before the checkpoint is downloaded). Defaults to the checkpoint's own config.",
        checks=(_not_blank, _known_architecture),
    )
    tokenizer: str | None = spec(
        Nullable(Str()),
        None,
        "Tokenizer directory; defaults to the checkpoint directory.",
        checks=(_not_blank,),
    )
    amp: Amp = spec(Choice(*get_args(Amp)), "bf16", "Weight and compute dtype: f32, f16 or bf16.")
    tp_degree: int = spec(
        Int(ge=1, le=1024), 1, "Tensor-parallel degree: NeuronCores the model is sharded over."
    )
    n_positions: tuple[int, ...] = spec(
        POSITIONS,
        (2048,),
        "Maximum sequence length (prompt + generated), or a list of buckets.",
    )
    batch_size: int = spec(Int(ge=1, le=256), 1, "Compiled batch size.")
    context_length_estimate: tuple[int, ...] | None = spec(
        OPTIONAL_POSITIONS,
        None,
        "Prompt-encoding buckets (int or list); 0 turns them off. Each must be "
        "<= max(n_positions).",
    )

    @property
    def max_positions(self) -> int:
        return self.n_positions[-1]


@dataclass(frozen=True, kw_only=True)
class SpeculationSpec(Record):
    """Where proposals come from, how many, and how the target accepts them."""

    method: Method = spec(
        Choice(*get_args(Method)),
        "draft",
        "Where the proposed tokens come from. draft: the draft model (the `draft:` section). "
        "ngram: prompt lookup, no draft model: the row's last n tokens are found earlier in its "
        "prompt and output, and what followed is proposed (pays on input-grounded work: "
        "summaries, extraction, edits, code). suffix: the same over the row and over earlier "
        "outputs of the same server (repeated tasks, agent loops). ngram and suffix load and "
        "compile no draft model: a `draft:` section is not needed.",
    )
    draft_tokens: int = spec(
        Int(ge=1, le=MAX_DRAFT_TOKENS),
        4,
        "The most tokens proposed per step (gamma, what papers, vLLM and Hugging Face "
        "call k). transformers-neuronx's and NxD Inference's compiled window k is derived: "
        "window = draft_tokens + 1. With ngram or suffix and `adaptive` on, a long window "
        "costs little where the verify width is not compiled (the reference backend): "
        "on the CPU demo's input-grounded prompts 16 beat 8.",
    )
    adaptive: bool = spec(
        Bool(),
        True,
        "Choose each step's proposal length, 0 (no speculation) to draft_tokens, for the most "
        "output tokens/s at the batch's current occupancy: from each row's recent acceptance "
        "and the measured time of steps at each length and number of rows (the engine "
        "learns both as it runs). false: always propose draft_tokens (as many as the lookup "
        "finds, for ngram and suffix). A request that sends its own seed with temperature > "
        "0 always proposes all it can, so it draws its random numbers as it does alone. "
        "Greedy output is the target's either way; sampled output stays distributed as the "
        "target's.",
    )
    ngram_min: int = spec(
        Int(ge=1, le=MAX_NGRAM),
        1,
        "ngram and suffix: the shortest run of tokens that must match for a proposal.",
    )
    ngram_max: int = spec(
        Int(ge=1, le=MAX_NGRAM),
        4,
        "ngram and suffix: the longest run matched (longer matches are tried first).",
    )
    suffix_tokens: int = spec(
        Int(ge=0, le=MAX_SUFFIX_TOKENS),
        262144,
        "suffix: how many tokens of earlier outputs the server keeps to match against (the "
        "oldest are forgotten first; up to about 500 bytes each with the index, so the "
        "default holds at most about 120 MB). 0: keep none (match the request alone).",
    )
    acceptor: str = spec(
        Str(),
        "lossless",
        "greedy (output equals the target's greedy decoding), lossless (speculative "
        "sampling with the configured warping, output distributed as the target's), "
        "neuronx-default (transformers-neuronx's own rule, for comparison), or "
        "'package.module:Class' for your own TokenAcceptor.",
        checks=(_known_acceptor,),
    )
    loop: Loop = spec(
        Choice(*get_args(Loop)),
        "engine",
        "Which loop drives the compiled pair on a Neuron backend: engine (the default: "
        "neuron-spec's own loop over the compiled graphs, exactly lossless including the "
        "first token, safe for token id 0) or library (transformers-neuronx's "
        "SpeculativeGenerator.sample, for comparison: the preflight names its defects). The "
        "reference backend always runs the engine.",
    )

    def relations(self, loc: Loc) -> list[Issue]:
        if self.ngram_min > self.ngram_max:
            return [
                Issue(
                    (*loc, "ngram_min"),
                    "value",
                    f"ngram_min={self.ngram_min} is larger than ngram_max={self.ngram_max}. "
                    f"Fix: set ngram_min to at most {self.ngram_max}.",
                    value=self.ngram_min,
                )
            ]
        return []

    @property
    def uses_draft(self) -> bool:
        """Proposals come from a draft model (which is then loaded and compiled)."""
        return self.method == "draft"

    @property
    def window(self) -> int:
        """transformers-neuronx's k: the last accepted token plus the draft tokens."""
        return self.draft_tokens + 1


@dataclass(frozen=True, kw_only=True)
class SamplingSpec(Record):
    """How tokens are drawn."""

    temperature: float = spec(Float(ge=0.0, le=100.0), 0.0, "0 means greedy (argmax).")
    top_k: int = spec(Int(ge=0), 0, "Keep the k most likely tokens; 0 = off.")
    top_p: float = spec(Float(gt=0.0, le=1.0), 1.0, "Nucleus sampling mass; 1.0 = off.")
    seed: int | None = spec(Nullable(Int()), 0, "Random seed; null for a fresh one each run.")


@dataclass(frozen=True, kw_only=True)
class GenerationSpec(Record):
    """How long prompts and answers may be."""

    max_new_tokens: int = spec(Int(ge=1, le=1_000_000), 128, "Tokens to generate at most.")
    max_prompt_tokens: int | None = spec(
        Nullable(Int(ge=1, le=1_000_000)),
        None,
        "Longest prompt you will send, in tokens; the preflight checks that it, "
        "max_new_tokens and the speculation window fit n_positions. Default: whatever "
        "n_positions leaves after max_new_tokens and the window. Every request is checked "
        "against n_positions when it arrives either way.",
    )
    eos_token_id: int | list[int] | None = spec(
        Nullable(AnyOf(Int(), ListOf(Int()))),
        None,
        "End-of-sequence id(s); defaults to the model's own.",
    )


@dataclass(frozen=True, kw_only=True)
class CompileSpec(Record):
    """Where compiled graphs are kept."""

    cc_flags: str | None = spec(
        Nullable(Str()),
        None,
        "Extra neuronx-cc flags (exported as NEURON_CC_FLAGS), e.g. '-O1'.",
    )
    artifact_cache: str = spec(
        Str(),
        "~/.cache/neuron-spec/compiled",
        "Local directory of compiled artifacts (NEFFs) keyed by everything that shapes the graphs.",
        checks=(_not_blank,),
    )
    s3_mirror: str | None = spec(
        Nullable(Str()),
        None,
        "s3://bucket/prefix mirror of the artifact cache, so a fleet compiles once.",
        checks=(_s3_url,),
    )
    neuron_cache_url: str | None = spec(
        Nullable(Str()),
        None,
        "Neuron compile cache (NEURON_COMPILE_CACHE_URL): a path or an s3:// URL.",
    )


@dataclass(frozen=True, kw_only=True)
class NxdiSpec(Record):
    """NxD Inference settings (backend: nxdi)."""

    speculation_mode: SpeculationMode = spec(
        Choice(*get_args(SpeculationMode)),
        "unfused",
        "unfused (the default): draft and target compiled apart, neuron-spec's engine drives "
        "both, logits come to the host, so sampling is exactly lossless. fused: one compiled "
        "graph drafts, verifies and accepts on the device, greedy only (temperature 0), one "
        "device call per round.",
    )


def _missing_draft(loc: Loc) -> Issue:
    return Issue(
        (*loc, "draft"),
        "missing",
        "required key is missing: speculation.method is draft (the default), and the draft "
        "model proposes the tokens.",
        fix="add a draft: section (a model that shares the target's tokenizer), or set "
        "speculation.method: ngram (prompt lookup) or suffix, which need no draft model.",
        record=DeploymentSpec,
    )


@dataclass(frozen=True, kw_only=True)
class DeploymentSpec(Record):
    """A draft/target pair and how to run it."""

    instance: str = spec(
        Str(),
        "auto",
        "Instance type from the catalog (e.g. trn1.32xlarge), or 'auto' to detect it.",
        checks=(_known_instance,),
    )
    backend: Backend = spec(
        Choice(*get_args(Backend)),
        "neuronx",
        "neuronx: transformers-neuronx on NeuronCores (Neuron SDK up to 2.25). nxdi: NxD "
        "Inference 0.8 to 0.10 on NeuronCores (SDK 2.28 to 2.31). reference: PyTorch + "
        "transformers on CPU or CUDA.",
    )
    target: ModelSpec = spec(Nested(ModelSpec), description=ModelSpec.__doc__ or "")
    draft: ModelSpec | None = spec(
        Nullable(Nested(ModelSpec)),
        None,
        (ModelSpec.__doc__ or "") + " Required with speculation.method: draft; ngram and "
        "suffix need none (a draft given to them is not loaded).",
    )
    speculation: SpeculationSpec = spec(Nested(SpeculationSpec), SpeculationSpec())
    sampling: SamplingSpec = spec(Nested(SamplingSpec), SamplingSpec())
    generation: GenerationSpec = spec(Nested(GenerationSpec), GenerationSpec())
    compile: CompileSpec = spec(Nested(CompileSpec), CompileSpec())
    nxdi: NxdiSpec = spec(Nested(NxdiSpec), NxdiSpec())

    @property
    def neuron(self) -> bool:
        """Runs on NeuronCores (either Neuron library)."""
        return self.backend in ("neuronx", "nxdi")

    def models(self) -> Iterator[tuple[str, ModelSpec]]:
        """The models that load: the target, and the draft when proposals come from it."""
        yield "target", self.target
        if self.draft_model is not None:
            yield "draft", self.draft_model

    @property
    def draft_model(self) -> ModelSpec | None:
        """The draft model that loads: the `draft:` section with method draft, else none."""
        return self.draft if self.speculation.uses_draft else None

    @property
    def n_positions(self) -> int:
        """The longest sequence (prompt + generated) every loaded model is configured for."""
        return min(m.max_positions for _role, m in self.models())

    def relations(self, loc: Loc) -> list[Issue]:
        if self.speculation.uses_draft and self.draft is None:
            return [_missing_draft(loc)]
        return []

    @classmethod
    def data_issues(cls, data: Mapping[str, Any], loc: Loc) -> list[Issue]:
        speculation = data.get("speculation")
        method = speculation.get("method", "draft") if isinstance(speculation, dict) else "draft"
        if "draft" not in data and method == "draft":
            return [_missing_draft(loc)]
        return []


# --------------------------------------------------------------------------------------------
# YAML with positions


@dataclass(frozen=True)
class ConfigFile:
    """A loaded config: the spec plus where each field came from, for located messages."""

    spec: DeploymentSpec
    path: Path | None
    positions: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.resolve().parent if self.path else Path.cwd()

    def locate(self, dotted: str) -> tuple[int, int] | None:
        """Line and column of a dotted path, or of its nearest ancestor present in the file."""
        parts = dotted.split(".") if dotted else []
        while parts:
            key = ".".join(parts)
            if key in self.positions:
                return self.positions[key]
            parts.pop()
        return self.positions.get("")

    def where(self, dotted: str) -> str:
        name = str(self.path) if self.path else "<config>"
        pos = self.locate(dotted)
        return f"{name}:{pos[0]}" if pos else name


# --------------------------------------------------------------------------------------------
# validation issues -> located problems


def _split_fix(text: str) -> tuple[str, str]:
    if " Fix: " in text:
        msg, fix = text.split(" Fix: ", 1)
        return msg, fix
    return text, ""


# What other stacks call the speculation length, and how it maps to draft_tokens (gamma).
DRAFT_ALIASES: dict[str, tuple[int, str]] = {
    "k": (1, "in transformers-neuronx, k is the window: the draft tokens plus one of the target's"),
    "speculation_length": (1, "in transformers-neuronx, speculation_length is the window k"),
    "num_speculative_tokens": (0, "in vLLM, num_speculative_tokens counts the draft tokens"),
    "num_assistant_tokens": (0, "in transformers, num_assistant_tokens counts the draft tokens"),
    "gamma": (0, "in the speculative decoding papers, gamma counts the draft tokens"),
}


def _draft_alias(key: str, value: Any) -> tuple[str, str]:
    offset, meaning = DRAFT_ALIASES[key]
    message = (
        f"'{key}' is not a neuron-spec key: {meaning}; neuron-spec calls the draft tokens per "
        "step draft_tokens."
    )
    if isinstance(value, int) and not isinstance(value, bool) and value - offset >= 1:
        n = value - offset
        extra = f" ({key} {value} = draft_tokens {n} + 1)" if offset else ""
        return message, f"write `speculation: {{draft_tokens: {n}}}` instead{extra}."
    return message, "write `speculation: {draft_tokens: N}`, N the draft tokens per step."


def _describe(issue: Issue) -> tuple[str, str]:
    """The message and the fix for one validation issue."""
    key, observed, record = str(issue.loc[-1]) if issue.loc else "", issue.value, issue.record
    allowed = record.field_names() if record else []
    if issue.kind == "unknown" and key in DRAFT_ALIASES:
        return _draft_alias(key, observed)
    if issue.kind == "unknown":
        fix = f"allowed keys here: {', '.join(sorted(allowed))}." if allowed else "remove it."
        return f"unknown key {show(key)}.{did_you_mean(key[:100], allowed)}", fix
    if issue.kind == "missing" and issue.fix:
        return issue.message, issue.fix
    if issue.kind == "missing":
        field = next((f for f in record.field_specs() if f.name == key), None) if record else None
        desc = field.description if field else ""
        return "required key is missing.", f"add '{key}'" + (f" ({desc})" if desc else "") + "."
    if issue.kind == "mapping":
        message = f"expected a mapping of keys, got {type(observed).__name__} {show(observed)}."
        return message, f"write it as a mapping with keys {', '.join(sorted(allowed))}."
    if issue.kind == "value":
        message, fix = _split_fix(issue.message)
        return message if message.endswith((".", "?")) else message + ".", fix
    fix = ""
    if issue.choices and isinstance(observed, str):
        fix = did_you_mean(observed[:100], issue.choices).strip()
    elif issue.kind == "type" and isinstance(observed, str) and "text" not in issue.message:
        fix = "write the value without quotes."  # "32" where a number or a list belongs
    return f"got {show(observed)}: {issue.message}.", fix


def describe_invalid(exc: Invalid) -> str:
    """The first problem of `exc`, as one sentence (for a value given on the command line)."""
    issue = exc.issues[0]
    if issue.kind in ("type", "range"):
        return issue.message
    message, fix = _describe(issue)
    return f"{message} Fix: {fix}" if fix else message


def _problem_from_issue(
    issue: Issue, positions: Mapping[str, tuple[int, int]], file: str | None
) -> ConfigProblem:
    message, fix = _describe(issue)
    pos = None
    for cut in range(len(issue.loc), -1, -1):
        pos = positions.get(dotted(issue.loc[:cut]))
        if pos is not None:
            break
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return ConfigProblem(
        path=dotted(issue.loc),
        message=message,
        fix=fix,
        file=file,
        line=pos[0] if pos else 1,
        column=pos[1] if pos else None,
    )


def spec_from_data(
    data: Any, positions: Mapping[str, tuple[int, int]] | None = None, file: str | None = None
) -> DeploymentSpec:
    """Validate parsed YAML (or any plain data) into a DeploymentSpec, or raise ConfigError."""
    positions = positions or {}
    if not isinstance(data, dict):
        kind = "an empty file" if data is None else f"a {type(data).__name__}"
        pos = positions.get("")
        raise ConfigError(
            [
                ConfigProblem(
                    "",
                    f"the config must be a mapping of keys (instance, backend, target, draft, "
                    f"...), but this is {kind}.",
                    "start from one of the files in configs/.",
                    file,
                    pos[0] if pos else 1,
                )
            ]
        )
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(
            [
                ConfigProblem(
                    "",
                    f"keys must be strings; found {show(k)}.",
                    "quote the key or fix its name.",
                    file,
                    (positions.get("") or (1, 1))[0],
                )
                for k in bad_keys
            ]
        )
    try:
        return DeploymentSpec.from_data(data)
    except Invalid as exc:
        problems = [_problem_from_issue(i, positions, file) for i in exc.issues]
        problems.sort(key=lambda p: (p.line or 0, p.column or 0, p.path))
        raise ConfigError(problems) from None


def load_config(path: str | Path) -> ConfigFile:
    """Read and validate a YAML config file. Raises ConfigError with every problem found."""
    p = Path(path)
    name = str(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            [ConfigProblem("", "file not found.", "check the path; configs/ has examples.", name)]
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            [ConfigProblem("", "this is a directory, not a YAML file.", "", name)]
        ) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem("", f"cannot read: {exc.strerror}.", "", name)]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [
                ConfigProblem(
                    "", f"not UTF-8 text (byte {exc.start}).", "save it as UTF-8.", name, line
                )
            ]
        ) from None
    spec, positions = _spec_from_text(text, name)
    return ConfigFile(spec=spec, path=p, positions=positions)


def load_config_text(text: str, name: str = "<config>") -> ConfigFile:
    spec, positions = _spec_from_text(text, name)
    return ConfigFile(spec=spec, path=None, positions=positions)


def _spec_from_text(text: str, name: str) -> tuple[DeploymentSpec, dict[str, tuple[int, int]]]:
    """Parse and validate; a repeated key is reported together with every other problem."""
    try:
        data, positions = parse_yaml(text, name)
    except DuplicateKeys as dup:
        problems = list(dup.problems)
        try:
            spec_from_data(dup.data, dup.positions, name)
        except ConfigError as more:
            problems += more.problems
        problems.sort(key=lambda p: (p.line or 0, p.column or 0, p.path))
        raise ConfigError(problems) from None
    return spec_from_data(data, positions, name), positions


def json_schema() -> dict[str, Any]:
    schema = DeploymentSpec.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "neuron-spec deployment config"
    return schema


def main(argv: list[str] | None = None) -> int:
    """`python -m neuron_spec.config.spec CONFIG`: print `backend=` and `instance=` lines for
    scripts/launch.sh, or the config's located problems and exit 2."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m neuron_spec.config.spec CONFIG\n")
        return 2
    try:
        spec = load_config(args[0]).spec
    except ConfigError as exc:
        sys.stderr.write(f"error: {len(exc.problems)} problem(s) in the config:\n")
        for p in exc.problems:
            sys.stderr.write(f"  {p.render()}\n")
        return 2
    print(f"backend={spec.backend}\ninstance={spec.instance}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
