"""The package's shape, checked from its source with `ast`: subpackages by layer, each importing
only from the layers below it (or its own); no import cycle; no backend importing another
backend; no module importing another module's private name; light package `__init__` files.
The layers, bottom to top, are listed in LAYERS (and in each package's docstring)."""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "neuron_spec"
LAYERS = [
    "errors",
    "util",
    "config",
    "host",
    "sources",
    "engine",
    "backends",
    "preflight",
    "planning",
    "serving",
    "deploy",
    "cli",
    "__main__",
]
RANK = {name: i for i, name in enumerate(LAYERS)}
BACKEND_FAMILIES = ("reference", "neuronx", "nxdi")
# modules every package __init__ may import: nothing that pulls in torch, transformers or boto3
HEAVY = {"torch", "transformers", "boto3", "botocore", "starlette", "uvicorn", "numpy"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _target(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@functools.cache  # the checks below read every module: parsed once
def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"))


def imports(name: str) -> list[tuple[str, list[str], bool, int]]:
    """(imported module, names taken from it, only under TYPE_CHECKING, line) per import."""
    path = MODULES[name]
    tree = _tree(name)
    typing_only = _type_checking_lines(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _target(node, name, path.name == "__init__.py")
            if not target.startswith("neuron_spec"):
                continue
            names = [a.name for a in node.names]
            modules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            symbols = [n for n in names if f"{target}.{n}" not in MODULES]
            for m in modules:
                out.append((m, [], node.lineno in typing_only, node.lineno))
            if symbols or not modules:
                out.append((target, symbols, node.lineno in typing_only, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("neuron_spec"):
                    out.append((alias.name, [], node.lineno in typing_only, node.lineno))
    return out


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def family(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) >= 3 and parts[1] == "backends" and parts[2] in BACKEND_FAMILIES:
        return parts[2]
    return None


def test_every_module_is_in_a_layer():
    stray = sorted({layer(m) for m in MODULES} - set(RANK) - {"__init__"})
    assert not stray, f"modules outside the layers {LAYERS}: {stray}"


def test_no_import_runs_up_a_layer():
    upward = [
        f"{src} (line {line}) imports {dst}"
        for src in MODULES
        for dst, _names, _typing, line in imports(src)
        if layer(dst) != "__init__" and RANK[layer(dst)] > RANK.get(layer(src), len(LAYERS))
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph: dict[str, set[str]] = defaultdict(set)
    for src in MODULES:
        for dst, _names, typing_only, _line in imports(src):
            if not typing_only and dst in MODULES and dst != src:
                graph[src].add(dst)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return found


def test_no_backend_imports_another_backend():
    crossing = [
        f"{src} imports {dst}"
        for src in MODULES
        for dst, _names, _typing, _line in imports(src)
        if family(src) and family(dst) and family(src) != family(dst)
    ]
    shared = [
        f"{src} (shared by the backends) imports {dst}"
        for src in MODULES
        for dst, _names, typing_only, _line in imports(src)
        if src.startswith("neuron_spec.backends.")
        and not family(src)
        and family(dst)
        and not typing_only
    ]
    assert not crossing + shared, "\n".join(crossing + shared)


def test_no_module_imports_another_modules_private_name():
    private = [
        f"{src} (line {line}) imports {dst}.{n}"
        for src in MODULES
        for dst, names, _typing, line in imports(src)
        for n in names
        if n.startswith("_") and not n.startswith("__") and dst != src
    ]
    attributes = []
    for src in MODULES:
        bound = _module_aliases(src)
        for node in ast.walk(_tree(src)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                attributes.append(
                    f"{src} (line {node.lineno}) uses {bound[node.value.id]}.{node.attr}"
                )
    assert not private + attributes, "\n".join(private + attributes)


def _module_aliases(src: str) -> dict[str, str]:
    """Local names bound to other neuron_spec modules by `import` or `from pkg import mod`."""
    path = MODULES[src]
    out = {}
    for node in ast.walk(_tree(src)):
        if isinstance(node, ast.ImportFrom):
            target = _target(node, src, path.name == "__init__.py")
            for a in node.names:
                if f"{target}.{a.name}" in MODULES:
                    out[a.asname or a.name] = f"{target}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES and a.asname:
                    out[a.asname] = a.name
    return out


@pytest.mark.parametrize(
    "init", sorted(n for n, p in MODULES.items() if p.name == "__init__.py"), ids=str
)
def test_package_init_files_stay_light(init):
    """An __init__ imports nothing at module level but light modules of its own package."""
    tree = ast.parse(MODULES[init].read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    heavy = [
        ast.unparse(n)
        for n in top
        if (isinstance(n, ast.Import) and {a.name.split(".")[0] for a in n.names} & HEAVY)
        or (
            isinstance(n, ast.ImportFrom)
            and n.level == 0
            and (n.module or "").split(".")[0] in HEAVY
        )
        or (isinstance(n, ast.ImportFrom) and n.level > 0 and n.module not in (None,))
    ]
    assert not heavy, f"{init} imports at module level: {heavy}"
