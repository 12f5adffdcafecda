"""NeuronConfig as the double: only what neuron-spec reads or sets.

From 0.11 `padding_side='right'` turns on 2-D cache ids (one position per row and column)
and a per-row last token in context encoding (`lhs_aligned`, `vectorize_last_token_id`);
0.10.0.360 spelled it `use_2d_cache_ids=True` or `lhs_aligned=True`. The default is 'left'.
A `continuous_batching=ContinuousBatchingConfig(max_num_seqs=N)` forces right padding.
"""

from __future__ import annotations

from .version import at_least


class NeuronConfig:
    def __init__(self, **kwargs):
        if at_least(0, 11):
            padding_side = kwargs.pop("padding_side", "left")
            assert padding_side in ["left", "right"], (
                f"The `padding_side={padding_side}` argument must be either 'left' or 'right'"
            )
            self.padding_side = padding_side
            self.lhs_aligned = padding_side == "right"
        else:
            if "padding_side" in kwargs:
                raise TypeError("__init__() got an unexpected keyword argument 'padding_side'")
            self.lhs_aligned = bool(
                kwargs.pop("use_2d_cache_ids", False) or kwargs.pop("lhs_aligned", False)
            )
            self.padding_side = "right" if self.lhs_aligned else "left"
        layout = kwargs.pop("cache_layout", "SBH")
        self.cache_layout = getattr(layout, "value", layout)
        self.continuous_batching = kwargs.pop("continuous_batching", None)
        if self.continuous_batching:  # forces left alignment (the library's words)
            self.lhs_aligned = True
            self.padding_side = "right"
        self.other = kwargs  # everything else the real config takes, unread here

    @property
    def use_2d_cache_ids(self):
        return self.lhs_aligned

    @property
    def vectorize_last_token_id(self):
        return self.lhs_aligned

    def __repr__(self):
        cb = self.continuous_batching
        seqs = f", max_num_seqs={cb.max_num_seqs}" if cb else ""
        return f"NeuronConfig(padding_side={self.padding_side!r}{seqs})"


class ContinuousBatchingConfig:
    """max_num_seqs (or batch_size_for_shared_caches): the slots of the shared KV cache."""

    def __init__(self, **kwargs):
        if kwargs.get("max_num_seqs") is not None:
            self.max_num_seqs = kwargs.pop("max_num_seqs")
        else:
            self.max_num_seqs = kwargs.pop("batch_size_for_shared_caches")
        self.max_model_len = kwargs.pop("max_model_len", None)
        self.optimized_paged_attention = kwargs.pop("optimized_paged_attention", None) or False
        assert len(kwargs) == 0, f"unexpected key word arguments: {kwargs.keys()}"

    @property
    def batch_size_for_shared_caches(self):
        return self.max_num_seqs
