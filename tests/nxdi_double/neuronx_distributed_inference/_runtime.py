"""What a process shares: compile and load events, visible to tests ("a second run loads without
compiling")."""

from __future__ import annotations

EVENTS: list[tuple[str, str]] = []  # ("compile" | "load", directory)


def reset() -> None:
    EVENTS.clear()
