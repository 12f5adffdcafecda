#!/usr/bin/env bash
# Install everything the tests need into .venv (once), then run lint, types and the test suite.
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k preflight # extra arguments go to pytest
set -euo pipefail
source "$(dirname "$0")/_env.sh"
cd "$ns_root"
venv="$ns_venv"  # the same environment as scripts/launch.sh, plus the dev tools
ns_env "$venv" "dev,$ns_user_extras" torch
ns_log "ruff check"
"$venv/bin/ruff" check neuron_spec tests benchmarks examples
ns_log "ruff format --check"
"$venv/bin/ruff" format --check neuron_spec tests benchmarks examples
ns_log "mypy"
"$venv/bin/mypy" neuron_spec
ns_log "pytest"
NEURON_SPEC_REQUIRE_TORCH=1 "$venv/bin/python" -m pytest "$@"
