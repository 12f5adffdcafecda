"""Facts about the machine a deployment runs on, detected or looked up in the catalog.

Rules never read the machine themselves: they receive a HostFacts, so tests use made-up hosts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..config.catalog import INSTANCES, InstanceType, Platform

IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_TIMEOUT_S = 0.3


@dataclass(frozen=True)
class HostFacts:
    instance: str | None  # catalog name, or None when not a known Neuron instance
    platform: Platform | None
    cores: int  # NeuronCores visible; 0 when there are none
    memory_per_core_bytes: int
    host_ram_bytes: int | None
    source: str  # "catalog" (from --instance or the config), "detected", "none"

    @property
    def is_neuron(self) -> bool:
        return self.platform is not None and self.cores > 0

    @classmethod
    def from_instance(cls, row: InstanceType, source: str = "catalog") -> HostFacts:
        return cls(
            instance=row.name,
            platform=row.platform,
            cores=row.cores,
            memory_per_core_bytes=row.memory_per_core_bytes,
            host_ram_bytes=row.host_ram_gib * 1024**3,
            source=source,
        )

    @classmethod
    def none(cls) -> HostFacts:
        return cls(None, None, 0, 0, _host_ram(), "none")

    def to_dict(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "platform": self.platform,
            "cores": self.cores,
            "memory_per_core_bytes": self.memory_per_core_bytes,
            "host_ram_bytes": self.host_ram_bytes,
            "source": self.source,
        }


def _host_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def imds_instance_type(endpoint: str | None = None, timeout: float = IMDS_TIMEOUT_S) -> str | None:
    """The EC2 instance type via IMDSv2 (token, then metadata), or None off EC2."""
    import urllib.error
    import urllib.request

    base = (endpoint or os.environ.get("NEURON_SPEC_IMDS_ENDPOINT") or IMDS_ENDPOINT).rstrip("/")
    try:
        req = urllib.request.Request(
            f"{base}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            token = resp.read().decode()
        req = urllib.request.Request(
            f"{base}/latest/meta-data/instance-type",
            headers={"X-aws-ec2-metadata-token": token},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read().decode().strip() or None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def neuron_ls_cores(timeout: float = 10.0) -> int | None:
    """Total NeuronCores reported by `neuron-ls --json-output`, or None without the tool."""
    import shutil
    import subprocess

    exe = shutil.which("neuron-ls")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--json-output"], capture_output=True, text=True, timeout=timeout, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    from ..util.safeio import Unreadable, loads
    from .probe import parse_devices

    try:
        devices = parse_devices(loads(out), [])
    except Unreadable:
        return None
    return None if devices is None else sum(d.nc_count for d in devices)


def detect_host() -> HostFacts:
    """Detect the instance: IMDSv2 first, then neuron-ls for a core count."""
    instance = imds_instance_type()
    if instance in INSTANCES:
        return HostFacts.from_instance(INSTANCES[instance], source="detected")
    cores = neuron_ls_cores()
    if cores:
        # A Neuron host the catalog doesn't know: guess the platform by core count.
        for row in INSTANCES.values():
            if row.cores == cores:
                facts = HostFacts.from_instance(row, source="detected")
                return HostFacts(
                    None,
                    facts.platform,
                    cores,
                    facts.memory_per_core_bytes,
                    _host_ram(),
                    "detected",
                )
    return HostFacts.none()


def resolve_host(config_instance: str, override: str | None = None) -> HostFacts:
    """HostFacts from --instance, else the config's instance, detecting when it is 'auto'."""
    name = override or config_instance
    if name != "auto":
        return HostFacts.from_instance(INSTANCES[name])
    return detect_host()


def main() -> int:
    """`python -m neuron_spec.host.facts`: print what detect_host() finds, as JSON (stdlib only, so
    scripts/launch.sh can run it with a bare python3 before any environment exists)."""
    import json

    facts = detect_host()
    print(json.dumps(facts.to_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
