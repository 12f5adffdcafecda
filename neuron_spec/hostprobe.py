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

Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILES = (
    "neuron-ls.json",
    "pip-list.json",
    "dpkg.txt",
    "rpm.txt",
    "driver-version",
    "meminfo",
    "memory.max",
    "df.txt",
)
TOOL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Process:
    pid: int
    command: str
    device: int
    cores: tuple[int, ...]
    runtime_version: str


@dataclass(frozen=True)
class Snapshot:
    source: str  # "this host" or the recording's directory
    devices: list[dict[str, Any]] | None  # neuron-ls devices; None: no neuron-ls output
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

    @property
    def cores(self) -> int:
        return sum(int(d.get("nc_count", 0)) for d in self.devices or [])

    def processes(self, own_pid: int | None = None) -> list[Process]:
        """Processes holding NeuronCores, neuron-ls itself and this process excepted."""
        out = []
        for dev in self.devices or []:
            for p in dev.get("neuron_processes") or []:
                command = str(p.get("command", ""))
                pid = int(p.get("pid", -1))
                if command.startswith("neuron-ls") or pid == own_pid:
                    continue
                out.append(
                    Process(
                        pid,
                        command,
                        int(dev.get("neuron_device", -1)),
                        device_cores(dev, self.devices or []),
                        str(p.get("neuron_runtime_version", "")),
                    )
                )
        return out


def device_cores(dev: dict[str, Any], devices: list[dict[str, Any]]) -> tuple[int, ...]:
    """A device's NeuronCore ids (older neuron-ls has no `neuroncore_ids`: count them)."""
    ids = dev.get("neuroncore_ids")
    if ids:
        return tuple(int(i) for i in ids)
    first = sum(
        int(d.get("nc_count", 0))
        for d in devices
        if int(d.get("neuron_device", 0)) < int(dev.get("neuron_device", 0))
    )
    return tuple(range(first, first + int(dev.get("nc_count", 0))))


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- parsing -----------------------------------------------------------------------------------


def parse(raw: dict[str, str | None], source: str, disk_path: str | None = None) -> Snapshot:
    problems: list[str] = []
    devices = _json_list(raw.get("neuron-ls.json"), "neuron-ls.json", problems)
    pip = _json_list(raw.get("pip-list.json"), "pip-list.json", problems) or []
    python_packages = {normalise(str(p.get("name"))): str(p.get("version")) for p in pip}
    tool = "dpkg" if raw.get("dpkg.txt") is not None else "rpm" if raw.get("rpm.txt") else None
    os_packages = _tab_pairs(raw.get(f"{tool}.txt")) if tool else None
    mem = _meminfo(raw.get("meminfo"))
    disk_free, df_path = _df(raw.get("df.txt"))
    return Snapshot(
        source=source,
        devices=devices,
        python_packages=python_packages,
        os_packages=os_packages,
        package_tool=tool,
        driver_loaded=(raw.get("driver-version") or "").strip() or None,
        mem_total=mem.get("MemTotal"),
        mem_available=mem.get("MemAvailable"),
        memory_limit=_cgroup_limit(raw.get("memory.max")),
        disk_path=df_path or disk_path,
        disk_free=disk_free,
        problems=problems,
    )


def _json_list(text: str | None, name: str, problems: list[str]) -> list[dict[str, Any]] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        problems.append(f"{name} is not JSON ({exc})")
        return None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.append(f"{name} is not a list of objects")
        return None
    return value


def _tab_pairs(text: str | None) -> dict[str, str]:
    out = {}
    for line in (text or "").splitlines():
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) >= 2 and parts[1].strip():
            out[parts[0].strip()] = parts[1].strip()
    return out


def _meminfo(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def _cgroup_limit(text: str | None) -> int | None:
    value = (text or "").strip()
    return int(value) if value.isdigit() else None


def _df(text: str | None) -> tuple[int | None, str | None]:
    """Free bytes and mount point from `df -Pk` (the last line: POSIX columns)."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if len(lines) < 2:
        return None, None
    cols = lines[-1].split()
    try:
        return int(cols[3]) * 1024, cols[5] if len(cols) > 5 else None
    except (IndexError, ValueError):
        return None, None


# --- reading the live host and recordings ---------------------------------------------------


def live_outputs(disk_dir: Path) -> dict[str, str | None]:
    """Run the tools and read the files this host has; a missing one is None."""
    raw: dict[str, str | None] = dict.fromkeys(FILES)
    raw["neuron-ls.json"] = _run(["neuron-ls", "--json-output"])
    raw["pip-list.json"] = json.dumps(_python_packages())
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
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory of recorded outputs")
    raw: dict[str, str | None] = {}
    for name in FILES:
        p = directory / name
        raw[name] = p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None
    if all(v is None for v in raw.values()):
        raise FileNotFoundError(
            f"{directory} holds none of the recorded outputs doctor reads ({', '.join(FILES)})"
        )
    return raw


def write_recording(raw: dict[str, str | None], directory: Path) -> list[str]:
    """Save the outputs that exist, each atomically; returns the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in raw.items():
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
