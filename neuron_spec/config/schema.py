"""Typed, frozen config records declared as data.

A record is a frozen keyword-only dataclass whose fields say, through `spec(...)`, what they
accept: a Kind (string, integer with bounds, one of some choices, a nested record, ...), an
optional default, a description, and checks. `from_data` turns parsed YAML into a record,
collecting every problem with its location (unknown keys, missing keys, wrong types, values out
of range, failed checks) before raising `Invalid`; constructing a record directly validates the
same way. Types are strict, as a config should be: "32" is not an integer and `true` is not a
number. `json_schema` describes a record for editors.

This is all config.py needs of a validation library, and it imports in a millisecond, which is
what keeps `validate` and `plan` quick.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

Loc = tuple[str | int, ...]
Check = Callable[[Any], Any]
R = TypeVar("R", bound="Record")
_MISSING: Any = dataclasses.MISSING


@dataclass(frozen=True)
class Issue:
    """One problem with one value. kind: unknown (key), missing (key), mapping (expected one),
    type (wrong type), range (outside the bounds) or value (a check refused it, saying why)."""

    loc: Loc
    kind: str
    message: str
    fix: str = ""
    value: Any = None
    record: type[Record] | None = None  # for unknown/missing/mapping: the record concerned
    choices: tuple[str, ...] = ()  # for a value that must be one of these


class Invalid(ValueError):
    """Every problem found in one validation."""

    def __init__(self, issues: Sequence[Issue]):
        self.issues = list(issues)
        super().__init__("; ".join(f"{dotted(i.loc) or 'value'}: {i.message}" for i in issues))


def dotted(loc: Loc) -> str:
    """("target", "n_positions", 1) -> "target.n_positions[1]"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Wrong(Exception):
    """Raised by a Kind: the value has the wrong type, is out of range, or was refused."""

    def __init__(self, message: str, kind: str = "type", choices: tuple[str, ...] = ()):
        super().__init__(message)
        self.message, self.kind, self.choices = message, kind, choices


# --- kinds: what a field accepts ---------------------------------------------------------------


class Kind:
    name = "value"

    def parse(self, value: Any, loc: Loc) -> Any:
        raise NotImplementedError  # every kind below defines it

    def schema(self) -> dict[str, Any]:
        return {}


class Str(Kind):
    name = "str"

    def parse(self, value: Any, loc: Loc) -> Any:
        if not isinstance(value, str):
            raise _Wrong("expected text")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}


class Bool(Kind):
    name = "true or false"

    def parse(self, value: Any, loc: Loc) -> Any:
        if not isinstance(value, bool):
            raise _Wrong("expected true or false")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class _Bounds:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def check(self, value: float) -> None:
        if self.ge is not None and not value >= self.ge:
            raise _Wrong(f"must be at least {_num(self.ge)}", "range")
        if self.gt is not None and not value > self.gt:
            raise _Wrong(f"must be greater than {_num(self.gt)}", "range")
        if self.le is not None and not value <= self.le:
            raise _Wrong(f"must be at most {_num(self.le)}", "range")

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, bound in (("minimum", self.ge), ("exclusiveMinimum", self.gt)):
            if bound is not None:
                out[key] = bound
        if self.le is not None:
            out["maximum"] = self.le
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else str(x)


# Every integer a config holds ends up in a C integer somewhere (torch, the runtime, JSON
# readers): one outside 64 bits is an error here, not an overflow three layers down.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Int(Kind):
    name = "int"

    def __init__(self, ge: int | None = INT64_MIN, le: int | None = INT64_MAX):
        self.bounds = _Bounds(ge=ge, le=le)

    def parse(self, value: Any, loc: Loc) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Wrong("expected an integer")
        self.bounds.check(value)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", **self.bounds.schema()}


class Float(Kind):
    name = "float"

    def __init__(self, ge: float | None = None, gt: float | None = None, le: float | None = None):
        self.bounds = _Bounds(ge=ge, gt=gt, le=le)

    def parse(self, value: Any, loc: Loc) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Wrong("expected a number")
        if isinstance(value, float) and math.isnan(value):
            raise _Wrong("expected a number, not NaN", "range")
        self.bounds.check(value)  # exact for ints of any size: compared before converting
        try:
            return float(value)
        except OverflowError:
            raise _Wrong("is too large for a number", "range") from None

    def schema(self) -> dict[str, Any]:
        return {"type": "number", **self.bounds.schema()}


class Choice(Kind):
    def __init__(self, *choices: str):
        self.choices = choices
        self.name = "one of " + ", ".join(f"`{c}`" for c in choices)

    def parse(self, value: Any, loc: Loc) -> Any:
        if not isinstance(value, str) or value not in self.choices:
            expected = "expected one of " + ", ".join(repr(c) for c in self.choices)
            raise _Wrong(expected, choices=self.choices)
        return value

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.choices)}


class Nullable(Kind):
    """None, or what `inner` accepts."""

    def __init__(self, inner: Kind):
        self.inner = inner
        self.name = f"{inner.name} or null"

    def parse(self, value: Any, loc: Loc) -> Any:
        return None if value is None else self.inner.parse(value, loc)

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [self.inner.schema(), {"type": "null"}]}


class ListOf(Kind):
    def __init__(self, item: Kind):
        self.item = item
        self.name = f"list of {item.name}"

    def parse(self, value: Any, loc: Loc) -> Any:
        if not isinstance(value, list | tuple):
            raise _Wrong(f"expected a {self.name}")
        return [self.item.parse(v, (*loc, i)) for i, v in enumerate(value)]

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": self.item.schema()}


class AnyOf(Kind):
    """The first of `options` that accepts the value."""

    def __init__(self, *options: Kind):
        self.options = options
        self.name = " or ".join(o.name for o in options)

    def parse(self, value: Any, loc: Loc) -> Any:
        for option in self.options:
            try:
                return option.parse(value, loc)
            except _Wrong:
                continue
        raise _Wrong(f"expected {self.name}")

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [o.schema() for o in self.options]}


class Custom(Kind):
    """A function that converts the value or raises ValueError saying why it cannot."""

    def __init__(self, convert: Check, name: str, schema: dict[str, Any]):
        self.convert, self.name, self._schema = convert, name, schema

    def parse(self, value: Any, loc: Loc) -> Any:
        try:
            return self.convert(value)
        except ValueError as exc:
            raise _Wrong(str(exc), "value") from None

    def schema(self) -> dict[str, Any]:
        return dict(self._schema)


class Nested(Kind):
    """A section: a mapping validated as `record`."""

    def __init__(self, record: type[Record]):
        self.record = record
        self.name = "section"

    def parse(self, value: Any, loc: Loc) -> Any:
        if isinstance(value, self.record):
            return value
        return self.record.from_data(value, loc)

    def schema(self) -> dict[str, Any]:
        return self.record.json_schema()


# --- fields and records ------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: Kind
    default: Any
    description: str
    checks: tuple[Check, ...]

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def spec(
    kind: Kind, default: Any = _MISSING, description: str = "", checks: Sequence[Check] = ()
) -> Any:
    """A record field: what it accepts, its default (none: required), what it means."""
    meta = {"kind": kind, "description": description, "checks": tuple(checks)}
    return dataclasses.field(default=default, metadata=meta)


class Record:
    """Base of the config records. Subclasses are @dataclass(frozen=True, kw_only=True)."""

    _fields: ClassVar[dict[type, tuple[FieldSpec, ...]]] = {}

    @classmethod
    def field_specs(cls) -> tuple[FieldSpec, ...]:
        found = Record._fields.get(cls)
        if found is None:
            found = tuple(
                FieldSpec(
                    f.name,
                    f.metadata["kind"],
                    f.default,
                    f.metadata["description"],
                    f.metadata["checks"],
                )
                for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if "kind" in f.metadata
            )
            Record._fields[cls] = found
        return found

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in cls.field_specs()]

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in self.field_specs()}
        parsed, issues = _parse_fields(type(self), values, ())
        if issues:
            raise Invalid(issues)
        for name, value in parsed.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_data(cls: type[R], data: Any, loc: Loc = ()) -> R:
        """Validate plain data (parsed YAML) into this record, or raise Invalid with every
        problem found."""
        if not isinstance(data, Mapping):
            raise Invalid(
                [Issue(loc, "mapping", "expected a mapping of keys", value=data, record=cls)]
            )
        known = {f.name: f for f in cls.field_specs()}
        issues = [
            Issue((*loc, key), "unknown", "unknown key", value=data[key], record=cls)
            for key in data
            if key not in known
        ]
        issues += [
            Issue((*loc, f.name), "missing", "required key is missing", record=cls)
            for f in known.values()
            if f.required and f.name not in data
        ]
        values = {k: v for k, v in data.items() if k in known}
        parsed, more = _parse_fields(cls, values, loc)
        more += cls.data_issues(data, loc)
        if issues or more:
            raise Invalid(issues + more)
        record = cls(**parsed)
        object.__setattr__(record, "_given", frozenset(values))
        related = record.all_relations(loc)
        if related:
            raise Invalid(related)
        return record

    def relations(self, loc: Loc) -> list[Issue]:
        """Problems between this record's fields (each field alone is valid); none here."""
        return []

    @classmethod
    def data_issues(cls, data: Mapping[str, Any], loc: Loc) -> list[Issue]:
        """Problems between keys that can be seen in the data itself, reported with every
        other problem of the data (a key required by another's value); none here."""
        return []

    def all_relations(self, loc: Loc = ()) -> list[Issue]:
        """This record's relations and its nested records'."""
        found = list(self.relations(loc))
        for name, value in self.items():
            if isinstance(value, Record):
                found += value.all_relations((*loc, name))
        return found

    @property
    def keys_given(self) -> frozenset[str]:
        """The keys the data named (from_data); every field for a record built in code."""
        given: frozenset[str] | None = self.__dict__.get("_given")
        return given if given is not None else frozenset(self.field_names())

    def replace(self: R, **changes: Any) -> R:
        """A copy with `changes` validated in; raises Invalid like from_data."""
        record = dataclasses.replace(self, **changes)  # type: ignore[type-var]
        object.__setattr__(record, "_given", self.keys_given | frozenset(changes))
        related = record.all_relations()
        if related:
            raise Invalid(related)
        return record

    def items(self) -> Iterator[tuple[str, Any]]:
        for f in self.field_specs():
            yield f.name, getattr(self, f.name)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        props = {}
        for f in cls.field_specs():
            prop = f.kind.schema()
            if f.description:
                prop["description"] = f.description
            if not f.required and not isinstance(f.default, Record):
                prop["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
            props[f.name] = prop
        out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        required = [f.name for f in cls.field_specs() if f.required]
        if required:
            out["required"] = required
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            out["description"] = cls.__doc__.strip()
        return out


def _parse_fields(
    cls: type[Record], values: Mapping[str, Any], loc: Loc
) -> tuple[dict[str, Any], list[Issue]]:
    parsed: dict[str, Any] = {}
    issues: list[Issue] = []
    fields = {f.name: f for f in cls.field_specs()}
    for name, value in values.items():
        field = fields[name]
        where = (*loc, name)
        try:
            out = field.kind.parse(value, where)
            for check in field.checks if out is not None else ():
                out = check(out)
        except Invalid as exc:
            issues += exc.issues
        except _Wrong as exc:
            issues.append(Issue(where, exc.kind, exc.message, value=value, choices=exc.choices))
        except ValueError as exc:
            issues.append(Issue(where, "value", str(exc), value=value))
        else:
            parsed[name] = out
    return parsed, issues
