"""Where a model's weights are and what architecture they have, without importing torch.

A model is a catalog name, a checkpoint directory (config.json, with or without weights), a
.gguf file, an s3:// URL, or a Hugging Face Hub repo id (ORG/NAME, hub.py). Resolution reads
only small metadata: config.json, or a GGUF file's header.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from .catalog import Architecture, find_architecture

Kind = Literal["catalog", "directory", "gguf", "s3", "hub"]

# transformers-neuronx's loader priority (neuron-api.md); the first three load lazily.
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


def architecture_from_hf_config(cfg: dict[str, Any], name: str) -> Architecture:
    """An Architecture from a Hugging Face config.json mapping (KeyError if incomplete)."""
    heads = int(cfg["num_attention_heads"])
    eos = cfg.get("eos_token_id")
    eos_ids = (
        tuple(int(x) for x in eos)
        if isinstance(eos, list)
        else ((int(eos),) if eos is not None else ())
    )
    return Architecture(
        name=name,
        model_type=str(cfg.get("model_type", "unknown")),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        vocab_size=int(cfg["vocab_size"]),
        max_positions=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        head_dim=int(cfg["head_dim"]) if cfg.get("head_dim") else None,
        bos_token_id=int(cfg["bos_token_id"]) if cfg.get("bos_token_id") is not None else None,
        eos_token_id=eos_ids,
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
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        arch = override or architecture_from_hf_config(cfg, path.name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return unreadable(f"{cfg_path} is unreadable ({type(exc).__name__}: {exc})")
    if weights is None:  # sized from config.json alone: the preflight warns
        return ResolvedModel(spec_model, "directory", loc, arch)
    return ResolvedModel(
        spec_model, "directory", loc, arch, weights, lazy, weight_bytes_on_disk=size
    )


def _hub(repo: str, override: Architecture | None) -> ResolvedModel:
    """A Hugging Face Hub repo, sized from its config.json (fetched once, cached)."""
    from .hub import HubError, fetch_config

    try:
        cfg = fetch_config(repo)
        arch = override or architecture_from_hf_config(cfg, repo.split("/")[1])
    except HubError as exc:
        return ResolvedModel(repo, "hub", repo, override, problem=exc.message, fix=exc.fix)
    except (KeyError, TypeError, ValueError) as exc:
        problem = f"{repo}'s config.json lacks what sizing needs ({type(exc).__name__}: {exc})"
        return ResolvedModel(repo, "hub", repo, override, problem=problem)
    return ResolvedModel(repo, "hub", repo, arch)


def _size_of(directory: Path, name: str) -> int | None:
    target = directory / name
    try:
        if target.is_dir():
            return sum(f.stat().st_size for f in target.iterdir() if f.is_file())
        if name.endswith(".index.json"):
            index = json.loads(target.read_text(encoding="utf-8"))
            files: set[str] = set(index.get("weight_map", {}).values())
            sizes: list[int] = [(directory / f).stat().st_size for f in files]
            return sum(sizes)
        return target.stat().st_size
    except (OSError, ValueError, AttributeError):
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


def architecture_from_gguf(meta: dict[str, Any], tensors: list[str], name: str) -> Architecture:
    arch = str(meta.get("general.architecture", "unknown"))
    p = f"{arch}."
    heads = int(meta[p + "attention.head_count"])
    eos = meta.get("tokenizer.ggml.eos_token_id")
    vocab = meta.get(p + "vocab_size") or meta.get("tokenizer.ggml.tokens")
    return Architecture(
        name=name,
        model_type=arch,
        hidden_size=int(meta[p + "embedding_length"]),
        intermediate_size=int(meta[p + "feed_forward_length"]),
        num_layers=int(meta[p + "block_count"]),
        num_heads=heads,
        num_kv_heads=int(meta.get(p + "attention.head_count_kv", heads)),
        vocab_size=int(vocab) if vocab is not None else 0,
        max_positions=int(meta.get(p + "context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=(int(eos),) if eos is not None else (),
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
        arch = override or architecture_from_gguf(meta, tensors, path.name)
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
