"""A transformers KV cache layer that grows in place, for the reference backend.

transformers' `DynamicLayer` appends a pass's keys and values by concatenating them to the
whole cache, so every pass copies every cached column of every layer, a cost that grows with
the context - the long documents that prompt lookup pays most on. On the demo target at one CPU
thread (`benchmarks/pass_cost.py`, 2-CPU Intel Xeon, 2026-12-07, medians of 10) a one-token
pass took 0.93 of transformers' time over 600 cached tokens and 0.84 over 3000. `StaticCache`
avoids the copy but needs its length up front and cannot drop the rows and columns that a
continuous batch drops (`HFRunner.arrange`, `_compact`).

`GrowingLayer` keeps each layer's keys and values in a buffer with room to spare and writes a
pass's columns into it; `keys`/`values` are views of the buffer's first columns, so what reads
them (attention, `crop`, the runner's row and column moves) sees a `DynamicLayer`. Cropping
keeps the view of fewer columns, and the next pass overwrites the dropped ones in place. When
the view is no longer one of the buffer (the runner replaced it: rows joined or left, dead
columns dropped) or the buffer is full, the next pass copies the held columns into a new buffer
a quarter larger than needed, and at least `MIN_SPARE` columns larger, so the copies amortise
to a few per column; the room to spare is a quarter of the cache, or MIN_SPARE columns a row
on a short one, plus what refused proposals were cropped from (the buffer does not shrink
until it is replaced). The buffers are made in inference mode when the pass runs in it (as
the engine's do), and afresh when a later pass does not.

Written here because transformers has no growable, croppable, row-movable cache layer.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

MIN_SPARE = 256  # columns of room a new buffer has beyond what it holds
GROWTH = 0.25  # and that share of what it holds


def _view_of(view: Any, buffer: torch.Tensor | None) -> bool:
    """Whether `view` is the first columns of `buffer` (what `update` and `crop` leave)."""
    return (
        buffer is not None
        and isinstance(view, torch.Tensor)
        and view.dim() == 4
        and view.data_ptr() == buffer.data_ptr()
        and view.stride() == buffer.stride()
        and view.shape[:2] == buffer.shape[:2]
        and view.shape[3] == buffer.shape[3]
    )


class GrowingLayer(DynamicLayer):  # type: ignore[misc]  # transformers is untyped here
    """A `DynamicLayer` whose columns are written into a buffer with room to spare."""

    keys: Any
    values: Any
    key_buffer: torch.Tensor | None = None
    value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.keys.shape[-2] if self.keys is not None and self.keys.dim() == 4 else 0
        end = held + key_states.shape[-2]
        in_place = _view_of(self.keys, self.key_buffer) and _view_of(self.values, self.value_buffer)
        if not in_place:
            self.key_buffer = self.value_buffer = None  # replaced: freed before a new one
        if (
            self.key_buffer is None
            or end > self.key_buffer.shape[-2]
            or (self.key_buffer.is_inference() and not torch.is_inference_mode_enabled())
        ):
            self._rebuffer(held, end, key_states, value_states)
        assert self.key_buffer is not None and self.value_buffer is not None
        self.key_buffer[:, :, held:end].copy_(key_states)
        self.value_buffer[:, :, held:end].copy_(value_states)
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def _rebuffer(
        self, held: int, end: int, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> None:
        """New buffers for `end` columns and room to spare, holding the first `held`."""
        columns = end + max(MIN_SPARE, int(end * GROWTH))
        rows, heads = key_states.shape[:2]
        self.key_buffer = key_states.new_empty((rows, heads, columns, key_states.shape[-1]))
        self.value_buffer = value_states.new_empty((rows, heads, columns, value_states.shape[-1]))
        if held:
            self.key_buffer[:, :, :held].copy_(self.keys)
            self.value_buffer[:, :, :held].copy_(self.values)

    def reset(self) -> None:
        self.key_buffer = self.value_buffer = None
        super().reset()


def _layers_as_here() -> bool:
    """Whether this transformers' `DynamicLayer` is initialised from both keys and values, as
    `update` calls it (4.56 and 4.57 took the keys alone)."""
    import inspect

    return "value_states" in inspect.signature(DynamicLayer.lazy_initialization).parameters


def growing_cache() -> Any:
    """An empty transformers `DynamicCache` whose layers are `GrowingLayer`s (a plain
    `DynamicCache` where this transformers does not make its layers from a class, or makes
    them otherwise)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer and _layers_as_here():
        cache.layer_class_to_replicate = GrowingLayer
    return cache
