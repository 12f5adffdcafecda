"""Compiled-artifact cache: the NEFFs transformers-neuronx's save() writes, kept per cache key.

An entry is a directory `<root>/<key>/` holding the files save() wrote plus `manifest.json`
(size and sha256 of each file, and what the key was made of). Entries are written into a
temporary directory and renamed into place only when complete, and verified against their
manifest before every use: a partial or corrupt entry is discarded and rebuilt, never loaded.

An optional S3 mirror (`compile.s3_mirror: s3://bucket/prefix`) lets a fleet compile once:
a local miss pulls from S3, a new entry is pushed. The manifest is uploaded last, so an
interrupted upload is invisible to readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NeuronSpecError

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class ArtifactError(NeuronSpecError):
    exit_code = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    size_bytes: int
    created: float | None
    description: dict[str, Any]
    problem: str | None  # None when the entry verifies

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "created": self.created,
            "ok": self.ok,
            "problem": self.problem,
            "description": self.description,
        }


def verify(path: Path) -> str | None:
    """None if the entry at path is complete and intact, else what is wrong."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (an interrupted write?)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files: dict[str, dict[str, Any]] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable manifest"
    if not files:
        return "manifest lists no files"
    for rel, meta in files.items():
        f = path / rel
        if not f.is_file():
            return f"missing file {rel}"
        if f.stat().st_size != meta.get("size"):
            return f"{rel} has the wrong size"
        if sha256_file(f) != meta.get("sha256"):
            return f"{rel} fails its checksum"
    extra = {str(p.relative_to(path)) for p in _files(path)} - set(files)
    if extra:
        return f"unexpected files {sorted(extra)}"
    return None


class ArtifactCache:
    def __init__(self, root: Path, s3_uri: str | None = None, s3_client: Any = None):
        self.root = Path(root)
        self.s3_uri = s3_uri
        self._s3 = s3_client
        self.warnings: list[str] = []  # mirror problems; the local cache still works

    # --- local ---------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> Path | None:
        """A verified entry for key (pulled from the S3 mirror on a local miss), or None."""
        d = self.path(key)
        if d.exists():
            problem = verify(d)
            if problem is None:
                return d
            self.warnings.append(f"cache entry {key} is unusable ({problem}); rebuilding it")
            self.discard(key)
        if self.s3_uri and self._pull(key):
            return d
        return None

    def discard(self, key: str) -> None:
        d = self.path(key)
        if not d.exists():
            return
        trash = self.root / f".trash-{key}-{uuid.uuid4().hex[:8]}"
        os.replace(d, trash)  # atomic: readers never see a half-deleted entry
        shutil.rmtree(trash, ignore_errors=True)

    def store(
        self, key: str, write: Callable[[Path], None], description: dict[str, Any] | None = None
    ) -> Path:
        """Run write(tmp_dir), then publish tmp_dir as the entry for key, atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            write(tmp)
            files = _files(tmp)
            if not files:
                raise ArtifactError(f"nothing was written for cache entry {key}")
            manifest = {
                "key": key,
                "created": time.time(),
                "description": description or {},
                "files": {
                    str(f.relative_to(tmp)): {"size": f.stat().st_size, "sha256": sha256_file(f)}
                    for f in files
                },
            }
            _write_json(tmp / MANIFEST, manifest)
            final = self.path(key)
            if final.exists():
                if verify(final) is None:  # another process published it first: keep theirs
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final
                self.discard(key)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.s3_uri:
            self._push(key)
        return final

    def entries(self) -> list[Entry]:
        out: list[Entry] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            problem = verify(d)
            desc: dict[str, Any] = {}
            created = None
            try:
                manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
                desc, created = manifest.get("description", {}), manifest.get("created")
            except (OSError, ValueError):
                pass
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            out.append(Entry(d.name, d, size, created, desc, problem))
        return out

    def prune(
        self,
        *,
        older_than_s: float | None = None,
        broken: bool = False,
        everything: bool = False,
        dry_run: bool = False,
    ) -> list[Entry]:
        """Remove entries: all, the broken ones, or those older than a duration.
        Also clears temporary directories left by interrupted writes."""
        now = time.time()
        doomed = [
            e
            for e in self.entries()
            if everything
            or (broken and not e.ok)
            or (older_than_s is not None and (e.created or 0) < now - older_than_s)
        ]
        if not dry_run:
            for e in doomed:
                self.discard(e.key)
            if self.root.is_dir():
                for leftover in self.root.glob(".tmp-*"):
                    if now - leftover.stat().st_mtime > 3600:
                        shutil.rmtree(leftover, ignore_errors=True)
        return doomed

    # --- S3 mirror -------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3")
        return self._s3

    def _bucket_prefix(self, key: str) -> tuple[str, str]:
        assert self.s3_uri is not None
        rest = self.s3_uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        prefix = prefix.strip("/")
        return bucket, (f"{prefix}/{key}" if prefix else key)

    def _push(self, key: str) -> None:
        bucket, prefix = self._bucket_prefix(key)
        d = self.path(key)
        try:
            client = self._client()
            for f in _files(d):
                client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(d)}")
            client.upload_file(str(d / MANIFEST), bucket, f"{prefix}/{MANIFEST}")  # last
        except Exception as exc:
            self.warnings.append(f"could not push {key} to {self.s3_uri}: {exc}")

    def _pull(self, key: str) -> bool:
        bucket, prefix = self._bucket_prefix(key)
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            client = self._client()
            listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
            names = [o["Key"][len(prefix) + 1 :] for o in listing.get("Contents", [])]
            if MANIFEST not in names:
                return False
            tmp.mkdir(parents=True)
            for name in names:
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, f"{prefix}/{name}", str(target))
            problem = verify(tmp)
            if problem is not None:
                self.warnings.append(f"mirror entry {key} in {self.s3_uri} is unusable: {problem}")
                return False
            os.replace(tmp, self.path(key))
            return True
        except Exception as exc:
            self.warnings.append(f"could not pull {key} from {self.s3_uri}: {exc}")
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".part")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
