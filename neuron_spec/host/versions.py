"""The exact versions of what a run used: Python, the Python packages that compute (torch,
transformers, the Neuron libraries, neuron-spec) and the Neuron SDK release they came with,
where the release tables can tell. Read from the running interpreter's distribution metadata;
nothing is imported."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

from .. import __version__
from .sdk_releases import nxdi_release, releases_with

# The distributions a report names, in this order; a missing one is None ("not installed").
PACKAGES: tuple[str, ...] = (
    "neuron-spec",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "neuronx-distributed-inference",
    "neuronx-distributed",
    "transformers-neuronx",
    "torch-neuronx",
    "neuronx-cc",
    "libneuronxla",
)


def installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def sdk_release(packages: dict[str, str | None]) -> str | None:
    """The Neuron SDK release the installed Neuron library shipped with: NxD Inference's
    release table first, then transformers-neuronx's (several releases may share one
    version); None when neither is installed or the version is in no table."""
    nxdi = packages.get("neuronx-distributed-inference")
    row = nxdi_release(nxdi) if nxdi else None
    if row is not None:
        return row.sdk
    tnx = packages.get("transformers-neuronx")
    shipped = releases_with("transformers-neuronx", tnx.split("+")[0]) if tnx else []
    return " or ".join(r.sdk for r in shipped) or None


def versions() -> dict[str, Any]:
    """{"python", "implementation", "platform", "packages": {name: version or None},
    "neuron_sdk": release or None}."""
    packages = {name: installed(name) for name in PACKAGES}
    packages["neuron-spec"] = __version__  # the running source's, whatever pip recorded
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(terse=True),
        "packages": packages,
        "neuron_sdk": sdk_release(packages),
    }
