#!/usr/bin/env bash
# neuron-spec launcher.
#   bash scripts/launch.sh                      # the CPU demo: SmolLM2-135M on the reference backend
#   bash scripts/launch.sh CONFIG [-- ARGS...]  # preflight, plan, then generate with CONFIG
# Sets up a virtual environment once (.venv-launch), runs the preflight and stops on any error
# before anything is loaded, then generates. ARGS after -- go to `neuron-spec generate`
# (default: a sample prompt).
set -euo pipefail
source "$(dirname "$0")/_env.sh"

config=""
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  config="$1"; shift
fi
[ "${1:-}" = "--" ] && shift
extra=("$@")
[ -n "$config" ] || config="$ns_root/configs/demo-cpu.yaml"
[ -f "$config" ] || { ns_log "no such config: $config"; exit 2; }

venv="${NEURON_SPEC_VENV:-$ns_root/.venv-launch}"
backend="$(sed -n 's/^backend:[[:space:]]*\([a-z]*\).*/\1/p' "$config" | head -n1)"
if [ "$backend" = "reference" ]; then
  ns_env "$venv" "reference" torch
  if grep -q "neuron-spec/models/smollm2-135m-instruct" "$config"; then
    ns_log "demo model: SmolLM2-135M-Instruct (fetched once into ~/.cache/neuron-spec/models)"
    "$venv/bin/python" -m neuron_spec.models > /dev/null
  fi
else
  ns_env "$venv" ""
fi
ns="$venv/bin/neuron-spec"

ns_log "preflight: $config"
"$ns" validate "$config" || { ns_log "preflight failed: nothing was loaded"; exit 1; }
if [ "$backend" != "reference" ]; then
  ns_log "plan: $config"
  "$ns" plan "$config"
  ns_log "generation on Neuron (transformers-neuronx) is not implemented yet; the preflight and plan above are what runs today"
  exit 0
fi
if [ ${#extra[@]} -eq 0 ]; then
  extra=(--prompt "Speculative decoding makes large language models faster because")
fi
ns_log "generate"
"$ns" generate "$config" "${extra[@]}"
