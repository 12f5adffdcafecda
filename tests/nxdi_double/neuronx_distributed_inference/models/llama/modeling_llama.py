"""models/llama/modeling_llama.py: the Llama application class and its config's required
attributes (pad_token_id among them). From 0.9 (c63afe0) the module imports the NKI packages
at import time (`import nki.language as nl`, `from nkilib.core... import ...`: its MLP, RMSNorm
and attention kernels moved there from neuronx-cc), so an environment without them cannot
import it at all."""

from __future__ import annotations

from ... import _release

if _release.AT_LEAST_0_9:
    import nki.language  # noqa: F401
    import nkilib  # noqa: F401

from ..config import InferenceConfig, NeuronConfig
from ..model_base import NeuronBaseForCausalLM


class LlamaInferenceConfig(InferenceConfig):
    def get_required_attributes(self):
        return [
            "hidden_size",
            "num_attention_heads",
            "num_hidden_layers",
            "num_key_value_heads",
            "pad_token_id",
            "vocab_size",
            "max_position_embeddings",
            "rope_theta",
            "rms_norm_eps",
            "hidden_act",
        ]

    @classmethod
    def get_neuron_config_cls(cls):
        return NeuronConfig


class NeuronLlamaModel:
    """The worker class fused speculation names (FusedSpecNeuronConfig.worker_cls)."""


class NeuronLlamaForCausalLM(NeuronBaseForCausalLM):
    _model_cls = NeuronLlamaModel

    @classmethod
    def get_config_cls(cls):
        return LlamaInferenceConfig
