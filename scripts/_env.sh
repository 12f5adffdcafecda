# Shared by scripts/*.sh: create or reuse a virtual environment and install neuron-spec into it.
# Usage: source scripts/_env.sh; ns_env VENV_DIR EXTRAS [torch]
# Re-running is cheap: the install is skipped while pyproject.toml and the extras are unchanged.

ns_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Ctrl-C (or SIGTERM) stops the script at any step, with the shell's conventional status. The
# traps matter: without them bash carries on when a child (pip) handles the interrupt itself and
# merely fails, and a failed PyTorch download would fall back to another index.
trap 'ns_log "interrupted: stopping (the next run picks up where this one left off)"; exit 130' INT
trap 'ns_log "terminated: stopping"; exit 143' TERM

# Bold only on a terminal, and never with NO_COLOR set (https://no-color.org): logs stay plain.
if [ -t 2 ] && [ -z "${NO_COLOR:-}" ] && [ "${TERM:-}" != "dumb" ]; then
  ns_log() { printf '\033[1m[neuron-spec]\033[0m %s\n' "$*" >&2; }
else
  ns_log() { printf '[neuron-spec] %s\n' "$*" >&2; }
fi

# The one environment both README commands build and reuse (NEURON_SPEC_VENV to move it), and
# the extras every command in the README needs there: the reference backend, serve, deploy.
ns_venv="${NEURON_SPEC_VENV:-$ns_root/.venv}"
ns_user_extras="reference,serve,aws"
# PyTorch's CPU-only index: its torch==2.13.0+cpu wheel is ~190 MB, where PyPI's Linux build of
# torch==2.13.0 pulls ~2.7 GB of CUDA packages. Set NEURON_SPEC_TORCH_INDEX= (empty) to use only
# your own index (a mirror, or a machine that already has the CPU wheel in its find-links).
ns_torch_index="${NEURON_SPEC_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"


# Stop with a plain message when there is no usable Python (3.10 or newer, with venv).
ns_need_python() {
  local py="${PYTHON:-python3}"
  if ! command -v "$py" >/dev/null 2>&1; then
    ns_log "no Python found ('$py' is not on PATH). neuron-spec needs Python 3.10 or newer"
    ns_log "with venv and pip: on Ubuntu 'sudo apt-get install -y python3 python3-venv',"
    ns_log "on Amazon Linux 'sudo dnf install -y python3'; or set PYTHON=/path/to/python3."
    exit 2
  fi
  if ! "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    ns_log "$py is $("$py" --version 2>&1), or has no venv module; neuron-spec needs Python"
    ns_log "3.10 or newer with venv (Ubuntu: sudo apt-get install -y python3-venv);"
    ns_log "set PYTHON=/path/to/python3.10 (or newer) to pick another."
    exit 2
  fi
}

# A usable environment at $1: created when missing; rebuilt when an interrupted run left it
# half-built (no python, or no pip: every later pip call would fail). A directory there that is
# not a virtual environment is never deleted.
ns_venv_ready() {
  local venv="$1" py="${PYTHON:-python3}"
  if [ -e "$venv" ] && ! "$venv/bin/python" -c "import pip" >/dev/null 2>&1; then
    if [ -f "$venv/pyvenv.cfg" ] || [ -z "$(ls -A "$venv" | grep -vxE 'bin|include|lib|lib64')" ]; then
      ns_log "$venv is incomplete (an interrupted setup?): rebuilding it"
      rm -rf "$venv"
    else
      ns_log "$venv exists and is not a Python virtual environment; move it away, or set"
      ns_log "NEURON_SPEC_VENV to another place"
      exit 2
    fi
  fi
  if [ ! -e "$venv" ]; then
    ns_log "creating virtual environment $venv ($("$py" --version 2>&1))"
    "$py" -m venv "$venv"
  fi
}

ns_env() {
  local venv="$1" extras="$2" want_torch="${3:-}"
  ns_venv_ready "$venv"
  local stamp="$venv/.neuron-spec-installed"
  local hash
  hash="$(sha256sum "$ns_root/pyproject.toml" | cut -c1-16)"
  if [ -f "$stamp" ] && ns_satisfied "$stamp" "$hash" "$extras" "$want_torch"; then
    ns_bytecode "$venv"
    return 0
  fi
  ns_log "installing neuron-spec[$extras] into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  if [ -n "$want_torch" ]; then
    ns_torch "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ns_root${extras:+[$extras]}"
  printf '%s\n%s\n%s\n' "$hash" "$extras" "${want_torch:+torch}" > "$stamp"
  ns_bytecode "$venv"
}

# Compile neuron-spec's own modules now. pip does this for a regular install; an editable one
# leaves it to the first import, and a host with PYTHONDONTWRITEBYTECODE=1 (many container
# images set it) never writes the result, so every command would compile them again: about a
# quarter of `validate`'s start-up. Only changed files are recompiled; a file edited later is
# compiled in memory as usual, never run stale.
ns_bytecode() {
  "$1/bin/python" -m compileall -q "$ns_root/neuron_spec" >/dev/null 2>&1 || true
}

# True when the stamp shows the same pyproject.toml, every requested extra, and torch if wanted.
ns_satisfied() {
  local stamp="$1" hash="$2" extras="$3" want_torch="$4"
  [ "$(sed -n 1p "$stamp")" = "$hash" ] || return 1
  local have
  have=",$(sed -n 2p "$stamp"),"
  local e
  for e in ${extras//,/ }; do
    case "$have" in *",$e,"*) ;; *) return 1 ;; esac
  done
  [ -z "$want_torch" ] || [ "$(sed -n 3p "$stamp")" = "torch" ]
}

# Install the pinned PyTorch, the CPU build where one can be reached: PyTorch's CPU index is
# added as an extra index (its 2.13.0+cpu outranks PyPI's 2.13.0), so an unreachable index only
# costs a warning and the install goes on from the configured one.
ns_torch() {
  local venv="$1" version="${NEURON_SPEC_TORCH:-2.13.0}"
  local pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  if "$venv/bin/python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null; then
    return 0  # already there: nothing to download
  fi
  if [ -n "$ns_torch_index" ]; then
    ns_log "installing torch==$version, CPU build (about 190 MB) from $ns_torch_index"
    if "${pip[@]}" --retries 1 --timeout 20 --extra-index-url "$ns_torch_index" \
         "torch==$version" 2>/dev/null; then
      ns_torch_report "$venv"
      return 0
    fi
    ns_log "$ns_torch_index could not be used; trying your configured package index"
  fi
  "${pip[@]}" "torch==$version"
  ns_torch_report "$venv"
}

# Say which build landed: a CUDA build on a CPU machine is a multi-GB surprise worth naming.
ns_torch_report() {
  local build
  build="$("$1/bin/python" -c 'import torch; print(torch.__version__, "CUDA " + torch.version.cuda if torch.version.cuda else "CPU-only")' 2>/dev/null || true)"
  ns_log "torch ${build:-(not importable)}"
}
