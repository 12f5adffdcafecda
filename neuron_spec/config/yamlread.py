"""YAML from outside, read with bounds: plain data only (SafeLoader), at most MAX_BYTES of text,
MAX_DEPTH levels of nesting and MAX_NODES nodes once aliases are expanded (an "alias bomb" of a
few hundred bytes is refused before it is expanded), strings without NUL, lone surrogates or
more than MAX_STRING characters. Every problem is a located ConfigProblem, never a crash.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import ConfigError, ConfigProblem
from ..util.safeio import printable

MAX_BYTES = 1 << 20  # a real config is a few kilobytes
MAX_DEPTH = 32
MAX_NODES = 10_000
MAX_STRING = 4096
SHOW_CHARS = 60


def show(value: Any) -> str:
    """A bounded repr for messages: huge ints and long strings are summarised, not printed."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > 128:
            return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
        return repr(value)
    if isinstance(value, (list, tuple)):
        if len(value) > 8:
            return f"a list of {len(value)} item(s)"
        return _clip("[" + ", ".join(show(v) for v in value) + "]")  # each item bounded too
    if isinstance(value, dict):
        return f"a mapping of {len(value)} key(s)"
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _clip(repr(text) if isinstance(value, str) else text)


def _clip(text: str) -> str:
    return text if len(text) <= SHOW_CHARS else text[: SHOW_CHARS - 1] + "…"


class _Located(Exception):
    def __init__(self, mark: Any, message: str, fix: str | None = None):
        super().__init__(message)
        self.mark, self.message = mark, message
        self.fix = fix


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Located(
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                    f"the YAML is nested more than {MAX_DEPTH} levels deep",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        """PyYAML's constructor, with every exception it raises for a value (a tag applied to
        what it cannot read: `!!float` alone is an IndexError, `!!timestamp maybe` an
        AttributeError, ...) turned into a located problem naming the tag."""
        try:
            return super().construct_object(node, deep=deep)
        except (_Located, yaml.YAMLError):
            raise
        except Exception as exc:  # a value's every failure is the file's, located
            what = show(node.value) if isinstance(node, yaml.ScalarNode) else "this collection"
            detail = _clip(printable(str(exc).splitlines()[0]) if str(exc) else "")
            reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            if _tagged(node.start_mark):
                message = f"the tag {show_tag(node.tag)} cannot read {what} ({reason})"
                raise _Located(node.start_mark, message, TAG_FIX) from None
            kind = show_tag(node.tag).removeprefix("!!")  # resolved from its look: 2024-13-45
            message = f"YAML reads {what} as a {kind}, and it is not a valid one ({reason})"
            raise _Located(node.start_mark, message, QUOTE_FIX) from None


def _tagged(mark: Any) -> bool:
    """Whether the node at `mark` was written with a tag (`!!float 1`), not resolved from how
    its text looks (`2024-01-01` is a timestamp to YAML)."""
    buffer, at = getattr(mark, "buffer", None), getattr(mark, "pointer", None)
    return isinstance(buffer, str) and isinstance(at, int) and buffer[at : at + 1] == "!"


def show_tag(tag: str) -> str:
    """A node's tag as written (`!!float` for tag:yaml.org,2002:float), escaped and bounded."""
    return _clip(printable(tag.replace(_STANDARD_TAGS, "!!", 1), SHOW_CHARS))


_STANDARD_TAGS = "tag:yaml.org,2002:"


def _count(node: Any, memo: dict[int, int], stack: set[int]) -> int:
    """Nodes once every alias is expanded, without expanding them (memoised by node)."""
    key = id(node)
    if key in stack:
        raise _Located(node.start_mark, "an alias refers to the collection that contains it")
    if key in memo:
        return memo[key]
    stack.add(key)
    total = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _count(k, memo, stack) + _count(v, memo, stack)
            if total > MAX_NODES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _count(item, memo, stack)
            if total > MAX_NODES:
                break
    stack.discard(key)
    memo[key] = total
    if total > MAX_NODES:
        raise _Located(
            node.start_mark,
            f"this expands to more than {MAX_NODES} values (aliases repeating aliases?); "
            "no config needs that many",
        )
    return total


SYNTAX_FIX = "correct the YAML at that position (check indentation, colons, quotes and tags)."
BOUND_FIX = "write the config out plainly: a real one is a few dozen short values."
QUOTE_FIX = "quote it if it is text (e.g. '2024-13-45'), or write a valid value."
TAG_FIX = (
    "write the plain value without a tag (the word starting with '!'): a config needs none, "
    "e.g. `seed: 0`, `top_p: 0.9`, `model: llama-2-7b`."
)


def _problem(
    message: str, file: str | None, line: int, column: int | None = None, fix: str = SYNTAX_FIX
) -> ConfigError:
    return ConfigError([ConfigProblem("", message + ".", fix, file, line, column)])


def _yaml_problem(exc: yaml.YAMLError, text: str, file: str | None) -> ConfigError:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return _problem(
            f"YAML syntax error: character {exc.character!r} is not allowed", file, line
        )
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {_clip(str(problem))}"
    if context:
        message += f" ({_clip(str(context))})"
    if mark is None:
        return _problem(message, file, 1)
    return _problem(message, file, mark.line + 1, mark.column + 1)


def _walk(
    node: yaml.Node, prefix: str, out: dict[str, tuple[int, int]], dupes: list[tuple[str, int, int]]
) -> None:
    out.setdefault(prefix, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            path = f"{prefix}.{key}" if prefix else key
            if key in seen:
                dupes.append((path, key_node.start_mark.line + 1, key_node.start_mark.column + 1))
            seen.add(key)
            out[path] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _walk(value_node, path, out, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{prefix}[{i}]", out, dupes)


def _bad_string(value: str) -> str | None:
    if "\x00" in value:
        return "holds a NUL character"
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return "holds a lone surrogate (not valid Unicode)"
    if len(value) > MAX_STRING:
        return f"is {len(value)} characters long (at most {MAX_STRING})"
    return None


def _check_strings(node: yaml.Node, file: str | None) -> None:
    """Scalars (keys too) that no file name, model name or flag can be."""
    stack = [node]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.ScalarNode):
            why = _bad_string(str(n.value))
            if why:
                raise _problem_located(f"the value {show(n.value)} {why}", file, n.start_mark)
        elif isinstance(n, yaml.MappingNode):
            stack.extend(x for pair in n.value for x in pair)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)


def _problem_located(
    message: str, file: str | None, mark: Any, fix: str = BOUND_FIX, path: str = ""
) -> ConfigError:
    line, column = mark.line + 1, mark.column + 1
    return ConfigError([ConfigProblem(path, message + ".", fix, file, line, column)])


def _path_at(root: yaml.Node | None, mark: Any) -> str:
    """The dotted path of the node (value or key) that starts at `mark`, "" when none does.
    Each node is visited once, so aliases and cycles cost nothing."""
    if root is None or mark is None:
        return ""
    where = (mark.line, mark.column)
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if (node.start_mark.line, node.start_mark.column) == where:
            return path
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                child = f"{path}.{name}" if path else name
                stack += [(value, child), (key, child)]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
    return ""


def _construct_problem(
    exc: yaml.constructor.ConstructorError, file: str | None, path: str
) -> ConfigError:
    """A value PyYAML cannot build (an unknown tag, a tag on the wrong kind of node), at the
    node's own position and field."""
    problem = printable(str(exc.problem or "").splitlines()[0] if exc.problem else "")
    message = f"this YAML value cannot be read: {_clip(problem)}"
    if exc.context:
        message += f" ({_clip(printable(str(exc.context)))})"
    return _problem_located(message, file, exc.problem_mark, TAG_FIX, path)


def parse_yaml(text: str, file: str | None = None) -> tuple[Any, dict[str, tuple[int, int]]]:
    """Parse YAML safely and within bounds, returning data and a path -> position map.

    Duplicate keys, which PyYAML would silently resolve to the last one, are errors.
    """
    if len(text) > MAX_BYTES:
        raise _problem(
            f"the file is {len(text)} characters long; a config is a few KB",
            file,
            1,
            None,
            BOUND_FIX,
        )
    try:
        loader = _BoundedLoader(text)  # its reader refuses control characters at once
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, text, file) from None
    node = None
    try:
        node = loader.get_single_node()
        if node is not None:
            _count(node, {}, set())
            _check_strings(node, file)
        data = loader.construct_document(node) if node is not None else None
    except _Located as exc:
        fix, path = exc.fix or BOUND_FIX, _path_at(node, exc.mark)
        raise _problem_located(exc.message, file, exc.mark, fix, path) from None
    except yaml.constructor.ConstructorError as exc:
        if exc.problem_mark is None:
            raise _yaml_problem(exc, text, file) from None
        raise _construct_problem(exc, file, _path_at(node, exc.problem_mark)) from None
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, text, file) from None
    except RecursionError:
        raise _problem("the YAML is nested too deeply", file, 1, None, BOUND_FIX) from None
    finally:
        loader.dispose()
    positions: dict[str, tuple[int, int]] = {}
    if node is None:
        return data, positions
    dupes: list[tuple[str, int, int]] = []
    _walk(node, "", positions, dupes)
    if dupes:
        raise DuplicateKeys(
            data,
            positions,
            [
                ConfigProblem(
                    path,
                    "this key appears twice in the same mapping; YAML would silently keep "
                    "the last one.",
                    "delete one of them.",
                    file,
                    line,
                    col,
                )
                for path, line, col in dupes
            ],
        )
    return data, positions


class DuplicateKeys(ConfigError):
    """Keys repeated in a mapping. Carries what was parsed (the last value of each repeated
    key, as YAML keeps it) so that the config's other problems can be reported with these."""

    def __init__(self, data: Any, positions: dict[str, tuple[int, int]], problems: list[Any]):
        super().__init__(problems)
        self.data, self.positions = data, positions
