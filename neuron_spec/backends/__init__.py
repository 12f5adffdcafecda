"""Layer 5: the backends that load a draft/target pair and drive it with the engine: `reference`
(PyTorch + transformers, reference.py), `neuronx` (transformers-neuronx, neuronx/) and `nxdi` (NxD
Inference, nxdi/), each behind the Backend contract of base.py. What the two Neuron backends
share lives once beside them: neuron_plan.py (fingerprints, cache keys, prepared checkpoints),
artifacts.py (the compiled-artifact cache), neuron_common.py and positional.py (the engine's
Runners over positional KV caches). No backend imports another; importing this package imports
nothing heavy."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.spec import ConfigFile
    from .base import Generator, Progress


def load_generator(cfg: ConfigFile, progress: Progress | None = None) -> Generator:
    """Load the pair the config describes and return a ready Generator (a Hugging Face Hub
    id is downloaded first, once, into the Hugging Face cache)."""
    from ..sources.hub import materialize

    cfg = materialize(cfg, progress or (lambda _msg: None))
    if cfg.spec.backend == "reference":
        from ..sources.hf import require_torch

        require_torch()  # a missing extra says how to install it
        from .reference import load
    elif cfg.spec.backend == "nxdi":
        from .nxdi.backend import load
    else:
        from .neuronx.backend import load
    return load(cfg, progress)
