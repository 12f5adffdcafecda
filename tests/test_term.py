"""The console: markup to ANSI on a terminal, plain text to pipes, tables at natural width."""

from __future__ import annotations

import io

from neuron_spec.cli.term import Console, Table, escape, render_markup, visible_len


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_markup_becomes_ansi_with_colour_and_nothing_without():
    text = "[bold red]FAIL[/]: 2 error(s), [dim]see docs[/dim]"
    assert render_markup(text, colour=False) == "FAIL: 2 error(s), see docs"
    coloured = render_markup(text, colour=True)
    assert coloured.startswith("\x1b[1;31mFAIL\x1b[0m") and "\x1b[2msee docs\x1b[0m" in coloured


def test_brackets_that_are_not_styles_are_text():
    for text in ("buckets [512, 256]", "list[int]", "[warning] x", "a [/] b"):
        assert render_markup(text, colour=False) == text.replace("[/]", "")
    assert render_markup("[draft]", colour=True) == "[draft]"


def test_escaped_text_is_shown_as_written():
    for text in ("[bold]not bold[/bold]", "C:\\[red]", "[dim] and [/]"):
        assert render_markup(escape(text), colour=True) == text
        assert visible_len(escape(text)) == len(text)


def test_nested_styles_restore_the_outer_one():
    out = render_markup("[bold]a [red]b[/red] c[/bold]", colour=True)
    assert out == "\x1b[1ma \x1b[31mb\x1b[0m\x1b[1m c\x1b[0m"


def test_a_table_aligns_columns_and_ignores_markup_widths():
    t = Table()
    t.add_column("name")
    t.add_column("value", justify="right")
    t.add_row("[bold]alpha[/bold]", "1")
    t.add_row("b", "[red]22.5[/red]")
    lines = [render_markup(ln, colour=False) for ln in t.lines()]
    assert len({len(ln) for ln in lines}) == 1  # a rectangle
    assert lines[1] == "┃ name  ┃ value ┃"
    assert lines[3] == "│ alpha │     1 │" and lines[4] == "│ b     │  22.5 │"


def test_a_plain_table_has_no_box():
    t = Table(show_header=False, box=False)
    t.add_column(style="dim")
    t.add_column()
    t.add_row("tokens", "64 new")
    t.add_row("time to first token", "12 ms")
    assert [render_markup(ln, colour=False) for ln in t.lines()] == [
        "tokens               64 new",
        "time to first token  12 ms",
    ]


def test_pipes_get_no_escape_codes_and_terminals_do():
    pipe, tty = io.StringIO(), Tty()
    for stream, colour in ((pipe, False), (tty, True)):
        Console(stream, colour).print("[green]Fix:[/green] raise tp", "[x]")
    assert pipe.getvalue() == "Fix: raise tp [x]\n"
    assert "\x1b[32m" in tty.getvalue()


def test_status_writes_nothing_to_a_pipe_and_erases_itself_on_a_terminal():
    pipe, tty = io.StringIO(), Tty()
    for stream in (pipe, tty):
        with Console(stream, colour=False).status("loading models...") as status:
            status.update("compiling target")
    assert pipe.getvalue() == ""
    assert "compiling target" in tty.getvalue() and tty.getvalue().endswith("\r\x1b[2K")
