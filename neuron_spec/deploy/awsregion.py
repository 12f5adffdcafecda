"""Which AWS region a deploy talks to, and AWS's Neuron inference container in that region.

The region comes from, in order: --region, AWS_REGION, AWS_DEFAULT_REGION, then the `region` of
the AWS profile (AWS_PROFILE, else `default`) in the AWS config file (AWS_CONFIG_FILE, else
~/.aws/config). Resolving it needs no boto3, so a dry run works on the light install.
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from ..errors import UsageError

# AWS Deep Learning Containers: the ECR registry account of each region and whether AWS
# publishes its Neuron containers there. Source: aws/deep-learning-containers,
# available_images.md ("Deep Learning Containers Docker Images are available in the following
# regions"), commit 008199507ef3e5b651d3577838837e25265afa10, read 2026-11-22.
# region: (registry account, Neuron container published)
DLC_REGISTRY: dict[str, tuple[str, bool]] = {
    "us-east-1": ("763104351884", True),
    "us-east-2": ("763104351884", True),
    "us-west-1": ("763104351884", False),
    "us-west-2": ("763104351884", True),
    "af-south-1": ("626614931356", False),
    "ap-east-1": ("871362719292", False),
    "ap-south-1": ("763104351884", True),
    "ap-northeast-3": ("364406365360", False),
    "ap-northeast-2": ("763104351884", False),
    "ap-southeast-1": ("763104351884", True),
    "ap-southeast-2": ("763104351884", True),
    "ap-southeast-3": ("907027046896", False),
    "ap-northeast-1": ("763104351884", True),
    "ca-central-1": ("763104351884", False),
    "eu-central-1": ("763104351884", True),
    "eu-west-1": ("763104351884", True),
    "eu-west-2": ("763104351884", False),
    "eu-south-1": ("692866216735", False),
    "eu-west-3": ("763104351884", True),
    "eu-north-1": ("763104351884", False),
    "me-south-1": ("217643126080", False),
    "me-central-1": ("914824155844", False),
    "sa-east-1": ("763104351884", True),
    "cn-north-1": ("727897471807", False),
    "cn-northwest-1": ("727897471807", False),
}
# AWS's PyTorch inference container for Neuron (transformers-neuronx inside).
NEURON_REPOSITORY = "pytorch-inference-neuronx:2.1.2-neuronx-py310-sdk2.20.2-ubuntu20.04"
# AWS's PyTorch inference container for CPUs, in every region of the table above, for the
# reference backend (its Python decides which dependency wheels deploy ships). Source:
# aws/deep-learning-containers available_images.md, "PyTorch 2.6.0 | inference | CPU | py312".
CPU_REPOSITORY = "pytorch-inference:2.6.0-cpu-py312-ubuntu22.04-sagemaker"
CPU_PYTHON = "3.12"


def neuron_regions() -> list[str]:
    return [r for r, (_, neuron) in DLC_REGISTRY.items() if neuron]


def resolve_region(explicit: str | None, env: dict[str, str] | None = None) -> tuple[str, str]:
    """(region, where it came from); UsageError (exit 2) when nothing names one."""
    env = dict(os.environ) if env is None else env
    if explicit:
        return explicit, "--region"
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if env.get(name):
            return env[name], name
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    path = Path(env.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config").expanduser()
    region = _profile_region(path, profile)
    if region:
        return region, f"profile {profile} in {path}"
    flag = "" if profile == "default" else f" --profile {profile}"
    raise UsageError(
        "no AWS region: pass --region (e.g. --region us-east-1), set AWS_REGION or "
        f"AWS_DEFAULT_REGION, or give profile {profile!r} a region "
        f"(aws configure set region us-east-1{flag})."
    )


def _profile_region(path: Path, profile: str) -> str | None:
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (OSError, configparser.Error, UnicodeDecodeError):
        return None
    section = "default" if profile == "default" else f"profile {profile}"
    if not parser.has_option(section, "region"):
        return None
    return parser.get(section, "region").strip() or None


def _registry(region: str) -> str:
    account = DLC_REGISTRY[region][0]
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}"


def cpu_image(region: str) -> str:
    """AWS's CPU PyTorch inference container in `region` (the reference backend's default)."""
    if region not in DLC_REGISTRY:
        raise UsageError(
            f"{region} is not a region in neuron-spec's table of AWS's containers. Fix: pass "
            "--image-uri with a PyTorch inference image of that region, or deploy in one of "
            f"{', '.join(DLC_REGISTRY)}."
        )
    return f"{_registry(region)}/{CPU_REPOSITORY}"


def neuron_image(region: str) -> str:
    """AWS's Neuron inference container in `region`; UsageError where AWS publishes none."""
    entry = DLC_REGISTRY.get(region)
    if entry is None or not entry[1]:
        where = ", ".join(neuron_regions())
        raise UsageError(
            f"AWS publishes no Neuron inference container in {region}"
            + ("" if entry else " (not a region in neuron-spec's table)")
            + f". Fix: deploy in one of {where}, or pass --image-uri with your own image."
        )
    return f"{_registry(region)}/{NEURON_REPOSITORY}"
