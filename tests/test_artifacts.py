"""The compiled-artifact cache: atomic entries, verification, prune, and the S3 mirror against
a real S3 API (a moto server on 127.0.0.1, through boto3's HTTP calls)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from neuron_spec.artifacts import ArtifactCache, ArtifactError, verify
from neuron_spec.cli import main

from .conftest import CONFIGS


def write_neffs(d: Path) -> None:
    (d / "aaaa.neff").write_bytes(b"graph A" * 1000)
    (d / "bbbb.neff").write_bytes(b"graph B" * 500)


def test_store_then_lookup(tmp_path):
    cache = ArtifactCache(tmp_path)
    path = cache.store("k1", write_neffs, {"role": "target"})
    assert path == tmp_path / "k1" and verify(path) is None
    assert cache.lookup("k1") == path
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"aaaa.neff", "bbbb.neff"}
    assert manifest["description"] == {"role": "target"}


def test_failed_write_leaves_nothing(tmp_path):
    cache = ArtifactCache(tmp_path)

    def boom(d: Path) -> None:
        write_neffs(d)
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError):
        cache.store("k1", boom)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArtifactError):
        cache.store("k2", lambda d: None)  # save() that wrote nothing
    assert cache.lookup("k2") is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "extra", "manifest"])
def test_damaged_entries_are_discarded(tmp_path, damage):
    cache = ArtifactCache(tmp_path)
    path = cache.store("k1", write_neffs)
    neff = path / "aaaa.neff"
    if damage == "truncate":
        neff.write_bytes(neff.read_bytes()[:10])
    elif damage == "flip":
        neff.write_bytes(b"X" + neff.read_bytes()[1:])
    elif damage == "delete":
        neff.unlink()
    elif damage == "extra":
        (path / "stray.neff").write_bytes(b"?")
    else:
        (path / "manifest.json").write_text("{not json")
    assert verify(path) is not None
    assert cache.lookup("k1") is None and not path.exists()
    assert cache.warnings


def test_prune(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.store("old", write_neffs)
    cache.store("new", write_neffs)
    cache.store("bad", write_neffs)
    (tmp_path / "bad" / "aaaa.neff").write_bytes(b"x")
    manifest = tmp_path / "old" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["created"] = time.time() - 10 * 86400
    manifest.write_text(json.dumps(data))  # (its checksum list is unchanged)
    assert [e.key for e in cache.prune(broken=True, dry_run=True)] == ["bad"]
    assert (tmp_path / "bad").exists()
    assert [e.key for e in cache.prune(broken=True)] == ["bad"]
    assert [e.key for e in cache.prune(older_than_s=86400)] == ["old"]
    assert [e.key for e in cache.entries()] == ["new"]


def test_cache_cli_list_and_prune(tmp_path, capsys):
    cache = ArtifactCache(tmp_path)
    cache.store("k1", write_neffs, {"role": "draft", "model": "m"})
    assert main(["cache", "list", "--dir", str(tmp_path), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [e["key"] for e in body["entries"]] == ["k1"] and body["entries"][0]["ok"]
    assert main(["cache", "prune", "--dir", str(tmp_path)]) == 2  # says what it needs
    assert "needs --all" in capsys.readouterr().err
    assert main(["cache", "prune", "--dir", str(tmp_path), "--all"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    assert cache.entries() == []


def test_dry_run_shows_the_plan_without_transformers_neuronx(capsys):
    cfg = CONFIGS / "trn1-llama2-70b-7b-bf16.yaml"
    assert main(["generate", str(cfg), "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    for role in ("draft", "target"):
        kw = plan[role]["from_pretrained_kwargs"]
        assert kw["tp_degree"] == 32 and kw["amp"] == "bf16" and kw["n_positions"] == 2048
    calls = plan["calls"]
    enable = calls.index("target.enable_speculative_decoder(7, batch_sizes=[1])")
    to_neuron = calls.index("target.to_neuron()")
    assert calls.index("draft.to_neuron()") < enable < to_neuron  # k = draft_tokens + 1 = 7
    assert plan["env"] == {"NEURON_RT_VISIBLE_CORES": "0-31"}
    assert main(["generate", str(cfg), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "export NEURON_RT_VISIBLE_CORES=0-31" in text
    assert "tp_degree=32" in text and "amp='bf16'" in text


def test_env_command_follows_the_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        (CONFIGS / "inf2-llama2-70b-7b-bf16.yaml").read_text()
        + "compile: {cc_flags: '-O1 --enable-fast-loading', "
        "neuron_cache_url: s3://my-bucket/neuron-cache}\n"
    )
    assert main(["env", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "export NEURON_RT_VISIBLE_CORES=0-23",
        "export NEURON_CC_FLAGS='-O1 --enable-fast-loading'",
        "export NEURON_COMPILE_CACHE_URL=s3://my-bucket/neuron-cache",
    ]


# --- the S3 mirror, against a moto server ----------------------------------------------------


@pytest.mark.aws
def test_s3_mirror_lets_a_second_machine_skip_compilation(tmp_path, s3_server):
    uri = "s3://fleet-artifacts/neuron-spec/compiled"
    first = ArtifactCache(tmp_path / "machine-a", uri)  # boto3 client from the environment
    first.store("k1", write_neffs, {"role": "target"})
    assert first.warnings == []
    keys = sorted(o["Key"] for o in s3_server.list_objects_v2(Bucket="fleet-artifacts")["Contents"])
    assert keys == [
        "neuron-spec/compiled/k1/aaaa.neff",
        "neuron-spec/compiled/k1/bbbb.neff",
        "neuron-spec/compiled/k1/manifest.json",
    ]
    second = ArtifactCache(tmp_path / "machine-b", uri)
    path = second.lookup("k1")
    assert path == tmp_path / "machine-b" / "k1" and verify(path) is None
    assert (path / "aaaa.neff").read_bytes() == b"graph A" * 1000


@pytest.mark.aws
def test_s3_entry_without_manifest_or_corrupt_is_ignored(tmp_path, s3_server):
    uri = "s3://fleet-artifacts/other"
    s3_server.put_object(Bucket="fleet-artifacts", Key="other/k9/aaaa.neff", Body=b"half")
    assert ArtifactCache(tmp_path / "a", uri).lookup("k9") is None  # interrupted upload
    good = ArtifactCache(tmp_path / "b", uri)
    good.store("k8", write_neffs)
    s3_server.put_object(Bucket="fleet-artifacts", Key="other/k8/aaaa.neff", Body=b"tampered")
    reader = ArtifactCache(tmp_path / "c", uri)
    assert reader.lookup("k8") is None
    assert any("unusable" in w for w in reader.warnings)
    assert not (tmp_path / "c" / "k8").exists()


@pytest.mark.aws
def test_unreachable_mirror_degrades_to_local(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    cache = ArtifactCache(tmp_path, "s3://fleet-artifacts/p")
    cache.store("k1", write_neffs)  # still stored locally
    assert cache.lookup("k1") == tmp_path / "k1"
    assert any("could not push" in w for w in cache.warnings)
