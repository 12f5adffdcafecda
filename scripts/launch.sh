#!/usr/bin/env bash
# neuron-spec launcher.
#   bash scripts/launch.sh [CONFIG]
# Sets up a virtual environment (once), then runs the preflight and the plan of CONFIG
# (default: the Llama-2-70B + 7B trn1.32xlarge config). It stops on any preflight error,
# before anything is loaded.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
config="${1:-$ns_root/configs/trn1-llama2-70b-7b-bf16.yaml}"
venv="${NEURON_SPEC_VENV:-$ns_root/.venv-launch}"
ns_env "$venv" ""
ns="$venv/bin/neuron-spec"
ns_log "preflight: $config"
"$ns" validate "$config"
ns_log "plan: $config"
"$ns" plan "$config"
