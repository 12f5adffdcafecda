"""The test suite itself: a core-only install (no torch) must collect cleanly, so every module
that imports torch at the top, directly or through the Neuron fixtures, is listed in
conftest._TORCH_MODULES."""

from __future__ import annotations

import ast
from pathlib import Path

from . import conftest

HEAVY = {"torch", "transformers"}
TESTS = Path(__file__).parent
PACKAGE = TESTS.parent / "neuron_spec"


def _top_level_imports(path: Path) -> set[str]:
    """Dotted names a file imports at its top level (not under TYPE_CHECKING or in a function),
    relative imports resolved: `tests.x` for the test helpers, `neuron_spec.x.y` for the package."""
    if path.is_relative_to(PACKAGE):
        parts = ["neuron_spec", *path.relative_to(PACKAGE).with_suffix("").parts]
    else:
        parts = ["tests", path.stem]
    if parts[-1] == "__init__":
        parts.append("_")
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)  # `from . import x`
    return names


def _file_of(name: str) -> Path | None:
    top, *rest = name.split(".")
    root = {"neuron_spec": PACKAGE, "tests": TESTS}.get(top)
    if root is None:
        return None
    path = root.joinpath(*rest)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _needs_torch(path: Path, seen: dict[Path, bool]) -> bool:
    """Whether importing the file imports torch or transformers, through any chain of the
    package's and the test helpers' top-level imports (a parent package's __init__ included)."""
    if path in seen:
        return seen[path]
    seen[path] = False
    names = _top_level_imports(path)
    files: set[Path] = set()
    for name in names:
        parts = name.split(".")
        files.update(f for i in range(1, len(parts) + 1) if (f := _file_of(".".join(parts[:i]))))
    seen[path] = any(n.split(".")[0] in HEAVY for n in names) or any(
        _needs_torch(f, seen) for f in files - {path}
    )
    return seen[path]


def test_every_module_that_needs_torch_is_listed():
    seen: dict[Path, bool] = {}
    needs = sorted(p.name for p in TESTS.glob("test_*.py") if _needs_torch(p, seen))
    assert "test_engine.py" in needs, "the scan missed the engine's tests: it is broken"
    assert "test_config.py" not in needs, "the scan thinks the config needs torch: it is broken"
    missing = [name for name in needs if name not in conftest._TORCH_MODULES]
    assert not missing, f"add to conftest._TORCH_MODULES: {missing}"


# --- the fast loop: `pytest -m "not slow"` starts no process and loads no real model ----------

# Names that start a process or reach the real model, wherever a test uses them: itself, through
# a helper or fixture of its module or of conftest.py, or through a name imported from another
# test module (test_serve_batch once took its Server from test_serve).
STARTS_OR_LOADS = {
    "subprocess", "Popen", "fork", "forkpty", "posix_spawn", "spawnv", "execv", "system",
    "multiprocessing", "create_subprocess_exec", "create_subprocess_shell",
    "demo_checkpoint", "fetch_demo_checkpoint", "fetch_demo_gguf", "demo_gguf_path",
}  # fmt: skip


class _Module:
    def __init__(self, path: Path):
        self.tree = ast.parse(path.read_text(encoding="utf-8"))
        self.defs = {
            n.name: n
            for n in self.tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        self.imported: dict[str, tuple[str, str]] = {}  # name -> (test module, its name)
        for n in self.tree.body:
            if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module:
                for a in n.names:
                    self.imported[a.asname or a.name] = (n.module, a.name)

    def marked_slow(self) -> bool:
        for n in self.tree.body:
            if isinstance(n, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets
            ):
                return _says_slow(n.value)
        return False


def _says_slow(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "slow" for n in ast.walk(node))


def _used_names(node: ast.AST) -> set[str]:
    names: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            names.add(n.id)
        elif isinstance(n, ast.Attribute):
            names.add(n.attr)
        elif isinstance(n, ast.arg):  # a fixture a test or fixture asks for
            names.add(n.arg)
    return names


def _reaches(modules: dict[str, _Module], module: str, node: ast.AST) -> str | None:
    """The first name in STARTS_OR_LOADS that `node` uses, directly or through the helpers,
    fixtures and imported names it uses."""
    seen: set[tuple[str, str]] = set()
    todo = [(module, node)]
    while todo:
        mod, current = todo.pop()
        for name in sorted(_used_names(current)):
            if name in STARTS_OR_LOADS:
                return name
            here = modules[mod]
            for target_mod, target in (
                (mod, here.defs.get(name)),
                ("conftest", modules["conftest"].defs.get(name)),
                *(
                    [(here.imported[name][0], modules[here.imported[name][0]].defs.get(
                        here.imported[name][1]))]
                    if name in here.imported and here.imported[name][0] in modules
                    else []
                ),
            ):  # fmt: skip
                if target is not None and (target_mod, name) not in seen:
                    seen.add((target_mod, name))
                    todo.append((target_mod, target))
    return None


def _tests(module: _Module):
    for n in module.tree.body:
        if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"):
            yield n.name, n, any(_says_slow(d) for d in n.decorator_list)
        elif isinstance(n, ast.ClassDef) and n.name.startswith("Test"):
            class_slow = any(_says_slow(d) for d in n.decorator_list)
            for m in n.body:
                if isinstance(m, ast.FunctionDef) and m.name.startswith("test_"):
                    slow = class_slow or any(_says_slow(d) for d in m.decorator_list)
                    yield f"{n.name}.{m.name}", m, slow


def test_every_test_that_starts_a_process_or_loads_the_real_model_is_slow():
    here = Path(__file__).parent
    modules = {p.stem: _Module(p) for p in here.glob("*.py")}
    checked, unmarked = 0, []
    for name, module in sorted(modules.items()):
        if not name.startswith("test_"):
            continue
        module_slow = module.marked_slow()
        for test, node, slow in _tests(module):
            what = _reaches(modules, name, node)
            if what is None:
                continue
            checked += 1
            if not (module_slow or slow):
                unmarked.append(f"{name}.py::{test} (uses {what})")
    assert checked > 20, "the scan found almost nothing: it is broken"
    assert not unmarked, (
        "mark these slow (pytest.mark.slow), or keep their work in this process on a tiny "
        f"checkpoint: {unmarked}"
    )
