"""The deployment config: YAML on disk -> a frozen, typed DeploymentSpec.

Loading collects every problem before raising, and locates each one by file, line and dotted
field path. Structural checks live here (types, ranges, unknown keys and names); rules about
whether a deployment will run on a given host live in preflight.py.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from .catalog import INSTANCES, architecture_names, find_architecture
from .errors import ConfigError, ConfigProblem

Amp = Literal["f32", "f16", "bf16"]
BUILTIN_ACCEPTORS = ("greedy", "lossless", "neuronx-default")
_CUSTOM_ACCEPTOR = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
MAX_DRAFT_TOKENS = 31


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """' Did you mean 'x'?' or '' when nothing is close."""
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
                f"{item!r} is not an integer; expected a positive integer or a list of them"
            )
        if item < 1:
            raise ValueError(f"{item} is not positive; lengths start at 1")
        out.append(item)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"buckets {out} must be strictly increasing")
    return tuple(out)


def _optional_positions(value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if value == 0 or value == [0]:
        return (0,)  # transformers-neuronx: 0 turns prompt-encoding buckets off
    return _positions(value)


_INT_OR_LIST_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
    ]
}
Positions = Annotated[
    tuple[int, ...], BeforeValidator(_positions), WithJsonSchema(_INT_OR_LIST_SCHEMA)
]
OptionalPositions = Annotated[
    tuple[int, ...] | None,
    BeforeValidator(_optional_positions),
    WithJsonSchema({"anyOf": [*_INT_OR_LIST_SCHEMA["anyOf"], {"type": "null"}]}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ModelSpec(_Strict):
    """One model of the pair (draft or target), as LlamaForSampling loads it."""

    model: str = Field(
        description="A catalog name (e.g. llama-2-70b), a local checkpoint directory holding "
        "config.json, or a .gguf file. Relative paths are relative to the config file."
    )
    architecture: str | None = Field(
        default=None,
        description="Catalog name to size the model by when its config.json is not at hand "
        "(e.g. before the checkpoint is downloaded). Defaults to the checkpoint's own config.",
    )
    tokenizer: str | None = Field(
        default=None,
        description="Tokenizer directory; defaults to the checkpoint directory.",
    )
    amp: Amp = Field(default="bf16", description="Weight and compute dtype: f32, f16 or bf16.")
    tp_degree: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Tensor-parallel degree: NeuronCores the model is sharded over.",
    )
    n_positions: Positions = Field(
        default=(2048,),
        description="Maximum sequence length (prompt + generated), or a list of buckets.",
    )
    batch_size: int = Field(default=1, ge=1, le=256, description="Compiled batch size.")
    context_length_estimate: OptionalPositions = Field(
        default=None,
        description="Prompt-encoding buckets (int or list); 0 turns them off. Each must be "
        "<= max(n_positions).",
    )

    @property
    def max_positions(self) -> int:
        return self.n_positions[-1]

    @field_validator("model", "tokenizer", "architecture")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if find_architecture(v) or looks_like_path(v):
            return v
        raise ValueError(
            f"'{v}' is neither a catalog model nor a path.{did_you_mean(v, architecture_names())}"
            f" Fix: use a catalog name ({', '.join(_CATALOG_MODELS)}) or a path to a "
            f"checkpoint directory (write ./{v} for a directory next to the config)."
        )

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, v: str | None) -> str | None:
        if v is None or find_architecture(v):
            return v
        raise ValueError(
            f"'{v}' is not a catalog architecture.{did_you_mean(v, architecture_names())}"
            f" Fix: use one of {', '.join(_CATALOG_MODELS)}."
        )


class SpeculationSpec(_Strict):
    draft_tokens: int = Field(
        default=4,
        ge=1,
        le=MAX_DRAFT_TOKENS,
        description="Draft tokens proposed per step (gamma, what papers, vLLM and Hugging Face "
        "call k). transformers-neuronx's compiled window k is derived: window = draft_tokens + 1.",
    )
    acceptor: str = Field(
        default="lossless",
        description="greedy (output equals the target's greedy decoding), lossless (speculative "
        "sampling with the configured warping, output distributed as the target's), "
        "neuronx-default (transformers-neuronx's own rule, for comparison), or "
        "'package.module:Class' for your own TokenAcceptor.",
    )

    loop: Literal["library", "engine"] = Field(
        default="library",
        description="Which loop drives the compiled pair on transformers-neuronx: library "
        "(SpeculativeGenerator.sample, with every defect that can be fixed from outside "
        "fixed) or engine (neuron-spec's own loop over the same graphs: exactly lossless "
        "including the first token, safe for token id 0). The reference backend always runs "
        "the engine.",
    )

    @property
    def window(self) -> int:
        """transformers-neuronx's k: the last accepted token plus the draft tokens."""
        return self.draft_tokens + 1

    @field_validator("acceptor")
    @classmethod
    def _known_acceptor(cls, v: str) -> str:
        if v in BUILTIN_ACCEPTORS or _CUSTOM_ACCEPTOR.match(v):
            return v
        raise ValueError(
            f"'{v}' is not an acceptor.{did_you_mean(v, BUILTIN_ACCEPTORS)} Fix: use "
            f"{', '.join(BUILTIN_ACCEPTORS)}, or 'package.module:ClassName' for your own."
        )


class SamplingSpec(_Strict):
    temperature: float = Field(
        default=0.0, ge=0.0, le=100.0, description="0 means greedy (argmax)."
    )
    top_k: int = Field(default=0, ge=0, description="Keep the k most likely tokens; 0 = off.")
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass; 1.0 = off."
    )
    seed: int | None = Field(default=0, description="Random seed; null for a fresh one each run.")


class GenerationSpec(_Strict):
    max_new_tokens: int = Field(default=128, ge=1, le=1_000_000)
    max_prompt_tokens: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description="Longest prompt you will send, in tokens; the preflight checks that prompt, "
        "generated tokens and the speculation window fit n_positions.",
    )
    eos_token_id: int | list[int] | None = Field(
        default=None,
        description="End-of-sequence id(s); defaults to the model's own.",
    )


class CompileSpec(_Strict):
    cc_flags: str | None = Field(
        default=None,
        description="Extra neuronx-cc flags (exported as NEURON_CC_FLAGS), e.g. '-O1'.",
    )
    artifact_cache: str = Field(
        default="~/.cache/neuron-spec/compiled",
        description="Local directory of compiled artifacts (NEFFs) keyed by everything that "
        "shapes the graphs.",
    )
    s3_mirror: str | None = Field(
        default=None,
        description="s3://bucket/prefix mirror of the artifact cache, so a fleet compiles once.",
    )
    neuron_cache_url: str | None = Field(
        default=None,
        description="Neuron compile cache (NEURON_COMPILE_CACHE_URL): a path or an s3:// URL.",
    )

    @field_validator("s3_mirror")
    @classmethod
    def _s3(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", v):
            raise ValueError(
                f"'{v}' is not an S3 URL. Fix: write s3://bucket-name/optional/prefix."
            )
        return v


class DeploymentSpec(_Strict):
    """A draft/target pair and how to run it."""

    instance: str = Field(
        default="auto",
        description="Instance type from the catalog (e.g. trn1.32xlarge), or 'auto' to detect it.",
    )
    backend: Literal["neuronx", "reference"] = Field(
        default="neuronx",
        description="neuronx: transformers-neuronx on NeuronCores. reference: PyTorch + "
        "transformers on CPU or CUDA.",
    )
    target: ModelSpec
    draft: ModelSpec
    speculation: SpeculationSpec = SpeculationSpec()
    sampling: SamplingSpec = SamplingSpec()
    generation: GenerationSpec = GenerationSpec()
    compile: CompileSpec = CompileSpec()

    @field_validator("instance")
    @classmethod
    def _known_instance(cls, v: str) -> str:
        if v == "auto" or v in INSTANCES:
            return v
        raise ValueError(
            f"'{v}' is not a known instance type.{did_you_mean(v, list(INSTANCES))}"
            f" Fix: use 'auto' or one of {', '.join(INSTANCES)}."
        )

    def models(self) -> Iterator[tuple[str, ModelSpec]]:
        yield "target", self.target
        yield "draft", self.draft


_CATALOG_MODELS = (
    "llama-2-7b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3-8b",
    "llama-3-70b",
    "smollm2-135m",
)


def looks_like_path(value: str) -> bool:
    return (
        "/" in value
        or "\\" in value
        or value.startswith((".", "~", "$"))
        or value.lower().endswith(".gguf")
        or value.startswith("s3://")
    )


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


def _yaml_problem(exc: BaseException, file: str | None) -> ConfigProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}"
    if context:
        message += f" ({context})"
    return ConfigProblem(
        path="",
        message=message + ".",
        fix="correct the YAML at that position (check indentation, colons and quotes).",
        file=file,
        line=mark.line + 1 if mark is not None else None,
        column=mark.column + 1 if mark is not None else None,
    )


def _walk(
    node: yaml.Node, prefix: str, out: dict[str, tuple[int, int]], dupes: list[tuple[str, int, int]]
) -> None:
    out.setdefault(prefix, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            path = f"{prefix}.{key}" if prefix else key
            if key in seen:
                dupes.append((path, key_node.start_mark.line + 1, key_node.start_mark.column + 1))
            seen.add(key)
            out[path] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _walk(value_node, path, out, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{prefix}[{i}]", out, dupes)


def parse_yaml(text: str, file: str | None = None) -> tuple[Any, dict[str, tuple[int, int]]]:
    """Parse YAML safely (SafeLoader: plain data only), returning data and a path -> position map.

    Duplicate keys, which PyYAML would silently resolve to the last one, are errors.
    """
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, file)]) from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # SafeLoader can raise these for odd scalars (e.g. an impossible date) or deep nesting.
        raise ConfigError(
            [ConfigProblem("", f"unreadable YAML value: {exc}.", "correct the value.", file)]
        ) from exc
    positions: dict[str, tuple[int, int]] = {}
    if node is not None:
        dupes: list[tuple[str, int, int]] = []
        try:
            _walk(node, "", positions, dupes)
        except RecursionError as exc:
            raise ConfigError(
                [ConfigProblem("", "the YAML is nested too deeply.", "flatten it.", file)]
            ) from exc
        if dupes:
            raise ConfigError(
                [
                    ConfigProblem(
                        path,
                        "this key appears twice in the same mapping; YAML would silently keep "
                        "the last one.",
                        "delete one of them.",
                        file,
                        line,
                        col,
                    )
                    for path, line, col in dupes
                ]
            )
    return data, positions


# --------------------------------------------------------------------------------------------
# pydantic errors -> located problems


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_for(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = DeploymentSpec
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return model


def _split_fix(text: str) -> tuple[str, str]:
    if " Fix: " in text:
        msg, fix = text.split(" Fix: ", 1)
        return msg, fix
    return text, ""


def _problem_from_pydantic(
    err: Mapping[str, Any], positions: Mapping[str, tuple[int, int]], file: str | None
) -> ConfigProblem:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind = err["type"]
    observed = err.get("input")
    path = _dotted(loc)
    fix = ""
    if kind == "extra_forbidden":
        parent = _model_for(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        key = str(loc[-1])
        message = f"unknown key '{key}'.{did_you_mean(key, allowed)}"
        fix = f"allowed keys here: {', '.join(allowed)}." if allowed else "remove it."
    elif kind == "missing":
        message = "required key is missing."
        parent = _model_for(loc[:-1])
        desc = parent.model_fields[str(loc[-1])].description if parent else None
        fix = f"add '{loc[-1]}'" + (f" ({desc})" if desc else "") + "."
    elif kind in ("value_error", "assertion_error"):
        text = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        message, fix = _split_fix(text)
        if not message.endswith((".", "?")):
            message += "."
    elif kind == "model_type" or kind == "model_attributes_type":
        message = f"expected a mapping of keys, got {type(observed).__name__} {observed!r}."
        parent = _model_for(loc)
        if parent is not None:
            fix = f"write it as a mapping with keys {', '.join(sorted(parent.model_fields))}."
    else:
        message = f"got {observed!r}: {err['msg']}."
        if kind in (
            "int_type",
            "int_parsing",
            "float_type",
            "float_parsing",
            "string_type",
            "bool_type",
        ) and isinstance(observed, str):
            fix = "write the value without quotes."
    pos = None
    for cut in range(len(loc), -1, -1):
        pos = positions.get(_dotted(loc[:cut]))
        if pos is not None:
            break
    return ConfigProblem(
        path=path,
        message=message,
        fix=fix,
        file=file,
        line=pos[0] if pos else None,
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
                    pos[0] if pos else None,
                )
            ]
        )
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(
            [
                ConfigProblem(
                    "",
                    f"keys must be strings; found {k!r}.",
                    "quote the key or fix its name.",
                    file,
                )
                for k in bad_keys
            ]
        )
    try:
        return DeploymentSpec.model_validate(data)
    except ValidationError as exc:
        problems = [_problem_from_pydantic(e, positions, file) for e in exc.errors()]
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
        raise ConfigError(
            [ConfigProblem("", f"not UTF-8 text (byte {exc.start}).", "save it as UTF-8.", name)]
        ) from None
    data, positions = parse_yaml(text, name)
    spec = spec_from_data(data, positions, name)
    return ConfigFile(spec=spec, path=p, positions=positions)


def load_config_text(text: str, name: str = "<config>") -> ConfigFile:
    data, positions = parse_yaml(text, name)
    return ConfigFile(spec=spec_from_data(data, positions, name), path=None, positions=positions)


def json_schema() -> dict[str, Any]:
    schema = DeploymentSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "neuron-spec deployment config"
    return schema
