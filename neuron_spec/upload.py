"""Local checkpoints to S3, for an endpoint that downloads them: multipart, parallel, resumable,
unchanged files skipped.

- Where: s3://BUCKET/PREFIX/checkpoints/<directory name>-<12 hex of its real path>/<file>, so
  one directory always lands under the same prefix and a second deploy finds its files there.
- Skipped: a file whose object already has the same size and the same SHA-256 (kept in the
  object's metadata). Hashes are remembered per (path, size, mtime) in
  ~/.cache/neuron-spec/upload-hashes.json, so a 140 GB checkpoint is read once, not per deploy.
- Resumed: a large file goes up in parts; a deploy that stops half-way leaves its multipart
  upload open, and the next one lists the parts already there, keeps those whose MD5 matches
  the local bytes, and sends only the rest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import resolve_model
from .config import ConfigFile

PART_BYTES = 64 * 1024 * 1024  # S3 allows 5 MiB to 5 GiB per part, at most 10,000 parts
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10_000
WORKERS = 8
SHA_META = "neuron-spec-sha256"  # x-amz-meta-neuron-spec-sha256
_READ = 1 << 20


@dataclass(frozen=True)
class LocalFile:
    path: Path
    key: str
    size: int


@dataclass
class Checkpoint:
    """One local checkpoint (a directory, or a .gguf file) and where it goes."""

    source: str  # as the config wrote it
    local: Path
    bucket: str
    prefix: str  # key prefix ending in "/"
    uri: str  # what the packaged config's model field becomes
    files: list[LocalFile] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def local_checkpoints(
    cfg: ConfigFile, bucket: str, key_prefix: str
) -> tuple[list[Checkpoint], dict[str, str]]:
    """The local checkpoints of CONFIG (each once, even when both roles share it) and the
    s3:// URI each role's `model` becomes. Roles already on S3 are left out."""
    uploads: dict[Path, Checkpoint] = {}
    rewrite: dict[str, str] = {}
    for role, m in cfg.spec.models():
        r = resolve_model(m.model, cfg.base_dir, m.architecture)
        if r.kind not in ("directory", "gguf") or r.problem:
            continue
        local = Path(r.location).resolve()
        if local not in uploads:
            uploads[local] = _checkpoint(m.model, local, bucket, key_prefix)
        rewrite[role] = uploads[local].uri
    return list(uploads.values()), rewrite


def _checkpoint(source: str, local: Path, bucket: str, key_prefix: str) -> Checkpoint:
    ident = hashlib.sha256(str(local).encode()).hexdigest()[:12]
    if local.is_file():  # a .gguf file: its own prefix, the URI names the file
        prefix = f"{key_prefix}checkpoints/{local.stem}-{ident}/"
        files = [LocalFile(local, prefix + local.name, local.stat().st_size)]
        return Checkpoint(
            source, local, bucket, prefix, f"s3://{bucket}/{prefix}{local.name}", files
        )
    prefix = f"{key_prefix}checkpoints/{local.name}-{ident}/"
    files = [
        LocalFile(p, prefix + p.relative_to(local).as_posix(), p.stat().st_size)
        for p in _walk(local)
    ]
    return Checkpoint(source, local, bucket, prefix, f"s3://{bucket}/{prefix}", files)


def _walk(root: Path) -> Iterator[Path]:
    """Regular files under root (symlinks followed, as Hugging Face caches use them), sorted;
    hidden names and neuron-spec's own leftovers are not part of a checkpoint."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not name.startswith(".") and p.is_file():
                yield p


# --- hashing -----------------------------------------------------------------------------------


class HashCache:
    """SHA-256 of local files, remembered per (real path, size, mtime_ns)."""

    def __init__(self, path: Path | None = None):
        self.path = path or Path.home() / ".cache" / "neuron-spec" / "upload-hashes.json"
        self._lock = threading.Lock()
        try:
            self._data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._data = {}

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        with self._lock:
            hit = self._data.get(key)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return str(hit["sha256"])
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_READ):
                h.update(chunk)
        digest = h.hexdigest()
        with self._lock:
            self._data[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        return digest

    def save(self) -> None:
        """Atomically; a cache that cannot be written only costs a re-read next time."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f, self._lock:
                json.dump(self._data, f)
            os.replace(tmp, self.path)
        except OSError:
            pass


# --- upload ------------------------------------------------------------------------------------


@dataclass
class UploadReport:
    uploaded: list[str] = field(default_factory=list)  # keys sent (whole or in parts)
    skipped: list[str] = field(default_factory=list)  # already there, same size and SHA-256
    resumed: dict[str, int] = field(default_factory=dict)  # key -> parts kept from before
    bytes_sent: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "uploaded": self.uploaded,
            "skipped": self.skipped,
            "resumed": self.resumed,
            "bytes_sent": self.bytes_sent,
        }


class Uploader:
    """Sends checkpoints with one pool of workers shared by all files and parts."""

    def __init__(
        self,
        s3: Any,
        on_bytes: Callable[[int], None] = lambda _n: None,
        say: Callable[[str], None] = lambda _m: None,
        part_bytes: int = PART_BYTES,
        workers: int = WORKERS,
        hashes: HashCache | None = None,
    ):
        self.s3, self.say, self.workers = s3, say, workers
        self.part_bytes = max(part_bytes, MIN_PART_BYTES)
        self.hashes = hashes or HashCache()
        self.report = UploadReport()
        self._lock = threading.Lock()
        self._on_bytes = on_bytes

    def _progress(self, n: int, sent: bool) -> None:
        with self._lock:
            if sent:
                self.report.bytes_sent += n
            self._on_bytes(n)

    def upload(self, checkpoints: list[Checkpoint]) -> UploadReport:
        """Hash and check each file here, in order, while the pool sends what is decided: a
        whole small file, or the missing parts of a large one. Multipart uploads are completed
        once their parts are in. Only leaf jobs run in the pool, so it cannot deadlock."""
        jobs: list[Future[Any]] = []
        open_uploads: list[tuple[str, LocalFile, str, dict[int, Any]]] = []
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            try:
                for c in checkpoints:
                    for f in c.files:
                        parts = self._plan_file(pool, c.bucket, f, jobs)
                        if parts is not None:
                            open_uploads.append((c.bucket, f, *parts))
                for job in jobs:
                    job.result()
            except BaseException:
                for job in jobs:
                    job.cancel()
                raise
            finally:
                self.hashes.save()
        for bucket, f, upload_id, etags in open_uploads:
            resolved = {n: (e.result() if isinstance(e, Future) else e) for n, e in etags.items()}
            self.s3.complete_multipart_upload(
                Bucket=bucket,
                Key=f.key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": resolved[n]} for n in sorted(resolved)]
                },
            )
            with self._lock:
                self.report.uploaded.append(f.key)
        return self.report

    def _plan_file(
        self, pool: ThreadPoolExecutor, bucket: str, f: LocalFile, jobs: list[Future[Any]]
    ) -> tuple[str, dict[int, Any]] | None:
        """Skip, send whole, or start/resume in parts: (upload id, part -> ETag or future)."""
        sha = self.hashes.sha256(f.path)
        if self._unchanged(bucket, f, sha):
            with self._lock:
                self.report.skipped.append(f.key)
            self._progress(f.size, sent=False)
            return None
        if f.size <= self.part_bytes:
            jobs.append(pool.submit(self._put, bucket, f, sha))
            return None
        part = self._part_size(f.size)
        count = -(-f.size // part)
        upload_id, kept = self._resume(bucket, f, sha, part)
        if kept:
            with self._lock:
                self.report.resumed[f.key] = len(kept)
            self._progress(sum(min(part, f.size - (n - 1) * part) for n in kept), sent=False)
            self.say(f"resuming {f.key}: {len(kept)} of {count} parts already there")
        etags: dict[int, Any] = dict(kept)
        for n in range(1, count + 1):
            if n not in kept:
                etags[n] = pool.submit(self._send_part, bucket, f, upload_id, n, part)
                jobs.append(etags[n])
        return upload_id, etags

    def _put(self, bucket: str, f: LocalFile, sha: str) -> None:
        with f.path.open("rb") as body:
            self.s3.put_object(Bucket=bucket, Key=f.key, Body=body.read(), Metadata={SHA_META: sha})
        self._progress(f.size, sent=True)
        with self._lock:
            self.report.uploaded.append(f.key)

    def _unchanged(self, bucket: str, f: LocalFile, sha: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            head = self.s3.head_object(Bucket=bucket, Key=f.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return bool(
            head.get("ContentLength") == f.size and head.get("Metadata", {}).get(SHA_META) == sha
        )

    def _part_size(self, size: int) -> int:
        return max(self.part_bytes, -(-size // MAX_PARTS))

    def _resume(self, bucket: str, f: LocalFile, sha: str, part: int) -> tuple[str, dict[int, str]]:
        """An open multipart upload of this file with this content (parts that verify), or a
        new one. Uploads of other content under the key are aborted."""
        listing = self.s3.list_multipart_uploads(Bucket=bucket, Prefix=f.key)
        for up in listing.get("Uploads", []):
            if up.get("Key") != f.key:
                continue
            kept = self._verified_parts(bucket, f, up["UploadId"], part)
            if kept is not None:
                return up["UploadId"], kept
            self.s3.abort_multipart_upload(Bucket=bucket, Key=f.key, UploadId=up["UploadId"])
        created = self.s3.create_multipart_upload(
            Bucket=bucket, Key=f.key, Metadata={SHA_META: sha}
        )
        return str(created["UploadId"]), {}

    def _verified_parts(
        self, bucket: str, f: LocalFile, upload_id: str, part: int
    ) -> dict[int, str] | None:
        """Parts of an open upload whose MD5 matches the local bytes; None when any does not
        (the file changed, or another part size was used): that upload cannot be finished."""
        kept: dict[int, str] = {}
        marker = 0
        while True:
            page = self.s3.list_parts(
                Bucket=bucket, Key=f.key, UploadId=upload_id, PartNumberMarker=marker
            )
            for p in page.get("Parts", []):
                n, etag = int(p["PartNumber"]), str(p["ETag"])
                expected = min(part, f.size - (n - 1) * part)
                if p.get("Size") != expected or etag.strip('"') != _md5(f.path, n, part):
                    return None
                kept[n] = etag
            if not page.get("IsTruncated"):
                return kept
            marker = int(page["NextPartNumberMarker"])

    def _send_part(self, bucket: str, f: LocalFile, upload_id: str, n: int, part: int) -> str:
        data = _read_part(f.path, n, part)
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        resp = self.s3.upload_part(
            Bucket=bucket,
            Key=f.key,
            UploadId=upload_id,
            PartNumber=n,
            Body=data,
            ContentMD5=md5,
        )
        self._progress(len(data), sent=True)
        return str(resp["ETag"])


def _read_part(path: Path, n: int, part: int) -> bytes:
    with path.open("rb") as f:
        f.seek((n - 1) * part)
        return f.read(part)


def _md5(path: Path, n: int, part: int) -> str:
    return hashlib.md5(_read_part(path, n, part)).hexdigest()
