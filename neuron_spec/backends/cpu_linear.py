"""Linear layers with weights prepacked for oneDNN, for f32 models on the CPU.

A decoding step multiplies a few rows (the batch's rows times the verified width) by every
weight matrix. PyTorch's CPU wheels send `nn.Linear` to MKL, whose small-row products are far
from the machine's bandwidth on CPUs it does not tune for (measured on a 2-core AMD EPYC: 8
rows by a 1536x576 f32 matrix took 2.3x as long as through oneDNN with the weight reordered
once into its blocked layout; one row 1.9x). PyTorch ships that oneDNN path for its own graph
compiler (`torch.ops.mkldnn._reorder_linear_weight` / `_linear_pointwise`); this module uses it
for eager transformers models, which is why it is written here rather than taken from a
library: no maintained package offers it without a compiler at start-up.

Only f32 layers on the CPU are packed (oneDNN's bf16 path needs AVX512-BF16 or
AVX-NE-CONVERT, and PyTorch's own bf16 products are what a bf16 model gets elsewhere). The ops
are private to PyTorch, so nothing is assumed: `pack_linears` checks them on the first such
layer against `torch.nn.functional.linear` and leaves the model untouched when an op is
missing or disagrees beyond rounding. NEURON_SPEC_CPU_LINEAR=default keeps PyTorch's own
path (=onednn, or unset: this one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import UsageError

ENV = "NEURON_SPEC_CPU_LINEAR"
ROWS_HINT = 8  # the row count oneDNN lays the weight out for (best of 1, 8, 32 measured)
EXACT_ROWS = 16  # up to this many rows a product runs at its own size


def padded_rows(rows: int) -> int:
    """The row count a product runs at: its own up to EXACT_ROWS, else rounded up to a
    quarter of its power of two (at most a quarter more rows). oneDNN keeps code and state
    for every row count it has run, about 3 MB per count for a 135M model: a server that met
    every prompt length would grow without end, and with this rounding it meets at most about
    four counts per doubling."""
    if rows <= EXACT_ROWS:
        return rows
    step = 1 << (rows.bit_length() - 3)
    return -(-rows // step) * step


class PackedLinear(torch.nn.Module):
    """An inference-only `nn.Linear` whose weight is held in oneDNN's layout (a buffer left
    out of `state_dict`: the layout is this machine's, not a checkpoint's)."""

    packed: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer(
            "packed", torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT), persistent=False
        )
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        padded = padded_rows(rows)
        if padded != rows:
            flat = torch.cat([flat, flat.new_zeros((padded - rows, self.in_features))])
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        shaped: torch.Tensor = out[:rows].reshape(*x.shape[:-1], self.out_features)
        return shaped


def _agrees(linear: torch.nn.Linear) -> bool:
    """Whether the packed path works here and matches PyTorch's own on a random input."""
    try:
        packed = PackedLinear(linear)
        x = torch.randn((3, linear.in_features), dtype=linear.weight.dtype)
        with torch.inference_mode():
            got, want = packed(x), torch.nn.functional.linear(x, linear.weight, linear.bias)
    except (RuntimeError, AttributeError, TypeError):
        return False
    scale = float(want.abs().max()) or 1.0
    return bool(float((got - want).abs().max()) <= 1e-4 * scale)


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether NEURON_SPEC_CPU_LINEAR asks for packing (unset or onednn) or not (default);
    another value is refused, before anything loads."""
    given = environ.get(ENV, "").strip().lower()
    if given not in ("", "onednn", "default"):
        raise UsageError(f"{ENV}={given[:40]!r}: give onednn (the default) or default (PyTorch's)")
    return given != "default"


def pack_linears(model: Any, environ: Mapping[str, str]) -> int:
    """Replace every f32 `nn.Linear` (the class itself, not subclasses, whose forward may
    differ) of a CPU model with a PackedLinear; returns how many (0 when the path is
    unavailable or declined). A weight
    shared with another module (tied embeddings) stays where it is; the linear gets a packed
    copy. The other parameters are copied out of the checkpoint's memory-mapped file, so that
    the mapping, whose pages the packing read, is released: the process then holds the
    packed weights, not both (measured on the 135M demo: 1.43 GB resident before, 1.03 after)."""
    if not wanted(environ):
        return 0
    places = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear
        and child.weight.device.type == "cpu"
        and child.weight.dtype == torch.float32
    ]  # where, not the layers: each original is freed as soon as its packed copy exists
    if not places or not _agrees(getattr(*places[0])):
        return 0
    for parent, name in places:
        setattr(parent, name, PackedLinear(getattr(parent, name)))
    with torch.no_grad():  # the rest leaves the checkpoint's file mapping, which then closes
        for param in model.parameters():
            param.data = param.data.clone()
        for module in model.modules():
            for key, buffer in module.named_buffers(recurse=False):
                if buffer is not None and not isinstance(module, PackedLinear):
                    setattr(module, key, buffer.clone())
    return len(places)
