"""What each Neuron SDK release installed together, for the two Neuron libraries neuron-spec
drives: the combinations AWS tested and shipped.

transformers-neuronx (the releases that shipped it with speculative decoding): the release
manifest of the Neuron SDK documentation, `src/helperscripts/n2-manifest.json` in
github.com/aws-neuron/aws-neuron-sdk (as of release 2.26.1, 2025-10-29; 2.26 is the last release
with transformers-neuronx). Inf2/Trn1 packages; torch-neuronx is listed once per PyTorch line
(`<torch version>.<neuron version>`).

NxD Inference: one row per release (NXDI), with where AWS supports it and where its Deep
Learning AMI keeps it; the sources are named above the table.
"""

from __future__ import annotations

from dataclasses import dataclass

# (SDK, transformers-neuronx, neuronx-cc, aws-neuronx-runtime-lib, aws-neuronx-collectives,
#  aws-neuronx-dkms, torch-neuronx builds), newest first.
# fmt: off
_ROWS: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    ("2.26.1", "0.13.1315", "2.21.33363.0", "2.28.23.0", "2.28.27.0", "2.24.7.0",
     "2.6.0.2.10.16998 2.7.0.2.10.16998 2.8.0.2.10.16998"),
    ("2.26.0", "0.13.1315", "2.21.18209.0", "2.28.23.0", "2.28.27.0", "2.24.7.0",
     "2.6.0.2.10.13553 2.7.0.2.10.13553 2.8.0.2.10.13553"),
    ("2.25.0", "0.13.1216", "2.20.9961.0", "2.27.23.0", "2.27.34.0", "2.23.9.0",
     "2.6.0.2.9.9357 2.7.0.2.9.9357"),
    ("2.24.1", "0.13.985", "2.19.8089.0", "2.26.42.0", "2.26.43.0", "2.22.2.0",
     "2.5.1.2.8.6734 2.6.0.2.8.6734 2.7.0.2.8.6734"),
    ("2.24.0", "0.13.985", "2.19.8089.0", "2.26.42.0", "2.26.43.0", "2.22.2.0",
     "2.5.1.2.8.6734 2.6.0.2.8.6734 2.7.0.2.8.6734"),
    ("2.23.0", "0.13.798", "2.18.121.0", "2.25.57.0", "2.25.65.0", "2.21.37.0",
     "2.5.1.2.7.5413 2.6.0.2.7.5413"),
    ("2.22.0", "0.13.470", "2.17.194.0", "2.24.53.0", "2.24.59.0", "2.20.28.0",
     "2.5.1.2.6.0"),
    ("2.21.1", "0.13.380", "2.16.372.0", "2.23.112.0", "2.23.135.0", "2.19.64.0",
     "1.13.1.1.17.0 2.1.2.2.4.0 2.5.1.2.4.0"),
    ("2.21.0", "0.13.322", "2.16.345.0", "2.23.110.0", "2.23.133.0", "2.19.64.0",
     "1.13.1.1.17.0 2.1.2.2.4.0 2.5.1.2.4.0"),
    ("2.20.2", "0.12.313", "2.15.143.0", "2.22.19.0", "2.22.33.0", "2.18.20.0",
     "1.13.1.1.16.0 2.1.2.2.3.2"),
    ("2.20.1", "0.12.313", "2.15.141.0", "2.22.14.0", "2.22.26.0", "2.18.12.0",
     "1.13.1.1.16.0 2.1.2.2.3.1"),
    ("2.20.0", "0.12.313", "2.15.128.0", "2.22.14.0", "2.22.26.0", "2.18.12.0",
     "1.13.1.1.16.0 2.1.2.2.3.0"),
    ("2.19.1", "0.11.351", "2.14.227.0", "2.21.41.0", "2.21.46.0", "2.17.17.0",
     "1.13.1.1.15.0 2.1.2.2.2.0"),
    ("2.19.0", "0.11.351", "2.14.213.0", "2.21.41.0", "2.21.46.0", "2.17.17.0",
     "1.13.1.1.15.0 2.1.2.2.2.0"),
    ("2.18.2", "0.10.0.360", "2.13.72.0", "2.20.22.0", "2.20.22.0", "2.16.7.0",
     "1.13.1.1.14.0 2.1.2.2.1.0"),
    ("2.18.1", "0.10.0.360", "2.13.68.0", "2.20.22.0", "2.20.22.0", "2.16.7.0",
     "1.13.1.1.14.0 2.1.2.2.1.0"),
    ("2.18.0", "0.10.0.21", "2.13.66.0", "2.20.22.0", "2.20.22.0", "2.16.7.0",
     "1.13.1.1.14.0 2.1.2.2.1.0"),
)
# fmt: on

# The components doctor compares, by the name their package carries.
COMPONENTS: tuple[str, ...] = (
    "transformers-neuronx",
    "torch-neuronx",
    "neuronx-cc",
    "aws-neuronx-runtime-lib",
    "aws-neuronx-collectives",
    "aws-neuronx-dkms",
)


@dataclass(frozen=True)
class Release:
    sdk: str
    versions: dict[str, tuple[str, ...]]  # component -> versions shipped (several for torch)


RELEASES: tuple[Release, ...] = tuple(
    Release(
        sdk,
        {
            "transformers-neuronx": (tnx,),
            "neuronx-cc": (cc,),
            "aws-neuronx-runtime-lib": (rt,),
            "aws-neuronx-collectives": (coll,),
            "aws-neuronx-dkms": (dkms,),
            "torch-neuronx": tuple(torch.split()),
        },
    )
    for sdk, tnx, cc, rt, coll, dkms, torch in _ROWS
)

LAST_WITH_DLAMI = "2.25.0"  # the last Deep Learning AMI with transformers-neuronx preinstalled


def releases_with(component: str, version: str) -> list[Release]:
    """The releases that shipped `version` of `component`, newest first."""
    return [r for r in RELEASES if version in r.versions[component]]


# --- NxD Inference ----------------------------------------------------------------------------
# Each NxD Inference release: the Neuron SDK that shipped it, what its setup.py pins, the Python
# versions the SDK manifest lists for it, where AWS supports its models, where its DLAMI keeps it,
# and the public source read for it. Sources: aws-neuron/aws-neuron-sdk `81ce03ae`
# (src/helperscripts/n2-manifest.json per release; release-notes/components/nxd-inference.rst:
# 2.29 "NxD Inference models are now only supported on Trn2 and newer hardware";
# deploy/environments/dlami.rst and dlami/index.rst at 2.28 `86a92868`, 2.29 `539a73c5`, 2.31
# `ee7d6e00` for the venvs; the announcements announce-eos-nxdi-nxd-core-inference (2026-10-16)
# and announce-no-support-nxdi-nxd-core-inference-trn (2026-11-17): on Inf2 and Trn1 NxD Inference
# "remain[s] in maintenance mode at Neuron SDK 2.31"); neuronx-distributed-inference setup.py at
# fcb5a86 (0.7), cd3abf3 (0.8), c63afe0 and ef2731e (0.9). 0.10 was never published as source.

INF2_TRN1: tuple[str, ...] = ("inf2", "trn1")
VENV_2_9 = "/opt/aws_neuronx_venv_pytorch_2_9_nxd_inference"
VENV_2_8 = "/opt/aws_neuronx_venv_pytorch_2_8_nxd_inference"


@dataclass(frozen=True)
class NxdiRelease:
    version: str  # the wheel's version (only the distribution metadata has it in full)
    sdk: str  # the Neuron SDK release(s) that shipped it
    transformers: str  # setup.py's pin, "4.57" for 4.57.*; "" where no source was published
    torch_neuronx: str  # setup.py's torch_neuronx requirement
    python: tuple[str, str]  # the oldest and newest Python the SDK manifest lists for it
    platforms: tuple[str, ...]  # where AWS supports NxD Inference models in this release
    venvs: tuple[str, ...]  # where its Deep Learning AMI keeps it (Ubuntu 24.04 first)
    source: str  # the public commits read for it, or "" when none was published
    driven: bool  # neuron-spec drives it (0.8 and later; 0.10 through the load-time check)

    @property
    def line(self) -> tuple[int, int]:
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)

    def supports(self, platform: str) -> bool:
        return platform in self.platforms


# fmt: off
NXDI: tuple[NxdiRelease, ...] = (
    NxdiRelease("0.7.14366", "2.27.0", "4.56", ">=2.5", ("3.10", "3.12"),
                ("inf2", "trn1", "trn2"), (VENV_2_9, VENV_2_8), "fcb5a86", False),
    NxdiRelease("0.7.15063", "2.27.1", "4.56", ">=2.5", ("3.10", "3.12"),
                ("inf2", "trn1", "trn2"), (VENV_2_9, VENV_2_8), "", False),
    NxdiRelease("0.8.16251", "2.28", "4.57", ">=2.5", ("3.10", "3.12"),
                ("inf2", "trn1", "trn2"), (VENV_2_9, VENV_2_8), "cd3abf3", True),
    NxdiRelease("0.9.17334", "2.29", "4.57", "==2.9.*", ("3.10", "3.12"),
                ("trn2",), (VENV_2_9,), "c63afe0, ef2731e", True),
    NxdiRelease("0.10.17970", "2.30", "", "2.9", ("3.11", "3.13"),
                ("inf2", "trn1", "trn2"), (VENV_2_9,), "", True),
    NxdiRelease("0.10.18399", "2.31", "", "2.9", ("3.11", "3.13"),
                ("inf2", "trn1", "trn2"), (VENV_2_9,), "", True),
)
# fmt: on
NXDI_BY_VERSION: dict[str, NxdiRelease] = {r.version: r for r in NXDI}
DRIVEN_NXDI: tuple[NxdiRelease, ...] = tuple(r for r in NXDI if r.driven)

# The Deep Learning AMI AWS names for NxD Inference on Inf2 and Trn1 today: SDK 2.31, the last
# with a PyTorch 2.9 / NxD Inference environment (2.32's DLAMIs carry neither NxDI nor NxD).
# The PyTorch 2.9 single-framework DLAMI's SSM parameter keeps pointing at the last one published.
NXDI_FOR_INF2_TRN1 = "0.10.18399"
NXDI_AMI_FOR_INF2_TRN1 = (
    "the Neuron SDK 2.31 Deep Learning AMI (Deep Learning AMI Neuron PyTorch 2.9, Ubuntu 24.04; "
    "`aws ssm get-parameter --name /aws/service/neuron/dlami/pytorch-2.9/ubuntu-24.04/latest/"
    f"image_id`), environment {VENV_2_9}"
)
NXDI_PINNED_FOR_INF2_TRN1 = "0.8.16251"  # SDK 2.28: what the 2.29 notes told Inf2/Trn1 to pin


def nxdi_release(version: str) -> NxdiRelease | None:
    """The release a wheel version names ('0.8.16251', with or without a local suffix)."""
    return NXDI_BY_VERSION.get(version.split("+")[0].strip())


def driven_nxdi_text() -> str:
    """'0.8.16251 (SDK 2.28), 0.9.17334 (SDK 2.29), ...': the releases neuron-spec drives."""
    return ", ".join(f"{r.version} (SDK {r.sdk})" for r in DRIVEN_NXDI)


def platform_text(platforms: tuple[str, ...]) -> str:
    """('inf2', 'trn1') -> 'Inf2 and Trn1'."""
    names = [{"inf2": "Inf2", "trn1": "Trn1", "trn2": "Trn2"}.get(p, p) for p in platforms]
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]
