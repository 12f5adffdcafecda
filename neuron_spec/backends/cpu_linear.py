"""Linear layers with weights prepacked for oneDNN, for f32 models on the CPU.

A decoding step multiplies a few rows (the batch's rows times the verified width) by every
weight matrix. PyTorch's CPU wheels send `nn.Linear` to MKL, whose small-row products are far
from the machine's bandwidth on CPUs it does not tune for (measured on a 2-core AMD EPYC: 8
rows by a 1536x576 f32 matrix took 2.3x as long as through oneDNN with the weight reordered
once into its blocked layout; one row 1.9x). PyTorch ships that oneDNN path for its own graph
compiler (`torch.ops.mkldnn._reorder_linear_weight` / `_linear_pointwise`); this module uses it
for eager transformers models, which is why it is written here rather than taken from a
library: no maintained package offers it without a compiler at start-up.

A one-row product (one sequence, no proposal) is another matter: each oneDNN call costs about
15 us of its own and its one-row kernel is not always the faster (measured on a 2-core Intel
Xeon with AVX-512: MKL's took 0.70-0.86 of the time on the demo's layer matrices, a whole
one-token pass 56 ms against 64 at one thread, 34 against 43 at two; on the AMD EPYC above,
1.9x as long). So it is measured at load: the layers of the first decoder block, one row,
both paths, best of several rounds; where PyTorch's own is clearly faster (by a tenth) each
layer keeps its plain weight beside the packed one for one-row products, unless those copies
would take more than a quarter of the machine's memory (the output head, often the input
embedding's weight, is left out: its one-row products take the same time either way). This is
asked for (`auto`), not the default: on that Xeon it made the demo's draft model look worth
running at idle, and beside a process spinning on a core its passes, and the thread count's
re-tries at two threads, took 3.7-4.6x the idle time (`benchmarks/busy_cpu.py`; 1.6x packed).

Sibling layers that read the same input (a block's query, key and value projections; its gate
and up projections) are packed as one matrix, their weights stacked, and the product is split
among them: one oneDNN call where there were three (or two), and the key and value's narrow
matrices (192 columns for the demo) no longer each split over the threads alone. On the demo
target (2-CPU Intel Xeon, 300 cached tokens, medians of 10) a 9-token pass took 68-72 ms
instead of 81-85 at two threads, a 17-token pass 85-90 instead of 102-107, eight rows of one
token 81 instead of 82-95, with the same logits bit for bit (oneDNN sums each output over the
input in the same order whatever the number of columns). A part reuses its group's last
product only when given the very tensor that product was of (the same object, and unchanged
where PyTorch counts changes, outside inference mode) and only once; any other call (another
caller, another order) gets a product of its own: the split saves work, it assumes nothing
about the modeling code.

Only f32 layers on the CPU are packed (oneDNN's bf16 path needs AVX512-BF16 or
AVX-NE-CONVERT, and PyTorch's own bf16 products are what a bf16 model gets elsewhere). The ops
are private to PyTorch, so nothing is assumed: `pack_linears` checks them on the first such
layer against `torch.nn.functional.linear` and leaves the model untouched when an op is
missing or disagrees beyond rounding. NEURON_SPEC_CPU_LINEAR chooses: unset or `onednn`
(packed for every row count), `auto` (one-row products measured, above), `default` (PyTorch's
own path throughout).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import UsageError

ENV = "NEURON_SPEC_CPU_LINEAR"
ROWS_HINT = 8  # the row count oneDNN lays the weight out for (best of 1, 8, 32 measured)
EXACT_ROWS = 16  # up to this many rows a product runs at its own size
CHOICES = ("auto", "onednn", "default")
ONE_ROW_MARGIN = 0.9  # PyTorch's one-row path is kept only when it takes under this share
ONE_ROW_ROUNDS = 15  # timed rounds per path (the best of each is compared)
PLAIN_MEMORY_SHARE = 4  # plain copies are kept only within 1/this of the machine's memory
BLOCK_LAYERS = 7  # a Llama decoder block's linear layers: q, k, v, o, gate, up, down
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # read the same input


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
    plain: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(self, linear: torch.nn.Linear | _Stacked, keep_plain: bool = False):
        """`keep_plain`: also keep the weight as it is, for one-row products."""
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer(
            "packed", torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT), persistent=False
        )
        self.register_buffer("plain", weight.clone() if keep_plain else None, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        rows = flat.shape[0]
        if rows == 1 and self.plain is not None:
            return torch.nn.functional.linear(x, self.plain, self.bias)
        padded = padded_rows(rows)
        if padded != rows:
            flat = torch.cat([flat, flat.new_zeros((padded - rows, self.in_features))])
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        shaped: torch.Tensor = out[:rows].reshape(*x.shape[:-1], self.out_features)
        return shaped


class _Stacked:
    """Stacked weights, shaped as PackedLinear reads a layer."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias
        self.out_features, self.in_features = weight.shape


class _Pending(threading.local):
    """A group's last product, per thread (a model may run in more than one)."""

    def __init__(self) -> None:  # run again in each thread that first reads it
        self.source: torch.Tensor | None = None
        self.version = -1
        self.parts: list[torch.Tensor | None] = []


class FusedGroup(torch.nn.Module):
    """Sibling linear layers packed as one: their weights stacked, one product split."""

    def __init__(self, linears: list[torch.nn.Linear], keep_plain: bool = False):
        super().__init__()
        biases = [x.bias.detach() for x in linears if x.bias is not None]
        stacked = _Stacked(
            torch.cat([x.weight.detach() for x in linears]),
            torch.cat(biases) if biases else None,
        )
        self.packed = PackedLinear(stacked, keep_plain)
        ends = torch.tensor([x.out_features for x in linears]).cumsum(0).tolist()
        self.bounds = list(zip([0, *ends[:-1]], ends, strict=True))
        self.pending = _Pending()

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Part `index` of the product with `x`: taken from the group's last product when that
        was of this very tensor (unchanged, where PyTorch counts changes: not in inference
        mode) and the part is not taken yet; else computed."""
        state = self.pending
        version = -1 if x.is_inference() else x._version  # inference tensors keep no count
        if state.source is not x or state.version != version or state.parts[index] is None:
            out = self.packed(x)
            state.source, state.version = x, version
            state.parts = [out[..., lo:hi] for lo, hi in self.bounds]
        taken, state.parts[index] = state.parts[index], None
        if not any(p is not None for p in state.parts):
            state.source = None  # every part taken: hold nothing until the next product
        assert taken is not None
        return taken


class FusedPart(torch.nn.Module):
    """One layer of a FusedGroup, where the original layer was."""

    def __init__(self, group: FusedGroup, index: int, linear: torch.nn.Linear):
        super().__init__()
        self.group, self.index = group, index
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.part(x, self.index)


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


def choice(environ: Mapping[str, str]) -> str:
    """NEURON_SPEC_CPU_LINEAR's choice (unset: onednn); another value is refused, before
    anything loads."""
    given = environ.get(ENV, "").strip().lower() or "onednn"
    if given not in CHOICES:
        raise UsageError(
            f"{ENV}={given[:40]!r}: give onednn (the default: oneDNN throughout), auto "
            "(oneDNN, one-row products on whichever path measured faster here) or default "
            "(PyTorch's own path)"
        )
    return given


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether NEURON_SPEC_CPU_LINEAR asks for packing (anything but default)."""
    return choice(environ) != "default"


def _seconds(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def plain_one_row_faster(layers: list[torch.nn.Linear]) -> bool:
    """Whether one-row products through these layers take clearly less time (under
    ONE_ROW_MARGIN) on PyTorch's own path than packed: best of ONE_ROW_ROUNDS rounds of each,
    the two taking turns so that a machine turning busy touches both."""
    packed = [PackedLinear(layer) for layer in layers]
    inputs = [torch.randn((1, layer.in_features)) for layer in layers]
    pairs = list(zip(layers, packed, inputs, strict=True))

    def plain_round() -> None:
        for layer, _p, x in pairs:
            torch.nn.functional.linear(x, layer.weight, layer.bias)

    def packed_round() -> None:
        for _l, p, x in pairs:
            p(x)

    with torch.inference_mode():
        plain_round()  # first calls pay one-off costs
        packed_round()
        plain_s = packed_s = float("inf")
        for _ in range(ONE_ROW_ROUNDS):
            plain_s = min(plain_s, _seconds(plain_round))
            packed_s = min(packed_s, _seconds(packed_round))
    return plain_s < ONE_ROW_MARGIN * packed_s


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _plain_copies_fit(layers: list[torch.nn.Linear]) -> bool:
    need = sum(layer.weight.numel() * layer.weight.element_size() for layer in layers)
    memory = _memory_bytes()
    return memory is None or need <= memory // PLAIN_MEMORY_SHARE


def one_row_plain(model: Any) -> bool:
    """Whether a packed model runs its one-row products on PyTorch's own path."""
    return any(isinstance(m, PackedLinear) and m.plain is not None for m in model.modules())


def _sibling_groups(places: list[tuple[Any, str]], head: Any) -> list[tuple[Any, tuple[str, ...]]]:
    """The SIBLINGS found among `places`: every layer of the group to be packed, none of them
    the output head, all reading inputs of one width and all with a bias or none."""
    names: dict[int, set[str]] = {}
    parents: dict[int, Any] = {}
    for parent, name in places:
        names.setdefault(id(parent), set()).add(name)
        parents[id(parent)] = parent
    found: list[tuple[Any, tuple[str, ...]]] = []
    for key, present in names.items():
        for group in SIBLINGS:
            if not present.issuperset(group):
                continue
            linears = [getattr(parents[key], name) for name in group]
            if (
                all(x is not head for x in linears)
                and len({x.in_features for x in linears}) == 1
                and len({x.bias is None for x in linears}) == 1
            ):
                found.append((parents[key], group))
    return found


def pack_linears(model: Any, environ: Mapping[str, str]) -> int:
    """Replace every f32 `nn.Linear` (the class itself, not subclasses, whose forward may
    differ) of a CPU model with a PackedLinear, or a FusedPart where its SIBLINGS are packed
    with it; returns how many layers (0 when the path is unavailable or declined). A weight
    shared with another module (tied embeddings) stays where it is; the linear gets a packed
    copy. The other parameters are copied out of the checkpoint's memory-mapped file, so that
    the mapping, whose pages the packing read, is released: the process then holds the
    packed weights, not both (measured on the 135M demo: 1.43 GB resident before, 1.03 after),
    and the plain ones as well only where one-row products measured faster on them (`auto`)."""
    mode = choice(environ)
    if mode == "default":
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
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layers = [getattr(*place) for place in places if getattr(*place) is not head]
    keep = (
        mode == "auto"
        and bool(layers)
        and _plain_copies_fit(layers)
        and plain_one_row_faster(layers[:BLOCK_LAYERS])
    )
    for parent, names in _sibling_groups(places, head):
        linears = [getattr(parent, name) for name in names]
        group = FusedGroup(linears, keep_plain=keep)
        for index, (name, linear) in enumerate(zip(names, linears, strict=True)):
            setattr(parent, name, FusedPart(group, index, linear))
    for parent, name in places:
        linear = getattr(parent, name)
        if type(linear) is torch.nn.Linear:  # not fused above
            setattr(parent, name, PackedLinear(linear, keep_plain=keep and linear is not head))
    with torch.no_grad():  # the rest leaves the checkpoint's file mapping, which then closes
        for param in model.parameters():
            param.data = param.data.clone()
        for module in model.modules():
            for key, buffer in module.named_buffers(recurse=False):
                if buffer is not None and not isinstance(module, PackedLinear):
                    setattr(module, key, buffer.clone())
    return len(places)
