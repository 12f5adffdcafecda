"""Hugging Face Hub model ids as `model:` (`meta-llama/Llama-3.1-70B-Instruct`), through
huggingface_hub: its cache, its token (HF_TOKEN, or `hf auth login`), its HF_ENDPOINT and its
offline mode (HF_HUB_OFFLINE=1).

A value is a Hub id when it has the form ORG/NAME and nothing of that name exists next to
the config (`./org/name` is always a path). `validate` and `plan` read only the repo's
config.json (a few kB, cached); `generate`, `serve` and `launch.sh` download the weights
once into the Hugging Face cache (safetensors, config and tokenizer files; never the
`original/` consolidated checkpoints) with huggingface_hub's progress bars.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ConfigFile

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
WEIGHTS = ["*.safetensors", "*.safetensors.index.json"]
METADATA = ["*.json", "tokenizer.model", "*.tiktoken", "*.txt"]
MAX_CONFIG_BYTES = 1 << 20


class HubError(Exception):
    """The repo cannot be read: `message` says why, `fix` what to do."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.message, self.fix = message, fix


def is_hub_id(value: str, base_dir: Path) -> bool:
    if not HUB_ID.match(value) or ".." in value or value.lower().endswith(".gguf"):
        return False
    return not (base_dir / value).exists()


def _library() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise HubError(
            "reading a Hugging Face Hub model needs huggingface_hub",
            "pip install huggingface_hub (the reference extra brings it)",
        ) from None
    return huggingface_hub


def _endpoint(hub: Any) -> str:
    return str(hub.constants.ENDPOINT)


def _explain(hub: Any, repo: str, exc: Exception) -> HubError:
    """A HubError in words for what huggingface_hub raised."""
    errors = hub.errors
    where = _endpoint(hub)
    page = f"{where}/{repo}"
    if isinstance(exc, errors.GatedRepoError):
        return HubError(
            f"{repo} is gated: its files need an accepted license and a token",
            f"accept the license at {page}, then set HF_TOKEN (or run `hf auth login`)",
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(
            f"there is no repo {repo} at {where} (or it is private)",
            "check the name; for a private repo set HF_TOKEN (or run `hf auth login`)",
        )
    local_miss = isinstance(exc, getattr(errors, "LocalEntryNotFoundError", ()))
    if hub.constants.HF_HUB_OFFLINE:
        return HubError(
            f"HF_HUB_OFFLINE is set and {repo} is not in the Hugging Face cache "
            f"({hub.constants.HF_HUB_CACHE})",
            "run once with network access (unset HF_HUB_OFFLINE), or point model at a "
            "local checkpoint directory",
        )
    if isinstance(exc, errors.EntryNotFoundError) and not local_miss:
        return HubError(f"{repo} has no config.json", "use a repo with a transformers config")
    return HubError(
        f"cannot read {repo} from {where}: {type(exc).__name__}: {str(exc)[:200]}",
        "check the network (and HF_ENDPOINT), or point model at a local checkpoint directory",
    )


def fetch_config(repo: str) -> dict[str, Any]:
    """The repo's config.json (downloaded once into the Hugging Face cache)."""
    from .safeio import Unreadable, read_json

    hub = _library()
    try:
        path = hub.hf_hub_download(repo, "config.json")
    except Exception as exc:  # every failure of the library is explained, none escapes
        raise _explain(hub, repo, exc) from None
    try:
        data = read_json(Path(path), MAX_CONFIG_BYTES)
    except Unreadable as exc:
        raise HubError(f"{repo}'s config.json is unreadable: {exc}", "check the repo") from None
    if not isinstance(data, dict):
        raise HubError(f"{repo}'s config.json is not a JSON object", "check the repo")
    return data


def download(repo: str, say: Callable[[str], None]) -> Path:
    """The repo's weights, config and tokenizer in the Hugging Face cache (downloaded once,
    with progress bars); its snapshot directory."""
    hub = _library()
    say(f"downloading {repo} from {_endpoint(hub)} into the Hugging Face cache (once)")
    try:
        folder = hub.snapshot_download(
            repo, allow_patterns=WEIGHTS + METADATA, ignore_patterns=["original/*"]
        )
        if not any(Path(folder).glob("*.safetensors")):  # an older repo: .bin weights
            folder = hub.snapshot_download(
                repo, allow_patterns=["*.bin", *METADATA], ignore_patterns=["original/*"]
            )
    except Exception as exc:  # explained, as for config.json
        raise _explain(hub, repo, exc) from None
    return Path(folder)


def materialize(cfg: ConfigFile, say: Callable[[str], None]) -> ConfigFile:
    """The config with each Hub id replaced by its downloaded snapshot directory (a model
    used by both roles is downloaded once)."""
    import dataclasses

    from .errors import ConfigError, ConfigProblem

    spec, done = cfg.spec, dict[str, str]()
    for role, m in cfg.spec.models():
        if not is_hub_id(m.model, cfg.base_dir):
            continue
        try:
            done.setdefault(m.model, str(download(m.model, say)))
        except HubError as exc:
            raise ConfigError(
                [ConfigProblem(f"{role}.model", exc.message, exc.fix + ".")]
            ) from None
        spec = spec.replace(**{role: getattr(spec, role).replace(model=done[m.model])})
    return cfg if spec is cfg.spec else dataclasses.replace(cfg, spec=spec)
