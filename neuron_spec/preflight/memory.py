"""Device memory a model needs per NeuronCore, as transformers-neuronx lays it out.

weights  = padded parameters x bytes per element (amp)
kv cache = 2 (K, V) x layers x padded KV heads x head_dim x max(n_positions) x batch x bytes
overhead = a fixed runtime share per core (scratchpad, I/O tensors, collectives buffers, code)

Padding follows transformers-neuronx's sharding: query heads, the MLP's intermediate size and the
vocabulary are padded up to a multiple of tp; grouped-query KV heads are replicated up to tp when
tp exceeds them. Everything is split evenly over tp cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config.catalog import GB, GIB, Architecture

BYTES_PER_ELEMENT = {"f32": 4, "f16": 2, "bf16": 2}

# Per-core runtime overhead. The Neuron docs do not publish it; this value is calibrated so
# that every published sizing holds (the transformers-neuronx developer guide's Llama-2-70B
# and -7B on trn1.32xlarge at tp 32, counted as size / 16 GB per core) holds with n_positions 2048:
# bf16 70B > 10 cores, 7B > 2, both ~200 GB; fp32 70B > 18, 7B > 3, both ~360 GB.
# tests/test_memory.py pins those figures.
RUNTIME_OVERHEAD_PER_CORE = int(0.75 * GIB)

# The fraction of a core's budget above which the preflight warns.
HIGH_WATER = 0.90


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class PaddedShape:
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    kv_replicated: bool


def padded_shape(arch: Architecture, tp: int) -> PaddedShape:
    heads = round_up(arch.num_heads, tp)
    if arch.num_kv_heads == arch.num_heads:  # multi-head attention: K/V padded with Q
        kv, replicated = heads, False
    elif arch.num_kv_heads < tp:  # grouped-query: replicate KV heads up to tp
        kv, replicated = tp, True
    else:
        kv, replicated = arch.num_kv_heads, False
    return PaddedShape(
        heads=heads,
        kv_heads=kv,
        intermediate=round_up(arch.intermediate_size, tp),
        vocab=round_up(arch.vocab_size, tp),
        kv_replicated=replicated,
    )


def kv_heads_shardable(arch: Architecture, tp: int) -> bool:
    """False when KV heads (after padding/replication) cannot be split evenly over tp cores."""
    return padded_shape(arch, tp).kv_heads % tp == 0


def padded_parameters(arch: Architecture, tp: int) -> int:
    s = padded_shape(arch, tp)
    h, d = arch.hidden_size, arch.dim_per_head
    per_layer = 2 * h * s.heads * d + 2 * h * s.kv_heads * d + 3 * h * s.intermediate + 2 * h
    embeddings = s.vocab * h * (1 if arch.tie_word_embeddings else 2)
    return embeddings + arch.num_layers * per_layer + h


@dataclass(frozen=True)
class ModelMemory:
    """One model's device memory at one tp: totals over all its cores, and per core."""

    tp: int
    amp: str
    parameters: int
    padded_parameters: int
    weight_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int  # over all tp cores

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes + self.overhead_bytes

    @property
    def per_core_bytes(self) -> int:
        return math.ceil(self.total_bytes / self.tp)

    def min_cores(self, budget_per_core: int) -> int:
        """Cores needed if memory were the only constraint: total / budget, rounded up."""
        return max(1, math.ceil(self.total_bytes / budget_per_core))

    def to_dict(self) -> dict[str, int | str | float]:
        return {
            "tp_degree": self.tp,
            "amp": self.amp,
            "parameters": self.parameters,
            "padded_parameters": self.padded_parameters,
            "weight_bytes": self.weight_bytes,
            "kv_cache_bytes": self.kv_cache_bytes,
            "overhead_bytes": self.overhead_bytes,
            "total_bytes": self.total_bytes,
            "total_gb": round(self.total_bytes / GB, 2),
            "per_core_bytes": self.per_core_bytes,
        }


def model_memory(
    arch: Architecture,
    *,
    tp: int,
    amp: str,
    n_positions: int,
    batch_size: int,
    overhead_per_core: int = RUNTIME_OVERHEAD_PER_CORE,
) -> ModelMemory:
    nbytes = BYTES_PER_ELEMENT[amp]
    shape = padded_shape(arch, tp)
    padded = padded_parameters(arch, tp)
    kv = 2 * arch.num_layers * shape.kv_heads * arch.dim_per_head * n_positions * batch_size
    return ModelMemory(
        tp=tp,
        amp=amp,
        parameters=arch.parameters(),
        padded_parameters=padded,
        weight_bytes=padded * nbytes,
        kv_cache_bytes=kv * nbytes,
        overhead_bytes=overhead_per_core * tp,
    )


def shared_core_bytes(models: list[ModelMemory]) -> int:
    """Per-core load on cores every model occupies (all start at core 0, so the first
    min(tp) cores carry a share of each)."""
    return sum(m.per_core_bytes for m in models)


def fmt_bytes(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB"
