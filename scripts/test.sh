#!/usr/bin/env bash
# Install everything the tests need into .venv (once), then run lint, types and the test suite:
# the full loop, every test (the `slow` ones too) in parallel workers, one per CPU.
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k preflight # extra arguments go to pytest
# The fast loop, after every change (no process started, no real model loaded; minutes):
#   .venv/bin/python -m pytest -m "not slow"
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$ns_root"
venv="$ns_venv"  # the same environment as scripts/launch.sh, plus the dev tools
ns_env "$venv" "dev,$ns_user_extras" torch
# Byte-compile the environment's libraries once (only changed files are compiled again). pip
# leaves that to the first import, and where PYTHONDONTWRITEBYTECODE=1 (many container images)
# it is never written: every test worker and every process a test starts would compile torch and
# transformers again, about 8 s of CPU each.
"$venv/bin/python" -m compileall -q -j 0 "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
ns_log "ruff check"
"$venv/bin/ruff" check neuron_spec tests benchmarks examples
ns_log "ruff format --check"
"$venv/bin/ruff" format --check neuron_spec tests benchmarks examples
ns_log "mypy"
"$venv/bin/mypy" neuron_spec
# One worker per CPU (at most 8: each holds torch and tiny models; NEURON_SPEC_TEST_WORKERS to
# choose). --dist loadfile: a module's tests share a worker, so its fixtures (a server, a tiny
# checkpoint) are built once.
workers="${NEURON_SPEC_TEST_WORKERS:-$(n="$(nproc 2>/dev/null || echo 2)"; echo $((n > 8 ? 8 : n)))}"
ns_log "pytest ($workers parallel workers)"
NEURON_SPEC_REQUIRE_ALL=1 "$venv/bin/python" -m pytest -n "$workers" --dist loadfile "$@"
