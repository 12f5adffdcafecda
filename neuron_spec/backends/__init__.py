"""Backends that load a draft/target pair: `reference` (PyTorch + transformers) and
`neuronx` (transformers-neuronx, the only module that imports it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import NeuronSpecError

if TYPE_CHECKING:
    from ..config import ConfigFile
    from ..generate import Generator

Progress = Callable[[str], None]


class NotSupportedYet(NeuronSpecError, NotImplementedError):
    """A feature that is designed but not built yet; the message says which."""

    exit_code = 2


def load_generator(cfg: ConfigFile, progress: Progress | None = None) -> Generator:
    """Load the pair the config describes and return a ready Generator."""
    if cfg.spec.backend == "reference":
        from .reference import load_reference_generator

        return load_reference_generator(cfg, progress)
    raise NotSupportedYet(
        "the neuronx backend (transformers-neuronx on Inferentia2/Trainium) is not implemented "
        "yet; validate and plan work for neuronx configs today. To run the pair now, use "
        "backend: reference (PyTorch + transformers on CPU/GPU)."
    )
