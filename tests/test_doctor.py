"""`neuron-spec doctor` on recorded host outputs: a healthy SDK 2.25 inf2.48xlarge, and that
recording with one thing wrong at a time (the files are those `doctor --record` writes)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from neuron_spec.cli.main import main
from neuron_spec.host import probe as hostprobe
from neuron_spec.host.sdk_releases import RELEASES, releases_with
from neuron_spec.preflight.doctor import check_host, model_needs, parse_cores

from .conftest import CONFIGS, ROOT

HEALTHY = ROOT / "tests" / "hosts" / "inf2.48xlarge-sdk2.25"
INF2_70B = CONFIGS / "inf2-llama2-70b-7b-bf16.yaml"
GIB = 1024**3

LLAMA2_70B_HF = {
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """A writable copy of the healthy recording, to break one thing in."""
    return Path(shutil.copytree(HEALTHY, tmp_path / "host"))


def doctor(capsys, *args: str) -> tuple[int, dict]:
    rc = main(["doctor", *args, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def codes(report: dict, severity: str | None = None) -> list[str]:
    return [f["code"] for f in report["findings"] if severity in (None, f["severity"])]


def edit_json(path: Path, fn) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def test_healthy_sdk_2_25_host_passes(capsys):
    rc, report = doctor(capsys, str(INF2_70B), "--from", str(HEALTHY))
    assert rc == 0 and report["ok"]
    assert codes(report) == ["neuron-sdk"]  # one info line: which SDK it matches
    assert report["sdk_releases"] == ["2.25.0"]
    assert report["neuron_cores"] == 24
    assert report["components"] == {
        "transformers-neuronx": "0.13.1216",
        "torch-neuronx": "2.7.0.2.9.9357",
        "neuronx-cc": "2.20.9961.0",
        "aws-neuronx-runtime-lib": "2.27.23.0",
        "aws-neuronx-collectives": "2.27.34.0",
        "aws-neuronx-dkms": "2.23.9.0",
    }


def test_human_output_names_versions_and_verdict(capsys):
    rc = main(["doctor", str(INF2_70B), "--from", str(HEALTHY)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "24 NeuronCores" in out and "0.13.1216" in out and "OK: 0 error(s)" in out


def _hold(recording: Path, device: int, pid: int, command: str) -> None:
    def add(devices):
        devices[device]["neuron_processes"].append(
            {"pid": pid, "command": command, "neuron_runtime_version": "2.27.23"}
        )
        return devices

    edit_json(recording / "neuron-ls.json", add)


def test_busy_cores_in_the_planned_layout_are_an_error(capsys, recording):
    _hold(recording, 3, 4242, "python serve.py")
    rc, report = doctor(capsys, str(INF2_70B), "--from", str(recording))
    assert rc == 1
    busy = [f for f in report["findings"] if f["code"] == "cores-busy"]
    assert len(busy) == 1 and busy[0]["severity"] == "error"
    assert "4242" in busy[0]["message"] and "NeuronCores 6-7" in busy[0]["message"]
    assert "kill 4242" in busy[0]["fix"]


def test_busy_cores_outside_the_layout_and_neuron_ls_itself(capsys, recording, write_config):
    cfg = write_config(
        INF2_70B.read_text()
        .replace("tp_degree: 24", "tp_degree: 8")
        .replace("model: llama-2-70b", "model: llama-2-7b")
    )
    _hold(recording, 10, 77, "python other.py")  # cores 20-21: outside 0-7
    _hold(recording, 0, 78, "neuron-ls --json-output")  # the tool itself holds nothing
    rc, report = doctor(capsys, str(cfg), "--from", str(recording))
    busy = [f for f in report["findings"] if f["code"] == "cores-busy"]
    assert rc == 0 and [f["severity"] for f in busy] == ["info"]
    assert "77" in busy[0]["message"]


def test_runtime_newer_than_the_tnx_release_is_a_finding(capsys, recording):
    dpkg = recording / "dpkg.txt"
    dpkg.write_text(dpkg.read_text().replace("2.27.23.0-8deec4dbf", "2.28.23.0-abc"))
    rc, report = doctor(capsys, str(INF2_70B), "--from", str(recording))
    found = [f for f in report["findings"] if f["code"] == "components-unshipped"]
    assert len(found) == 1 and found[0]["path"] == "host.aws-neuronx-runtime-lib"
    msg = found[0]["message"]
    assert "newer" in msg and "2.27.23.0" in msg and "2.26.0, 2.26.1" in msg
    assert "aws-neuronx-runtime-lib=2.27.23.0*" in found[0]["fix"]
    assert found[0]["severity"] == "warning" and rc == 0


def test_older_compiler_is_a_finding_and_a_newer_driver_is_not(capsys, recording):
    def edit(pkgs):
        for p in pkgs:
            if p["name"] == "neuronx-cc":
                p["version"] = "2.19.8089.0+abc"
        return pkgs

    edit_json(recording / "pip-list.json", edit)
    dpkg = recording / "dpkg.txt"
    dpkg.write_text(dpkg.read_text().replace("dkms\t2.23.9.0", "dkms\t2.24.7.0"))
    (recording / "driver-version").write_text("2.24.7.0\n")
    rc, report = doctor(capsys, "--from", str(recording))
    found = [f for f in report["findings"] if f["code"] == "components-unshipped"]
    assert [f["path"] for f in found] == ["host.neuronx-cc"] and rc == 0  # warnings only
    assert "older" in found[0]["message"] and "2.24.0, 2.24.1" in found[0]["message"]


def test_too_little_ram_for_a_70b_bf16_load(capsys, recording):
    (recording / "meminfo").write_text("MemTotal: 67108864 kB\nMemAvailable: 60000000 kB\n")
    rc, report = doctor(capsys, str(INF2_70B), "--from", str(recording))
    found = [f for f in report["findings"] if f["code"] == "host-ram-low"]
    assert len(found) == 1 and found[0]["path"] == "target.model"
    assert "64.00 GiB" in found[0]["message"] and "132.48 GiB" in found[0]["message"]
    # a catalog name: the checkpoint's format is unknown, so a warning, not an error
    assert found[0]["severity"] == "warning" and rc == 0


def _checkpoint_70b(directory: Path, weights: str) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(LLAMA2_70B_HF))
    with open(directory / weights, "wb") as f:  # sparse: sized like the real file, no disk
        f.truncate(137_976_000_000)
    return directory


def _config_with_target(write_config, checkpoint: Path) -> Path:
    return write_config(INF2_70B.read_text().replace("model: llama-2-70b", f"model: {checkpoint}"))


def test_a_70b_bin_checkpoint_read_whole_is_an_error_and_safetensors_is_not(
    capsys, recording, tmp_path, write_config
):
    (recording / "meminfo").write_text("MemTotal: 67108864 kB\nMemAvailable: 60000000 kB\n")
    bin_cfg = _config_with_target(
        write_config, _checkpoint_70b(tmp_path / "b", "pytorch_model.bin")
    )
    rc, report = doctor(capsys, str(bin_cfg), "--from", str(recording))
    ram = [f for f in report["findings"] if f["code"] == "host-ram-low"]
    assert rc == 1 and ram[0]["severity"] == "error" and "read whole" in ram[0]["message"]
    st_cfg = _config_with_target(write_config, _checkpoint_70b(tmp_path / "s", "model.safetensors"))
    rc, report = doctor(capsys, str(st_cfg), "--from", str(recording))
    # the target streams layer by layer; only the 7B draft (a catalog name) is still unknown
    assert "host-ram-low" not in codes(report, "error")


def test_container_memory_limit_counts(capsys, recording):
    (recording / "memory.max").write_text(f"{32 * GIB}\n")
    rc, report = doctor(capsys, str(INF2_70B), "--from", str(recording))
    found = [f for f in report["findings"] if f["code"] == "host-ram-low"]
    assert found and "container limit of 32.00 GiB" in found[0]["message"] and rc == 0


def test_disk_too_small_for_a_conversion(capsys, recording, tmp_path, write_config):
    (recording / "df.txt").write_text(
        "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
        "/dev/root 104857600 94371840 10485760 90% /\n"
    )
    cfg = _config_with_target(write_config, _checkpoint_70b(tmp_path / "b", "pytorch_model.bin"))
    rc, report = doctor(capsys, str(cfg), "--from", str(recording))
    found = [f for f in report["findings"] if f["code"] == "disk-low"]
    assert rc == 1 and found[0]["severity"] == "error" and "10.00 GiB free" in found[0]["message"]


def test_no_transformers_neuronx_and_no_neuron_devices(capsys, recording):
    edit_json(
        recording / "pip-list.json",
        lambda pkgs: [p for p in pkgs if p["name"] != "transformers-neuronx"],
    )
    (recording / "neuron-ls.json").unlink()
    rc, report = doctor(capsys, "--from", str(recording))
    assert rc == 1
    assert {"tnx-missing", "not-neuron-host"} <= set(codes(report, "error"))
    fix = next(f["fix"] for f in report["findings"] if f["code"] == "tnx-missing")
    assert "2.25.0" in fix and "/aws/service/neuron/dlami" in fix


@pytest.mark.parametrize(("version", "severity"), [("0.9.474", "error"), ("0.13.9999", "warning")])
def test_transformers_neuronx_versions_no_release_supports(capsys, recording, version, severity):
    def edit(pkgs):
        for p in pkgs:
            if p["name"] == "transformers-neuronx":
                p["version"] = version
        return pkgs

    edit_json(recording / "pip-list.json", edit)
    rc, report = doctor(capsys, "--from", str(recording))
    found = [f for f in report["findings"] if f["code"] == "tnx-version"]
    assert [f["severity"] for f in found] == [severity]
    assert rc == (1 if severity == "error" else 0)
    assert "components-unshipped" not in codes(report)


def test_missing_compiler_and_unloaded_driver(capsys, recording):
    edit_json(
        recording / "pip-list.json", lambda pkgs: [p for p in pkgs if p["name"] != "neuronx-cc"]
    )
    (recording / "driver-version").write_text("2.22.2.0\n")
    rc, report = doctor(capsys, "--from", str(recording))
    assert rc == 1
    missing = next(f for f in report["findings"] if f["code"] == "component-missing")
    assert missing["path"] == "host.neuronx-cc" and "neuronx-cc==2.20.9961.0" in missing["fix"]
    driver = next(f for f in report["findings"] if f["code"] == "driver-not-loaded")
    assert driver["severity"] == "warning" and "2.22.2.0" in driver["message"]


def test_rpm_hosts_get_dnf_fixes(capsys, recording):
    dpkg = (recording / "dpkg.txt").read_text()
    (recording / "dpkg.txt").unlink()
    (recording / "rpm.txt").write_text(
        dpkg.replace("2.27.34.0-ec8cd5e8b", "2.26.43.0").replace("-8deec4dbf", "")
    )
    rc, report = doctor(capsys, "--from", str(recording))
    found = next(f for f in report["findings"] if f["code"] == "components-unshipped")
    assert found["fix"] == "sudo dnf install -y aws-neuronx-collectives-2.27.34.0"
    assert rc == 0 and "older" in found["message"]


def test_unreadable_neuron_ls_output_is_reported(capsys, recording):
    (recording / "neuron-ls.json").write_text("neuron-ls: error while loading shared libraries")
    rc, report = doctor(capsys, "--from", str(recording))
    assert "probe-unreadable" in codes(report, "warning") and rc == 1


def test_bad_recording_directory_is_a_usage_error(capsys, tmp_path):
    assert main(["doctor", "--from", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["doctor", "--from", str(tmp_path / "empty")]) == 2


@pytest.mark.slow  # runs the live host's tools (dpkg-query, neuron-ls)
def test_record_then_replay_gives_the_same_report(capsys, tmp_path):
    rec = tmp_path / "rec"
    rc_live = main(["doctor", "--record", str(rec), "--json"])
    live = json.loads(capsys.readouterr().out)
    assert (rec / "pip-list.json").is_file() and (rec / "meminfo").is_file()
    assert not list(rec.glob(".*")), "no temporary files left behind"
    rc_replay, replay = doctor(capsys, "--from", str(rec))
    assert rc_live == rc_replay
    assert live["components"] == replay["components"]
    assert codes(live) == codes(replay)


def test_needs_follow_the_checkpoint_format(tmp_path, write_config):
    from neuron_spec.config.spec import load_config

    cfg = load_config(
        _config_with_target(write_config, _checkpoint_70b(tmp_path / "b", "pytorch_model.bin"))
    )
    target = next(n for n in model_needs(cfg) if n.role == "target")
    assert target.known and target.ram == target.disk == 137_976_000_000
    cfg = load_config(INF2_70B)
    target = next(n for n in model_needs(cfg) if n.role == "target")
    assert not target.known and target.disk == 0


def test_release_table_facts():
    assert [r.sdk for r in releases_with("transformers-neuronx", "0.13.1216")] == ["2.25.0"]
    assert RELEASES[-1].sdk == "2.18.0" and RELEASES[0].sdk == "2.26.1"
    assert parse_cores("0-3,8") == {0, 1, 2, 3, 8}


def test_probe_parses_df_and_meminfo():
    snap = hostprobe.parse(hostprobe.read_recording(HEALTHY), "x")
    assert snap.mem_total == 792360256 * 1024 and snap.disk_free == 413321476 * 1024
    assert snap.disk_path == "/" and snap.package_tool == "dpkg"
    assert check_host(snap).ok


@pytest.mark.slow  # runs the live host's tools (dpkg-query, neuron-ls)
def test_a_live_debian_host_without_neuron_packages_reports_them_missing(
    tmp_path, monkeypatch, capsys
):
    """dpkg-query exits 1 when nothing matches: an answer (no runtime, no driver), recorded as
    such, not a tool that failed."""
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "dpkg-query"
    fake.write_text(
        "#!/bin/sh\necho 'dpkg-query: no packages found matching aws-neuronx-*' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    rec = tmp_path / "rec"
    main(["doctor", "--record", str(rec), "--json"])
    capsys.readouterr()
    assert (rec / "dpkg.txt").read_text() == ""
    # the same host with the 2.25 Python packages: the OS components are reported missing
    shutil.copy(HEALTHY / "pip-list.json", rec / "pip-list.json")
    rc, report = doctor(capsys, "--from", str(rec))
    missing = sorted(f["path"] for f in report["findings"] if f["code"] == "component-missing")
    assert missing == [
        "host.aws-neuronx-collectives",
        "host.aws-neuronx-dkms",
        "host.aws-neuronx-runtime-lib",
    ]
    assert rc == 1


SDK228 = ROOT / "tests" / "hosts" / "trn1.32xlarge-sdk2.28"


def test_doctor_recognises_nxdi_on_a_recorded_sdk_2_28_host(capsys, tmp_path):
    nxdi_config = ROOT / "configs" / "trn1-llama2-70b-7b-nxdi.yaml"
    rc, report = doctor(capsys, str(nxdi_config), "--from", str(SDK228))
    codes = {f["code"]: f for f in report["findings"]}
    assert rc == 0, report["findings"]
    assert "tnx-missing" not in codes and "nxdi-missing" not in codes
    assert "0.8.16251 shipped with Neuron SDK 2.28" in codes["neuron-sdk"]["message"]
    # the same host without a config: NxDI is what is installed, so it is checked for that
    rc, report = doctor(capsys, "--from", str(SDK228))
    assert rc == 0 and not any(f["code"] == "tnx-missing" for f in report["findings"])


def test_doctor_on_nxdi_names_a_wrong_release_and_the_transformers_pin(capsys, tmp_path):
    import shutil

    host = tmp_path / "host"
    shutil.copytree(SDK228, host)
    packages = json.loads((host / "pip-list.json").read_text())
    for p in packages:
        if p["name"] == "neuronx-distributed-inference":
            p["version"] = "0.9.17334"
        if p["name"] == "transformers":
            p["version"] = "4.55.0"
    (host / "pip-list.json").write_text(json.dumps(packages))
    nxdi_config = ROOT / "configs" / "trn1-llama2-70b-7b-nxdi.yaml"
    _rc, report = doctor(capsys, str(nxdi_config), "--from", str(host))
    codes = {f["code"] for f in report["findings"]}
    assert {"nxdi-release", "nxdi-transformers-pin"} <= codes
    (host / "pip-list.json").write_text(
        json.dumps([p for p in packages if "inference" not in p["name"]])
    )
    rc, report = doctor(capsys, str(nxdi_config), "--from", str(host))
    assert rc == 1 and any(f["code"] == "nxdi-missing" for f in report["findings"])


# --- NxD Inference DLAMIs: 2.28, 2.29, 2.31 (recordings written from the SDK's package lists) ---

HOSTS = ROOT / "tests" / "hosts"
NXDI_VENV = "/opt/aws_neuronx_venv_pytorch_2_9_nxd_inference"
NXDI_CONFIG = ROOT / "configs" / "trn1-llama2-70b-7b-nxdi.yaml"


@pytest.mark.parametrize(
    ("recording", "release", "sdk", "warnings"),
    [
        ("trn1.32xlarge-sdk2.28", "0.8.16251", "2.28", []),
        ("trn1.32xlarge-sdk2.29", "0.9.17334", "2.29", ["nxdi-release"]),  # Trn2 and newer only
        ("inf2.48xlarge-sdk2.31", "0.10.18399", "2.31", []),
    ],
)
def test_each_nxdi_dlami_names_the_backend_and_its_environment(
    capsys, recording, release, sdk, warnings
):
    rc, report = doctor(capsys, "--from", str(HOSTS / recording))
    assert rc == 0 and codes(report, "error") == []
    assert codes(report, "warning") == warnings
    info = next(f for f in report["findings"] if f["code"] == "neuron-sdk")
    assert (
        f"neuronx-distributed-inference {release} shipped with Neuron SDK {sdk}" in info["message"]
    )
    assert (
        "`backend: nxdi`" in info["message"] and f"({NXDI_VENV}, Python 3.12.3)" in info["message"]
    )
    assert report["components"]["neuronx-distributed-inference"] == release
    if warnings:  # 0.9 on a Trn1: the AMI AWS names for Inf2/Trn1 instead
        warning = next(f for f in report["findings"] if f["code"] == "nxdi-release")
        assert "only supported on Trn2 and newer hardware" in warning["message"]
        assert "SDK 2.31" in warning["fix"] and "pytorch-2.9/ubuntu-24.04" in warning["fix"]
        assert "SDK 2.28" in warning["fix"]
    else:
        assert "AWS supports it on Inf2 and Trn1" in info["message"]
    # the release AWS names for Inf2/Trn1 now, said where another one is installed
    named = "the release AWS names for Inf2/Trn1 now is 0.10.18399 (SDK 2.31)"
    assert (named in info["message"]) is (release == "0.8.16251")


def test_the_2_29_dlami_on_a_trn2_has_no_warning(capsys, tmp_path):
    host = Path(shutil.copytree(HOSTS / "trn1.32xlarge-sdk2.29", tmp_path / "trn2"))

    def trn2(devices):
        for d in devices:
            d["nc_count"], d["memory_size"] = 8, 96 * GIB
            d["neuroncore_ids"] = list(range(8 * d["neuron_device"], 8 * d["neuron_device"] + 8))
        return devices

    edit_json(host / "neuron-ls.json", trn2)
    rc, report = doctor(capsys, "--from", str(host))
    assert rc == 0 and codes(report, "warning") == [] and codes(report) == ["neuron-sdk"]
    assert "AWS supports it on Trn2" in report["findings"][0]["message"]


def test_the_config_names_the_platform_when_neuron_ls_gave_no_devices(capsys, tmp_path):
    host = Path(shutil.copytree(HOSTS / "inf2.48xlarge-sdk2.31", tmp_path / "h"))
    packages = json.loads((host / "pip-list.json").read_text())
    for p in packages:
        if p["name"] == "neuronx-distributed-inference":
            p["version"] = "0.9.17334"
    (host / "pip-list.json").write_text(json.dumps(packages))
    (host / "neuron-ls.json").unlink()  # no devices: the trn1 config's instance decides
    _rc, report = doctor(capsys, str(NXDI_CONFIG), "--from", str(host))
    warning = next(f for f in report["findings"] if f["code"] == "nxdi-release")
    assert "installed on this Inf2/Trn1 host" not in warning["message"]
    assert "installed on this Trn1 host" in warning["message"]


@pytest.mark.parametrize(
    ("version", "said"),
    [
        ("0.7.15063", "shipped with Neuron SDK 2.27.1, before the releases neuron-spec drives"),
        ("0.11.1", "is not a release any Neuron SDK shipped"),
    ],
)
def test_nxdi_releases_neuron_spec_does_not_drive_are_named(capsys, tmp_path, version, said):
    host = Path(shutil.copytree(HOSTS / "inf2.48xlarge-sdk2.31", tmp_path / "h"))
    packages = json.loads((host / "pip-list.json").read_text())
    for p in packages:
        if p["name"] == "neuronx-distributed-inference":
            p["version"] = version
    (host / "pip-list.json").write_text(json.dumps(packages))
    rc, report = doctor(capsys, "--from", str(host))
    warning = next(f for f in report["findings"] if f["code"] == "nxdi-release")
    assert rc == 0 and said in warning["message"] and "0.10.18399 (SDK 2.31)" in warning["message"]
    assert "SDK 2.31" in warning["fix"] and "neuron-sdk" not in codes(report)


def test_a_python_outside_the_release_range_is_said(capsys, tmp_path):
    host = Path(shutil.copytree(HOSTS / "inf2.48xlarge-sdk2.31", tmp_path / "h"))
    (host / "python.json").write_text(json.dumps({"prefix": "/home/me/venv", "version": "3.10.12"}))
    _rc, report = doctor(capsys, "--from", str(host))
    info = next(f for f in report["findings"] if f["code"] == "neuron-sdk")
    assert "(/home/me/venv, Python 3.10.12)" in info["message"]
    assert "its SDK lists Python 3.11 to 3.13, this is 3.10.12" in info["message"]


def test_nxdi_missing_names_the_ami_aws_names_for_inf2_and_trn1(capsys, tmp_path):
    host = Path(shutil.copytree(HOSTS / "trn1.32xlarge-sdk2.28", tmp_path / "h"))
    edit_json(host / "pip-list.json", lambda ps: [p for p in ps if "inference" not in p["name"]])
    rc, report = doctor(capsys, str(NXDI_CONFIG), "--from", str(host))
    missing = next(f for f in report["findings"] if f["code"] == "nxdi-missing")
    assert rc == 1 and NXDI_VENV in missing["message"]
    assert "Neuron SDK 2.31 Deep Learning AMI" in missing["fix"] and "SDK 2.28" in missing["fix"]


def test_python_json_is_read_as_untrusted_text():
    raw = hostprobe.read_recording(HOSTS / "inf2.48xlarge-sdk2.31")
    snap = hostprobe.parse(raw, "x")
    assert snap.python_prefix == NXDI_VENV and snap.python_version == "3.12.3"
    for bad in ('{"prefix": 3, "version": "3.12; rm -rf /"}', "[1]", "not json"):
        snap = hostprobe.parse({**raw, "python.json": bad}, "x")
        assert snap.python_prefix is None and snap.python_version is None
