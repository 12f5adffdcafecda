"""A long-running server's memory stays flat: benchmarks/serve_memory.py against a server
process on a tiny pair built in the test (1000 requests at batch 4; a 768 MiB body declared
and streamed, then chunked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .tiny_model import tiny_pair_yaml

pytestmark = [pytest.mark.reference, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def test_memory_is_flat_over_1000_requests_and_a_768_mib_body(tmp_path):
    config = tiny_pair_yaml(tmp_path)
    script = ROOT / "benchmarks" / "serve_memory.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--config", str(config), "--requests", "1000"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["statuses"] == {"200": 1000}
    assert abs(report["rss_growth_mb"]) < 20, report
    for body in report["bodies"]:
        assert body["status"] == "413", body
        assert body["peak_growth_mb"] < 20, body
        assert body["bytes_the_server_took"] < 64 << 20, body
