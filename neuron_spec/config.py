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
from .yamlread import DuplicateKeys, parse_yaml, show

Amp = Literal["f32", "f16", "bf16"]
BUILTIN_ACCEPTORS = ("greedy", "lossless", "neuronx-default")
_CUSTOM_ACCEPTOR = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
MAX_DRAFT_TOKENS = 31
MAX_MESSAGE = 500  # characters of one problem's message; values in it are shown by show()


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
        return check_path(v) if v is not None else v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
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

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, v: str | None) -> str | None:
        if v is None or find_architecture(v):
            return v
        raise ValueError(
            f"{show(v)} is not a catalog architecture.{did_you_mean(v, architecture_names())}"
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
            f"{show(v)} is not an acceptor.{did_you_mean(v, BUILTIN_ACCEPTORS)} Fix: use "
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
    max_prompt_tokens: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Longest prompt you will send, in tokens; the preflight checks that it, "
        "max_new_tokens and the speculation window fit n_positions. Default: whatever "
        "n_positions leaves after max_new_tokens and the window. Every request is checked "
        "against n_positions when it arrives either way.",
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
                f"{show(v)} is not an S3 URL. Fix: write s3://bucket-name/optional/prefix."
            )
        return v

    @field_validator("artifact_cache")
    @classmethod
    def _cache_path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return check_path(v)


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
            f"{show(v)} is not a known instance type.{did_you_mean(v, list(INSTANCES))}"
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


def _problem_from_pydantic(
    err: Mapping[str, Any], positions: Mapping[str, tuple[int, int]], file: str | None
) -> ConfigProblem:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind = err["type"]
    observed = err.get("input")
    path = _dotted(loc)
    fix = ""
    if kind == "extra_forbidden" and str(loc[-1]) in DRAFT_ALIASES:
        message, fix = _draft_alias(str(loc[-1]), observed)
    elif kind == "extra_forbidden":
        parent = _model_for(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        key = str(loc[-1])
        message = f"unknown key {show(key)}.{did_you_mean(key[:100], allowed)}"
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
        message = f"expected a mapping of keys, got {type(observed).__name__} {show(observed)}."
        parent = _model_for(loc)
        if parent is not None:
            fix = f"write it as a mapping with keys {', '.join(sorted(parent.model_fields))}."
    else:
        message = f"got {show(observed)}: {err['msg']}."
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
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return ConfigProblem(
        path=path,
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
    schema = DeploymentSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "neuron-spec deployment config"
    return schema


def main(argv: list[str] | None = None) -> int:
    """`python -m neuron_spec.config CONFIG`: print `backend=` and `instance=` lines for
    scripts/launch.sh, or the config's located problems and exit 2."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m neuron_spec.config CONFIG\n")
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
