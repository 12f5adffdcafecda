"""What both Neuron backends' load plans share, as data: installed versions, the fingerprint of
a checkpoint's architecture, cache keys, where a checkpoint is prepared (split, de-quantized,
downloaded) and how, the environment launch.sh exports, the artifact cache's place, and the
view `generate --dry-run` renders. Imports nothing from either library, so it runs anywhere."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.spec import ConfigFile
from ..sources.checkpoint import ResolvedModel

CC_DIST = "neuronx-cc"


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


def fingerprint(resolved: ResolvedModel) -> str:
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
    cores = max(m.tp_degree for _role, m in spec.models())
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


def preparation(
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


@dataclass
class PlanView:
    """A load plan as `generate --dry-run` prints it, whichever library it is for."""

    title: str
    facts: list[str]  # one-line statements under the title
    env: dict[str, str]  # what scripts/launch.sh exports
    sections: list[tuple[str, list[str]]]  # (heading, lines), in order
    notes: list[str] = field(default_factory=list)
