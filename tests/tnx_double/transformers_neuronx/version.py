"""Which release the double plays: TNX_DOUBLE_VERSION (default 0.13.322).

As in the real packages, the module's own `__version__` is only 'major.minor.x' and lags
(0.11.351 still says '0.10.x'); the full version is in the distribution metadata, which
tests/neuron_fixtures.use_double writes beside the package.
"""

from __future__ import annotations

import os

RELEASE = os.environ.get("TNX_DOUBLE_VERSION", "0.13.322")
_PARTS = tuple(int(p) for p in RELEASE.split(".")[:4])
# 0.11 kept 0.10's version.py; 0.12 and 0.13 say their own minor version.
__version__ = "0.10.x" if _PARTS[:2] <= (0, 11) else f"0.{_PARTS[1]}.x"


def at_least(*version: int) -> bool:
    return _PARTS[: len(version)] >= version


def api() -> str:
    """'v2' from 0.12 (the batched speculation loop); 'v1' for 0.10 and 0.11."""
    return "v2" if at_least(0, 12) else "v1"
