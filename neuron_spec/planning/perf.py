"""A latency model of Llama decoding on NeuronCores: data and small functions, no torch.

decode step (TPOT) = overhead + layers x collective latency
                     + max(bytes read / (efficiency x HBM bandwidth of the cores used),
                           FLOPs / peak FLOP/s of the cores used)
    bytes read: the padded weights (as memory.py shards them) plus the KV cache at the
    sequence length (transformers-neuronx attends over the whole compiled cache).
prefill (TTFT)     = overhead_ctx + layers x latency_ctx
                     + matmul FLOPs(prompt) / (utilisation x peak FLOP/s)
                     + attention FLOPs(prompt) / (attention utilisation x peak FLOP/s)
                     + weights / effective bandwidth
    attention FLOPs grow with the square of the prompt (QK^T and AV over every pair of
    positions, heads padded to tp as the compiled graph has them); the kernels that compute them
    run far below the matmul utilisation, so they get their own fitted constant. Without it a
    16k-token prompt is predicted several times too fast.
verify (window k)  = decode step + (k - 1) x the prefill cost of one more token
    (the target scores k positions in one pass: the same weights read once, a little more
    compute; the cost grows with k from the model, not by a constant).

Hardware constants carry their sources. The free constants (overhead, collective latency and
bandwidth efficiency for decode; overhead, latency and both utilisations for prefill) are fitted by
weighted least squares on relative error, each kept physical (non-negative; efficiency and
utilisation at most 1, so no prediction beats the bandwidth floor), on the published Neuron
2.18 rows below. benchmarks/planner_accuracy.py reports each row predicted by a fit without it.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from ..config.catalog import ARCHITECTURES, GIB, Architecture
from ..preflight.memory import model_memory, padded_shape


@dataclass(frozen=True)
class Family:
    """One NeuronCore generation, per (logical) core."""

    hbm_bytes_per_s: float
    bf16_flops_per_s: float
    source: str


_CORE_V2 = (
    "Neuron docs, Inf2 and Trn1 architecture pages: per Inferentia2/Trainium chip 190 TFLOPS "
    "FP16/BF16 and 820 GiB/s device memory bandwidth, 2 NeuronCore-v2 per chip"
)
FAMILIES: dict[str, Family] = {
    "inf2": Family(820 * GIB / 2, 190e12 / 2, _CORE_V2),
    "trn1": Family(820 * GIB / 2, 190e12 / 2, _CORE_V2),
    "trn2": Family(
        2.9e12 / 4,
        667e12 / 4,
        "AWS Trn2 page: per Trainium2 chip 2.9 TB/s HBM and 667 TFLOPS dense BF16, "
        "4 logical NeuronCores at LNC=2",
    ),
}
BYTES = {"f32": 4, "f16": 2, "bf16": 2}


@dataclass(frozen=True)
class Published:
    """One published measurement: batch 1, bf16, transformers-neuronx."""

    model: str
    instance: str
    tp: int
    prompt: int
    output: int
    ttft_ms: float | None
    tpot_ms: float
    source: str


_N218 = (
    "Neuron 2.18 docs, transformers-neuronx inference performance, inf2.48xlarge, bf16, "
    "batch 1, p50"
)
# The rows the free constants are fitted on.
PUBLISHED: tuple[Published, ...] = (
    Published("llama-2-7b", "inf2.48xlarge", 24, 128, 3968, 27.6, 6.47, _N218),
    Published("llama-2-7b", "inf2.48xlarge", 24, 128, 8064, 29.2, 7.34, _N218),
    Published("llama-2-13b", "inf2.48xlarge", 24, 128, 3968, 25.9, 9.17, _N218),
    Published("llama-2-13b", "inf2.48xlarge", 24, 4096, 4096, 333.8, 10.17, _N218),
    Published("llama-2-70b", "inf2.48xlarge", 24, 128, 128, 76.6, 32.9, _N218),
    Published("llama-2-70b", "inf2.48xlarge", 24, 1024, 1024, 277.0, 33.73, _N218),
    Published("llama-2-70b", "inf2.48xlarge", 24, 2048, 2048, 810.4, 34.9, _N218),
    Published("llama-3-70b", "inf2.48xlarge", 24, 128, 1024, 80.0, 32.47, _N218),
)
_SEED = "AWS blog on speculative decoding with Inferentia2 and Trainium, median per-token latency"
# Held out, never fitted: Trainium figures without a stated setup (tp 32 and 2048 positions
# assumed, the layout the blog recommends).
TRAINIUM_SEED: tuple[Published, ...] = (
    Published("llama-2-70b", "trn1.32xlarge", 32, 128, 1920, None, 20.6, _SEED),
    Published("llama-2-7b", "trn1.32xlarge", 32, 128, 1920, None, 3.7, _SEED),
)


_T218 = (
    "Neuron 2.18 docs, transformers-neuronx inference performance, trn1.32xlarge tp 32, bf16, "
    "batch 1, p50 (aws-neuron/aws-neuron-sdk, about-neuron/benchmarks/trn1/"
    "latency_data_decoder.csv)"
)
# Held out, never fitted: the same release's Trainium rows, long prompts included.
TRAINIUM_2_18: tuple[Published, ...] = (
    Published("llama-2-7b", "trn1.32xlarge", 32, 128, 8064, 13.32, 6.70, _T218),
    Published("llama-2-13b", "trn1.32xlarge", 32, 4096, 4096, 864.14, 9.84, _T218),
    Published("llama-2-13b", "trn1.32xlarge", 32, 8192, 8192, 2367.93, 13.41, _T218),
    Published("llama-2-70b", "trn1.32xlarge", 32, 128, 128, 53.91, 25.18, _T218),
    Published("llama-2-70b", "trn1.32xlarge", 32, 256, 256, 81.88, 25.27, _T218),
    Published("llama-2-70b", "trn1.32xlarge", 32, 128, 1024, 57.75, 25.45, _T218),
    Published("llama-2-70b", "trn1.32xlarge", 32, 1024, 1024, 232.48, 26.04, _T218),
    Published("llama-2-70b", "trn1.32xlarge", 32, 1024, 2048, 236.78, 26.62, _T218),
    Published("llama-2-70b", "trn1.32xlarge", 32, 2048, 2048, 690.96, 26.85, _T218),
    Published("llama-3-70b", "trn1.32xlarge", 32, 128, 128, 52.53, 26.48, _T218),
    Published("llama-3-70b", "trn1.32xlarge", 32, 128, 1024, 53.2, 24.48, _T218),
    Published("llama-3-70b", "trn1.32xlarge", 32, 2048, 2048, 547.0, 26.2, _T218),
)


@dataclass(frozen=True)
class Constants:
    """The fitted constants of one of the two passes (decode or prefill)."""

    overhead_s: float
    layer_s: float
    efficiency: float  # decode: fraction of HBM bandwidth; prefill: fraction of peak FLOP/s
    fitted_on: tuple[str, ...]
    attention_efficiency: float = 1.0  # prefill: attention's fraction of peak FLOP/s

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "overhead_ms": round(self.overhead_s * 1e3, 4),
            "layer_latency_us": round(self.layer_s * 1e6, 3),
            "efficiency": round(self.efficiency, 4),
        }
        if self.attention_efficiency != 1.0:
            out["attention_efficiency"] = round(self.attention_efficiency, 4)
        out["fitted_on"] = list(self.fitted_on)
        return out


# --- the pieces of a step --------------------------------------------------------------------


def _weights_and_kv(arch: Architecture, amp: str, tp: int, positions: int) -> tuple[int, int]:
    mem = model_memory(arch, tp=tp, amp=amp, n_positions=max(positions, 1), batch_size=1)
    return mem.weight_bytes, mem.kv_cache_bytes


def floor_s(arch: Architecture, amp: str, tp: int, family: Family) -> float:
    """The physical floor of a decode step: every weight byte read once at full bandwidth."""
    weights, _ = _weights_and_kv(arch, amp, tp, 1)
    return weights / (tp * family.hbm_bytes_per_s)


def _decode_terms(
    arch: Architecture, amp: str, tp: int, family: Family, positions: int, batch: int = 1
) -> tuple[float, float]:
    """(memory seconds at full bandwidth, compute seconds at peak) of one decode step of
    `batch` rows: the weights are read once for all rows, each row reads its own KV cache
    and does its own matmuls."""
    weights, kv = _weights_and_kv(arch, amp, tp, positions)
    padded = weights / BYTES[amp]
    return (weights + batch * kv) / (tp * family.hbm_bytes_per_s), batch * 2 * padded / (
        tp * family.bf16_flops_per_s
    )


def _prefill_flops(
    arch: Architecture, amp: str, tp: int, tokens: int, start: int = 0
) -> tuple[float, float]:
    """(matmul, attention) FLOPs of encoding `tokens` positions after `start` cached ones:
    2 x parameters per token; QK^T and AV over the whole window, as fixed graphs compute them,
    for the heads padded to tp."""
    weights, _ = _weights_and_kv(arch, amp, tp, 1)
    params = weights / BYTES[amp]
    heads = padded_shape(arch, tp).heads
    span = start + tokens
    return 2 * params * tokens, 4 * arch.num_layers * tokens * span * heads * arch.dim_per_head


def _prefill_compute_s(
    arch: Architecture, amp: str, tp: int, family: Family, tokens: int, pre: Constants,
    start: int = 0,
) -> float:  # fmt: skip
    matmul, attention = _prefill_flops(arch, amp, tp, tokens, start)
    peak = tp * family.bf16_flops_per_s
    return matmul / (peak * pre.efficiency) + attention / (peak * pre.attention_efficiency)


def decode_step_s(
    arch: Architecture,
    amp: str,
    tp: int,
    family: Family,
    positions: int,
    c: Constants | None = None,
    batch: int = 1,
) -> float:
    """Predicted time of one decode step of `batch` rows with `positions` in the compiled
    cache (the constants are fitted at batch 1; a batch adds each row's KV reads and
    compute, which is what grows)."""
    c = c or calibration()[0]
    memory, compute = _decode_terms(arch, amp, tp, family, positions, batch)
    t = c.overhead_s + arch.num_layers * c.layer_s + max(memory / c.efficiency, compute)
    return max(t, floor_s(arch, amp, tp, family))


def prefill_s(
    arch: Architecture,
    amp: str,
    tp: int,
    family: Family,
    prompt: int,
    calibrated: tuple[Constants, Constants] | None = None,
) -> float:
    """Predicted time to first token: encoding a `prompt`-token context."""
    dec, pre = calibrated or calibration()
    weights, _ = _weights_and_kv(arch, amp, tp, 1)
    compute = _prefill_compute_s(arch, amp, tp, family, prompt, pre)
    memory = weights / (tp * family.hbm_bytes_per_s * dec.efficiency)
    return pre.overhead_s + arch.num_layers * pre.layer_s + compute + memory


def verify_step_s(
    arch: Architecture,
    amp: str,
    tp: int,
    family: Family,
    positions: int,
    window: int,
    batch: int = 1,
) -> float:
    """The target's speculation pass over `window` = gamma + 1 positions of `batch` rows."""
    pre = calibration()[1]
    per_extra = _prefill_compute_s(arch, amp, tp, family, window - 1, pre, start=positions)
    return decode_step_s(arch, amp, tp, family, positions, batch=batch) + batch * per_extra


# --- fitting ----------------------------------------------------------------------------------


def _solve(x: list[list[float]], y: list[float], w: list[float]) -> list[float] | None:
    """Weighted least squares by the normal equations (Gauss-Jordan, partial pivoting)."""
    k = len(x[0])
    rows = list(zip(x, y, w, strict=True))
    m = [
        [sum(wt * r[i] * r[j] for r, _, wt in rows) for j in range(k)]
        + [sum(wt * r[i] * t for r, t, wt in rows)]
        for i in range(k)
    ]
    for i in range(k):
        p = max(range(i, k), key=lambda r: abs(m[r][i]))
        m[i], m[p] = m[p], m[i]
        if abs(m[i][i]) < 1e-300:
            return None
        for r in range(k):
            if r != i:
                f = m[r][i] / m[i][i]
                m[r] = [u - f * v for u, v in zip(m[r], m[i], strict=True)]
    return [m[i][k] / m[i][i] for i in range(k)]


def fit_bounded(
    x: list[list[float]], y: list[float], lower: Sequence[float], scale: list[float]
) -> list[float]:
    """Least squares of y ~ x . coef on error relative to `scale` (the measured totals), with
    a lower bound per coefficient: every choice of which coefficients sit on their bound is
    solved, and the feasible one with the least error kept."""
    k = len(lower)
    w = [1.0 / s**2 for s in scale]
    best: tuple[float, list[float]] | None = None
    for at_bound in itertools.product((False, True), repeat=k):
        free = [i for i in range(k) if not at_bound[i]]
        coef = [float(lower[i]) for i in range(k)]
        rest = [
            t - sum(r[i] * coef[i] for i in range(k) if at_bound[i])
            for r, t in zip(x, y, strict=True)
        ]
        if free:
            sol = _solve([[r[i] for i in free] for r in x], rest, w)
            if sol is None:
                continue
            for i, v in zip(free, sol, strict=True):
                coef[i] = v
        if any(coef[i] < lower[i] - 1e-12 for i in range(k)):
            continue
        err = sum(
            wt * (sum(r[i] * coef[i] for i in range(k)) - t) ** 2
            for r, t, wt in zip(x, y, w, strict=True)
        )
        if best is None or err < best[0]:
            best = (err, coef)
    if best is None:
        raise ValueError("no physical fit of the published rows")
    return best[1]


def _label(p: Published) -> str:
    return f"{p.model} {p.instance} tp{p.tp} {p.prompt}/{p.output}"


def fit(rows: Sequence[Published]) -> tuple[Constants, Constants]:
    """Decode constants from the rows' TPOT, then prefill constants from their TTFT."""
    fam = [FAMILIES[_platform(p.instance)] for p in rows]
    archs = [ARCHITECTURES[p.model] for p in rows]
    x, y = [], []
    for p, a, f in zip(rows, archs, fam, strict=True):
        memory, _ = _decode_terms(a, "bf16", p.tp, f, p.prompt + p.output)
        x.append([1.0, float(a.num_layers), memory])
        y.append(p.tpot_ms / 1e3)
    o, lay, inv_eff = fit_bounded(x, y, (0.0, 0.0, 1.0), y)
    dec = Constants(o, lay, 1.0 / inv_eff, tuple(_label(p) for p in rows))
    x, y, total = [], [], []
    for p, a, f in zip(rows, archs, fam, strict=True):
        if p.ttft_ms is None:
            continue
        weights, _ = _weights_and_kv(a, "bf16", p.tp, 1)
        known = weights / (p.tp * f.hbm_bytes_per_s * dec.efficiency)
        matmul, attention = _prefill_flops(a, "bf16", p.tp, p.prompt)
        peak = p.tp * f.bf16_flops_per_s
        x.append([1.0, float(a.num_layers), matmul / peak, attention / peak])
        y.append(p.ttft_ms / 1e3 - known)
        total.append(p.ttft_ms / 1e3)
    o, lay, inv_util, inv_attn = fit_bounded(x, y, (0.0, 0.0, 1.0, 1.0), total)
    labels = tuple(_label(p) for p in rows if p.ttft_ms is not None)
    return dec, Constants(o, lay, 1.0 / inv_util, labels, 1.0 / inv_attn)


@functools.cache
def calibration() -> tuple[Constants, Constants]:
    """The constants every prediction uses: fitted on all published rows."""
    return fit(PUBLISHED)


def _platform(instance: str) -> str:
    return instance.split(".", 1)[0].removesuffix("n")


def predict(p: Published, calibrated: tuple[Constants, Constants]) -> tuple[float, float]:
    """(TTFT ms, TPOT ms) of a published row's setup under the given constants."""
    a, f = ARCHITECTURES[p.model], FAMILIES[_platform(p.instance)]
    tpot = decode_step_s(a, "bf16", p.tp, f, p.prompt + p.output, calibrated[0])
    return prefill_s(a, "bf16", p.tp, f, p.prompt, calibrated) * 1e3, tpot * 1e3
