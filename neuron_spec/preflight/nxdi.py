"""Preflight rules for backend: nxdi (NxD Inference), registered beside the generic Neuron rules
of rules.py, which apply to it too (NeuronCores, memory per core, lengths, checkpoints).
Sources: NxDI 0.8 (cd3abf3) and the SDK's documentation, as cited in each finding's page."""

from __future__ import annotations

from collections.abc import Iterator

from ..backends.neuron_plan import installed_version, parse_version
from .base import Context, Finding, registry

NXDI_PIN = (0, 8)  # SDK 2.28: the last release AWS supports for Inf2 and Trn1
TRANSFORMERS_PIN: dict[tuple[int, ...], tuple[int, int]] = {
    (0, 7): (4, 56),
    (0, 8): (4, 57),
    (0, 9): (4, 57),
}


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
                f"{arch.name} has {kv} KV heads and tp_degree={m.tp_degree}: NxDI 0.8 then "
                "picks CONVERT_TO_MHA without expanding the KV heads and compilation fails "
                "(aws-neuron/aws-neuron-sdk#1289).",
                f"set {role}.tp_degree to {kv} or a multiple of it.",
            )


@rule
def nxdi_release(ctx: Context) -> Iterator[Finding]:
    """On the machine that loads the pair: which NxDI, and the transformers it pins."""
    if not ctx.nxdi or not ctx.local:
        return
    version = installed_version("neuronx-distributed-inference")
    if version is None:
        return  # the backend says how to get it, when it loads
    release = parse_version(version)[:2]
    platform = ctx.host.platform
    if platform in ("inf2", "trn1") and release != NXDI_PIN:
        yield Finding(
            "warning",
            "nxdi-release",
            "backend",
            f"neuronx-distributed-inference {version} is installed; for {platform} AWS "
            "supports NxDI 0.8 (Neuron SDK 2.28): 0.9 and later are for Trn2 and newer, and "
            "0.10 has no public source.",
            "use the SDK 2.28 Deep Learning AMI's /opt/aws_neuronx_venv_pytorch_2_9_nxd_inference.",
        )
    pin = TRANSFORMERS_PIN.get(release)
    have = installed_version("transformers")
    if pin and have and parse_version(have)[:2] != pin:
        yield Finding(
            "warning",
            "nxdi-transformers-pin",
            "backend",
            f"NxDI {version} pins transformers {pin[0]}.{pin[1]}.*, but {have} is installed: "
            "its generation adapter overrides private transformers methods.",
            f"pip install 'transformers=={pin[0]}.{pin[1]}.*' in this environment.",
        )
