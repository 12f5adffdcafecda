#!/usr/bin/env bash
# neuron-spec launcher.
#
#   bash scripts/launch.sh                                  # the CPU demo (SmolLM2-135M)
#   bash scripts/launch.sh [--any-instance] [--skip-doctor] CONFIG [-- GENERATE-ARGS...]
#
# On an Inferentia2/Trainium host (neuron-ls, or the EC2 metadata service, says so):
#   1. finds the Neuron DLAMI's environment for the config's backend by probing
#      /opt/aws_neuronx_venv_* (the library's own environments first: ..._nxd_inference on the
#      2.28-2.31 AMIs, ..._transformers on 2.25) for a Python that imports transformers_neuronx
#      (backend: neuronx) or neuronx_distributed_inference (backend: nxdi), or uses
#      $NEURON_SPEC_NEURON_VENV;
#      installs neuron-spec into it once without touching torch-neuronx; with none, exits 2
#      and says which AMI ships it (or which backend the host's library needs);
#   2. refuses a config written for another instance type (--any-instance to override);
#   3. checks the host with `neuron-spec doctor CONFIG` (Neuron component versions, cores held
#      by other processes, host RAM and disk) and stops on any error (--skip-doctor to override);
#   4. runs the preflight and stops on any error, before anything is loaded;
#   5. exports NEURON_RT_VISIBLE_CORES for the planned core layout, and NEURON_CC_FLAGS and
#      NEURON_COMPILE_CACHE_URL from the config;
#   6. generates (compiling on the first run, loading cached artifacts afterwards).
# Anywhere else it says so and runs the pair on the reference backend (PyTorch + transformers).
# GENERATE-ARGS go to `neuron-spec generate` (default: a sample prompt).
set -euo pipefail
source "$(dirname "$0")/_env.sh"

any_instance=0
skip_doctor=0
config=""
while [ $# -gt 0 ]; do
  case "$1" in
    --any-instance) any_instance=1; shift ;;
    --) shift; break ;;
    --skip-doctor) skip_doctor=1; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) ns_log "unknown option $1 (see --help)"; exit 2 ;;
    *) if [ -z "$config" ]; then config="$1"; shift; else break; fi ;;
  esac
done
extra=("$@")
[ -n "$config" ] || config="$ns_root/configs/demo-cpu.yaml"
[ -f "$config" ] || { ns_log "no such config: $config"; exit 2; }
if [ ${#extra[@]} -eq 0 ]; then
  extra=(--prompt "Speculative decoding makes large language models faster because")
fi
ns_need_python
venv="$ns_venv"  # the same environment as scripts/test.sh

# --- the config, read with neuron-spec's own loader (a located error, exit 2, when it is bad) --
reader="${PYTHON:-python3}"
if ! PYTHONPATH="$ns_root" "$reader" -c "import yaml" 2>/dev/null; then
  ns_env "$venv" ""  # the core dependencies are enough to read a config
  reader="$venv/bin/python"
fi
fields="$(PYTHONPATH="$ns_root${PYTHONPATH:+:$PYTHONPATH}" "$reader" -m neuron_spec.config.spec "$config")" \
  || exit 2
backend="$(printf '%s\n' "$fields" | sed -n 's/^backend=//p')"
want_instance="$(printf '%s\n' "$fields" | sed -n 's/^instance=//p')"

# --- what machine is this? (stdlib-only Python: nothing needs to be installed yet) --------
host_json="$(PYTHONPATH="$ns_root${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m neuron_spec.host.facts)"
host_field() { "${PYTHON:-python3}" -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print("" if v is None else v)' "$host_json" "$1"; }
host_instance="$(host_field instance)"
host_cores="$(host_field cores)"

run_reference() {
  ns_env "$venv" "$ns_user_extras" torch
  if grep -q "neuron-spec/models/smollm2-135m-instruct" "$config"; then
    ns_log "demo model: SmolLM2-135M-Instruct (fetched once into ~/.cache/neuron-spec/models)"
    "$venv/bin/python" -m neuron_spec.sources.demo > /dev/null
  fi
  ns="$venv/bin/neuron-spec"
  ns_log "preflight: $config"
  "$ns" validate "$config" --backend reference || {
    ns_log "preflight failed: nothing was loaded"; exit 1; }
  ns_log "generate (reference backend)"
  # --quiet: the preflight above has shown its warnings once already
  exec "$ns" generate "$config" --backend reference --quiet "${extra[@]}"
}

if [ "$backend" = "reference" ]; then
  run_reference
fi

if [ "${host_cores:-0}" = "0" ]; then
  ns_log "this is not a Neuron host (no neuron-ls, no Neuron instance type from EC2 metadata):"
  ns_log "running the pair of $config on the reference backend instead"
  run_reference
fi

# --- a Neuron host ------------------------------------------------------------------------
ns_log "Neuron host: ${host_instance:-unknown instance type}, $host_cores NeuronCores"
if [ -n "$want_instance" ] && [ "$want_instance" != "auto" ] && [ -n "$host_instance" ] \
   && [ "$want_instance" != "$host_instance" ] && [ "$any_instance" = "0" ]; then
  ns_log "$config is written for $want_instance, but this is $host_instance."
  ns_log "check it for this host with: neuron-spec plan $config --instance $host_instance"
  ns_log "or run it anyway with --any-instance"
  exit 2
fi

# The DLAMIs keep each Neuron library in its own environment, under names that changed across
# releases (2.25: /opt/aws_neuronx_venv_pytorch_2_7_transformers for transformers-neuronx; 2.28:
# /opt/aws_neuronx_venv_pytorch_2_9_nxd_inference on Ubuntu 24.04, ..._2_8_nxd_inference on
# 22.04; 2.29 to 2.31: ..._pytorch_2_9_nxd_inference, beside ..._pytorch_inference_vllm_0_16,
# which holds NxD Inference too): probe every candidate for a Python that imports the config's
# library, the library's own environments first (newest PyTorch first), never trust one name.
if [ "$backend" = "nxdi" ]; then
  module="neuronx_distributed_inference"; library="NxD Inference"
  dist="neuronx-distributed-inference"; own="*_nxd_inference"
  other_module="transformers_neuronx"; other_backend="neuronx"
else
  module="transformers_neuronx"; library="transformers-neuronx"
  dist="transformers-neuronx"; own="*transformers*"
  other_module="neuronx_distributed_inference"; other_backend="nxdi"
fi
probe_root="${NEURON_SPEC_VENV_ROOT:-/opt}"
list_venvs() {  # the environments under $probe_root: names matching $1 first, newest first
  local cand
  local -a first=() rest=()
  for cand in "$probe_root"/aws_neuronx_venv_*; do
    [ -d "$cand" ] || continue
    # shellcheck disable=SC2254  # $1 is a pattern
    case "${cand##*/}" in $1) first+=("$cand") ;; *) rest+=("$cand") ;; esac
  done
  if [ ${#first[@]} -gt 0 ]; then printf '%s\n' "${first[@]}" | sort -rV; fi
  if [ ${#rest[@]} -gt 0 ]; then printf '%s\n' "${rest[@]}"; fi
}
candidates=()
if [ -n "${NEURON_SPEC_NEURON_VENV:-}" ]; then
  candidates=("$NEURON_SPEC_NEURON_VENV")
else
  while IFS= read -r cand; do candidates+=("$cand"); done < <(list_venvs "$own")
  [ ${#candidates[@]} -gt 0 ] || candidates=("$probe_root/aws_neuronx_venv_*")
fi
find_venv() {  # the first candidate whose Python imports module $1
  local cand
  for cand in "${candidates[@]}"; do
    if [ -x "$cand/bin/python" ] && "$cand/bin/python" -c "import $1" 2>/dev/null; then
      printf '%s\n' "$cand"
      return 0
    fi
  done
  return 1
}
dlami="$(find_venv "$module" || true)"
if [ -z "$dlami" ]; then
  ns_log "no Python environment with $library on this host (looked in"
  ns_log "${candidates[*]})."
  other="$(find_venv "$other_module" || true)"
  if [ -n "$other" ]; then
    ns_log "$other has the other Neuron library: set 'backend: $other_backend' in $config"
    ns_log "to run the same pair with it."
  elif [ "$backend" = "nxdi" ]; then
    ns_log "NxD Inference ships preinstalled on the AWS Deep Learning AMIs (Neuron), in"
    ns_log "/opt/aws_neuronx_venv_pytorch_2_9_nxd_inference. For Inf2 and Trn1 AWS names the"
    ns_log "SDK 2.31 AMI (Deep Learning AMI Neuron PyTorch 2.9, Ubuntu 24.04; NxD Inference"
    ns_log "0.10.18399); SDK 2.28 (0.8.16251) is supported too; 2.29 (0.9) is for Trn2 and newer;"
    ns_log "from 2.32 the AMIs carry no NxD Inference. The last PyTorch 2.9 AMI's id:"
    ns_log "  aws ssm get-parameter --name /aws/service/neuron/dlami/pytorch-2.9/ubuntu-24.04/latest/image_id"
    ns_log "older ones: aws ssm get-parameters-by-path --recursive --path /aws/service/neuron/dlami"
  else
    ns_log "transformers-neuronx ships preinstalled only on the AWS Deep Learning AMIs (Neuron)"
    ns_log "up to SDK 2.25 (2025-07-31; Ubuntu 22.04 or Amazon Linux 2023, Python 3.10), in"
    ns_log "/opt/aws_neuronx_venv_pytorch_2_7_transformers; AMIs from 2.26 on have none: for"
    ns_log "them set 'backend: nxdi' (NxD Inference: SDK 2.31 or 2.28 for Inf2/Trn1)."
    ns_log "Launch a 2.25 (or older) Neuron DLAMI; its AMI id is in the public SSM parameters:"
    ns_log "  aws ssm get-parameters-by-path --recursive --path /aws/service/neuron/dlami \\"
    ns_log "    --query 'Parameters[].Name' --output text | tr '\\t' '\\n' | grep 2.25"
    ns_log "or install transformers-neuronx from Neuron's package index (docs/neuron.md), then"
    ns_log "point NEURON_SPEC_NEURON_VENV at that environment."
  fi
  exit 2
fi
py="$dlami/bin/python"
found_version="$("$py" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$dist" 2>/dev/null || true)"
ns_log "$library environment: $dlami${found_version:+ ($dist $found_version)}"
if ! "$py" -c "import neuron_spec" 2>/dev/null; then
  ns_log "installing neuron-spec into $dlami (torch-neuronx is left as it is)"
  "$py" -m pip install --quiet --disable-pip-version-check -e "$ns_root"
fi
ns=("$py" -m neuron_spec)

instance_args=()
[ -n "$host_instance" ] && instance_args=(--instance "$host_instance")

if [ "$skip_doctor" = "0" ]; then
  ns_log "host check: neuron-spec doctor $config"
  "${ns[@]}" doctor "$config" || {
    ns_log "the host check found errors (above): nothing was loaded (--skip-doctor to go on)"
    exit 1; }
fi

ns_log "preflight: $config"
"${ns[@]}" validate "$config" --local "${instance_args[@]}" || {
  ns_log "preflight failed: nothing was loaded"; exit 1; }

ns_log "environment for the planned layout:"
exports="$("${ns[@]}" env "$config")"
printf '%s\n' "$exports" | sed 's/^/    /' >&2
eval "$exports"

ns_log "generate ($library; the first run compiles, later runs load cached artifacts)"
exec "${ns[@]}" generate "$config" "${instance_args[@]}" --quiet "${extra[@]}"
