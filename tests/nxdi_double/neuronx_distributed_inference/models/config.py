"""NeuronConfig, InferenceConfig, OnDeviceSamplingConfig, FusedSpecNeuronConfig as 0.8 has them
(models/config.py at cd3abf3): keyword-only, every field defaulted, unknown keywords only
logged, `torch_dtype` adopted from the checkpoint when not given, world_size fixed at init.
0.9 (c63afe0, unchanged at ef2731e) adds, for what neuron-spec touches: NeuronConfig writes
NEURON_PLATFORM_TARGET_OVERRIDE into the environment (`_setup_kernel_target_platform`) and takes
`enable_ve_data_parallel`; OnDeviceSamplingConfig's `top_k_kernel_enabled` defaults to "not
trn1". Every keyword neuron-spec passes is read the same way at fcb5a86, cd3abf3 and c63afe0."""

from __future__ import annotations

import json
import logging
import os

import torch

from .. import _release

CONFIG_FILE = "neuron_config.json"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def to_torch_dtype(name):
    if isinstance(name, torch.dtype):
        return name
    key = str(name).replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unsupported dtype {name}")
    return _DTYPES[key]


class OnDeviceSamplingConfig:
    def __init__(self, **kwargs):
        self.do_sample = kwargs.pop("do_sample", False)
        self.top_k = kwargs.pop("top_k", 1)
        self.top_p = kwargs.pop("top_p", 1.0)
        self.temperature = kwargs.pop("temperature", 1.0)
        self.dynamic = kwargs.pop("dynamic", False)
        self.deterministic = kwargs.pop("deterministic", False)
        self.global_topk = kwargs.pop("global_topk", 256)
        # 0.9: the top-k kernel is on by default except on trn1 (its known accuracy issue at
        # batch <= 4 is with the kernel off); 0.8: off
        default_kernel = _release.AT_LEAST_0_9 and _release.platform_target() != "trn1"
        self.top_k_kernel_enabled = kwargs.pop("top_k_kernel_enabled", default_kernel)
        # anything else is silently dropped, as the library does


class NeuronConfig:
    def __init__(self, **kwargs):
        self.batch_size = kwargs.pop("batch_size", 1)
        self.padding_side = kwargs.pop("padding_side", "right")
        self.allow_input_truncation = kwargs.pop("allow_input_truncation", False)
        self.seq_len = kwargs.pop("seq_len", 128)
        self.n_active_tokens = kwargs.pop("n_active_tokens", self.seq_len)
        self.n_positions = kwargs.pop("n_positions", self.seq_len)
        self.output_logits = kwargs.pop("output_logits", False)
        if "torch_dtype" in kwargs:
            self.torch_dtype = to_torch_dtype(kwargs.pop("torch_dtype"))
            self.overrides_torch_dtype = kwargs.pop("overrides_torch_dtype", True)
        else:
            self.torch_dtype = torch.bfloat16
            self.overrides_torch_dtype = False
        self.cast_type = kwargs.pop("cast_type", "config")
        if self.cast_type not in ["config", "as-declared"]:
            raise ValueError("cast_type must be one of config, as-declared")
        self.max_context_length = kwargs.pop("max_context_length", self.seq_len)
        self.max_new_tokens = kwargs.pop("max_new_tokens", self.seq_len - self.max_context_length)
        if self.max_new_tokens == 0:
            self.max_new_tokens = None
        self.max_length = kwargs.pop("max_length", self.seq_len)
        assert self.max_context_length <= self.max_length, (
            "max_context_length cannot be more than max_length"
        )
        self.ctx_batch_size = kwargs.pop("ctx_batch_size", self.batch_size)
        self.tkg_batch_size = kwargs.pop("tkg_batch_size", self.batch_size)
        self.max_batch_size = kwargs.pop("max_batch_size", self.batch_size)
        self.is_continuous_batching = kwargs.pop("is_continuous_batching", False)
        self.kv_cache_batch_size = kwargs.pop("kv_cache_batch_size", self.batch_size)
        self.on_device_sampling_config = kwargs.pop("on_device_sampling_config", None)
        if type(self.on_device_sampling_config) is dict:
            self.on_device_sampling_config = OnDeviceSamplingConfig(
                **self.on_device_sampling_config
            )
        self.enable_bucketing = kwargs.pop("enable_bucketing", False)
        self.buckets = kwargs.pop("buckets", [self.seq_len])
        self.context_encoding_buckets = kwargs.pop("context_encoding_buckets", None)
        self.token_generation_buckets = kwargs.pop("token_generation_buckets", None)
        self.token_generation_batches = kwargs.pop("token_generation_batches", None)
        self.speculation_length = kwargs.pop("speculation_length", 0)
        self.spec_batch_size = kwargs.pop("spec_batch_size", self.batch_size)
        self.enable_fused_speculation = kwargs.pop("enable_fused_speculation", False)
        self.enable_eagle_speculation = kwargs.pop("enable_eagle_speculation", False)
        self.tp_degree = kwargs.pop("tp_degree", 1)
        self.pp_degree = kwargs.pop("pp_degree", 1)
        self.ep_degree = kwargs.pop("ep_degree", 1)
        self.save_sharded_checkpoint = kwargs.pop("save_sharded_checkpoint", False)
        if _release.AT_LEAST_0_9:
            self.enable_ve_data_parallel = kwargs.pop("enable_ve_data_parallel", False)
            # _setup_kernel_target_platform: NKI kernels read the target from the environment
            if not os.environ.get("NEURON_PLATFORM_TARGET_OVERRIDE"):
                os.environ["NEURON_PLATFORM_TARGET_OVERRIDE"] = _release.platform_target()
        self.world_size = kwargs.pop("world_size", None)
        if self.world_size is None:
            self.world_size = self.tp_degree * self.pp_degree * self.ep_degree
        self.start_rank_id = kwargs.pop("start_rank_id", 0)
        self.local_ranks_size = kwargs.pop("local_ranks_size", None)
        if self.local_ranks_size is None:
            self.local_ranks_size = self.world_size
        self.logical_nc_config = int(
            os.environ.get("NEURON_LOGICAL_NC_CONFIG", kwargs.pop("logical_nc_config", 1))
        )
        self.skip_warmup = kwargs.pop("skip_warmup", False)
        self.is_prefill_stage = None
        if kwargs:
            logging.warning(f"NeuronConfig init: Unexpected keyword arguments: {kwargs}")
        if self.token_generation_batches is not None and (
            self.speculation_length > 0 or self.enable_fused_speculation
        ):
            raise ValueError(
                f"Batch bucketing (token_generation_batches={self.token_generation_batches}) "
                "is not currently supported with the following features: speculative decoding"
            )

    def __getattribute__(self, name):
        if name == "trace_tokengen_model":  # gone since 0.2: a computed answer, with a warning
            return not self.enable_fused_speculation or not self.speculation_length > 0
        return super().__getattribute__(name)


def _to_dict(obj):
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    if isinstance(obj, type):
        return {"__module__": obj.__module__, "__name__": obj.__name__}
    if isinstance(obj, (list, tuple)):
        return [_to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    if hasattr(obj, "__dict__"):
        return {
            k: _to_dict(v) for k, v in vars(obj).items() if not callable(v) or isinstance(v, type)
        }
    return obj


class InferenceConfig:
    def __init__(
        self, neuron_config, fused_spec_config=None, load_config=None, metadata=None, **kwargs
    ):
        self.neuron_config = neuron_config
        self.fused_spec_config = fused_spec_config
        if load_config is not None:
            load_config(self)
        self.metadata = metadata
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.num_cores_per_group = 1
        self.validate_config()

    def get_required_attributes(self):
        return []

    def validate_config(self):
        missing = [x for x in self.get_required_attributes() if not hasattr(self, x)]
        assert len(missing) == 0, f"Config must define {missing}"

    def save(self, model_path):
        os.makedirs(model_path, exist_ok=True)
        with open(os.path.join(model_path, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(self.to_json_string() + "\n")

    def to_json_string(self):
        return json.dumps(_to_dict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, model_path, **kwargs):
        with open(os.path.join(model_path, CONFIG_FILE), encoding="utf-8") as f:
            merged = json.loads(f.read())
        merged.update(kwargs)
        if isinstance(merged.get("neuron_config"), dict):
            merged["neuron_config"] = NeuronConfig(**merged["neuron_config"])
        merged.pop("fused_spec_config", None)
        return cls(**merged)


class FusedSpecNeuronConfig:
    def __init__(self, worker_cls, draft_config=None, draft_model_path=None, draft_model_cls=None):
        self.worker_cls = worker_cls
        self.draft_model_cls = draft_model_cls
        self.draft_config = draft_config
        self.draft_model_path = draft_model_path
