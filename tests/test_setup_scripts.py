"""The set-up scripts under interrupts: Ctrl-C (SIGINT to the whole process group, as a terminal
sends it) or SIGTERM stops them with 130/143 at any step, a PyTorch download that is interrupted
does not fall back to another index, and a virtual environment an interrupt left half-built is
rebuilt by the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the setup scripts run in bash, as processes

ROOT = Path(__file__).resolve().parent.parent
ENV_SH = ROOT / "scripts" / "_env.sh"


def _as_from_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a suite started in the background by a shell without
    job control inherits SIGINT ignored, and an ignored signal stays ignored across exec (a
    script cannot even trap it), so the scripts under test would never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _bash(script: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", f"set -euo pipefail; source {ENV_SH}; {script}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the signal reaches it, not pytest
        preexec_fn=_as_from_a_terminal,
        env={**os.environ, "NO_COLOR": "1", **env},
    )


def _wait_for(path: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def _fake_venv(root: Path, log: Path) -> Path:
    """A venv whose python stands in for pip: a torch install 'downloads' until interrupted,
    then exits 1 as pip does on KeyboardInterrupt ("Operation cancelled by user")."""
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    python = venv / "bin" / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {log}\n'
        'case "$*" in *"import pip"*) exit 0 ;; *"import sys, torch"*) exit 1 ;; esac\n'
        'case "$*" in *"torch=="*)\n'
        "  trap 'echo cancelled >&2; exit 1' INT\n"
        f"  touch {log}.downloading\n"
        "  for _ in $(seq 600); do sleep 0.1; done ;;\n"
        "esac\n"
        "exit 0\n"
    )
    python.chmod(0o755)
    return venv


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_torch_download_stops_without_falling_back(tmp_path, sig, status):
    log = tmp_path / "calls.log"
    venv = _fake_venv(tmp_path, log)
    proc = _bash(f'ns_torch "{venv}"', NEURON_SPEC_TORCH_INDEX="https://example.invalid/cpu")
    _wait_for(Path(f"{log}.downloading"))
    os.killpg(proc.pid, sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    installs = [line for line in log.read_text().splitlines() if "torch==" in line]
    assert len(installs) == 1 and "--extra-index-url" in installs[0]  # no second index tried
    assert "could not be used" not in err and ("interrupted" in err or "terminated" in err)


def test_a_half_built_venv_is_detected_and_rebuilt(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert subprocess.run([venv / "bin" / "python", "-c", "import pip"]).returncode != 0
    proc = _bash(f'ns_venv_ready "{venv}"', PYTHON=sys.executable)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "incomplete" in err and "rebuilding" in err
    assert subprocess.run([venv / "bin" / "python", "-c", "import pip"]).returncode == 0


def test_a_directory_that_is_not_a_venv_is_never_deleted(tmp_path):
    precious = tmp_path / "my-project"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    proc = _bash(f'ns_venv_ready "{precious}"')
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "not a Python virtual environment" in err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_ctrl_c_while_the_venv_is_created_then_the_next_run_recovers(tmp_path):
    """An interrupt during `python -m venv` (here: a Python that creates the venv without pip,
    then is interrupted before pip would be installed)."""
    venv = tmp_path / "venv"
    slow = tmp_path / "slowpython"
    py = sys.executable
    # The interrupt must reach a process that is still at work, as a real `python -m venv`
    # is: the marker is written by the process that then waits (a `touch` that has already
    # finished when the signal lands would let its shell carry on).
    wait = f"import pathlib, time; pathlib.Path('{tmp_path}/made').touch(); time.sleep(60)"
    slow.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then {py} -m venv --without-pip "$3"; '
        f'exec {py} -c "{wait}"; fi\n'
        f'exec {py} "$@"\n'
    )
    slow.chmod(0o755)
    proc = _bash(f'ns_venv_ready "{venv}"', PYTHON=str(slow))
    _wait_for(tmp_path / "made")
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    again = _bash(f'ns_venv_ready "{venv}"', PYTHON=sys.executable)
    _out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "rebuilding" in err, err
    assert subprocess.run([venv / "bin" / "python", "-c", "import pip"]).returncode == 0


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_launch_sh_stops_with_the_signals_status(tmp_path, sig, status):
    """launch.sh interrupted while it probes the host (here: a Python that hangs there)."""
    hang = tmp_path / "hangingpython"
    hang.write_text(
        "#!/usr/bin/env bash\n"
        f'case "$*" in *neuron_spec.host.facts*) touch {tmp_path}/probing; sleep 60 ;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    hang.chmod(0o755)
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "launch.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_as_from_a_terminal,
        env={**os.environ, "PYTHON": str(hang), "NEURON_SPEC_VENV": str(tmp_path / "v")},
    )
    _wait_for(tmp_path / "probing")
    os.killpg(proc.pid, sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
