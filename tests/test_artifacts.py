"""The compiled-artifact cache: atomic entries, verification, prune, and the S3 mirror against
a real S3 API (a moto server on 127.0.0.1, through boto3's HTTP calls)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from neuron_spec.backends.artifacts import ArtifactCache, ArtifactError, verify
from neuron_spec.cli.main import main

from .conftest import CONFIGS


def key(name: str) -> str:
    """A key in the cache's format (loadplan.cache_key: 24 hex digits)."""
    return hashlib.sha256(name.encode()).hexdigest()[:24]


K1, K2, K8, K9, OLD, NEW, BAD = map(key, ["k1", "k2", "k8", "k9", "old", "new", "bad"])


def write_neffs(d: Path) -> None:
    (d / "aaaa.neff").write_bytes(b"graph A" * 1000)
    (d / "bbbb.neff").write_bytes(b"graph B" * 500)


def test_store_then_lookup(tmp_path):
    cache = ArtifactCache(tmp_path)
    path = cache.store(K1, write_neffs, {"role": "target"})
    assert path == tmp_path / K1 and verify(path) is None
    assert cache.lookup(K1) == path
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"aaaa.neff", "bbbb.neff"}
    assert manifest["description"] == {"role": "target"}


def test_failed_write_leaves_nothing(tmp_path):
    cache = ArtifactCache(tmp_path)

    def boom(d: Path) -> None:
        write_neffs(d)
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError):
        cache.store(K1, boom)
    assert cache.entries() == [] and not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ArtifactError):
        cache.store(K2, lambda d: None)  # save() that wrote nothing
    assert cache.lookup(K2) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "extra", "manifest"])
def test_damaged_entries_are_discarded(tmp_path, damage):
    cache = ArtifactCache(tmp_path)
    path = cache.store(K1, write_neffs)
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
    assert cache.lookup(K1) is None and not path.exists()
    assert cache.warnings


def test_prune(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.store(OLD, write_neffs)
    cache.store(NEW, write_neffs)
    cache.store(BAD, write_neffs)
    (tmp_path / BAD / "aaaa.neff").write_bytes(b"x")
    manifest = tmp_path / OLD / "manifest.json"
    data = json.loads(manifest.read_text())
    data["created"] = time.time() - 10 * 86400
    manifest.write_text(json.dumps(data))  # (its checksum list is unchanged)
    assert [e.key for e in cache.prune(broken=True, dry_run=True)] == [BAD]
    assert (tmp_path / BAD).exists()
    assert [e.key for e in cache.prune(broken=True)] == [BAD]
    assert [e.key for e in cache.prune(older_than_s=86400)] == [OLD]
    assert [e.key for e in cache.entries()] == [NEW]


def test_cache_cli_list_and_prune(tmp_path, capsys):
    cache = ArtifactCache(tmp_path)
    cache.store(K1, write_neffs, {"role": "draft", "model": "m"})
    assert main(["cache", "list", "--dir", str(tmp_path), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [e["key"] for e in body["entries"]] == [K1] and body["entries"][0]["ok"]
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
    first.store(K1, write_neffs, {"role": "target"})
    assert first.warnings == []
    keys = sorted(o["Key"] for o in s3_server.list_objects_v2(Bucket="fleet-artifacts")["Contents"])
    assert keys == [
        f"neuron-spec/compiled/{K1}/aaaa.neff",
        f"neuron-spec/compiled/{K1}/bbbb.neff",
        f"neuron-spec/compiled/{K1}/manifest.json",
    ]
    second = ArtifactCache(tmp_path / "machine-b", uri)
    path = second.lookup(K1)
    assert path == tmp_path / "machine-b" / K1 and verify(path) is None
    assert (path / "aaaa.neff").read_bytes() == b"graph A" * 1000


@pytest.mark.aws
def test_s3_entry_without_manifest_or_corrupt_is_ignored(tmp_path, s3_server):
    uri = "s3://fleet-artifacts/other"
    s3_server.put_object(Bucket="fleet-artifacts", Key=f"other/{K9}/aaaa.neff", Body=b"half")
    assert ArtifactCache(tmp_path / "a", uri).lookup(K9) is None  # interrupted upload
    good = ArtifactCache(tmp_path / "b", uri)
    good.store(K8, write_neffs)
    s3_server.put_object(Bucket="fleet-artifacts", Key=f"other/{K8}/aaaa.neff", Body=b"tampered")
    reader = ArtifactCache(tmp_path / "c", uri)
    assert reader.lookup(K8) is None
    assert any("unusable" in w for w in reader.warnings)
    assert not (tmp_path / "c" / K8).exists()


@pytest.mark.aws
def test_unreachable_mirror_degrades_to_local(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    cache = ArtifactCache(tmp_path, "s3://fleet-artifacts/p")
    cache.store(K1, write_neffs)  # still stored locally
    assert cache.lookup(K1) == tmp_path / K1
    assert any("could not push" in w for w in cache.warnings)


# --- hostile storage ---------------------------------------------------------------------------

TRAVERSAL = ["../../escaped.txt", "sub//double.txt", "/absolute.txt", "./dot.txt"]


def _put_entry_with_traversal(s3, prefix: str, good: ArtifactCache, k: str) -> None:
    for name in TRAVERSAL:
        s3.put_object(Bucket="fleet-artifacts", Key=f"{prefix}/{k}/{name}", Body=b"evil")
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket="fleet-artifacts")["Contents"]}
    assert f"{prefix}/{k}/../../escaped.txt" in listed  # the keys really exist as written


@pytest.mark.aws
def test_mirror_keys_that_would_escape_the_entry_are_refused(tmp_path, s3_server):
    uri = "s3://fleet-artifacts/hostile"
    writer = ArtifactCache(tmp_path / "w", uri)
    writer.store(K1, write_neffs)
    _put_entry_with_traversal(s3_server, "hostile", writer, K1)
    reader = ArtifactCache(tmp_path / "host" / "cache", uri)
    path = reader.lookup(K1)  # the entry itself verifies; the hostile keys are refused
    assert path is not None and verify(path, K1) is None
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert not any("escaped" in w or "absolute" in w or "double" in w for w in written), written
    for name in TRAVERSAL:
        assert any(f"hostile/{K1}/{name}" in w and "refused" in w for w in reader.warnings), name


@pytest.mark.aws
def test_the_entry_points_download_refuses_escaping_keys(tmp_path, s3_server, capsys):
    from neuron_spec.serving import sagemaker_entry

    for name in ["config.json", *TRAVERSAL]:
        s3_server.put_object(Bucket="fleet-artifacts", Key=f"ckpt/m/{name}", Body=b"{}")
    dest = tmp_path / "models" / "target"
    sagemaker_entry._download("s3://fleet-artifacts/ckpt/m", dest)  # what the endpoint runs
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["models/target/.complete", "models/target/config.json"]
    warned = [line for line in capsys.readouterr().out.splitlines() if "refused" in line]
    assert len(warned) == len(TRAVERSAL)
    for name in TRAVERSAL:
        assert any(f"ckpt/m/{name}" in w for w in warned), name


@pytest.mark.aws
@pytest.mark.slow  # 3000 requests to the S3 server (a mirror entry pulled past the first page)
def test_mirror_entries_of_more_than_1000_files_are_pulled(tmp_path, s3_server):
    uri = "s3://fleet-artifacts/many"

    def write_many(d: Path) -> None:
        for i in range(1001):
            (d / f"g{i:04d}.neff").write_bytes(b"%d" % i)

    ArtifactCache(tmp_path / "a", uri).store(K2, write_many)
    path = ArtifactCache(tmp_path / "b", uri).lookup(K2)
    assert path is not None and len(list(path.glob("*.neff"))) == 1001


def _fake_hf_cache(root: Path) -> Path:
    hub = root / "huggingface" / "hub" / "models--x"
    hub.mkdir(parents=True)
    (hub / "weights.safetensors").write_bytes(b"precious")
    (root / "pip").mkdir()
    (root / "notes.txt").write_text("mine")
    return root


@pytest.mark.parametrize("flag", ["--all", "--broken"])
def test_prune_deletes_only_its_own_entries(tmp_path, capsys, flag):
    root = _fake_hf_cache(tmp_path / "cache")
    cache = ArtifactCache(root)
    cache.store(K1, write_neffs)
    cache.store(BAD, write_neffs)
    (root / BAD / "aaaa.neff").write_bytes(b"x")
    (root / K2).mkdir()  # named like a key but never written by the cache: broken, removable
    assert main(["cache", "prune", "--dir", str(root), flag]) == 0
    out = capsys.readouterr().out
    assert (root / "huggingface" / "hub" / "models--x" / "weights.safetensors").is_file()
    assert (root / "pip").is_dir() and (root / "notes.txt").is_file()
    assert "left alone" in out and "huggingface" in out
    assert not (root / BAD).exists()
    assert (root / K1).exists() == (flag == "--broken")


@pytest.mark.parametrize("flag", ["--all", "--broken"])
def test_prune_refuses_a_directory_that_is_not_a_cache(tmp_path, capsys, flag):
    root = _fake_hf_cache(tmp_path / "home-cache")
    before = sorted(str(p) for p in root.rglob("*"))
    assert main(["cache", "prune", "--dir", str(root), flag]) == 2
    assert "not a neuron-spec artifact cache" in capsys.readouterr().err
    assert sorted(str(p) for p in root.rglob("*")) == before


@pytest.mark.parametrize(
    "manifest",
    ["{trunc", "[]", '{"files": []}', '{"files": {"a": 3}}', '{"key": 5, "files": {}}', "null"],
)
def test_tampered_manifests_are_broken_entries_not_crashes(tmp_path, capsys, manifest):
    cache = ArtifactCache(tmp_path)
    path = cache.store(K1, write_neffs)
    (path / "manifest.json").write_text(manifest)
    assert main(["cache", "list", "--dir", str(tmp_path), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["entries"][0]
    assert not entry["ok"] and entry["problem"]
    assert cache.lookup(K1) is None
    cache.store(K2, write_neffs)
    (tmp_path / K2 / "manifest.json").write_text(manifest)
    assert [e.key for e in cache.prune(broken=True)] == [K2]


def test_a_manifest_listing_files_outside_the_entry_is_broken(tmp_path):
    cache = ArtifactCache(tmp_path)
    path = cache.store(K1, write_neffs)
    (tmp_path / "outside.neff").write_bytes(b"graph A" * 1000)
    data = json.loads((path / "manifest.json").read_text())
    data["files"]["../outside.neff"] = data["files"].pop("aaaa.neff")
    (path / "manifest.json").write_text(json.dumps(data))
    assert verify(path) == "unreadable manifest"


def test_concurrent_writers_of_one_key_publish_once(tmp_path):
    import threading

    cache_a, cache_b = ArtifactCache(tmp_path), ArtifactCache(tmp_path)
    barrier = threading.Barrier(2)
    results: list[Path] = []
    errors: list[BaseException] = []

    def writer(cache: ArtifactCache) -> None:
        def write(d: Path) -> None:
            write_neffs(d)
            barrier.wait()  # both have a complete temporary entry before either publishes

        try:
            results.append(cache.store(K1, write))
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(c,)) for c in (cache_a, cache_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and results == [tmp_path / K1] * 2
    assert verify(tmp_path / K1, K1) is None and not list(tmp_path.glob(".tmp-*"))


def test_prune_cleans_leftovers_and_dangling_links(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.store(K1, write_neffs)
    (tmp_path / f".trash-{K2}-1234").mkdir()
    (tmp_path / f".tmp-{K2}-1-dead").symlink_to(tmp_path / "nowhere")
    fresh = tmp_path / f".tmp-{K8}-2-live"  # a write in progress: left alone
    fresh.mkdir()
    cache.prune(older_than_s=10 * 86400)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".neuron-spec-cache", K1, fresh.name]
    )


def test_cache_list_has_headers_and_a_missing_dir_is_a_usage_error(tmp_path, capsys):
    cache = ArtifactCache(tmp_path / "c")
    cache.store("0123456789abcdef01234567", lambda d: (d / "a.neff").write_bytes(b"x"), {
        "role": "target", "model": "llama-2-70b"})  # fmt: skip
    assert main(["cache", "list", "--dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert all(h in out for h in ("key", "size", "role", "model", "state"))
    assert "llama-2-70b" in out and "1 entry" in out
    for args in (["cache", "list"], ["cache", "prune", "--broken"]):
        assert main([*args, "--dir", str(tmp_path / "nowhere")]) == 2
        assert "does not exist" in capsys.readouterr().err
