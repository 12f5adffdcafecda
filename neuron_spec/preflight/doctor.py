"""`neuron-spec doctor`: is this host one where the pair can load, compile and run?

Rules read a hostprobe.Snapshot (live or recorded) and, when given, the config; they never
touch the machine themselves. Findings share preflight's codes registry and docs pages.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.neuron_plan import parse_version, planned_env
from ..backends.neuronx.plan import build_load_plan
from ..config.catalog import INSTANCES
from ..host.probe import Snapshot
from ..host.sdk_releases import (
    COMPONENTS,
    INF2_TRN1,
    LAST_WITH_DLAMI,
    NXDI_FOR_INF2_TRN1,
    NxdiRelease,
    Release,
    nxdi_release,
    platform_text,
    releases_with,
)
from .base import Finding, Severity
from .memory import fmt_bytes
from .nxdi import release_findings, where_to_run

GIB = 1024**3
# The Python process itself: interpreter, torch, transformers, the tokenizers (an allowance).
PROCESS_ALLOWANCE = 4 * GIB
MIN_TNX = (0, 10)  # SpeculativeGenerator arrived in 0.10.0.21 (SDK 2.18)
PIP_INDEX = "https://pip.repos.neuron.amazonaws.com"
OS_COMPONENTS = ("aws-neuronx-runtime-lib", "aws-neuronx-collectives", "aws-neuronx-dkms")


@dataclass(frozen=True)
class Need:
    role: str
    ram: int  # peak host memory while this model is prepared and loaded
    disk: int  # bytes written under the artifact cache before loading
    how: str
    known: bool  # False while the checkpoint's format is unknown (catalog name, s3)


@dataclass(frozen=True)
class Context:
    snap: Snapshot
    needs: list[Need]
    cores: set[int] | None  # the NeuronCores the config's layout uses
    own_pid: int | None
    library: str = "transformers-neuronx"  # or "neuronx-distributed-inference"
    platforms: tuple[str, ...] = ()  # the host's: ("inf2", "trn1") for that generation; () unknown

    @property
    def nxdi(self) -> bool:
        return self.library == "neuronx-distributed-inference"


@dataclass(frozen=True)
class DoctorReport:
    findings: tuple[Finding, ...]
    components: dict[str, str | None]
    releases: list[str]  # the SDK releases whose set matches transformers-neuronx
    needs: list[Need]
    snap: Snapshot

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.snap.source,
            "components": self.components,
            "sdk_releases": self.releases,
            "neuron_cores": self.snap.cores,
            "host_ram_bytes": _ram_limit(self.snap),
            "disk_free_bytes": self.snap.disk_free,
            "needs": [n.__dict__ for n in self.needs],
            "findings": [f.to_dict() for f in self.findings],
        }


def _bare(version: str) -> str:
    """'2.20.9961.0+0acef03a' (pip) or '2.27.23.0-8deec4dbf' (dpkg) -> '2.20.9961.0'."""
    return version.split("+")[0].split("-")[0].split("~")[0].strip()


def installed_components(snap: Snapshot, library: str = COMPONENTS[0]) -> dict[str, str | None]:
    """The Neuron components' versions; the first is the library doctor checks the host for."""
    out: dict[str, str | None] = {}
    for name in (library, *COMPONENTS[1:]):
        src = (snap.os_packages or {}) if name in OS_COMPONENTS else snap.python_packages
        v = src.get(name)
        out[name] = _bare(v) if v else None
    return out


# --- what the config needs --------------------------------------------------------------------


def model_needs(cfg: Any) -> list[Need]:
    """Host RAM and disk each model needs, from how neuron-spec brings it to transformers-neuronx:
    safetensors and the split format stream layer by layer; a .bin is read whole once to convert
    it; a GGUF file is de-quantized to f32 in memory (twice: loaded, then copied) and written."""
    from ..sources.checkpoint import prepared_bytes, resolve_model

    plan = build_load_plan(cfg, tnx_version="", cc_version="", env={})
    out = []
    roles = dict(cfg.spec.models())
    for ml in plan.models:
        m = roles[ml.role]
        r = resolve_model(m.model, cfg.base_dir, m.architecture)
        arch = r.architecture
        if arch is None or ml.prepare == "missing":
            continue
        params = arch.parameters()
        layer = max(arch.vocab_size * arch.hidden_size, params // max(arch.num_layers, 1))
        stream = 2 * layer * 4  # one tensor group, read (up to f32) and cast
        amp = 4 if m.amp == "f32" else 2
        prepared = ml.prepare in ("split", "gguf", "s3") and Path(ml.checkpoint).is_dir()
        kind = "direct" if prepared else ml.prepare
        if kind == "direct":
            out.append(Need(ml.role, stream, 0, "loaded layer by layer", True))
        elif kind == "split":
            size = prepared_bytes(r)
            out.append(Need(ml.role, size, size, f"{r.weights} read whole, split once", True))
        elif kind == "gguf":  # loaded, then copied, in f32: twice what is written
            how = "de-quantized to f32 in memory and written as safetensors, once"
            out.append(Need(ml.role, 2 * prepared_bytes(r), prepared_bytes(r), how, True))
        elif kind == "s3":
            how = "downloaded once; size and format estimated (bf16)"
            size = prepared_bytes(r)
            out.append(Need(ml.role, size, size, how, False))
        else:  # a catalog name: no checkpoint yet; assume one read whole
            how = f"format unknown: a {m.amp} checkpoint read whole"
            out.append(Need(ml.role, params * amp, 0, how, False))
    return out


def _ram_limit(snap: Snapshot) -> int | None:
    limits = [v for v in (snap.mem_total, snap.memory_limit) if v]
    return min(limits) if limits else None


def parse_cores(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b) + 1))
        elif part.strip():
            out.add(int(part))
    return out


# --- rules -------------------------------------------------------------------------------------

Rule = Callable[[Context], Iterator[Finding]]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def _dlami_fix() -> str:
    return (
        f"launch a Neuron Deep Learning AMI of SDK {LAST_WITH_DLAMI} or older (AMI ids: "
        "`aws ssm get-parameters-by-path --recursive --path /aws/service/neuron/dlami`) and "
        "run scripts/launch.sh there; it finds the transformers-neuronx environment itself."
    )


@rule
def unreadable(ctx: Context) -> Iterator[Finding]:
    for problem in ctx.snap.problems:
        yield Finding(
            "warning",
            "probe-unreadable",
            "host",
            f"{problem}: the checks that need it are skipped.",
            "rerun the tool by hand to see its error (e.g. `neuron-ls --json-output`).",
        )


@rule
def neuron_devices(ctx: Context) -> Iterator[Finding]:
    if ctx.snap.devices is None:
        yield Finding(
            "error",
            "not-neuron-host",
            "host",
            "neuron-ls is not installed or gave no answer: this is not a Neuron host, or its "
            "tools are missing.",
            "run on an inf2 or trn1 instance; on one, install aws-neuronx-tools.",
        )
    elif ctx.snap.cores == 0:
        yield Finding(
            "error",
            "not-neuron-host",
            "host",
            "neuron-ls lists no NeuronCores.",
            "run on an inf2 or trn1 instance; check the driver with `lsmod | grep neuron`.",
        )


@rule
def transformers_neuronx(ctx: Context) -> Iterator[Finding]:
    if ctx.nxdi:
        return
    v = installed_components(ctx.snap)["transformers-neuronx"]
    if v is None:
        yield Finding(
            "error",
            "tnx-missing",
            "host.transformers-neuronx",
            "transformers-neuronx is not installed in this Python environment.",
            _dlami_fix(),
        )
    elif parse_version(v)[:2] < MIN_TNX:
        yield Finding(
            "error",
            "tnx-version",
            "host.transformers-neuronx",
            f"transformers-neuronx {v} has no speculative decoding (it arrived in 0.10.0.21, "
            "Neuron SDK 2.18).",
            _dlami_fix(),
        )
    elif not releases_with("transformers-neuronx", v):
        yield Finding(
            "warning",
            "tnx-version",
            "host.transformers-neuronx",
            f"transformers-neuronx {v} is not a version any Neuron SDK release shipped, so "
            "the other components cannot be checked against it.",
            "install a released version: 0.13.1216 (SDK 2.25) or 0.13.1315 (SDK 2.26), "
            f"from {PIP_INDEX}.",
        )


def _reference(ctx: Context) -> list[Release]:
    if ctx.nxdi:
        return []  # the component table is transformers-neuronx's; NxDI is checked below
    v = installed_components(ctx.snap)["transformers-neuronx"]
    return releases_with("transformers-neuronx", v) if v else []


@rule
def components(ctx: Context) -> Iterator[Finding]:
    ref = _reference(ctx)
    if not ref:
        return
    have = installed_components(ctx.snap)
    tnx = have["transformers-neuronx"]
    sdks = ", ".join(r.sdk for r in ref)
    for name in COMPONENTS[1:]:
        v = have[name]
        shipped = sorted({s for r in ref for s in r.versions[name]}, key=parse_version)
        if v is None:
            if name in OS_COMPONENTS and ctx.snap.os_packages is None:
                continue  # no package tool answered: nothing to say about OS packages
            yield _missing(ctx, name, shipped, sdks)
            continue
        if name == "torch-neuronx":
            ok = any(v.endswith(s.split(".", 3)[3]) for s in shipped)
        else:
            ok = v in shipped
        if ok:
            continue
        newer = parse_version(v) > parse_version(shipped[-1])
        if name == "aws-neuronx-dkms" and newer:
            continue  # the driver supports older runtimes
        other = sorted(r.sdk for r in releases_with(name, v))
        elsewhere = f"SDK {', '.join(other)}" if other else "no release"
        yield Finding(
            "warning",
            "components-unshipped",
            f"host.{name}",
            f"{name} {v} is {'newer' if newer else 'older'} than the {' or '.join(shipped)} "
            f"that shipped with transformers-neuronx {tnx} (SDK {sdks}); {v} shipped with "
            f"{elsewhere}. No SDK release tested this combination.",
            _install_fix(ctx, name, shipped[-1]),
        )


def _missing(ctx: Context, name: str, shipped: list[str], sdks: str) -> Finding:
    why = {
        "torch-neuronx": "transformers-neuronx imports it to run on NeuronCores",
        "neuronx-cc": "transformers-neuronx compiles every graph with it",
        "aws-neuronx-runtime-lib": "it loads and runs the compiled graphs",
        "aws-neuronx-collectives": "tensor parallelism over several cores uses it",
        "aws-neuronx-dkms": "it is the Neuron kernel driver",
    }[name]
    return Finding(
        "error",
        "component-missing",
        f"host.{name}",
        f"{name} is not installed; {why}. SDK {sdks} shipped {' or '.join(shipped)}.",
        _install_fix(ctx, name, shipped[-1]),
    )


def _install_fix(ctx: Context, name: str, version: str) -> str:
    if name in OS_COMPONENTS:
        if ctx.snap.package_tool == "rpm":
            return f"sudo dnf install -y {name}-{version}"
        return f"sudo apt-get install -y --allow-downgrades '{name}={version}*'"
    if name == "torch-neuronx":
        return (
            f"pip install 'torch-neuronx=={version}' --extra-index-url {PIP_INDEX} "
            "(the build for this environment's torch)"
        )
    return f"pip install '{name}=={version}' --extra-index-url {PIP_INDEX}"


@rule
def driver_loaded(ctx: Context) -> Iterator[Finding]:
    pkg = installed_components(ctx.snap)["aws-neuronx-dkms"]
    loaded = ctx.snap.driver_loaded
    if pkg and loaded is None and ctx.snap.cores == 0:
        yield Finding(
            "error",
            "driver-not-loaded",
            "host.aws-neuronx-dkms",
            f"aws-neuronx-dkms {pkg} is installed but the neuron kernel module is not loaded.",
            "sudo modprobe neuron (after a kernel update: sudo dkms autoinstall, then modprobe).",
        )
    elif pkg and loaded and _bare(loaded) != pkg:
        yield Finding(
            "warning",
            "driver-not-loaded",
            "host.aws-neuronx-dkms",
            f"the loaded neuron driver is {loaded}, the installed package {pkg}: the new "
            "driver is not active.",
            "reboot, or: sudo rmmod neuron && sudo modprobe neuron (with no Neuron process).",
        )


@rule
def busy_cores(ctx: Context) -> Iterator[Finding]:
    for p in ctx.snap.processes(ctx.own_pid):
        cores = set(p.cores)
        clash = ctx.cores is not None and bool(cores & ctx.cores)
        where = f"device {p.device} (NeuronCores {_span(p.cores)})"
        who = f"process {p.pid}" + (f" ({p.command})" if p.command else "")
        sev: Severity
        if ctx.cores is None:
            sev, tail = "warning", "those cores cannot be used until it exits."
        elif clash:
            sev = "error"
            tail = f"the config's layout needs NeuronCores {_span(sorted(ctx.cores))}."
        else:
            sev, tail = "info", "the config's layout does not use them."
        yield Finding(
            sev,
            "cores-busy",
            "host.neuron_cores",
            f"{who} holds {where}; {tail}",
            f"stop it (kill {p.pid}) or wait for it; a NeuronCore serves one process at a time.",
        )


def _span(ids: Any) -> str:
    ids = sorted(ids)
    if not ids:
        return "none"
    return str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}"


def _needs_text(needs: list[Need], pick: Callable[[Need], int]) -> str:
    return "; ".join(f"{n.role}: {fmt_bytes(pick(n))} ({n.how})" for n in needs if pick(n))


@rule
def host_ram(ctx: Context) -> Iterator[Finding]:
    limit = _ram_limit(ctx.snap)
    if not ctx.needs or limit is None:
        return
    # Models load one after the other and leave host memory once on the device: the peak is
    # the largest single need, plus the process itself.
    peak = max(ctx.needs, key=lambda n: n.ram)
    need = peak.ram + PROCESS_ALLOWANCE
    detail = (
        f"{_needs_text(ctx.needs, lambda n: n.ram)}; plus {fmt_bytes(PROCESS_ALLOWANCE)} "
        "for the Python process"
    )
    what = "a container limit of" if limit == ctx.snap.memory_limit else "host RAM is"
    if need > limit:
        yield Finding(
            "error" if peak.known else "warning",
            "host-ram-low",
            f"{peak.role}.model",
            f"loading needs about {fmt_bytes(need)} of host memory at its peak, but "
            f"{what} {fmt_bytes(limit)} ({detail}).",
            "use safetensors checkpoints (they stream layer by layer), or a larger instance "
            "(inf2.48xlarge: 768 GiB, trn1.32xlarge: 512 GiB), or raise the container's limit.",
        )
    elif ctx.snap.mem_available is not None and need > ctx.snap.mem_available:
        yield Finding(
            "warning",
            "host-ram-low",
            f"{peak.role}.model",
            f"loading needs about {fmt_bytes(need)} of host memory; "
            f"{fmt_bytes(ctx.snap.mem_available)} is available now ({detail}).",
            "stop what holds the memory (see `top -o %MEM`) before loading.",
        )


@rule
def disk(ctx: Context) -> Iterator[Finding]:
    need = sum(n.disk for n in ctx.needs)
    free = ctx.snap.disk_free
    if not need or free is None or need <= free:
        return
    yield Finding(
        "error" if all(n.known for n in ctx.needs if n.disk) else "warning",
        "disk-low",
        "compile.artifact_cache",
        f"preparing the checkpoints writes about {fmt_bytes(need)} under the artifact cache, "
        f"but {ctx.snap.disk_path or 'its file system'} has {fmt_bytes(free)} free "
        f"({_needs_text(ctx.needs, lambda n: n.disk)}).",
        "free space, point compile.artifact_cache at a larger volume, or use safetensors "
        "checkpoints (nothing to prepare).",
    )


@rule
def matching_release(ctx: Context) -> Iterator[Finding]:
    ref = _reference(ctx)
    have = installed_components(ctx.snap)
    if not ref:
        return
    checked = [n for n in COMPONENTS if have[n]]
    yield Finding(
        "info",
        "neuron-sdk",
        "host",
        f"transformers-neuronx {have['transformers-neuronx']} shipped with Neuron SDK "
        f"{', '.join(r.sdk for r in ref)}; checked against it: {', '.join(checked)}; run "
        f"`backend: neuronx` in this environment"
        + (f" ({ctx.snap.python_prefix})" if ctx.snap.python_prefix else "")
        + ".",
        "nothing to do.",
    )


@rule
def nxdi_release_check(ctx: Context) -> Iterator[Finding]:
    """NxD Inference: installed, the SDK it shipped with, where AWS supports it, the transformers
    it pins; and, for a release neuron-spec drives, the backend and environment to run it in."""
    if not ctx.nxdi:
        return
    packages = ctx.snap.python_packages
    v = packages.get("neuronx-distributed-inference")
    if v is None:
        yield Finding(
            "error",
            "nxdi-missing",
            "host.neuronx-distributed-inference",
            "neuronx-distributed-inference is not installed in this Python environment"
            + (f" ({ctx.snap.python_prefix})" if ctx.snap.python_prefix else "")
            + ".",
            f"{where_to_run(ctx.platforms)}; run scripts/launch.sh there: it finds the "
            "environment itself.",
        )
        return
    found = release_findings(
        _bare(v),
        ctx.platforms,
        packages.get("transformers"),
        "host.neuronx-distributed-inference",
        "host.transformers",
    )
    yield from found
    row = nxdi_release(_bare(v))
    if row is not None and row.driven:
        yield _nxdi_info(ctx, row, warned=bool(found))


def _nxdi_info(ctx: Context, row: NxdiRelease, warned: bool) -> Finding:
    """Which SDK, which backend, which environment: one line."""
    snap = ctx.snap
    pin = (
        f"transformers {row.transformers}.*"
        if row.transformers
        else "no public source: what neuron-spec drives is checked when the backend loads"
    )
    where = (
        f"this environment ({snap.python_prefix}"
        + (f", Python {snap.python_version}" if snap.python_version else "")
        + ")"
        if snap.python_prefix
        else f"the environment its Deep Learning AMI keeps it in ({row.venvs[0]})"
    )
    hosts = platform_text(ctx.platforms)
    return Finding(
        "info",
        "neuron-sdk",
        "host",
        f"neuronx-distributed-inference {row.version} shipped with Neuron SDK {row.sdk} "
        f"({pin}); run `backend: nxdi` in {where}"
        + (f"; AWS supports it on {hosts}" if not warned and ctx.platforms else "")
        + _current_note(row, ctx.platforms, warned)
        + _python_note(row, snap.python_version)
        + ".",
        "nothing to do." if not warned else "see the warnings above.",
    )


def _current_note(row: NxdiRelease, platforms: tuple[str, ...], warned: bool) -> str:
    """On Inf2/Trn1 with a supported release other than the one AWS names now, say which."""
    if warned or row.version == NXDI_FOR_INF2_TRN1 or not set(platforms) & set(INF2_TRN1):
        return ""
    current = nxdi_release(NXDI_FOR_INF2_TRN1)
    sdk = current.sdk if current else "?"
    return (
        f"; the release AWS names for Inf2/Trn1 now is {NXDI_FOR_INF2_TRN1} (SDK {sdk}), "
        "the one its maintenance fixes go to"
    )


def _python_note(row: NxdiRelease, version: str | None) -> str:
    if version is None:
        return ""
    have = parse_version(version)[:2]
    low, high = (parse_version(x)[:2] for x in row.python)
    if low <= have <= high:
        return ""
    return f"; its SDK lists Python {row.python[0]} to {row.python[1]}, this is {version}"


def host_platforms(snap: Snapshot, cfg: Any) -> tuple[str, ...]:
    """The host's platform, from its devices (NeuronCore-v2 devices: 2 cores and 32 GiB each,
    Inf2 or Trn1; more cores per device: Trn2), else from the config's instance."""
    devices = snap.devices or []
    if devices and all(d.nc_count == 2 for d in devices):
        return INF2_TRN1
    if devices and all(d.nc_count >= 4 for d in devices):
        return ("trn2",)
    if cfg is not None and cfg.spec.instance in INSTANCES:
        return (INSTANCES[cfg.spec.instance].platform,)
    return ()


def host_library(snap: Snapshot, cfg: Any) -> str:
    """Which Neuron library the host is checked for: the config's backend, else the one
    installed (NxDI when transformers-neuronx is not)."""
    if cfg is not None and cfg.spec.backend in ("nxdi", "neuronx"):
        return (
            "neuronx-distributed-inference"
            if cfg.spec.backend == "nxdi"
            else "transformers-neuronx"
        )
    packages = snap.python_packages
    if "transformers-neuronx" not in packages and "neuronx-distributed-inference" in packages:
        return "neuronx-distributed-inference"
    return "transformers-neuronx"


def check_host(snap: Snapshot, cfg: Any = None, own_pid: int | None = None) -> DoctorReport:
    needs = model_needs(cfg) if cfg is not None else []
    cores = parse_cores(planned_env(cfg)["NEURON_RT_VISIBLE_CORES"]) if cfg is not None else None
    pid = own_pid if own_pid is not None else os.getpid()
    ctx = Context(snap, needs, cores, pid, host_library(snap, cfg), host_platforms(snap, cfg))
    findings = [f for r in RULES for f in r(ctx)]
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f.severity])
    return DoctorReport(
        tuple(findings),
        installed_components(snap, ctx.library),
        [r.sdk for r in _reference(ctx)],
        needs,
        snap,
    )
