"""scripts/launch.sh end to end on a simulated Neuron host: a fake neuron-ls, a fake EC2
metadata service (IMDSv2) on 127.0.0.1, the transformers_neuronx test double, and this test
environment standing in for the DLAMI's transformers-neuronx environment."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .neuron_fixtures import DOUBLE, dist_info, make_checkpoint

pytestmark = [pytest.mark.reference, pytest.mark.slow]  # scripts/launch.sh as a process
ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "scripts" / "launch.sh"


class _Imds(http.server.BaseHTTPRequestHandler):
    instance = "trn1.32xlarge"

    def do_PUT(self):
        ok = self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        )
        self._reply(200 if ok else 400, "token-123")

    def do_GET(self):
        ok = (
            self.path == "/latest/meta-data/instance-type"
            and self.headers.get("X-aws-ec2-metadata-token") == "token-123"
        )
        self._reply(200 if ok else 401, self.instance)

    def _reply(self, code, body):
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def imds():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Imds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def neuron_host(tmp_path_factory, imds):
    root = tmp_path_factory.mktemp("host")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    devices = [
        {
            "neuron_device": i,
            "nc_count": 2,
            "memory_size": 34359738368,
            "neuroncore_ids": [2 * i, 2 * i + 1],
            "connected_to": [],
            "neuron_processes": [],
        }
        for i in range(16)
    ]
    ls = bin_dir / "neuron-ls"
    ls.write_text(
        "#!/bin/sh\n"
        'if [ -n "$FAKE_NEURON_LS" ]; then cat "$FAKE_NEURON_LS"; exit 0; fi\n'
        f"cat <<'JSON'\n{json.dumps(devices)}\nJSON\n"
    )
    ls.chmod(0o755)
    dpkg = bin_dir / "dpkg-query"  # the SDK 2.25 runtime, collectives and driver
    dpkg.write_text(
        "#!/bin/sh\nprintf 'aws-neuronx-collectives\\t2.27.34.0-ec8cd5e8b\\n"
        "aws-neuronx-dkms\\t2.23.9.0\\naws-neuronx-runtime-lib\\t2.27.23.0-8deec4dbf\\n'\n"
    )
    dpkg.chmod(0o755)
    (root / "devices.json").write_text(json.dumps(devices))
    target = make_checkpoint(root / "target", seed=0)
    draft = make_checkpoint(root / "draft", seed=0, noise=0.003, base=target)
    return {"root": root, "bin": bin_dir, "target": target, "draft": draft, "imds": imds}


def config(host, name: str, *, instance="trn1.32xlarge", draft_tp=32) -> Path:
    path = host["root"] / name
    path.write_text(
        f"instance: {instance}\nbackend: neuronx\n"
        f"target: {{model: {host['target']}, amp: f32, tp_degree: 32, n_positions: 256}}\n"
        f"draft: {{model: {host['draft']}, amp: f32, tp_degree: {draft_tp}, n_positions: 256}}\n"
        "speculation: {draft_tokens: 3, acceptor: greedy}\n"
        "generation: {max_new_tokens: 12, max_prompt_tokens: 32}\n"
        f"compile: {{artifact_cache: {host['root'] / 'compiled'}, cc_flags: '-O1'}}\n"
    )
    return path


def fake_opt(root: Path, with_tnx: bool = True) -> Path:
    """A stand-in for /opt on a 2.25 DLAMI: an older environment without transformers-neuronx
    and, when with_tnx, the 2.25 one whose Python imports it (the double)."""
    opt = root / ("opt" if with_tnx else "opt-empty")
    envs = [("aws_neuronx_venv_pytorch_2_1", "")]
    if with_tnx:  # the double, with the 2.25 environment's package versions
        site = root / "site-2.25"
        for name, version in (
            ("transformers-neuronx", "0.13.1216"),
            ("torch-neuronx", "2.7.0.2.9.9357"),
            ("neuronx-cc", "2.20.9961.0"),
        ):
            dist_info(site, version, name)
        envs.append(("aws_neuronx_venv_pytorch_2_7_transformers", f"{site}:{DOUBLE}"))
    for name, pythonpath in envs:
        bin_dir = opt / name / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        python = bin_dir / "python"
        python.write_text(f'#!/bin/sh\nPYTHONPATH="{pythonpath}" exec {sys.executable} "$@"\n')
        python.chmod(0o755)
    return opt


def launch(host, *args, neuron=True, record=None, opt=None, extra_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_")}
    env.update(extra_env or {})
    env.update(
        PATH=(f"{host['bin']}:" if neuron else "") + env["PATH"],
        NEURON_SPEC_IMDS_ENDPOINT=host["imds"] if neuron else "http://127.0.0.1:9",
        NEURON_SPEC_VENV_ROOT=str(opt or fake_opt(host["root"])),  # plays /opt
        NEURON_SPEC_VENV=sys.prefix,  # the reference fallback's (it has torch)
        PYTHONPATH=str(DOUBLE),
        PYTHON=sys.executable,
        TNX_DOUBLE_VERSION="0.13.322",
        TNX_DOUBLE_RECORD=str(record or host["root"] / "unused.jsonl"),
    )
    return subprocess.run(
        ["bash", str(LAUNCH), *args], capture_output=True, text=True, env=env, timeout=600
    )


def events(record: Path) -> list[dict]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_good_config_generates_with_the_planned_environment(neuron_host):
    record = neuron_host["root"] / "good.jsonl"
    proc = launch(
        neuron_host,
        str(config(neuron_host, "good.yaml")),
        "--",
        "--prompt",
        "w1 w2 w3",
        record=record,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Neuron host: trn1.32xlarge, 32 NeuronCores" in proc.stderr
    assert "\x1b[" not in proc.stderr + proc.stdout  # a log, not a terminal: no escape codes
    assert "host check: neuron-spec doctor" in proc.stderr  # the simulated 2.25 host passes
    assert "Neuron SDK 2.25.0" in proc.stdout and "OK: 0 error(s)" in proc.stdout
    assert (
        "environment: " in proc.stderr
        and "aws_neuronx_venv_pytorch_2_7_transformers" in proc.stderr
    )
    assert "accepted / drafted" in proc.stdout
    seen = events(record)
    assert [e["event"] for e in seen] == ["compile", "compile"]
    for e in seen:  # what the runtime saw when the models were loaded
        assert e["env"]["NEURON_RT_VISIBLE_CORES"] == "0-31"
        assert e["env"]["NEURON_CC_FLAGS"] == "-O1"
    again = launch(
        neuron_host,
        str(config(neuron_host, "good.yaml")),
        "--",
        "--prompt",
        "w1 w2 w3",
        record=record,
    )
    assert again.returncode == 0, again.stderr
    assert [e["event"] for e in events(record)][2:] == ["load", "load"]  # compiled once


def test_preflight_error_stops_before_loading(neuron_host):
    record = neuron_host["root"] / "bad.jsonl"
    proc = launch(neuron_host, str(config(neuron_host, "bad.yaml", draft_tp=16)), record=record)
    assert proc.returncode == 1
    assert "tp-mismatch" in proc.stdout and "nothing was loaded" in proc.stderr
    assert events(record) == []


def test_config_for_another_instance_is_refused(neuron_host):
    record = neuron_host["root"] / "other.jsonl"
    cfg = config(neuron_host, "inf2.yaml", instance="inf2.48xlarge")
    proc = launch(neuron_host, str(cfg), record=record)
    assert proc.returncode == 2
    assert "written for inf2.48xlarge, but this is trn1.32xlarge" in proc.stderr
    assert events(record) == []


def test_off_neuron_runs_the_reference_backend(neuron_host):
    record = neuron_host["root"] / "cpu.jsonl"
    proc = launch(
        neuron_host,
        str(config(neuron_host, "cpu.yaml")),
        "--",
        "--prompt",
        "w4 w5",
        neuron=False,
        record=record,
    )
    assert proc.returncode == 0, proc.stderr
    assert "not a Neuron host" in proc.stderr and "reference backend" in proc.stderr
    assert "accepted / drafted" in proc.stdout
    assert events(record) == []  # transformers-neuronx was never used


def test_a_host_without_transformers_neuronx_gets_the_ami_guidance(neuron_host):
    record = neuron_host["root"] / "no-tnx.jsonl"
    opt = fake_opt(neuron_host["root"], with_tnx=False)
    proc = launch(neuron_host, str(config(neuron_host, "good.yaml")), record=record, opt=opt)
    assert proc.returncode == 2
    assert "no Python environment with transformers-neuronx" in proc.stderr
    assert "SDK 2.25" in proc.stderr and "/aws/service/neuron/dlami" in proc.stderr
    assert events(record) == []


def test_host_check_runs_first_and_busy_cores_stop_the_launch(neuron_host):
    devices = json.loads((neuron_host["root"] / "devices.json").read_text())
    devices[5]["neuron_processes"] = [
        {"pid": 999, "command": "python old_server.py", "neuron_runtime_version": "2.27.23"}
    ]
    busy = neuron_host["root"] / "busy.json"
    busy.write_text(json.dumps(devices))
    record = neuron_host["root"] / "busy.jsonl"
    cfg = str(config(neuron_host, "busy.yaml"))
    proc = launch(neuron_host, cfg, record=record, extra_env={"FAKE_NEURON_LS": str(busy)})
    assert proc.returncode == 1, proc.stderr
    assert "host check: neuron-spec doctor" in proc.stderr
    assert "cores-busy" in proc.stdout and "kill 999" in proc.stdout
    assert "nothing was loaded" in proc.stderr and events(record) == []
    # the healthy simulated 2.25 host passes the same check
    skipped = launch(
        neuron_host,
        "--skip-doctor",
        cfg,
        "--",
        "--dry-run",
        extra_env={"FAKE_NEURON_LS": str(busy)},
    )
    assert skipped.returncode == 0, skipped.stderr
    assert "host check" not in skipped.stderr and "preflight" in skipped.stderr


def test_a_quoted_instance_is_read_like_any_other(neuron_host):
    record = neuron_host["root"] / "quoted.jsonl"
    cfg = config(neuron_host, "quoted.yaml", instance="inf2.48xlarge")
    cfg.write_text(cfg.read_text().replace("instance: inf2.48xlarge", 'instance: "inf2.48xlarge"'))
    proc = launch(neuron_host, str(cfg), record=record)
    assert proc.returncode == 2
    assert "written for inf2.48xlarge, but this is trn1.32xlarge" in proc.stderr
    assert events(record) == []


def test_a_broken_config_is_a_located_error_before_anything_else(neuron_host):
    cfg = neuron_host["root"] / "broken.yaml"
    cfg.write_text("backend: neuronx\ntarget: {model: [unclosed\n")
    proc = launch(neuron_host, str(cfg))
    assert proc.returncode == 2
    assert f"{cfg}:" in proc.stderr and "YAML syntax error" in proc.stderr
    assert "Neuron host" not in proc.stderr  # stopped before looking at the machine


def test_no_python_is_said_plainly(neuron_host, tmp_path):
    import shutil

    tools = tmp_path / "tools"  # the shell tools the launcher uses, and no python3
    tools.mkdir()
    for tool in ("dirname", "sed", "head", "cat", "sha256sum", "cut", "grep"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    env = {"PATH": str(tools), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(LAUNCH)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no Python found" in proc.stderr and "python3-venv" in proc.stderr


def nxdi_opt(root: Path, release: str = "", envs: tuple[str, ...] = ()) -> Path:
    """A stand-in for /opt on an NxD Inference DLAMI: its environments named in `envs` hold the
    double at `release` (with that release's metadata), the others a Python without it. The
    default is SDK 2.28's: the NxD Inference environment beside an older one without it."""
    from .neuron_fixtures import NXDI_DOUBLE, NXDI_RELEASE

    release = release or NXDI_RELEASE
    envs = envs or ("aws_neuronx_venv_pytorch_2_9_nxd_inference",)
    opt = root / f"opt-{release}-{len(envs)}"
    site = root / f"site-{release}"
    dist_info(site, release, "neuronx-distributed-inference")
    names = ("aws_neuronx_venv_pytorch_2_8", "aws_neuronx_venv_jax_0_9", *envs)
    for name in names:
        bin_dir = opt / name / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        path = f"{site}:{NXDI_DOUBLE}" if name in envs else ""
        python = bin_dir / "python"
        python.write_text(
            f'#!/bin/sh\nNXDI_DOUBLE_RELEASE={release} PYTHONPATH="{path}" '
            f'exec {sys.executable} "$@"\n'
        )
        python.chmod(0o755)
    return opt


@pytest.mark.slow
def test_an_nxdi_config_runs_in_the_dlami_nxd_inference_environment(neuron_host):
    cfg = config(neuron_host, "nxdi.yaml")
    cfg.write_text(cfg.read_text().replace("backend: neuronx", "backend: nxdi"))
    opt = nxdi_opt(neuron_host["root"])
    proc = launch(neuron_host, str(cfg), "--", "--prompt", "w1 w2 w3", opt=opt)
    assert proc.returncode == 0, proc.stderr
    assert "NxD Inference environment: " in proc.stderr
    assert "aws_neuronx_venv_pytorch_2_9_nxd_inference" in proc.stderr
    assert "0.8.16251 shipped with Neuron SDK 2.28" in proc.stdout  # doctor, in NxDI mode
    assert "accepted / drafted" in proc.stdout
    # the same host with a transformers-neuronx config: the user learns what to change
    tnx = launch(neuron_host, str(config(neuron_host, "good.yaml")), opt=opt)
    assert tnx.returncode == 2 and "set 'backend: nxdi'" in tnx.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("release", "sdk", "warned"), [("0.9.17334", "2.29", True), ("0.10.18399", "2.31", False)]
)
def test_the_2_29_to_2_31_environments_are_found_their_own_first(neuron_host, release, sdk, warned):
    """2.29-2.31 DLAMIs: the PyTorch 2.9 NxD Inference environment beside the vLLM one (which
    holds NxD Inference too) and others without it; the library's own is taken, and the doctor
    says the release (0.9 on this Trn1: a warning, the run goes on)."""
    cfg = config(neuron_host, f"nxdi-{sdk}.yaml")
    cfg.write_text(cfg.read_text().replace("backend: neuronx", "backend: nxdi"))
    envs = (
        "aws_neuronx_venv_pytorch_inference_vllm_0_16",
        "aws_neuronx_venv_pytorch_2_9_nxd_inference",
    )
    opt = nxdi_opt(neuron_host["root"], release, envs)
    proc = launch(neuron_host, str(cfg), "--", "--prompt", "w1 w2 w3", opt=opt)
    assert proc.returncode == 0, proc.stderr
    taken = f"aws_neuronx_venv_pytorch_2_9_nxd_inference (neuronx-distributed-inference {release})"
    assert taken in proc.stderr
    assert f"{release} shipped with Neuron SDK {sdk}" in proc.stdout
    assert ("warning nxdi-release" in proc.stdout) is warned
    assert "accepted / drafted" in proc.stdout


@pytest.mark.slow
def test_the_newest_pytorch_nxd_inference_environment_comes_first(neuron_host):
    """A host with both of 2.28's NxD Inference environments: the PyTorch 2.9 one is taken
    (the names sort the other way)."""
    cfg = config(neuron_host, "nxdi-order.yaml")
    cfg.write_text(cfg.read_text().replace("backend: neuronx", "backend: nxdi"))
    envs = (
        "aws_neuronx_venv_pytorch_2_8_nxd_inference",
        "aws_neuronx_venv_pytorch_2_9_nxd_inference",
    )
    opt = nxdi_opt(neuron_host["root"], "", envs)
    proc = launch(neuron_host, str(cfg), "--skip-doctor", "--", "--prompt", "w1", opt=opt)
    assert proc.returncode == 0, proc.stderr
    assert "environment: " in proc.stderr and "_2_9_nxd_inference (" in proc.stderr


@pytest.mark.slow
def test_an_nxdi_config_on_a_host_without_it_names_the_2_31_ami(neuron_host):
    cfg = config(neuron_host, "nxdi-none.yaml")
    cfg.write_text(cfg.read_text().replace("backend: neuronx", "backend: nxdi"))
    opt = fake_opt(neuron_host["root"], with_tnx=False)
    proc = launch(neuron_host, str(cfg), opt=opt)
    assert proc.returncode == 2
    assert "no Python environment with NxD Inference" in proc.stderr
    assert "SDK 2.31 AMI" in proc.stderr and "SDK 2.28" in proc.stderr
    assert "pytorch-2.9/ubuntu-24.04/latest/image_id" in proc.stderr
    assert "_pytorch_2_9_nxd_inference" in proc.stderr
