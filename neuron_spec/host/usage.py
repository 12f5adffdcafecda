"""What this process has used of the host: its peak resident memory, from the kernel's own
accounting (getrusage), with no extra package."""

from __future__ import annotations

import sys


def peak_rss_bytes() -> int | None:
    """The most resident memory this process has held since it started, in bytes; None where
    the platform does not say (no `resource` module)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB, macOS bytes
