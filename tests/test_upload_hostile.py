"""Uploads stay inside the checkpoint and store what they say they store: links out of the
checkpoint, link loops, corrupt hash memories, content changed behind a restored mtime, and a
file that changes while its parts go up. Against a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from neuron_spec.config.spec import load_config
from neuron_spec.deploy.upload import (
    SHA_META,
    ChangedWhileUploading,
    HashCache,
    Uploader,
    local_checkpoints,
)
from neuron_spec.util.localtree import walk

from .conftest import moto_clients

MiB = 1024 * 1024


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32000}))
    (d / "model.safetensors").write_bytes(os.urandom(64 * 1024))
    (d / "sub").mkdir()
    (d / "sub" / "extra.json").write_text("{}")
    return d


def _hostile(d: Path, outside: Path) -> None:
    """Links to a credentials file, /etc/passwd, an outside directory, and a loop."""
    creds = outside / ".aws" / "credentials"
    creds.parent.mkdir(parents=True)
    creds.write_text("[default]\naws_secret_access_key = SECRETSECRET\n")
    elsewhere = outside / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "private.txt").write_text("not for upload")
    (d / "credentials").symlink_to(creds)
    (d / "passwd").symlink_to("/etc/passwd")
    (d / "outside-dir").symlink_to(elsewhere)
    (d / "loop").symlink_to(".")
    (d / "sub" / "up").symlink_to("..")
    (d / "inside-link.json").symlink_to(d / "config.json")  # inside: followed


def test_links_out_of_the_checkpoint_and_loops_are_skipped_and_named(tmp_path, checkpoint):
    outside = tmp_path / "home"
    _hostile(checkpoint, outside)
    tree = walk(checkpoint)
    names = sorted(p.relative_to(checkpoint).as_posix() for p in tree.files)
    assert names == ["config.json", "inside-link.json", "model.safetensors", "sub/extra.json"]
    said = "\n".join(tree.skipped)
    for link in ("credentials", "passwd", "outside-dir", "loop", "sub/up"):
        assert any(s.startswith(f"{link}:") for s in tree.skipped), (link, said)
    assert "outside" in said and "loop" in said


def test_a_hugging_face_snapshot_links_into_its_own_blobs(tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "blobs" / "f00d").write_text("{}")
    (snap / "config.json").symlink_to("../../blobs/f00d")
    (tmp_path / "secret").write_text("x")
    (snap / "leak").symlink_to(tmp_path / "secret")
    from neuron_spec.util.localtree import hf_snapshot_blobs

    tree = walk(snap, hf_snapshot_blobs(snap))
    assert [p.name for p in tree.files] == ["config.json"]
    assert len(tree.skipped) == 1 and tree.skipped[0].startswith("leak:")


@pytest.mark.aws
def test_deploy_upload_sends_nothing_from_outside_and_names_each_link(
    moto_endpoint, tmp_path, checkpoint
):
    s3, _, _ = moto_clients("hostile-bucket")
    _hostile(checkpoint, tmp_path / "home")
    cfg = tmp_path / "pair.yaml"
    cfg.write_text(
        "instance: inf2.48xlarge\nbackend: neuronx\n"
        f"target: {{model: {checkpoint}, architecture: llama-2-70b, tp_degree: 24}}\n"
        f"draft: {{model: {checkpoint}, architecture: llama-2-7b, tp_degree: 24}}\n"
    )
    (ckpt,), _ = local_checkpoints(load_config(cfg), "hostile-bucket", "p/")
    Uploader(s3, hashes=HashCache(tmp_path / "h.json")).upload([ckpt])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="hostile-bucket")["Contents"]]
    stored = b"".join(s3.get_object(Bucket="hostile-bucket", Key=k)["Body"].read() for k in keys)
    assert len(keys) == 4 and all(k.count("/loop") == 0 for k in keys)
    assert b"SECRETSECRET" not in stored and b"root:" not in stored
    assert b"not for upload" not in stored
    assert len(ckpt.skipped) == 5


CORRUPT_MEMORIES = [
    b"not json at all",
    b"[1, 2, 3]",
    b'{"version": 2, "files": {"/x": {"stamp": "abc", "sha256": 5}}}',
    b'{"version": 2, "files": [], "uploads": "x"}',
    b'{"version": 2, "files": {"/x": {"stamp": [1,2,3,4,1e400], "sha256": "zz"}}}',
    b"\xff\xfe\x00garbage",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"version": 2, "files": {"/x": {"stamp": [' + b"9" * 5000 + b',1,1,1,1], "sha256": ""}}}',
    b'{"size": 1, "mtime_ns": 2, "sha256": "old format"}',
]


@pytest.mark.parametrize("raw", CORRUPT_MEMORIES, ids=range(len(CORRUPT_MEMORIES)))
def test_a_corrupt_hash_memory_is_an_empty_one(tmp_path, checkpoint, raw):
    memory = tmp_path / "upload-hashes.json"
    memory.write_bytes(raw)
    cache = HashCache(memory)
    f = checkpoint / "model.safetensors"
    assert cache.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    cache.save()
    assert HashCache(memory).sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_a_directory_in_place_of_the_hash_memory_is_harmless(tmp_path, checkpoint):
    (tmp_path / "upload-hashes.json").mkdir()
    cache = HashCache(tmp_path / "upload-hashes.json")
    f = checkpoint / "config.json"
    assert cache.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    cache.save()  # cannot replace a directory: costs a re-read next time, no error


def test_new_content_with_the_same_size_and_a_restored_mtime_is_hashed_again(tmp_path, checkpoint):
    f = checkpoint / "model.safetensors"
    memory = tmp_path / "h.json"
    cache = HashCache(memory)
    first = cache.sha256(f)
    cache.save()
    st = f.stat()
    f.write_bytes(os.urandom(st.st_size))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    again = HashCache(memory).sha256(f)
    assert again != first and again == hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.mark.aws
def test_a_small_file_changed_after_hashing_is_stored_with_its_own_checksum(
    moto_endpoint, tmp_path, checkpoint
):
    s3, _, _ = moto_clients("exact-bucket")
    cfg = tmp_path / "pair.yaml"
    cfg.write_text(
        "instance: inf2.48xlarge\nbackend: neuronx\n"
        f"target: {{model: {checkpoint}, architecture: llama-2-70b, tp_degree: 24}}\n"
        f"draft: {{model: {checkpoint}, architecture: llama-2-7b, tp_degree: 24}}\n"
    )
    (ckpt,), _ = local_checkpoints(load_config(cfg), "exact-bucket", "p/")
    target = checkpoint / "config.json"

    class ChangingHashes(HashCache):
        def sha256(self, path):
            digest = super().sha256(path)
            if path == target:  # the file changes right after it was hashed
                target.write_text('{"model_type": "llama", "changed": true}')
            return digest

    Uploader(s3, hashes=ChangingHashes(tmp_path / "h.json")).upload([ckpt])
    key = next(f.key for f in ckpt.files if f.key.endswith("config.json"))
    obj = s3.get_object(Bucket="exact-bucket", Key=key)
    body = obj["Body"].read()
    assert obj["Metadata"][SHA_META] == hashlib.sha256(body).hexdigest()
    assert body == target.read_bytes()


@pytest.mark.aws
def test_a_large_file_changed_while_its_parts_go_up_is_not_completed(
    moto_endpoint, tmp_path, checkpoint
):
    s3, _, _ = moto_clients("parts-bucket")
    big = checkpoint / "model.safetensors"
    big.write_bytes(os.urandom(11 * MiB))
    cfg = tmp_path / "pair.yaml"
    cfg.write_text(
        "instance: inf2.48xlarge\nbackend: neuronx\n"
        f"target: {{model: {checkpoint}, architecture: llama-2-70b, tp_degree: 24}}\n"
        f"draft: {{model: {checkpoint}, architecture: llama-2-7b, tp_degree: 24}}\n"
    )
    (ckpt,), _ = local_checkpoints(load_config(cfg), "parts-bucket", "p/")

    class Rewriting:
        def __getattr__(self, name):
            return getattr(s3, name)

        def upload_part(self, **kw):
            if kw["PartNumber"] == 2:
                with big.open("r+b") as f:
                    f.write(b"\0" * 16)
            return s3.upload_part(**kw)

    uploader = Uploader(
        Rewriting(), part_bytes=5 * MiB, workers=1, hashes=HashCache(tmp_path / "h")
    )
    with pytest.raises(ChangedWhileUploading, match="changed while it was being uploaded"):
        uploader.upload([ckpt])
    listed = s3.list_objects_v2(Bucket="parts-bucket").get("Contents", [])
    assert not any(o["Key"].endswith("model.safetensors") for o in listed)
    assert s3.list_multipart_uploads(Bucket="parts-bucket").get("Uploads", []) == []


@pytest.mark.parametrize("raw", CORRUPT_MEMORIES, ids=range(len(CORRUPT_MEMORIES)))
def test_a_corrupt_hash_memory_is_discarded_with_a_warning_naming_it(tmp_path, raw):
    memory = tmp_path / "upload-hashes.json"
    memory.write_bytes(raw)
    said: list[str] = []
    report = Uploader(None, say=said.append, hashes=HashCache(memory)).upload([])
    assert report.uploaded == [] and len(said) == 1, said
    assert said[0].startswith("warning:") and str(memory) in said[0]
    assert "hashed again" in said[0]


def test_a_missing_or_sound_hash_memory_says_nothing(tmp_path, checkpoint):
    memory = tmp_path / "upload-hashes.json"
    said: list[str] = []
    Uploader(None, say=said.append, hashes=HashCache(memory)).upload([])
    cache = HashCache(memory)
    cache.sha256(checkpoint / "model.safetensors")
    cache.save()
    Uploader(None, say=said.append, hashes=HashCache(memory)).upload([])
    assert said == []
