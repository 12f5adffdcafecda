"""utils/hf_adapter.py as 0.8 has it: `load_pretrained_config` (exactly one argument; the
checkpoint's dtype replaces NeuronConfig's unless torch_dtype was given) and the generation
adapter, whose prepare_inputs_for_generation reads a name defined nowhere."""

from __future__ import annotations

from .. import models  # noqa: F401  (the package layout the library has)
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
    def __init__(self, model, input_start_offsets=None):
        self.neuron_model = model
        self.neuron_config = model.neuron_config
        self.input_start_offsets = input_start_offsets

    def generate(self, input_ids, attention_mask=None, **kwargs):
        self.neuron_model.reset()  # its own model only: never an assistant's
        return self.prepare_inputs_for_generation(input_ids, attention_mask=attention_mask)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        model_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        # As published in 0.7-0.9: the dictionary names a variable that is never defined.
        model_inputs.update({"tensor_capture_hook": tensor_capture_hook})  # noqa: F821
        return model_inputs
