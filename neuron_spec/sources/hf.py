"""Loading a causal LM and its tokenizer with Hugging Face transformers, in one place for every
backend: the reference backend loads models and tokenizers here, the Neuron backends their
tokenizers, and the demo model is converted from GGUF through here. Also the end-of-sequence
and padding ids of a loaded pair, from the config's override, the checkpoint's own files, the
model or the tokenizer, in that order."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, ConfigError, ConfigProblem

DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def require_torch() -> None:
    """PyTorch and transformers are installed, or a BackendUnavailableError saying how."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(
            "the reference backend needs PyTorch and transformers, which are not installed. "
            "Install them with: pip install torch==2.13.0 && pip install 'neuron-spec[reference]'"
        ) from None
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(
            "the reference backend needs transformers: pip install 'neuron-spec[reference]'"
        ) from None


def auto_tokenizer(path: str, **kwargs: Any) -> Any:
    """AutoTokenizer, readable across transformers releases: a checkpoint saved by
    transformers 5 names its tokenizer class `TokenizersBackend`, which 4.57 (the release the
    Neuron DLAMIs' NxDI environments pin) does not have; its tokenizer.json loads the same
    through PreTrainedTokenizerFast."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except ValueError as exc:
        if "Tokenizer class" not in str(exc) or kwargs:
            raise
        return PreTrainedTokenizerFast.from_pretrained(path)


def load_tokenizer(path: str) -> Any:
    """A tokenizer from a directory (needs transformers, not torch)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise BackendUnavailableError("loading the tokenizer needs transformers")
    try:
        return auto_tokenizer(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    "target.tokenizer",
                    f"cannot load a tokenizer from {path}: {exc}",
                    "set target.tokenizer to the original checkpoint directory.",
                )
            ]
        ) from None


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: str
    amp: str
    device: str


def _model_location(model: str, base_dir: Path) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(model)))
    return p if p.is_absolute() else (base_dir / p)


def load_model(
    model: str,
    amp: str,
    base_dir: Path,
    tokenizer: str | None = None,
    device: str = "cpu",
    path_field: str = "model",
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a checkpoint directory or a .gguf file."""
    require_torch()
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI shows its own progress
    hf_logging.set_verbosity_error()

    location = _model_location(model, base_dir)
    if not location.exists():
        raise ConfigError(
            [
                ConfigProblem(
                    path_field,
                    f"{location} does not exist; the reference backend loads "
                    "weights from disk (catalog names only size a model).",
                    "point it at a checkpoint directory or a .gguf file.",
                )
            ]
        )
    dtype = getattr(torch, DTYPES[amp])
    kwargs: dict[str, Any] = {"dtype": dtype}
    if location.is_file() and location.suffix.lower() == ".gguf":
        src, kwargs["gguf_file"] = str(location.parent), location.name
    else:
        src = str(location)
    tok_src = str(_model_location(tokenizer, base_dir)) if tokenizer else src
    tok_kwargs = (
        {"gguf_file": kwargs["gguf_file"]} if "gguf_file" in kwargs and not tokenizer else {}
    )
    try:
        tok = auto_tokenizer(tok_src, **tok_kwargs)
        lm = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    path_field,
                    f"transformers could not load {location}: {exc}",
                    "check the directory holds config.json, weights and a tokenizer.",
                )
            ]
        ) from None
    lm.to(device)
    lm.eval()
    return LoadedModel(lm, tok, str(location), amp, device)


def eos_ids(
    override: int | list[int] | None, checkpoint: Path | None, tok: Any, model: Any = None
) -> list[int]:
    """The ids that end a sequence: the config's override, else the checkpoint's
    generation_config.json or config.json, else the loaded model's, else the tokenizer's."""
    if override is not None:
        return list(override) if isinstance(override, list) else [override]
    if checkpoint is not None:
        found = config_eos(checkpoint)
        if found:
            return found
    sources = [getattr(model, "generation_config", None), getattr(model, "config", None), tok]
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]
    return []


def pad_id(tok: Any, eos: list[int]) -> int:
    """The tokenizer's pad id, else the first EOS id, else 0."""
    return int(tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0))


def config_eos(checkpoint: Path) -> list[int]:
    """eos_token_id from a checkpoint directory's generation_config.json or config.json."""
    for name in ("generation_config.json", "config.json"):
        f = checkpoint / name
        if f.is_file():
            try:
                value = json.loads(f.read_text(encoding="utf-8")).get("eos_token_id")
            except (OSError, ValueError):
                continue
            if value is not None:
                return [int(v) for v in value] if isinstance(value, list) else [int(value)]
    return []
