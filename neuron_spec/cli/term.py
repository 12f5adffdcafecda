"""Consoles for people and for pipes.

On a terminal: colour and bold from a small markup ("[bold red]text[/]"; NO_COLOR,
https://no-color.org, turns colour off). Piped or redirected: no escape codes at all, and tables
at their natural width, never wrapped or cut to fit 80 columns that a file does not have.

Every command prints through this module's Console and Table, which import in a millisecond; rich
is imported only for the progress bars of long work (downloads, benchmarks, model loading).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console as RichConsole

    from ..host.facts import HostFacts

PIPE_WIDTH = 1000  # what rich is told when output is piped: wide enough for any table

_SGR = {
    "bold": "1",
    "dim": "2",
    "italic": "3",
    "underline": "4",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}
# A tag: [bold], [bold red], [/bold], [/]. Anything else in brackets ("[512, 256]") is text.
_TAG = re.compile(r"(\\?)\[(/?)((?:[a-z]+)(?: [a-z]+)*)?\]")
_RESET = "\x1b[0m"


def _is_style(words: str | None) -> bool:
    return words is None or all(w in _SGR for w in words.split())


def render_markup(text: str, colour: bool) -> str:
    """`text` with its tags turned into ANSI codes (colour) or removed (no colour)."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for m in _TAG.finditer(text):
        backslash, closing, words = m.group(1), m.group(2), m.group(3)
        out.append(text[pos : m.start()])
        pos = m.end()
        if backslash:  # \[ is a literal bracket
            out.append(m.group(0)[1:])
            continue
        if not _is_style(words) or (not closing and words is None):
            out.append(m.group(0))
            continue
        if closing:
            if words in stack:
                del stack[len(stack) - 1 - stack[::-1].index(words)]
            elif words is None and stack:
                stack.pop()
            if colour:
                out.append(_RESET + "".join(_sgr(s) for s in stack))
        else:
            stack.append(words)
            if colour:
                out.append(_sgr(words))
    out.append(text[pos:])
    if colour and stack:
        out.append(_RESET)
    return "".join(out)


def _sgr(words: str) -> str:
    return "\x1b[" + ";".join(_SGR[w] for w in words.split()) + "m"


def visible_len(text: str) -> int:
    """Columns `text` takes once its markup is rendered."""
    return len(render_markup(text, colour=False))


def escape(text: str) -> str:
    """Text shown inside markup, with its own brackets left alone."""
    return _TAG.sub(lambda m: m.group(1) + "\\" + m.group(0)[len(m.group(1)) :], text)


class Table:
    """Columns of text with a header, drawn with box characters; `box=False` for a plain
    two-column listing. Cells may hold markup."""

    def __init__(self, title: str = "", show_header: bool = True, box: bool = True):
        self.title, self.show_header, self.box = title, show_header, box
        self.columns: list[tuple[str, str, str]] = []  # header, justify, style
        self.rows: list[tuple[str, ...]] = []

    def add_column(self, header: str = "", justify: str = "left", style: str = "") -> None:
        self.columns.append((header, justify, style))

    def add_row(self, *cells: str) -> None:
        self.rows.append(tuple(cells) + ("",) * (len(self.columns) - len(cells)))

    def lines(self) -> list[str]:
        """The table as lines of markup."""
        header = tuple(escape(h) for h, _, _ in self.columns)
        grid = [header, *self.rows] if self.show_header else list(self.rows)
        widths = [max((visible_len(r[i]) for r in grid), default=0) for i in range(len(header))]

        def cells(row: tuple[str, ...], head: bool) -> list[str]:
            out = []
            for (_, justify, style), width, cell in zip(self.columns, widths, row, strict=False):
                pad = " " * (width - visible_len(cell))
                text = pad + cell if justify == "right" else cell + pad
                style = "bold" if head else style
                out.append(f"[{style}]{text}[/{style}]" if style and cell else text)
            return out

        if not self.box:
            return ["  ".join(cells(r, False)).rstrip() for r in self.rows]
        bar = [("━" if self.show_header else "─") * (w + 2) for w in widths]
        rule = ["─" * (w + 2) for w in widths]
        out = [escape(self.title)] if self.title else []
        if self.show_header:
            out += ["┏" + "┳".join(bar) + "┓", "┃ " + " ┃ ".join(cells(header, True)) + " ┃"]
            out.append("┡" + "╇".join(bar) + "┩")
        else:
            out.append("┌" + "┬".join(rule) + "┐")
        out += ["│ " + " │ ".join(cells(r, False)) + " │" for r in self.rows]
        out.append("└" + "┴".join(rule) + "┘")
        return out


class Console:
    """print() with markup and tables, coloured only where a person is looking."""

    def __init__(self, stream: IO[str], colour: bool):
        self.stream, self.colour = stream, colour

    @property
    def is_terminal(self) -> bool:
        return _is_terminal(self.stream)

    def print(self, *objects: Any, markup: bool = True, end: str = "\n", **_: Any) -> None:
        parts: list[str] = []
        for obj in objects:
            if isinstance(obj, Table):
                parts.append("\n".join(render_markup(ln, self.colour) for ln in obj.lines()))
            elif markup:
                parts.append(render_markup(str(obj), self.colour))
            else:
                parts.append(str(obj))
        self.stream.write(" ".join(parts) + end)
        self.stream.flush()

    @contextmanager
    def status(self, message: str) -> Iterator[StatusLine]:
        """One line saying what is happening, rewritten in place on a terminal (nothing is
        written to a pipe); erased at the end."""
        status = StatusLine(self)
        status.update(message)
        try:
            yield status
        finally:
            status.clear()


class StatusLine:
    def __init__(self, console: Console):
        self.console, self.shown = console, False

    def update(self, message: str) -> None:
        if self.console.is_terminal:
            text = render_markup(message, self.console.colour)
            self.console.stream.write(f"\r\x1b[2K… {text}")
            self.console.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.console.stream.write("\r\x1b[2K")
            self.console.stream.flush()
            self.shown = False


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stream, colour=_is_terminal(stream) and not os.environ.get("NO_COLOR"))


def rich_console(stderr: bool = True) -> RichConsole:
    """A rich console for progress bars, following the same rules as console()."""
    from rich.console import Console as RichConsole

    stream = sys.stderr if stderr else sys.stdout
    if _is_terminal(stream):
        no_color = bool(os.environ.get("NO_COLOR"))
        return RichConsole(stderr=stderr, highlight=False, no_color=no_color)
    return RichConsole(
        stderr=stderr, highlight=False, width=PIPE_WIDTH, no_color=True, force_terminal=False
    )


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def host_line(host: HostFacts) -> str:
    if host.instance is None:
        return "host: no Neuron instance detected"
    how = {"catalog": "from the catalog", "detected": "detected"}.get(host.source, host.source)
    return (
        f"host: {host.instance} ({how}): {host.cores} NeuronCores, "
        f"{host.memory_per_core_bytes / 1024**3:.0f} GiB each"
    )
