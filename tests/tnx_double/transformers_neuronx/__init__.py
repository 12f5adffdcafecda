"""A strict test double of transformers-neuronx, for neuron-spec's tests only (never shipped).

It enforces the contract of shared/neuron-api.md for API v1 (0.10-0.12) and v2 (0.13),
chosen by the environment variable TNX_DOUBLE_VERSION (default 0.13.322), and computes with
a small Hugging Face Llama underneath. Process-wide state (initialized cores, compile and load
events) lives in `_runtime`. If TNX_DOUBLE_RECORD names a file, every to_neuron() appends a
JSON line with the event and the NEURON_* environment, so tests in other processes can see it.
"""

from .llama.model import LlamaForSampling
from .version import __version__

__all__ = ["LlamaForSampling", "__version__"]
