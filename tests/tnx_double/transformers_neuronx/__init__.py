"""A test double of transformers-neuronx for neuron-spec's tests (never shipped).

It reproduces, release by release, what the library's Python code does, defects included:
the speculation loops of 0.10/0.11 (v1) and 0.12/0.13 (v2), LlamaForSampling's sampling
loop, argument validation, graph lookup, compilation and NEFF serialization. It computes with
a small Hugging Face Llama underneath, and its KV cache is positional like the device's: a
slot holds whatever token was last written at that position. The release is chosen by the
environment variable TNX_DOUBLE_VERSION. Process-wide device state lives in `_runtime`.
"""

from .config import ContinuousBatchingConfig, NeuronConfig
from .llama.model import LlamaForSampling
from .version import __version__

__all__ = ["ContinuousBatchingConfig", "LlamaForSampling", "NeuronConfig", "__version__"]
