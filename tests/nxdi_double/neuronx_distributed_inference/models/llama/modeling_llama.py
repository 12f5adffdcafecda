"""models/llama/modeling_llama.py: the Llama application class and its config's required
attributes (pad_token_id among them)."""

from __future__ import annotations

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
