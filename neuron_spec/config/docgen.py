"""Generate the field reference of docs/configuration.md from the config models."""

from __future__ import annotations

from .schema import FieldSpec, Nested, Nullable, Record
from .spec import DeploymentSpec

BEGIN = "<!-- BEGIN GENERATED FIELD REFERENCE (python -m neuron_spec.config.docgen) -->"
END = "<!-- END GENERATED FIELD REFERENCE -->"


def _default(field: FieldSpec) -> str:
    if field.required:
        return "required"
    value = field.default
    if isinstance(value, Record):
        return "-"
    if isinstance(value, tuple):
        value = value[0] if len(value) == 1 else list(value)
    return "null" if value is None else f"`{value}`"


def field_rows(model: type[Record] = DeploymentSpec, prefix: str = "") -> list[str]:
    rows = []
    for field in model.field_specs():
        path = f"{prefix}{field.name}"
        kind = field.kind.inner if isinstance(field.kind, Nullable) else field.kind
        if isinstance(kind, Nested):
            section = kind.record
            what = "section or null" if kind is not field.kind else "section"
            meaning = (field.description or section.__doc__ or "").replace("|", "\\|")
            rows.append(f"| `{path}` | {what} | {_default(field)} | {meaning} |")
            rows.extend(field_rows(section, path + "."))
            continue
        desc = field.description.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{path}` | {field.kind.name} | {_default(field)} | {desc} |")
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
        rewrite(sys.argv[1])  # python -m neuron_spec.config.docgen docs/configuration.md
    else:
        print(reference())
