"""Preflight rules for backend: nxdi (NxD Inference), registered beside the generic Neuron rules
of rules.py, which apply to it too (NeuronCores, memory per core, lengths, checkpoints).
Sources: NxDI 0.8 (cd3abf3), 0.9 (c63afe0, ef2731e) and the SDK's documentation, as cited in
each finding's page. Which release is supported where: host/sdk_releases.py (NXDI), shared with
`doctor` through release_findings()."""

from __future__ import annotations

from collections.abc import Iterator

from ..backends.neuron_plan import installed_version
from ..host.sdk_releases import (
    INF2_TRN1,
    NXDI_AMI_FOR_INF2_TRN1,
    NXDI_FOR_INF2_TRN1,
    NXDI_PINNED_FOR_INF2_TRN1,
    NxdiRelease,
    driven_nxdi_text,
    nxdi_release,
    platform_text,
)
from .base import Context, Finding, registry

RULES, rule = registry()


@rule
def nxdi_fused_sampling(ctx: Context) -> Iterator[Finding]:
    spec = ctx.spec
    if not ctx.nxdi or spec.nxdi.speculation_mode != "fused":
        return
    sampled = spec.sampling.temperature > 0
    custom = spec.speculation.acceptor not in ("greedy", "lossless")
    if sampled or custom:
        why = (
            f"sampling.temperature={spec.sampling.temperature}"
            if sampled
            else f"speculation.acceptor={spec.speculation.acceptor}"
        )
        yield Finding(
            "error",
            "nxdi-fused-sampling",
            "nxdi.speculation_mode",
            f"{why} with speculation_mode: fused. NxDI's fused graph drafts greedily and "
            "accepts on the device by comparing argmaxes (a sampling target samples only the "
            "last position): it cannot sample from the target's distribution, and cannot run "
            "another acceptor.",
            "set nxdi: {speculation_mode: unfused} (neuron-spec's engine samples exactly on the "
            "host), or sampling.temperature: 0 with acceptor: greedy.",
        )


@rule
def nxdi_fused_layout(ctx: Context) -> Iterator[Finding]:
    spec = ctx.spec
    if not ctx.nxdi or spec.nxdi.speculation_mode != "fused":
        return
    draft = spec.draft_model
    if draft is None:  # speculation-method says why fused needs one
        return
    t, d = spec.target.tp_degree, draft.tp_degree
    if t % d:
        yield Finding(
            "error",
            "nxdi-fused-tp",
            "draft.tp_degree",
            f"draft.tp_degree={d} does not divide target.tp_degree={t}: fused speculation "
            "builds the draft's process group inside the target's, which needs a divisor "
            "(NxD's initialize_speculative_draft_group).",
            f"set draft.tp_degree to a divisor of {t} (usually {t}).",
        )
    if spec.target.amp != draft.amp:
        yield Finding(
            "error",
            "nxdi-fused-dtype",
            "draft.amp",
            f"draft.amp={draft.amp} but target.amp={spec.target.amp}: NxDI refuses "
            "differing dtypes in one fused graph unless weights are kept as declared "
            "(ValueError in validate_config).",
            f"set draft.amp: {spec.target.amp}, or use nxdi: {{speculation_mode: unfused}}.",
        )


@rule
def nxdi_gqa_small_tp(ctx: Context) -> Iterator[Finding]:
    if not ctx.nxdi:
        return
    for role, m in ctx.spec.models():
        arch = ctx.arch(role)
        kv = arch.num_kv_heads if arch is not None else 0
        if arch is not None and kv > m.tp_degree and kv % m.tp_degree == 0 and kv != arch.num_heads:
            yield Finding(
                "error",
                "nxdi-gqa-small-tp",
                f"{role}.tp_degree",
                f"{arch.name} has {kv} KV heads and tp_degree={m.tp_degree}: NxDI (0.8, 0.9) then "
                "picks CONVERT_TO_MHA without expanding the KV heads and compilation fails "
                "(aws-neuron/aws-neuron-sdk#1289).",
                f"set {role}.tp_degree to {kv} or a multiple of it.",
            )


@rule
def nxdi_release_rule(ctx: Context) -> Iterator[Finding]:
    """On the machine that loads the pair: which NxDI, where AWS supports it, its transformers."""
    if not ctx.nxdi or not ctx.local:
        return
    version = installed_version("neuronx-distributed-inference")
    if version is None:
        return  # the backend says how to get it, when it loads
    platforms = (ctx.host.platform,) if ctx.host.platform else ()
    yield from release_findings(
        version, platforms, installed_version("transformers"), "backend", "backend"
    )


def where_to_run(platforms: tuple[str, ...]) -> str:
    """The AMI AWS names for NxD Inference on these platforms."""
    if not platforms or set(platforms) & set(INF2_TRN1):
        return (
            f"on Inf2 and Trn1 AWS names {NXDI_AMI_FOR_INF2_TRN1} (NxDI {NXDI_FOR_INF2_TRN1}); "
            f"SDK 2.28 (NxDI {NXDI_PINNED_FOR_INF2_TRN1}) is supported there too"
        )
    return "on Trn2 the SDK 2.29, 2.30 and 2.31 Deep Learning AMIs ship releases neuron-spec drives"


def release_findings(
    version: str,
    platforms: tuple[str, ...],
    transformers: str | None,
    path: str,
    pin_path: str,
) -> list[Finding]:
    """Warnings about an installed NxDI: a release no SDK shipped, one neuron-spec does not
    drive, one AWS does not support on this platform (`platforms`: the host's, () unknown), a
    transformers other than its pin. None for a supported release."""
    row = nxdi_release(version)
    if row is None or not row.driven:
        what = (
            "is not a release any Neuron SDK shipped"
            if row is None
            else f"shipped with Neuron SDK {row.sdk}, before the releases neuron-spec drives"
        )
        return [
            Finding(
                "warning",
                "nxdi-release",
                path,
                f"neuronx-distributed-inference {version} {what} ({driven_nxdi_text()}); "
                "the backend checks at load time that it has what neuron-spec drives.",
                "use a Deep Learning AMI with a release neuron-spec drives: "
                f"{where_to_run(platforms)}.",
            )
        ]
    out = [f for f in (_platform_finding(row, platforms, path),) if f is not None]
    pin = row.transformers
    if pin and transformers and not transformers.startswith(pin + "."):
        out.append(
            Finding(
                "warning",
                "nxdi-transformers-pin",
                pin_path,
                f"NxDI {version} pins transformers {pin}.* (its setup.py), but {transformers} "
                "is installed: its generation adapter overrides private transformers methods.",
                f"pip install 'transformers=={pin}.*' in this environment.",
            )
        )
    return out


def _platform_finding(row: NxdiRelease, platforms: tuple[str, ...], path: str) -> Finding | None:
    off = [p for p in platforms if not row.supports(p)]
    if not off:
        return None
    host = platform_text(tuple(off)).replace(" and ", "/")
    quote = (
        ' (the 2.29 release notes: NxD Inference models "are now only supported on Trn2 and '
        'newer hardware")'
        if row.line == (0, 9)
        else ""
    )
    return Finding(
        "warning",
        "nxdi-release",
        path,
        f"neuronx-distributed-inference {row.version} (Neuron SDK {row.sdk}) is installed on this "
        f"{host} host; AWS supports NxD Inference models in it on "
        f"{platform_text(row.platforms)} only{quote}.",
        f"{where_to_run(tuple(off))}; scripts/launch.sh finds its environment.",
    )
