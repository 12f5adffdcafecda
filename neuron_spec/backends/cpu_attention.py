"""Attention on the CPU without copying grouped keys and values, for the reference backend.

Models with grouped-query attention (Llama-2-70B, Llama 3, the demo's SmolLM2) keep fewer key
and value heads than query heads. transformers' SDPA attention lets PyTorch's kernel read the
shared heads directly only while no mask is given: a pass of several new tokens over a cache
(a speculative verification) has a mask, so it first copies every cached key and value once
per query head that shares it (`repeat_kv`). On the demo target at one CPU thread, with the
cache of `kv_cache.py`, a 9-token pass took 0.89 of transformers' time over 600 cached tokens
and 0.70 over 3000 (`benchmarks/pass_cost.py`, 2-CPU Intel Xeon, 2026-12-07, medians of 10).

`use_grouped_attention` registers `neuron_spec_sdpa`, which gives such passes to PyTorch's
`scaled_dot_product_attention` with `enable_gqa=True` and the same mask, and every other pass
to transformers' own SDPA attention; masks are made as for SDPA. The results are the same
numbers (the same kernel reads the same heads; the tests compare logits bit for bit). On CUDA
PyTorch's fused kernels do not take a mask with grouped heads, so only CPU models switch; and
only the model types in MODEL_TYPES, whose modeling code does nothing else by the attention's
name (some, such as Gemma 4's, check for "sdpa" by name and would compute differently), with
PyTorch 2.5 or later (`enable_gqa`). A pass with any setting this path does not honour goes to
transformers' own.

Written here because transformers chooses grouped heads from the mask alone and has no
setting for it.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "neuron_spec_sdpa"
MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# what transformers may pass that this path honours (or that is not about attention); a pass
# with anything else set goes to transformers' own SDPA attention
_HONOURED = frozenset({"position_ids", "cache_position", "use_cache", "sliding_window"})


def _attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    grouped = getattr(module, "num_key_value_groups", 1) > 1
    unknown = any(v is not None and v is not False for k, v in kwargs.items() if k not in _HONOURED)
    if (
        not grouped
        or unknown
        or attention_mask is None
        or query.shape[2] == 1
        or query.device.type != "cpu"
        or key.shape[-1] != value.shape[-1]
    ):
        out: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
        return out
    attended = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        enable_gqa=True,
    )  # fmt: skip
    return attended.transpose(1, 2).contiguous(), None


def _register() -> bool:
    """Make NAME known to transformers; False where this transformers or PyTorch cannot take
    it."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 5):
        return False  # no enable_gqa
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return True


def use_grouped_attention(model: Any) -> bool:
    """Switch a CPU model of MODEL_TYPES that uses transformers' SDPA attention and has
    grouped key/value heads to NAME; True when it switched."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return False
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if getattr(config, "_attn_implementation", None) != "sdpa" or not heads or kv_heads == heads:
        return False
    if not hasattr(model, "set_attn_implementation") or not _register():
        return False
    model.set_attn_implementation(NAME)
    return bool(model.config._attn_implementation == NAME)
