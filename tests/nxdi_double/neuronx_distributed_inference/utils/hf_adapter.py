"""utils/hf_adapter.py: `load_pretrained_config` (exactly one argument; the checkpoint's dtype
replaces NeuronConfig's unless torch_dtype was given; the same at cd3abf3, c63afe0, ef2731e) and
the generation adapter, whose prepare_inputs_for_generation reads a name defined nowhere until
ef2731e (the 2.29-v2 sync) reads it from its kwargs and forward() takes it."""

from __future__ import annotations

import torch

from .. import _release, models  # noqa: F401  (models: the package layout the library has)
from ..models.config import to_torch_dtype


def load_pretrained_config(model_path_or_name=None, hf_config=None):
    def load_config(self):
        if (model_path_or_name is None and hf_config is None) or (
            model_path_or_name is not None and hf_config is not None
        ):
            raise ValueError('Please provide only one of "model_path_or_name" or "hf_config"')
        if model_path_or_name is not None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_path_or_name)
        else:
            config = hf_config
        config_dict = config.to_dict()
        hf_dtype = config_dict.get("dtype", config_dict.get("torch_dtype", None))
        if hf_dtype is not None:
            if self.neuron_config is not None and not self.neuron_config.overrides_torch_dtype:
                self.neuron_config.torch_dtype = to_torch_dtype(hf_dtype)
            config_dict.pop("dtype", None)
            config_dict.pop("torch_dtype", None)
        config_dict["_name_or_path"] = str(model_path_or_name or config_dict.get("_name_or_path"))
        self.__dict__.update(config_dict)

    return load_config


class HuggingFaceGenerationAdapter:
    """The adapter's first step: reset its own model (never an assistant's), prepare the inputs,
    and call the model's forward() with them (the adapter sets `self.forward` to it)."""

    def __init__(self, model, input_start_offsets=None):
        self.neuron_model = model
        self.neuron_config = model.neuron_config
        self.input_start_offsets = input_start_offsets
        self.forward = model.forward

    def generate(self, input_ids, attention_mask=None, **kwargs):
        self.neuron_model.reset()  # its own model only: never an assistant's
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = self.prepare_inputs_for_generation(input_ids, attention_mask, **kwargs)
        return self.forward(**inputs, return_dict=True)

    def _inputs(self, input_ids, attention_mask, kwargs):
        position_ids = attention_mask.long().cumsum(-1) - 1
        position_ids.masked_fill_(attention_mask == 0, 1)
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": attention_mask,
            "input_capture_hook": kwargs.get("input_capture_hook", None),
        }

    if _release.ADAPTER_FIXED:  # ef2731e: read from the kwargs

        def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
            model_inputs = self._inputs(input_ids, attention_mask, kwargs)
            tensor_capture_hook = kwargs.get("tensor_capture_hook")
            model_inputs.update({"tensor_capture_hook": tensor_capture_hook})
            return model_inputs

    else:  # as published at fcb5a86, cd3abf3 and c63afe0: a name defined nowhere

        def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
            model_inputs = self._inputs(input_ids, attention_mask, kwargs)
            model_inputs.update({"tensor_capture_hook": tensor_capture_hook})  # noqa: F821
            return model_inputs
