"""What each Neuron SDK release that shipped transformers-neuronx with speculative decoding
installed together: the combinations AWS tested and shipped.

Source: the release manifest of the Neuron SDK documentation, `src/helperscripts/n2-manifest.json`
in github.com/aws-neuron/aws-neuron-sdk (as of release 2.26.1, 2025-10-29; 2.26 is the last
release with transformers-neuronx). Inf2/Trn1 packages; torch-neuronx is listed once per PyTorch
line (`<torch version>.<neuron version>`).
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


# NxD Inference releases and the SDK each shipped with, with the transformers each pins in its
# setup.py. Source: aws-neuron/aws-neuron-sdk `src/helperscripts/n2-manifest.json` and the
# release notes (2.29: NxDI "models are now only supported on Trn2 and newer"; SDK 2.28 is
# the pin AWS gives Inf2/Trn1 users); neuronx-distributed-inference setup.py per tag.
NXDI_RELEASES: dict[str, tuple[str, str]] = {
    "0.7.14366": ("2.27.0", "4.56"),
    "0.7.15063": ("2.27.1", "4.56"),
    "0.8.16251": ("2.28", "4.57"),
    "0.9.17334": ("2.29", "4.57"),
    "0.10.17970": ("2.30", ""),
    "0.10.18399": ("2.31", ""),
}
NXDI_FOR_INF2_TRN1 = "0.8.16251"  # Neuron SDK 2.28
