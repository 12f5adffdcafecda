"""The generic preflight rules: will the Neuron runtime accept this deployment, and does it fit?

One small function per rule. Each takes a Context (the spec, the host, the resolved models and
their memory) and yields Findings; check.py runs them with NxD Inference's (nxdi.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..config.catalog import TP_RULES, Architecture
from ..config.spec import DeploymentSpec, ModelSpec
from ..sources.checkpoint import ResolvedModel, prepared_bytes
from .base import Context, Finding, registry
from .memory import HIGH_WATER, fmt_bytes, kv_heads_shardable, model_memory

RULES, rule = registry()


def _roles(ctx: Context) -> Iterator[tuple[str, ModelSpec]]:
    return ctx.spec.models()


# --- host and topology ---------------------------------------------------------------------


@rule
def host_known(ctx: Context) -> Iterator[Finding]:
    if ctx.neuron and not ctx.host.is_neuron:
        yield Finding(
            "error",
            "host-unknown",
            "instance",
            "instance is 'auto', but this machine answered neither the EC2 metadata service "
            "with a Neuron instance type nor neuron-ls, so the NeuronCore count and memory "
            "are unknown.",
            "run on the Neuron instance, or check against one: --instance trn1.32xlarge "
            "(or set instance: in the config).",
        )


@rule
def tp_on_platform(ctx: Context) -> Iterator[Finding]:
    if not ctx.neuron or ctx.host.platform is None:
        return
    tp_rule = TP_RULES[ctx.host.platform]
    documented = NXDI_TP_DOCUMENTED[ctx.host.platform] if ctx.nxdi else tp_rule.documented
    library = "NxD Inference" if ctx.nxdi else "transformers-neuronx"
    where = ctx.host.instance or ctx.host.platform
    for role, m in _roles(ctx):
        tp = m.tp_degree
        if not tp_rule.allowed(tp):
            yield Finding(
                "error",
                "tp-unsupported",
                f"{role}.tp_degree",
                f"tp_degree={tp} is not accepted on {where}: the Neuron runtime accepts "
                f"{tp_rule.description} NeuronCores for one model there; it fails at load "
                "with 'Unsupported topology'.",
                f"set {role}.tp_degree to one of {_suggest(ctx, tp)} (valid here, and the "
                "pair fits in memory).",
            )
        elif tp not in documented and tp <= ctx.host.cores:
            yield Finding(
                "warning",
                "tp-undocumented",
                f"{role}.tp_degree",
                f"tp_degree={tp} is accepted by the runtime on {ctx.host.platform}, but "
                f"{library} documents and benchmarks only {', '.join(map(str, documented))}.",
                "prefer a documented value unless you have tested this one.",
            )


@rule
def tp_within_cores(ctx: Context) -> Iterator[Finding]:
    if not ctx.neuron or not ctx.host.is_neuron:
        return
    for role, m in _roles(ctx):
        if m.tp_degree > ctx.host.cores:
            yield Finding(
                "error",
                "tp-exceeds-cores",
                f"{role}.tp_degree",
                f"tp_degree={m.tp_degree} needs {m.tp_degree} NeuronCores, but "
                f"{ctx.host.instance or 'this host'} has {ctx.host.cores}.",
                f"set {role}.tp_degree to one of {_suggest(ctx, m.tp_degree)} (valid here, "
                "and the pair fits in memory), or use a larger instance.",
            )


@rule
def tp_equal(ctx: Context) -> Iterator[Finding]:
    if not ctx.neuronx:
        return
    draft = ctx.spec.draft_model
    if draft is None:  # no draft model: the target has the cores to itself
        return
    t, d = ctx.spec.target.tp_degree, draft.tp_degree
    if t != d:
        yield Finding(
            "error",
            "tp-mismatch",
            "draft.tp_degree",
            f"draft.tp_degree={d} but target.tp_degree={t}. Draft and target share NeuronCores "
            "in one process and both load starting at core 0; once a set of cores is "
            "initialized for one model, another model may use only exactly the same set, so a "
            "subset fails at load with 'nrt_load_collectives - global nec_comm is already "
            "init'd'. SpeculativeGenerator needs both models in one process.",
            _shared_tp_fix(ctx, t, d),
        )


def _shared_tp_fix(ctx: Context, t: int, d: int) -> str:
    fits = pair_fitting_tps(ctx)
    if fits is None or t in fits:
        return f"set draft.tp_degree: {t} (or both to the tp `neuron-spec plan` recommends)."
    if d in fits:
        return f"set target.tp_degree: {d} (the pair fits at tp {d}; not at {t})."
    return (
        f"set both tp_degree values to one of {_suggest(ctx, max(t, d))} (the pair does not "
        f"fit at tp {t} or {d})."
    )


@rule
def tp_set(ctx: Context) -> Iterator[Finding]:
    if not ctx.neuron:
        return
    for role, m in _roles(ctx):
        if "tp_degree" not in m.keys_given:
            yield Finding(
                "warning",
                "tp-default",
                f"{role}.tp_degree",
                f"{role}.tp_degree is not set, so 1 is used (transformers-neuronx's own default "
                "would be 2).",
                "set tp_degree explicitly; `neuron-spec plan` recommends one.",
            )


@rule
def kv_heads_split(ctx: Context) -> Iterator[Finding]:
    if not ctx.neuronx:
        return
    for role, m in _roles(ctx):
        arch = ctx.arch(role)
        if arch is not None and not kv_heads_shardable(arch, m.tp_degree):
            yield Finding(
                "error",
                "kv-heads-indivisible",
                f"{role}.tp_degree",
                f"{arch.name} has {arch.num_kv_heads} KV heads, which cannot be split evenly "
                f"over tp_degree={m.tp_degree} (transformers-neuronx fails to shard them).",
                "choose a tp_degree that divides the KV heads, or one above them.",
            )


# --- memory --------------------------------------------------------------------------------


def _fitting_tps(
    ctx: Context, arch: Architecture, m: ModelSpec, extra_per_core: int = 0
) -> list[int]:
    if ctx.host.platform is None:
        return []
    out = []
    for tp in TP_RULES[ctx.host.platform].candidates(ctx.host.cores):
        mem = model_memory(
            arch, tp=tp, amp=m.amp, n_positions=m.max_positions, batch_size=m.batch_size
        )
        if mem.per_core_bytes + extra_per_core <= ctx.host.memory_per_core_bytes:
            out.append(tp)
    return out


def pair_fits(ctx: Context) -> list[tuple[int, int]] | None:
    """(tp, per-core bytes) for every tp valid on this host at which draft and target, their
    KV heads split evenly, fit together on shared cores (the only layout SpeculativeGenerator
    runs); None when a model's size or the platform is unknown."""
    if ctx.host.platform is None:
        return None
    roles = list(_roles(ctx))
    archs = [ctx.arch(role) for role, _ in roles]
    if any(a is None for a in archs):
        return None
    out = []
    for tp in TP_RULES[ctx.host.platform].candidates(ctx.host.cores):
        used = 0
        for (_, m), a in zip(roles, archs, strict=True):
            assert a is not None
            if not kv_heads_shardable(a, tp):
                break
            used += model_memory(
                a, tp=tp, amp=m.amp, n_positions=m.max_positions, batch_size=m.batch_size
            ).per_core_bytes
        else:
            if used <= ctx.host.memory_per_core_bytes:
                out.append((tp, used))
    return out


def pair_fitting_tps(ctx: Context) -> list[int] | None:
    fits = pair_fits(ctx)
    return None if fits is None else [tp for tp, _ in fits]


def _suggest(ctx: Context, near: int, count: int = 3) -> str:
    """Up to `count` tps near `near` that are valid here and at which the pair fits."""
    fits = pair_fitting_tps(ctx)
    if fits is None:
        pool = TP_RULES[ctx.host.platform].candidates(ctx.host.cores) if ctx.host.platform else []
    else:
        pool = fits
    if not pool:
        return "none: the pair fits this instance at no tp (see `neuron-spec plan`)"
    chosen = sorted(sorted(pool, key=lambda t: (abs(t - near), -t))[:count])
    return ", ".join(map(str, chosen))


@rule
def memory_budget(ctx: Context) -> Iterator[Finding]:
    roles = [role for role, _m in _roles(ctx)]
    if not ctx.neuron or not ctx.host.is_neuron or any(r not in ctx.memory for r in roles):
        return
    budget = ctx.host.memory_per_core_bytes
    over_alone = False
    for role, m in _roles(ctx):
        mem, arch = ctx.memory[role], ctx.arch(role)
        if mem.per_core_bytes > budget and arch is not None:
            over_alone = True
            fits = pair_fitting_tps(ctx) or _fitting_tps(ctx, arch, m)
            fix = (
                f"raise {role}.tp_degree to {fits[0]} or more (the pair fits at: "
                f"{', '.join(map(str, fits))})"
                if fits
                else f"it does not fit this instance at any tp; use amp: bf16, fewer "
                f"n_positions, or a larger instance (needs {mem.min_cores(budget)} cores)"
            )
            yield Finding(
                "error",
                "memory-over-budget",
                f"{role}.tp_degree",
                f"{arch.name} in {m.amp} at tp_degree={m.tp_degree} needs "
                f"{fmt_bytes(mem.per_core_bytes)} per NeuronCore (weights "
                f"{fmt_bytes(mem.weight_bytes / mem.tp)}, KV cache "
                f"{fmt_bytes(mem.kv_cache_bytes / mem.tp)}, runtime "
                f"{fmt_bytes(mem.overhead_bytes / mem.tp)}); the budget is {fmt_bytes(budget)}.",
                fix + ".",
            )
    if over_alone:
        return
    loads = [(role, ctx.memory[role]) for role in roles]
    shared = sum(mem.per_core_bytes for _role, mem in loads)
    breakdown = (
        " + ".join(f"{role} {fmt_bytes(mem.per_core_bytes)}" for role, mem in loads)
        + f" = {fmt_bytes(shared)} per NeuronCore of {fmt_bytes(budget)}"
    )
    if shared > budget:
        t, d = ctx.memory["target"], ctx.memory["draft"]  # one model alone was checked above
        yield Finding(
            "error",
            "memory-over-budget",
            "target.tp_degree",
            f"each model fits alone, but they share cores 0..{min(t.tp, d.tp) - 1} and their "
            f"loads add up: {breakdown}.",
            f"set both tp_degree values to one of {_suggest(ctx, max(t.tp, d.tp))}, or "
            "use amp: bf16.",
        )
    elif shared > HIGH_WATER * budget:
        yield Finding(
            "warning",
            "memory-high",
            "target.tp_degree",
            f"{breakdown} ({shared / budget:.0%}); runtime buffers that the estimate cannot "
            "see may push it over at load.",
            "raise tp_degree, or lower n_positions / batch_size to leave headroom.",
        )


# --- batching and lengths ----------------------------------------------------------------


@rule
def batch_with_speculation(ctx: Context) -> Iterator[Finding]:
    if not ctx.neuron:
        return
    spec = ctx.spec
    batched = [(role, m) for role, m in _roles(ctx) if m.batch_size > 1]
    if not batched:
        return
    engine = spec.speculation.loop == "engine"
    draft = spec.draft_model
    same = draft is None or spec.target.batch_size == draft.batch_size
    unfused = ctx.nxdi and spec.nxdi.speculation_mode == "unfused"
    if same and ((ctx.neuronx and engine) or unfused):
        how = (
            "2-D cache ids, padding_side='right', continuous batching: a new row's prompt is "
            "encoded into its own slot); this needs transformers-neuronx 0.12 or newer "
            "(SDK 2.20+), checked at load"
            if ctx.neuronx
            else "per-row position_ids, seq_ids in order); compiled with continuous batching "
            "(is_continuous_batching, ctx_batch_size 1), so a new row's context encoding "
            "writes only its own slot"
        )
        yield Finding(
            "info",
            "batch-speculation",
            "target.batch_size",
            f"batch_size={spec.target.batch_size}: the prompts of a call decode as one batch "
            f"through neuron-spec's engine, each row at its own positions ({how}); `serve` "
            "batches requests on it continuously.",
            "nothing to do.",
        )
        return
    role, m = batched[0]
    if (ctx.neuronx and engine) or unfused:
        message = (
            f"target.batch_size={spec.target.batch_size} and draft.batch_size="
            f"{draft.batch_size if draft else '-'} differ: one batch of rows runs through both "
            "models."
        )
    elif ctx.neuronx:
        message = (
            f"batch_size={m.batch_size} with speculation.loop: library: transformers-neuronx's "
            "SpeculativeGenerator samples batch 1 only in API v1 (NotImplementedError), and in "
            "v2 reuses row 0's acceptance length for every row, corrupting the others."
        )
    else:
        message = (
            f"batch_size={m.batch_size} with nxdi.speculation_mode: fused: NxDI's fused draft "
            "loop is batch 1 (its draft mask update fills one column for every row)."
        )
    yield Finding(
        "error",
        "batch-speculation",
        f"{role}.batch_size",
        message,
        "one batch_size for draft and target, with speculation.loop: engine on "
        "transformers-neuronx 0.12+ or nxdi: {speculation_mode: unfused} on NxD Inference; "
        f"otherwise set {role}.batch_size: 1 (neuron-spec queues requests).",
    )


@rule
def context_estimate(ctx: Context) -> Iterator[Finding]:
    for role, m in _roles(ctx):
        cle = m.context_length_estimate
        if cle is not None and max(cle) > m.max_positions:
            yield Finding(
                "error",
                "context-estimate",
                f"{role}.context_length_estimate",
                f"context_length_estimate={max(cle)} exceeds n_positions={m.max_positions}; "
                "transformers-neuronx asserts max(context_length_estimate) <= max(n_positions).",
                f"lower it to at most {m.max_positions}, or raise n_positions.",
            )


@rule
def sequence_fits(ctx: Context) -> Iterator[Finding]:
    g = ctx.spec.generation
    if g.max_prompt_tokens is None:
        yield from _default_prompt_budget(ctx)
        return
    need = g.max_prompt_tokens + g.max_new_tokens
    gamma = ctx.spec.speculation.draft_tokens
    for role, m in _roles(ctx):
        if need > m.max_positions:
            yield Finding(
                "error",
                "sequence-too-long",
                f"{role}.n_positions",
                f"generation.max_prompt_tokens ({g.max_prompt_tokens}) + max_new_tokens "
                f"({g.max_new_tokens}) = {need} exceeds {role}.n_positions={m.max_positions}; "
                "a position at or past n_positions makes transformers-neuronx's bucket lookup "
                "fail (StopIteration), and neuron-spec refuses such a request.",
                f"raise {role}.n_positions to at least {need}, lower the lengths, or delete "
                "max_prompt_tokens (it then defaults to what n_positions leaves).",
            )
        elif need + gamma > m.max_positions and ctx.neuron:
            yield _window_overflow(role, m.max_positions, need, gamma)


def prompt_budget(spec: DeploymentSpec) -> int:
    """The longest prompt that leaves room for max_new_tokens and a full speculation window
    in the smaller n_positions: the default of generation.max_prompt_tokens (may be < 1)."""
    g = spec.generation
    if g.max_prompt_tokens is not None:
        return g.max_prompt_tokens
    n = min(m.max_positions for _, m in spec.models())
    return n - g.max_new_tokens - spec.speculation.window


def _default_prompt_budget(ctx: Context) -> Iterator[Finding]:
    """No prompt length written: err only when not even a one-token prompt fits."""
    new = ctx.spec.generation.max_new_tokens
    gamma = ctx.spec.speculation.draft_tokens
    for role, m in _roles(ctx):
        n = m.max_positions
        if new + 1 > n:
            yield Finding(
                "error",
                "sequence-too-long",
                "generation.max_new_tokens",
                f"max_new_tokens ({new}) leaves no room for a prompt in "
                f"{role}.n_positions={n}: prompt + generated tokens must fit n_positions.",
                f"lower generation.max_new_tokens below {n} (to {max(1, n - 1 - gamma - 1)} "
                f"to keep a one-token prompt and a full window), or raise {role}.n_positions.",
            )
        elif new + 1 + gamma > n and ctx.neuron:
            yield _window_overflow(role, n, new + 1, gamma)


def _window_overflow(role: str, n: int, need: int, gamma: int) -> Finding:
    return Finding(
        "info",
        "window-overflow",
        f"{role}.n_positions",
        f"near the end of a {need}-token sequence a speculation window "
        f"(draft_tokens={gamma}) would reach position {need + gamma - 1} >= "
        f"n_positions={n}; neuron-spec decodes the last tokens one at a "
        "time instead (the library's own loop would fail there with StopIteration).",
        f"raise {role}.n_positions to {need + gamma} to speculate to the end.",
    )


@rule
def positions_vs_model(ctx: Context) -> Iterator[Finding]:
    for role, m in _roles(ctx):
        arch = ctx.arch(role)
        if arch is not None and m.max_positions > arch.max_positions:
            yield Finding(
                "warning",
                "positions-beyond-model",
                f"{role}.n_positions",
                f"n_positions={m.max_positions} exceeds {arch.name}'s trained context "
                f"({arch.max_positions}); quality degrades beyond it.",
                f"lower {role}.n_positions to {arch.max_positions}.",
            )


# --- models ------------------------------------------------------------------------------


def _hub_finding(role: str, model: str, r: ResolvedModel) -> Finding:
    if r.problem:
        fix = (r.fix or "check the repo name and the network") + "."
        return Finding("error", "hub-unavailable", f"{role}.model", r.problem + ".", fix)
    size = r.architecture.parameters() * 2 / 1e9 if r.architecture else 0
    return Finding(
        "info",
        "hub-model",
        f"{role}.model",
        f"{model} is a Hugging Face Hub repo: sized from its config.json; generate, serve "
        f"and launch.sh download its weights (about {size:.0f} GB in bf16) into the Hugging "
        "Face cache once.",
        "nothing to do; set HF_TOKEN for a gated repo, HF_HUB_OFFLINE=1 to use only the cache.",
    )


@rule
def checkpoints(ctx: Context) -> Iterator[Finding]:
    for role, m in _roles(ctx):
        r = ctx.models[role]
        if r.kind == "hub":
            yield _hub_finding(role, m.model, r)
        elif r.problem:
            yield Finding(
                "error",
                "checkpoint-missing",
                f"{role}.model",
                f"{r.problem}.",
                "point model at a directory with config.json and weights (safetensors "
                "preferred), or use a catalog name to check sizes before downloading.",
            )
        elif r.kind == "catalog" and ctx.neuron:
            yield Finding(
                "info",
                "checkpoint-catalog",
                f"{role}.model",
                f"'{m.model}' is a catalog name: sizes come from the built-in table; loading "
                "needs the checkpoint on disk.",
                f"before loading, set {role}.model to the downloaded checkpoint directory.",
            )
        elif r.kind == "catalog":
            yield Finding(
                "error",
                "checkpoint-catalog",
                f"{role}.model",
                f"'{m.model}' is a catalog name, and the reference backend (PyTorch + "
                "transformers) runs real weights: a catalog name only sizes a model for "
                "transformers-neuronx's preflight.",
                f"set {role}.model to a checkpoint directory (config.json, tokenizer, "
                "safetensors) or a .gguf file; or run the shipped CPU pair: neuron-spec "
                "generate configs/demo-cpu.yaml --prompt '...'.",
            )
        elif r.kind == "directory" and r.weights is None:
            yield Finding(
                "warning",
                "checkpoint-no-weights",
                f"{role}.model",
                f"{r.location} holds config.json but no weights: sized from it, but "
                "generate and serve cannot load it yet.",
                "download the weights (safetensors) into it before loading.",
            )
        elif r.kind == "s3" and r.architecture is None:
            yield Finding(
                "warning",
                "architecture-unknown",
                f"{role}.architecture",
                f"{m.model} is not downloaded yet, so its size cannot be checked.",
                f"set {role}.architecture to its catalog name (e.g. llama-2-70b).",
            )


@rule
def prepared_checkpoints(ctx: Context) -> Iterator[Finding]:
    if not ctx.neuron:
        return
    for role, _m in _roles(ctx):
        r = ctx.models[role]
        what = {
            "gguf": "de-quantized once into a safetensors directory (needs the `gguf` "
            "package beside transformers)",
            "s3": "downloaded once from S3 (needs boto3 and credentials)",
        }.get(r.kind)
        if r.kind == "directory" and r.lazy_loadable is False and not r.problem:
            what = "converted once to transformers-neuronx's split format"
        if what and not r.problem:
            yield Finding(
                "info",
                "checkpoint-prepared",
                f"{role}.model",
                f"{r.location} is {what} under compile.artifact_cache before loading.",
                "nothing to do; to skip the step, point the model at a safetensors directory.",
            )


# Compiled graphs' files are not documented in size; an allowance per graph, not a measurement.
NEFF_ALLOWANCE = 1024**3


def _artifact_bytes(ctx: Context) -> int:
    """What loading writes under the artifact cache: prepared checkpoints, then one entry of
    compiled graphs per model (token generation and context encoding per n_positions bucket,
    plus the target's speculation graph)."""
    total = 0
    for role, m in _roles(ctx):
        total += prepared_bytes(ctx.models[role])
        graphs = 2 * len(m.n_positions) + (1 if role == "target" else 0)
        total += graphs * NEFF_ALLOWANCE
    return total


def _cache_problem(root: Path, need: int) -> str | None:
    import shutil
    import tempfile

    existing = root
    while not existing.exists():
        if existing == existing.parent:
            return "no part of its path exists"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so the directory cannot be created"
    try:
        st = os.statvfs(existing)
    except OSError as exc:
        return f"its file system cannot be read ({exc.strerror})"
    if st.f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    try:  # the true test: make (and remove) a directory where the cache would go
        os.rmdir(tempfile.mkdtemp(prefix=".neuron-spec-probe-", dir=existing))
    except OSError as exc:
        return f"nothing can be created in {existing} ({exc.strerror})"
    free = shutil.disk_usage(existing).free
    if free < need:
        return f"{fmt_bytes(free)} is free there and this pair needs about {fmt_bytes(need)}"
    return None


@rule
def artifact_cache(ctx: Context) -> Iterator[Finding]:
    if not ctx.neuron or not ctx.local:  # another machine's disk is not this one's
        return
    from ..backends.neuron_plan import cache_dir  # only where the pair loads: validate stays light

    root = cache_dir(ctx.spec.compile.artifact_cache, ctx.base_dir)
    need = _artifact_bytes(ctx)
    problem = _cache_problem(root, need)
    if problem:
        yield Finding(
            "error",
            "artifact-cache-unusable",
            "compile.artifact_cache",
            f"compiled artifacts go to {root}, but {problem}; a compile of tens of minutes "
            "would end with nothing saved.",
            "point compile.artifact_cache at a writable directory with room (an instance-store "
            "NVMe volume on inf2/trn1), or free space.",
        )


@rule
def host_memory(ctx: Context) -> Iterator[Finding]:
    ram = ctx.host.host_ram_bytes
    for role, _m in _roles(ctx):
        r = ctx.models[role]
        if r.lazy_loadable is False:
            size = r.weight_bytes_on_disk or 0
            tail = f" ({fmt_bytes(size)} on disk; host RAM {fmt_bytes(ram)})" if ram else ""
            yield Finding(
                "warning",
                "checkpoint-not-lazy",
                f"{role}.model",
                f"{r.weights} is read into host memory as a whole before it is sharded{tail}; "
                "safetensors and the split format load layer by layer.",
                "convert it once to safetensors (save_pretrained(..., safe_serialization=True)).",
            )


@rule
def llama_only(ctx: Context) -> Iterator[Finding]:
    if not ctx.neuron:
        return
    for role, _m in _roles(ctx):
        arch = ctx.arch(role)
        if arch is not None and not arch.is_llama:
            yield Finding(
                "error",
                "architecture-unsupported",
                f"{role}.model",
                f"{arch.name} is a '{arch.model_type}' model; neuron-spec loads models with "
                "transformers-neuronx's LlamaForSampling, which supports the Llama architecture "
                "only.",
                "use a Llama-architecture model (Llama-2, Llama-3, SmolLM2, ...), or the "
                "reference backend.",
            )


@rule
def vocabularies(ctx: Context) -> Iterator[Finding]:
    t, d = ctx.arch("target"), ctx.arch("draft")
    if t is not None and d is not None and t.vocab_size != d.vocab_size:
        yield Finding(
            "error",
            "vocab-mismatch",
            "draft.model",
            f"the draft's vocabulary has {d.vocab_size} tokens and the target's "
            f"{t.vocab_size}: speculative decoding compares token ids position by position, "
            "so both models must share one tokenizer.",
            "pick a draft from the target's family (e.g. Llama-2-7B for Llama-2-70B).",
        )


@rule
def llama3_quirks(ctx: Context) -> Iterator[Finding]:
    # only SpeculativeGenerator (transformers-neuronx's library loop) cannot take an EOS list
    if not ctx.neuronx or ctx.spec.speculation.loop != "library":
        return
    arch = ctx.arch("target")
    if arch is None:
        return
    eos = ctx.spec.generation.eos_token_id
    eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else arch.eos_token_id)
    if len(eos_ids) > 1:
        yield Finding(
            "info",
            "eos-list",
            "generation.eos_token_id",
            f"the target ends sequences at any of {list(eos_ids)}; transformers-neuronx's "
            "SpeculativeGenerator takes a single eos_token_id (a list fails inside it).",
            "nothing to do: neuron-spec passes the first id and stops at every other itself, "
            "within one speculation window.",
        )


@rule
def library_loop(ctx: Context) -> Iterator[Finding]:
    """What SpeculativeGenerator.sample does that no wrapper can undo, for this config."""
    sp = ctx.spec.speculation
    if not ctx.neuronx or sp.loop != "library":
        return
    arch = ctx.arch("target")
    if ctx.spec.sampling.temperature > 0 and sp.acceptor != "greedy":
        yield Finding(
            "warning",
            "library-loop-defects",
            "speculation.loop",
            f"with sampling.temperature={ctx.spec.sampling.temperature}, the first new token "
            "of every request is the target's argmax: SpeculativeGenerator.sample picks it "
            "greedily, whatever the acceptor, so the output is not distributed as sampling "
            "from the target.",
            "set speculation.loop: engine (neuron-spec's own loop over the same compiled "
            "graphs: exactly lossless, first token included).",
        )
    if arch is not None and (arch.family == "llama-3" or arch.vocab_size >= 128000):
        yield Finding(
            "warning",
            "token-id-zero",
            "speculation.loop",
            f"in {arch.name}'s vocabulary token id 0 is a real token ('!' in Llama-3). "
            "transformers-neuronx 0.12 and later advance by count_nonzero of each step's "
            "tokens: a step whose only token is id 0 loses it and overwrites the KV slot of "
            "the previous token, and the text goes wrong from there.",
            "set speculation.loop: engine (explicit lengths; id 0 is an ordinary token there).",
        )


@rule
def speculation_method(ctx: Context) -> Iterator[Finding]:
    """A lookup proposes without a draft model: the paths that draft on the device or in the
    library's own loop need one; a draft section it does not use is said, not loaded."""
    spec, sp = ctx.spec, ctx.spec.speculation
    if sp.uses_draft:
        return
    needs = None
    if ctx.neuronx and sp.loop == "library":
        needs = (
            "speculation.loop",
            "speculation.loop: library runs transformers-neuronx's "
            "SpeculativeGenerator, which drafts with a draft model",
            "speculation.loop: engine",
        )
    elif ctx.nxdi and spec.nxdi.speculation_mode == "fused":
        needs = (
            "nxdi.speculation_mode",
            "nxdi: {speculation_mode: fused} compiles a draft model into the target's graph",
            "nxdi: {speculation_mode: unfused}",
        )
    if needs is not None:
        path, why, fix = needs
        yield Finding(
            "error",
            "speculation-method",
            path,
            f"{why}; speculation.method: {sp.method} proposes without one.",
            f"set {fix} (neuron-spec's engine verifies the lookup's proposals with the "
            "target's speculation graph), or method: draft with a draft model.",
        )
    if spec.draft is not None:
        yield Finding(
            "info",
            "draft-unused",
            "draft.model",
            f"speculation.method is {sp.method}: proposals come from a lookup, so the draft "
            "model is neither loaded nor compiled (nor counted in memory).",
            "remove the draft: section, or set method: draft to use it.",
        )


@rule
def draft_smaller(ctx: Context) -> Iterator[Finding]:
    t, d = ctx.arch("target"), ctx.arch("draft")
    if t is not None and d is not None and d.parameters() >= t.parameters():
        yield Finding(
            "warning",
            "draft-not-smaller",
            "draft.model",
            f"the draft ({d.parameters() / 1e9:.2f}B parameters) is not smaller than the "
            f"target ({t.parameters() / 1e9:.2f}B): each step would cost more than it saves.",
            "use a much smaller draft from the same family (about 10x fewer parameters).",
        )


@rule
def acceptor_sampling(ctx: Context) -> Iterator[Finding]:
    s, acc = ctx.spec.sampling, ctx.spec.speculation.acceptor
    warped = s.temperature > 0 and (s.temperature != 1.0 or s.top_k > 0 or s.top_p < 1.0)
    if acc == "greedy" and s.temperature > 0:
        yield Finding(
            "warning",
            "acceptor-ignores-sampling",
            "speculation.acceptor",
            f"acceptor 'greedy' decodes greedily; sampling.temperature={s.temperature} is ignored.",
            "use acceptor: lossless to sample, or set sampling.temperature: 0.",
        )
    elif acc == "neuronx-default" and warped:
        yield Finding(
            "warning",
            "acceptor-ignores-sampling",
            "speculation.acceptor",
            "acceptor 'neuronx-default' drafts by argmax and accepts against the raw softmax: "
            "temperature, top_k and top_p are ignored, and the output follows neither greedy "
            "decoding nor the target's distribution.",
            "use acceptor: lossless (exact sampling) or greedy (exact greedy).",
        )


@rule
def idle_cores(ctx: Context) -> Iterator[Finding]:
    if not ctx.neuron or not ctx.host.is_neuron:
        return
    used = max(m.tp_degree for _role, m in ctx.spec.models())
    if ctx.host.platform is None or used >= ctx.host.cores:
        return
    archs = [a for a in (ctx.arch(role) for role, _m in ctx.spec.models()) if a is not None]
    larger = [
        tp
        for tp in TP_RULES[ctx.host.platform].candidates(ctx.host.cores)
        if tp > used and all(kv_heads_shardable(a, tp) for a in archs)
    ]
    if larger:  # only when a larger tp could actually be used by both models
        yield Finding(
            "info",
            "cores-idle",
            "target.tp_degree",
            f"the pair uses {used} of {ctx.host.cores} NeuronCores; a decode step is "
            "memory-bandwidth-bound, so more cores usually means faster tokens "
            f"(tp {max(larger)} splits both models).",
            "see `neuron-spec plan` for the largest tp both models can share.",
        )


# NxD Inference's feature guide: tp values it documents per platform (Trn2 at LNC 2).
NXDI_TP_DOCUMENTED = {
    "inf2": (1, 2, 4, 8, 24),
    "trn1": (1, 2, 8, 16, 32),
    "trn2": (1, 2, 4, 8, 16, 32, 64),
}
