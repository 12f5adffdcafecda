"""Where a model's weights are and what architecture they have, without importing torch.

A model is a catalog name, a checkpoint directory (config.json, with or without weights), a
.gguf file, an s3:// URL, or a Hugging Face Hub repo id (ORG/NAME, hub.py). Resolution reads
only small metadata: config.json, or a GGUF file's header.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from ..config.catalog import Architecture, find_architecture
from ..config.yamlread import show
from ..errors import ConfigError, ConfigProblem
from ..util.safeio import Unreadable, read_json

Kind = Literal["catalog", "directory", "gguf", "s3", "hub"]

# transformers-neuronx's loader priority (its PretrainedModel.from_pretrained); the first three
# load lazily.
WEIGHT_FORMATS: tuple[tuple[str, bool], ...] = (
    ("model.safetensors", True),
    ("model.safetensors.index.json", True),
    ("pytorch_model.bin/", True),  # the "split" format: a directory of per-tensor files
    ("pytorch_model.bin", False),
    ("pytorch_model.bin.index.json", False),
)


@dataclass(frozen=True)
class ResolvedModel:
    spec_model: str
    kind: Kind
    location: str  # catalog name, absolute path, or URL
    architecture: Architecture | None
    weights: str | None = None  # which weight file/format was found
    lazy_loadable: bool | None = None  # None when unknown (catalog, s3)
    problem: str | None = None  # why the checkpoint could not be read, if it could not
    weight_bytes_on_disk: int | None = None
    fix: str | None = None  # what to do about the problem, where known

    @property
    def exists(self) -> bool:
        return self.problem is None


def _expand(value: str, base_dir: Path) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(value)))
    return p if p.is_absolute() else (base_dir / p)


# What sizing reads from a model's config (config.json, or a GGUF header) and the values it
# accepts. Llama 3.1 405B, the largest published Llama, sits well inside each range: hidden
# 16384, intermediate 53248, 126 layers, 128 heads, 8 KV heads, vocab 128256, 131072 positions.
# Beyond them a value is a broken or hostile file, and sizes computed from it overflow.
SIZE_RANGES: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 1 << 18),
    "intermediate_size": (1, 1 << 20),
    "num_hidden_layers": (1, 1 << 12),
    "num_attention_heads": (1, 1 << 12),
    "num_key_value_heads": (1, 1 << 12),
    "vocab_size": (1, 1 << 24),
    "max_position_embeddings": (1, 1 << 24),
    "head_dim": (1, 1 << 12),
}
TOKEN_ID_RANGE = (0, 2**31 - 1)
MAX_EOS_IDS = 64
MODEL_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_CONFIG_JSON_BYTES = 1 << 20  # a config.json is a few kB
MAX_INDEX_BYTES = 16 << 20  # a safetensors index: about 100 kB for Llama 3.1 405B
CONFIG_FIX = (
    "correct that value in the file (a model's own config.json has it right), or point model "
    "at another checkpoint"
)


def _bad(where: str, key: str, value: Any, allowed: str) -> ConfigError:
    message = f"{key} is {show(value)}; allowed: {allowed}."
    return ConfigError([ConfigProblem(key, message, CONFIG_FIX + ".", where)])


def _whole(value: Any, key: str, where: str, bounds: tuple[int, int] | None = None) -> int:
    """A whole number read from a model's config, within its range (SIZE_RANGES[key] unless
    `bounds`); a ConfigError naming the file and the key otherwise. 4096.0 counts as 4096."""
    lo, hi = bounds or SIZE_RANGES[key]
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or number != int(number):
        raise _bad(where, key, value, f"a whole number from {lo} to {hi}")
    if not lo <= int(number) <= hi:
        raise _bad(where, key, value, f"a whole number from {lo} to {hi}")
    return int(number)


def _optional(value: Any, key: str, where: str, default: int | None = None) -> int | None:
    return default if value is None else _whole(value, key, where)


def _model_type(value: Any, key: str, where: str) -> str:
    if value is None:
        return "unknown"
    if not isinstance(value, str) or not MODEL_TYPE.fullmatch(value):
        raise _bad(where, key, value, "a name of letters, digits, '_', '.' and '-' (e.g. llama)")
    return value


def _eos_ids(value: Any, key: str, where: str) -> tuple[int, ...]:
    items = value if isinstance(value, list) else ([] if value is None else [value])
    if len(items) > MAX_EOS_IDS:
        raise _bad(where, key, value, f"a token id or a list of at most {MAX_EOS_IDS}")
    return tuple(_whole(x, key, where, TOKEN_ID_RANGE) for x in items)


def _shape(heads: int, kv_heads: int, hidden: int, head_dim: int | None, where: str) -> None:
    """What a Llama's attention needs of its shape (transformers' LlamaAttention)."""
    if kv_heads > heads or heads % kv_heads:
        raise _bad(
            where,
            "num_key_value_heads",
            kv_heads,
            f"a divisor of num_attention_heads ({heads}): each KV head serves a group of heads",
        )
    if head_dim is None and hidden % heads:
        raise _bad(
            where,
            "hidden_size",
            hidden,
            f"a multiple of num_attention_heads ({heads}) when head_dim is not given",
        )


def architecture_from_hf_config(cfg: dict[str, Any], name: str, where: str = "") -> Architecture:
    """An Architecture from a Hugging Face config.json mapping: KeyError if a size is missing,
    ConfigError (naming `where`, the file, and the key) if a value is out of its range."""
    where = where or f"config.json of {name}"
    heads = _whole(cfg["num_attention_heads"], "num_attention_heads", where)
    kv_heads = _optional(cfg.get("num_key_value_heads"), "num_key_value_heads", where, heads)
    hidden = _whole(cfg["hidden_size"], "hidden_size", where)
    head_dim = _optional(cfg.get("head_dim"), "head_dim", where)
    _shape(heads, kv_heads or heads, hidden, head_dim, where)
    bos = cfg.get("bos_token_id")
    tie = cfg.get("tie_word_embeddings", False)
    if tie is not None and not isinstance(tie, bool):
        raise _bad(where, "tie_word_embeddings", tie, "true or false")
    return Architecture(
        name=name,
        model_type=_model_type(cfg.get("model_type"), "model_type", where),
        hidden_size=hidden,
        intermediate_size=_whole(cfg["intermediate_size"], "intermediate_size", where),
        num_layers=_whole(cfg["num_hidden_layers"], "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=kv_heads or heads,
        vocab_size=_whole(cfg["vocab_size"], "vocab_size", where),
        max_positions=_optional(
            cfg.get("max_position_embeddings"), "max_position_embeddings", where, 2048
        )
        or 2048,
        tie_word_embeddings=bool(tie),
        head_dim=head_dim,
        bos_token_id=None if bos is None else _whole(bos, "bos_token_id", where, TOKEN_ID_RANGE),
        eos_token_id=_eos_ids(cfg.get("eos_token_id"), "eos_token_id", where),
        source=f"config.json of {name}",
    )


def _directory(spec_model: str, path: Path, override: Architecture | None) -> ResolvedModel:
    loc = str(path)
    if not path.exists():
        return ResolvedModel(
            spec_model,
            "directory",
            loc,
            override,
            problem=f"checkpoint directory {loc} does not exist",
        )
    if not path.is_dir():
        return ResolvedModel(
            spec_model,
            "directory",
            loc,
            override,
            problem=f"{loc} is a file; expected a checkpoint directory or a .gguf file",
        )
    weights, lazy, size = None, None, None
    for name, is_lazy in WEIGHT_FORMATS:
        candidate = path / name.rstrip("/")
        if candidate.is_dir() if name.endswith("/") else candidate.is_file():
            weights, lazy = name.rstrip("/"), is_lazy
            size = _size_of(path, name.rstrip("/"))
            break
    cfg_path = path / "config.json"

    def unreadable(problem: str) -> ResolvedModel:
        return ResolvedModel(
            spec_model,
            "directory",
            loc,
            override,
            weights,
            lazy,
            problem=problem,
            weight_bytes_on_disk=size,
        )

    if not cfg_path.is_file():
        return unreadable(f"{loc} has no config.json")
    try:
        cfg = read_json(cfg_path, MAX_CONFIG_JSON_BYTES)
        if not isinstance(cfg, dict):
            return unreadable(f"{cfg_path} is not a JSON object")
        arch = override or architecture_from_hf_config(cfg, path.name, str(cfg_path))
    except Unreadable as exc:
        return unreadable(f"{cfg_path} is unreadable ({exc})")
    except KeyError as exc:
        return unreadable(f"{cfg_path} lacks {show(exc.args[0])}, which sizing needs")
    if weights is None:  # sized from config.json alone: the preflight warns
        return ResolvedModel(spec_model, "directory", loc, arch)
    return ResolvedModel(
        spec_model, "directory", loc, arch, weights, lazy, weight_bytes_on_disk=size
    )


def _hub(repo: str, override: Architecture | None) -> ResolvedModel:
    """A Hugging Face Hub repo, sized from its config.json (fetched once, cached)."""
    from .hub import HubError, fetch_config

    try:
        cfg, where = fetch_config(repo)
        arch = override or architecture_from_hf_config(cfg, repo.split("/")[1], where)
    except HubError as exc:
        return ResolvedModel(repo, "hub", repo, override, problem=exc.message, fix=exc.fix)
    except KeyError as exc:
        problem = f"{repo}'s config.json lacks {show(exc.args[0])}, which sizing needs"
        return ResolvedModel(repo, "hub", repo, override, problem=problem)
    return ResolvedModel(repo, "hub", repo, arch)


def _size_of(directory: Path, name: str) -> int | None:
    target = directory / name
    try:
        if target.is_dir():
            return sum(f.stat().st_size for f in target.iterdir() if f.is_file())
        if name.endswith(".index.json"):
            index = read_json(target, MAX_INDEX_BYTES)
            files: set[str] = set(index.get("weight_map", {}).values())
            sizes: list[int] = [(directory / f).stat().st_size for f in files]
            return sum(sizes)
        return target.stat().st_size
    except (OSError, ValueError, AttributeError, TypeError, Unreadable):
        return None


def resolve_model(
    spec_model: str, base_dir: Path, architecture: str | None = None
) -> ResolvedModel:
    """Find a model's weights and architecture. Never raises for a missing checkpoint: the
    problem is recorded, and the preflight turns it into a finding."""
    from .hub import is_hub_id

    override = find_architecture(architecture) if architecture else None
    if is_hub_id(spec_model, base_dir):  # ORG/NAME that is not a local path: the Hub's
        return _hub(spec_model, override)
    if "/" in spec_model and not spec_model.startswith("s3://"):
        local = _expand(spec_model, base_dir).resolve()
        if local.exists():  # a path that exists is a path, whatever its name looks like
            if spec_model.lower().endswith(".gguf"):
                return _gguf(spec_model, local, override)
            return _directory(spec_model, local, override)
    arch = find_architecture(spec_model)
    if arch is not None:
        return ResolvedModel(spec_model, "catalog", arch.name, override or arch)
    if spec_model.startswith("s3://"):
        return ResolvedModel(spec_model, "s3", spec_model, override)
    path = _expand(spec_model, base_dir).resolve()
    if spec_model.lower().endswith(".gguf"):
        return _gguf(spec_model, path, override)
    return _directory(spec_model, path, override)


# --------------------------------------------------------------------------------------------
# GGUF header reader (format: github.com/ggml-org/ggml docs/gguf.md)

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, f: BinaryIO):
        self.f = f

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        n = self.take("<Q")
        if n > 1 << 24:
            raise ValueError("implausible GGUF string length")
        return bytes(self.f.read(n)).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.take("<I"), self.take("<Q")
            if count > 1 << 26:
                raise ValueError("implausible GGUF array length")
            if not keep:  # skip, keeping only the length
                if itype in _SCALARS:
                    self.f.seek(struct.calcsize(_SCALARS[itype]) * count, 1)
                else:
                    for _ in range(count):
                        self.value(itype, keep=False)
                return count
            return [self.value(itype) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf_metadata(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Key/value metadata and tensor names of a GGUF file. Arrays are replaced by their length."""
    with path.open("rb") as f:
        r = _Reader(f)
        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        version = r.take("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        n_tensors, n_kv = r.take("<Q"), r.take("<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.take("<I")
            meta[key] = r.value(vtype, keep=vtype != _ARRAY)
        names = []
        for _ in range(n_tensors):
            names.append(r.string())
            n_dims = r.take("<I")
            f.seek(8 * n_dims + 4 + 8, 1)  # dims, type, offset
    return meta, names


def architecture_from_gguf(
    meta: dict[str, Any], tensors: list[str], name: str, where: str = ""
) -> Architecture:
    """An Architecture from a GGUF header: KeyError if a size is missing, ConfigError (naming
    the file and the GGUF key) if a value is out of its range."""
    where = where or f"GGUF metadata of {name}"
    arch = _model_type(meta.get("general.architecture"), "general.architecture", where)
    p = f"{arch}."

    def size(key: str, field: str, default: Any = None) -> int:
        value = meta[p + key] if default is None else meta.get(p + key, default)
        return _whole(value, p + key, where, SIZE_RANGES[field])

    heads = size("attention.head_count", "num_attention_heads")
    kv_heads = size("attention.head_count_kv", "num_key_value_heads", heads)
    hidden = size("embedding_length", "hidden_size")
    _shape(heads, kv_heads, hidden, None, where)
    eos, bos = meta.get("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.bos_token_id")
    vocab = meta.get(p + "vocab_size") or meta.get("tokenizer.ggml.tokens")
    return Architecture(
        name=name,
        model_type=arch,
        hidden_size=hidden,
        intermediate_size=size("feed_forward_length", "intermediate_size"),
        num_layers=size("block_count", "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        vocab_size=0 if vocab is None else _whole(vocab, p + "vocab_size", where, (1, 1 << 24)),
        max_positions=size("context_length", "max_position_embeddings", 2048),
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=None
        if bos is None
        else _whole(bos, "tokenizer.ggml.bos_token_id", where, TOKEN_ID_RANGE),
        eos_token_id=_eos_ids(eos, "tokenizer.ggml.eos_token_id", where),
        source=f"GGUF metadata of {name}",
    )


def _gguf(spec_model: str, path: Path, override: Architecture | None) -> ResolvedModel:
    loc = str(path)
    if not path.is_file():
        return ResolvedModel(
            spec_model, "gguf", loc, override, problem=f"GGUF file {loc} does not exist"
        )
    try:
        meta, tensors = read_gguf_metadata(path)
        arch = override or architecture_from_gguf(meta, tensors, path.name, loc)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        return ResolvedModel(
            spec_model, "gguf", loc, override, problem=f"{loc} is not a readable GGUF file ({exc})"
        )
    # transformers dequantizes a GGUF file into host memory as a whole: not lazy.
    return ResolvedModel(
        spec_model, "gguf", loc, arch, path.name, False, weight_bytes_on_disk=path.stat().st_size
    )


def prepared_bytes(r: ResolvedModel) -> int:
    """Bytes written under the artifact cache to bring this checkpoint to a format
    transformers-neuronx loads: a GGUF de-quantized to f32 safetensors, an s3:// model
    downloaded (bf16 assumed), a whole-file .bin split once; nothing otherwise."""
    params = r.architecture.parameters() if r.architecture is not None else 0
    if r.kind == "gguf":
        return 4 * params
    if r.kind == "s3":
        return 2 * params
    if r.kind == "directory" and r.lazy_loadable is False:
        return r.weight_bytes_on_disk or 2 * params
    return 0
