# Shared by scripts/*.sh: create or reuse a virtual environment and install neuron-spec into it.
# Usage: source scripts/_env.sh; ns_env VENV_DIR EXTRAS [torch]
# Re-running is cheap: the install is skipped while pyproject.toml and the extras are unchanged.

ns_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ns_log() { printf '\033[1m[neuron-spec]\033[0m %s\n' "$*" >&2; }

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

ns_env() {
  local venv="$1" extras="$2" want_torch="${3:-}"
  local py="${PYTHON:-python3}"
  if [ ! -x "$venv/bin/python" ]; then
    ns_log "creating virtual environment $venv ($("$py" --version 2>&1))"
    "$py" -m venv "$venv"
  fi
  local stamp="$venv/.neuron-spec-installed"
  local hash
  hash="$(sha256sum "$ns_root/pyproject.toml" | cut -c1-16)"
  if [ -f "$stamp" ] && ns_satisfied "$stamp" "$hash" "$extras" "$want_torch"; then
    return 0
  fi
  ns_log "installing neuron-spec[$extras] into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  if [ -n "$want_torch" ]; then
    # The CPU build, pinned: an unpinned torch would pull several GB of CUDA packages.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==${NEURON_SPEC_TORCH:-2.13.0}"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ns_root${extras:+[$extras]}"
  printf '%s\n%s\n%s\n' "$hash" "$extras" "${want_torch:+torch}" > "$stamp"
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
