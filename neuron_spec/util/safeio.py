"""Reading files that neuron-spec did not necessarily write itself: bounded, never a crash.

Cache manifests, the upload hash memory and doctor recordings live in directories anyone may
have edited, copied or corrupted. Each is read here with a size cap (a 3 GB file is refused,
not read), as a regular file only (a FIFO would block, /dev/zero never ends), decoded strictly
and parsed with every failure - OSError, bad UTF-8, bad JSON, nesting deep enough to exhaust
the parser's recursion, integers past Python's digit limit - turned into `Unreadable` with a
reason a person can act on. Strings that reach a terminal go through `printable` first.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 64 << 20
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class Unreadable(Exception):
    """The file cannot be used; str(exc) says why."""


def read_bytes(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, at most max_bytes (more is Unreadable, nothing beyond is read).
    Symlinks are followed: callers that must stay inside a directory check that first."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise Unreadable(exc.strerror or type(exc).__name__) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable("not a regular file")
        if st.st_size > max_bytes:
            raise Unreadable(f"{st.st_size} bytes, more than the {max_bytes} allowed")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise Unreadable(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise Unreadable(f"more than the {max_bytes} bytes allowed")
    return data


def read_text(path: Path, max_bytes: int, errors: str = "strict") -> str:
    try:
        return read_bytes(path, max_bytes).decode("utf-8", errors)
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 text (byte {exc.start})") from None


def loads(text: str) -> Any:
    """json.loads with its crashes as Unreadable: deep nesting, huge integers, bad syntax."""
    try:
        return json.loads(text)
    except RecursionError:
        raise Unreadable("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() past the digit limit
        raise Unreadable(f"not valid JSON ({str(exc)[:120]})") from None


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    return loads(read_text(path, max_bytes))


def printable(text: str, limit: int = 200) -> str:
    """Text from outside made safe for a terminal: control characters (escape sequences,
    bidi overrides) shown as \\xNN, and at most `limit` characters."""
    clean = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def as_int(value: Any, lo: int = 0, hi: int = 2**63 - 1) -> int | None:
    """An integer from parsed JSON within [lo, hi], or None (bools, floats, strings refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        return None
    return value
