"""The raw facts `neuron-spec doctor` reads about a host, live or from a recording.

Each fact is the verbatim output of one tool or file, stored under a fixed name, so that a
recording (`doctor --record DIR`) and the live host go through the same parser:

    neuron-ls.json  `neuron-ls --json-output`
    pip-list.json   the interpreter's Python packages, as `pip list --format=json` prints them
    dpkg.txt        `dpkg-query -W -f '${Package}\\t${Version}\\n' 'aws-neuronx-*'` (Debian/Ubuntu)
    rpm.txt         `rpm -qa --qf '%{NAME}\\t%{VERSION}\\n' 'aws-neuronx-*'` (Amazon Linux)
    driver-version  /sys/module/neuron/version (present only while the driver is loaded)
    meminfo         /proc/meminfo
    memory.max      /sys/fs/cgroup/memory.max (a container's memory limit)
    df.txt          `df -Pk DIR` for the directory compiled artifacts go to
    python.json     the interpreter doctor runs in: {"prefix": sys.prefix, "version": "3.12.3"}
                    (which virtual environment the Python packages above are from)

Standard library only.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..util.safeio import Unreadable, as_int, loads, printable, read_text

FILES = (
    "neuron-ls.json",
    "pip-list.json",
    "dpkg.txt",
    "rpm.txt",
    "driver-version",
    "meminfo",
    "memory.max",
    "df.txt",
    "python.json",
)
TOOL_TIMEOUT_S = 30.0


MAX_RECORDED_BYTES = 16 << 20  # neuron-ls of the largest host is a few hundred KB
MAX_DEVICES = 1024
MAX_PROCESSES = 1024
MAX_CORES_PER_DEVICE = 64


@dataclass(frozen=True)
class Process:
    pid: int
    command: str
    device: int
    cores: tuple[int, ...]
    runtime_version: str


@dataclass(frozen=True)
class Device:
    """One neuron-ls device, its fields checked (a recording is hostile until parsed)."""

    index: int
    nc_count: int
    core_ids: tuple[int, ...]  # () when neuron-ls does not list them: counted from the order
    processes: tuple[tuple[int, str, str], ...]  # (pid, command, runtime version)


@dataclass(frozen=True)
class Snapshot:
    source: str  # "this host" or the recording's directory
    devices: list[Device] | None  # neuron-ls devices; None: no neuron-ls output
    python_packages: dict[str, str]  # normalised name -> version
    os_packages: dict[str, str] | None  # None: neither dpkg nor rpm answered
    package_tool: str | None  # "dpkg" | "rpm"
    driver_loaded: str | None  # the loaded kernel driver's version
    mem_total: int | None
    mem_available: int | None
    memory_limit: int | None  # cgroup limit, when one is set
    disk_path: str | None
    disk_free: int | None
    problems: list[str] = field(default_factory=list)  # outputs that could not be parsed
    python_prefix: str | None = None  # the environment the Python packages are from
    python_version: str | None = None

    @property
    def cores(self) -> int:
        return sum(d.nc_count for d in self.devices or [])

    def processes(self, own_pid: int | None = None) -> list[Process]:
        """Processes holding NeuronCores, neuron-ls itself and this process excepted."""
        out = []
        cores = device_cores(self.devices or [])
        for dev in self.devices or []:
            for pid, command, runtime in dev.processes:
                if command.startswith("neuron-ls") or pid == own_pid:
                    continue
                out.append(Process(pid, command, dev.index, cores[dev.index], runtime))
        return out


def device_cores(devices: list[Device]) -> dict[int, tuple[int, ...]]:
    """Each device's NeuronCore ids: as listed, or (older neuron-ls has no `neuroncore_ids`)
    counted in device order. One pass over the devices, sorted once."""
    out: dict[int, tuple[int, ...]] = {}
    first = 0
    for dev in sorted(devices, key=lambda d: d.index):
        out[dev.index] = dev.core_ids or tuple(range(first, first + dev.nc_count))
        first += dev.nc_count
    return out


def parse_devices(value: Any, problems: list[str]) -> list[Device] | None:
    """neuron-ls's JSON (already decoded) as devices; each entry that is not a device with a
    count of cores is named in problems and left out."""
    if not isinstance(value, list):
        problems.append("neuron-ls.json is not a list of devices")
        return None
    if len(value) > MAX_DEVICES:
        problems.append(f"neuron-ls.json lists {len(value)} devices (at most {MAX_DEVICES})")
        return None
    devices, seen = [], set()
    for position, raw in enumerate(value):
        dev = _device(raw, position, problems)
        if dev is not None and dev.index not in seen:
            seen.add(dev.index)
            devices.append(dev)
    return devices


def _device(raw: Any, position: int, problems: list[str]) -> Device | None:
    where = f"neuron-ls.json device #{position}"
    if not isinstance(raw, dict):
        problems.append(f"{where} is not an object")
        return None
    index = as_int(raw.get("neuron_device", position), 0, MAX_DEVICES)
    count = as_int(raw.get("nc_count"), 0, MAX_CORES_PER_DEVICE)
    if index is None or count is None:
        problems.append(f"{where}: neuron_device or nc_count is not a small whole number")
        return None
    ids = raw.get("neuroncore_ids") or []
    core_ids = (
        [as_int(i, 0, MAX_DEVICES * MAX_CORES_PER_DEVICE) for i in ids]
        if isinstance(ids, list) and len(ids) <= MAX_CORES_PER_DEVICE
        else [None]
    )
    if None in core_ids:
        problems.append(f"{where}: neuroncore_ids is not a list of core numbers")
        core_ids = []
    return Device(
        index, count, tuple(i for i in core_ids if i is not None), _processes(raw, where, problems)
    )


def _processes(
    raw: dict[str, Any], where: str, problems: list[str]
) -> tuple[tuple[int, str, str], ...]:
    listed = raw.get("neuron_processes") or []
    if not isinstance(listed, list) or len(listed) > MAX_PROCESSES:
        problems.append(f"{where}: neuron_processes is not a list of processes")
        return ()
    out = []
    for p in listed:
        pid = as_int(p.get("pid"), 0, 2**31) if isinstance(p, dict) else None
        if pid is None:
            problems.append(f"{where}: a process without a valid pid")
            continue
        command, runtime = p.get("command", ""), p.get("neuron_runtime_version", "")
        out.append((pid, _text(command), _text(runtime, 40)))
    return tuple(out)


def _text(value: Any, limit: int = 200) -> str:
    return printable(value, limit) if isinstance(value, str) else ""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- parsing -----------------------------------------------------------------------------------


def parse(raw: dict[str, str | None], source: str, disk_path: str | None = None) -> Snapshot:
    problems: list[str] = [str(p) for p in (raw.get(PROBLEMS) or "").splitlines() if p]
    listed = _json(raw.get("neuron-ls.json"), "neuron-ls.json", problems)
    devices = None if listed is _MISSING else parse_devices(listed, problems)
    pip = _json(raw.get("pip-list.json"), "pip-list.json", problems)
    python_packages = {
        normalise(_text(p["name"], 100)): _text(p.get("version"), 60)
        for p in (pip if isinstance(pip, list) else [])[:100_000]
        if isinstance(p, dict) and isinstance(p.get("name"), str)
    }
    tool = "dpkg" if raw.get("dpkg.txt") is not None else "rpm" if raw.get("rpm.txt") else None
    os_packages = _tab_pairs(raw.get(f"{tool}.txt")) if tool else None
    mem = _meminfo(raw.get("meminfo"))
    disk_free, df_path = _df(raw.get("df.txt"))
    prefix, version = _python(_json(raw.get("python.json"), "python.json", problems))
    return Snapshot(
        source=source,
        devices=devices,
        python_packages=python_packages,
        os_packages=os_packages,
        package_tool=tool,
        driver_loaded=_text((raw.get("driver-version") or "").strip(), 60) or None,
        mem_total=mem.get("MemTotal"),
        mem_available=mem.get("MemAvailable"),
        memory_limit=_cgroup_limit(raw.get("memory.max")),
        disk_path=df_path or disk_path,
        disk_free=disk_free,
        problems=problems,
        python_prefix=prefix,
        python_version=version,
    )


_MISSING: Any = object()
PROBLEMS = "problems"  # raw key: why a recorded file could not be read (one per line)


def _json(text: str | None, name: str, problems: list[str]) -> Any:
    if text is None:
        return _MISSING
    try:
        return loads(text)
    except Unreadable as exc:
        problems.append(f"{name} is {exc}")
        return _MISSING


PYTHON_VERSION = re.compile(r"[0-9]{1,3}(\.[0-9]{1,4}){1,2}[a-z0-9]{0,8}", re.ASCII)


def _python(value: Any) -> tuple[str | None, str | None]:
    """(sys.prefix, version) from python.json; None for what is missing or not text."""
    if not isinstance(value, dict):
        return None, None
    prefix, version = value.get("prefix"), value.get("version")
    prefix_text = _text(prefix, 300) if isinstance(prefix, str) else ""
    ok = isinstance(version, str) and PYTHON_VERSION.fullmatch(version)
    return prefix_text or None, version if ok else None


def _tab_pairs(text: str | None) -> dict[str, str]:
    out = {}
    for line in (text or "").splitlines()[:100_000]:
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) >= 2 and parts[1].strip():
            out[printable(parts[0].strip(), 100)] = printable(parts[1].strip(), 60)
    return out


def _meminfo(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines()[:10_000]:
        m = re.match(r"([A-Za-z_()]+):\s+([0-9]{1,18})\s*kB", line, re.ASCII)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def _cgroup_limit(text: str | None) -> int | None:
    value = (text or "").strip()
    return int(value) if re.fullmatch(r"[0-9]{1,19}", value, re.ASCII) else None


def _df(text: str | None) -> tuple[int | None, str | None]:
    """Free bytes and mount point from `df -Pk` (the last line: POSIX columns)."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if len(lines) < 2:
        return None, None
    cols = lines[-1].split()
    if len(cols) < 4 or not re.fullmatch(r"[0-9]{1,18}", cols[3], re.ASCII):
        return None, None
    return int(cols[3]) * 1024, printable(cols[5], 300) if len(cols) > 5 else None


# --- reading the live host and recordings ---------------------------------------------------


def live_outputs(disk_dir: Path) -> dict[str, str | None]:
    """Run the tools and read the files this host has; a missing one is None."""
    raw: dict[str, str | None] = dict.fromkeys(FILES)
    raw["neuron-ls.json"] = _run(["neuron-ls", "--json-output"])
    raw["pip-list.json"] = json.dumps(_python_packages())
    raw["python.json"] = json.dumps({"prefix": sys.prefix, "version": platform.python_version()})
    # dpkg-query exits 1 when no package matches: an answer (none installed), not a failure
    dpkg = ["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", "aws-neuronx-*"]
    raw["dpkg.txt"] = _run(dpkg, ok=(0, 1))
    if raw["dpkg.txt"] is None:
        raw["rpm.txt"] = _run(["rpm", "-qa", "--qf", "%{NAME}\t%{VERSION}\n", "aws-neuronx-*"])
    raw["driver-version"] = _read("/sys/module/neuron/version")
    raw["meminfo"] = _read("/proc/meminfo")
    raw["memory.max"] = _read("/sys/fs/cgroup/memory.max")
    raw["df.txt"] = _run(["df", "-Pk", str(existing_ancestor(disk_dir))])
    return raw


def existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _python_packages() -> list[dict[str, str]]:
    from importlib import metadata

    seen: dict[str, dict[str, str]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            seen.setdefault(normalise(name), {"name": name, "version": dist.version})
    return sorted(seen.values(), key=lambda p: p["name"].lower())


def _run(argv: list[str], ok: tuple[int, ...] = (0,)) -> str | None:
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *argv[1:]], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode in ok else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_recording(directory: Path) -> dict[str, str | None]:
    """The recorded outputs (a missing one is None). Each is read bounded, as a regular file;
    one that cannot be read is None with the reason under raw[PROBLEMS]."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory of recorded outputs")
    raw: dict[str, str | None] = {}
    problems = []
    for name in FILES:
        p = directory / name
        raw[name] = None
        if not (p.exists() or p.is_symlink()):
            continue
        try:
            raw[name] = read_text(p, MAX_RECORDED_BYTES, errors="replace")
        except Unreadable as exc:
            problems.append(f"{name} is {exc}")
    if all(v is None for v in raw.values()) and not problems:
        raise FileNotFoundError(
            f"{directory} holds none of the recorded outputs doctor reads ({', '.join(FILES)})"
        )
    raw[PROBLEMS] = "\n".join(problems) or None
    return raw


def write_recording(raw: dict[str, str | None], directory: Path) -> list[str]:
    """Save the outputs that exist, each atomically; returns the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        text = raw.get(name)
        if text is None:
            continue
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(name)
    return written
