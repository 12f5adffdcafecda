from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from neuron_spec.catalog import INSTANCES
from neuron_spec.host import HostFacts

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

BASE_CONFIG = """\
instance: trn1.32xlarge
backend: neuronx
target: {model: llama-2-70b, amp: bf16, tp_degree: 32, n_positions: 2048, batch_size: 1}
draft:  {model: llama-2-7b,  amp: bf16, tp_degree: 32, n_positions: 2048, batch_size: 1}
speculation: {draft_tokens: 6, acceptor: lossless}
sampling: {temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0}
generation: {max_new_tokens: 128}
"""


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write YAML text (dedented) to a file and return its path."""
    counter = iter(range(10_000))

    def write(text: str) -> Path:
        path = tmp_path / f"config{next(counter)}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


def host(name: str) -> HostFacts:
    return HostFacts.from_instance(INSTANCES[name])
