"""The test suite itself: a core-only install (no torch) must collect cleanly, so every module
that imports torch at the top, directly or through the Neuron fixtures, is listed in
conftest._TORCH_MODULES."""

from __future__ import annotations

import ast
from pathlib import Path

from . import conftest

HEAVY = {"torch", "transformers"}
HEAVY_LOCAL = {"neuron_fixtures"}  # tests/neuron_fixtures.py imports torch at the top


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_that_needs_torch_is_listed():
    here = Path(__file__).parent
    needs = sorted(
        p.name for p in here.glob("test_*.py") if _top_level_imports(p) & (HEAVY | HEAVY_LOCAL)
    )
    assert needs, "the scan found no torch modules: it is broken"
    missing = [name for name in needs if name not in conftest._TORCH_MODULES]
    assert not missing, f"add to conftest._TORCH_MODULES: {missing}"
