"""Generate the field reference of docs/configuration.md from the config models."""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .config import DeploymentSpec

BEGIN = "<!-- BEGIN GENERATED FIELD REFERENCE (python -m neuron_spec.docgen) -->"
END = "<!-- END GENERATED FIELD REFERENCE -->"


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "null"
    if origin is tuple:
        return "int or list of int"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is PydanticUndefined or isinstance(value, BaseModel):
        return "-"
    if isinstance(value, tuple):
        value = value[0] if len(value) == 1 else list(value)
    return "null" if value is None else f"`{value}`"


def field_rows(model: type[BaseModel] = DeploymentSpec, prefix: str = "") -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.append(f"| `{path}` | section | {_default(field)} | {ann.__doc__ or ''} |")
            rows.extend(field_rows(ann, path + "."))
            continue
        desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{path}` | {_type_name(ann)} | {_default(field)} | {desc} |")
    return rows


def reference() -> str:
    head = ["| field | type | default | meaning |", "|---|---|---|---|"]
    return "\n".join([BEGIN, *head, *field_rows(), END])


def rewrite(path: str) -> None:
    """Replace the generated block of `path` in place (atomically)."""
    import os
    import tempfile

    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + reference() + text[end:]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, path)


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:
        rewrite(sys.argv[1])  # python -m neuron_spec.docgen docs/configuration.md
    else:
        print(reference())
