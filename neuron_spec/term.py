"""Consoles for people and for pipes.

On a terminal: rich's own width and colour (NO_COLOR, https://no-color.org, turns colour off).
Piped or redirected: no escape codes at all, and no width limit, so a table is never wrapped or
its headers cut to fit 80 columns that a file does not have.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from .host import HostFacts

PIPE_WIDTH = 1000  # wide enough for any table neuron-spec prints; lines are not padded to it


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if _is_terminal(stream):
        return Console(stderr=stderr, highlight=False, no_color=bool(os.environ.get("NO_COLOR")))
    return Console(
        stderr=stderr, highlight=False, width=PIPE_WIDTH, no_color=True, force_terminal=False
    )


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def escape(text: str) -> str:
    """Text shown inside rich markup, with its own brackets left alone."""
    from rich.markup import escape as _escape

    return _escape(text)


def host_line(host: HostFacts) -> str:
    if host.instance is None:
        return "host: no Neuron instance detected"
    how = {"catalog": "from the catalog", "detected": "detected"}.get(host.source, host.source)
    return (
        f"host: {host.instance} ({how}): {host.cores} NeuronCores, "
        f"{host.memory_per_core_bytes / 1024**3:.0f} GiB each"
    )
