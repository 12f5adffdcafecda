"""Backends that load a draft/target pair: `reference` (PyTorch + transformers), `neuronx`
(transformers-neuronx) and `nxdi` (NxD Inference, in nxdi/); neuron_common.py holds what the
two Neuron backends share."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.spec import ConfigFile
    from ..engine.generate import Generator

Progress = Callable[[str], None]


def load_generator(cfg: ConfigFile, progress: Progress | None = None) -> Generator:
    """Load the pair the config describes and return a ready Generator (a Hugging Face Hub
    id is downloaded first, once, into the Hugging Face cache)."""
    from ..sources.hub import materialize

    cfg = materialize(cfg, progress or (lambda _msg: None))
    if cfg.spec.backend == "reference":
        from .reference import load_reference_generator

        return load_reference_generator(cfg, progress)
    if cfg.spec.backend == "nxdi":
        from .nxdi.backend import load_nxdi_generator

        return load_nxdi_generator(cfg, progress)
    from .neuronx.backend import load_neuronx_generator

    return load_neuronx_generator(cfg, progress)


def backend_warnings(gen: object) -> list[str]:
    """What the backend could not do but worked around (the compiled-artifact cache and its
    S3 mirror): never fatal, never silent."""
    cache = getattr(getattr(gen, "backend", None), "cache", None)
    return list(getattr(cache, "warnings", []))
