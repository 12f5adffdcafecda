"""Local checkpoints to S3, for an endpoint that downloads them: multipart, parallel, resumable,
unchanged files skipped.

- Where: s3://BUCKET/PREFIX/checkpoints/<directory name>-<12 hex of its real path>/<file>, so
  one directory always lands under the same prefix and a second deploy finds its files there.
- What: the checkpoint's regular files. Links are followed only when they resolve inside the
  checkpoint (or, for a Hugging Face snapshot, into its own repository's blobs/): each link
  left out is named (localtree.py).
- Skipped: a file whose object already has the same size and the same SHA-256 (kept in the
  object's metadata). Hashes are remembered per file and change stamp (inode, size, mtime and
  ctime, which any write moves) in ~/.cache/neuron-spec/upload-hashes.json, so a 140 GB
  checkpoint is read once, not per deploy; a corrupt memory is an empty one, and the upload
  says so (naming the file) before it hashes everything again.
- Exact: a small file's stored SHA-256 is computed from the bytes sent; a large file that
  changes while its parts go up is not completed (ChangedWhileUploading).
- Resumed: a large file goes up in parts; a deploy that stops half-way leaves its multipart
  upload open, and the next one (on the same machine, for the same content) lists the parts
  already there, keeps those whose MD5 matches the local bytes, and sends only the rest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.artifacts import sha256_file
from ..config.spec import ConfigFile
from ..sources.checkpoint import resolve_model
from ..util.localtree import hf_snapshot_blobs, walk
from ..util.safeio import Unreadable, as_int, printable, read_json

PART_BYTES = 64 * 1024 * 1024  # S3 allows 5 MiB to 5 GiB per part, at most 10,000 parts
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10_000
WORKERS = 8
SHA_META = "neuron-spec-sha256"  # x-amz-meta-neuron-spec-sha256
MAX_HASHES_BYTES = 64 << 20
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
    skipped: list[str] = field(default_factory=list)  # links left out, each with its reason

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
    # Links are followed only inside the checkpoint (and a Hugging Face snapshot's own blobs);
    # hidden names and neuron-spec's own leftovers are not part of a checkpoint.
    tree = walk(local, hf_snapshot_blobs(local))
    files = [
        LocalFile(p, prefix + p.relative_to(local).as_posix(), p.stat().st_size) for p in tree.files
    ]
    return Checkpoint(source, local, bucket, prefix, f"s3://{bucket}/{prefix}", files, tree.skipped)


# --- hashing -----------------------------------------------------------------------------------


class HashCache:
    """SHA-256 of local files, remembered per file and its change stamp.

    The stamp is (device, inode, size, mtime_ns, ctime_ns). Writing a file's bytes moves its
    ctime, and ctime cannot be set back (utime sets mtime only, and moves ctime again), so new
    content with the same size and a restored mtime is hashed anew. The file on disk is
    hostile: anything in it that is not exactly an entry this class wrote is ignored."""

    def __init__(self, path: Path | None = None):
        self.path = path or Path.home() / ".cache" / "neuron-spec" / "upload-hashes.json"
        self._lock = threading.Lock()
        self._data, self._uploads, self.problem = _hash_entries(self.path)

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        with self._lock:
            hit = self._data.get(key)
        if hit is not None and hit["stamp"] == _stamp(st):
            return str(hit["sha256"])
        digest = sha256_file(path)
        with self._lock:
            self._data[key] = {"stamp": _stamp(st), "sha256": digest}
        return digest

    def take_warning(self) -> str | None:
        """What was wrong with the memory on disk, as a warning, once; None when it was sound
        (or absent) or the warning was taken already."""
        problem, self.problem = self.problem, None
        if problem is None:
            return None
        return (
            f"warning: the upload hash memory {printable(str(self.path))} {problem}: "
            "discarded, so the files it would have vouched for are hashed again"
        )

    def upload_sha(self, upload_id: str) -> str | None:
        """The SHA-256 an open multipart upload was started for (None: not started here)."""
        with self._lock:
            return self._uploads.get(upload_id)

    def remember_upload(self, upload_id: str, sha: str | None) -> None:
        with self._lock:
            if sha is None:
                self._uploads.pop(upload_id, None)
            else:
                self._uploads[upload_id] = sha

    def save(self) -> None:
        """Atomically; a cache that cannot be written only costs a re-read next time."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            body = {"version": HASHES_VERSION, "files": self._data, "uploads": self._uploads}
            with os.fdopen(fd, "w", encoding="utf-8") as f, self._lock:
                json.dump(body, f)
            os.replace(tmp, self.path)
        except OSError:
            pass


HASHES_VERSION = 2
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


Entries = dict[str, dict[str, Any]]


def _hash_entries(path: Path) -> tuple[Entries, dict[str, str], str | None]:
    """The well-formed entries of the hash memory, the multipart uploads started here, and
    what was wrong with the file (None: nothing, or no file yet). A corrupt or foreign file
    is an empty memory (every file is hashed again, open uploads are started afresh), and a
    malformed entry is left out: never an error."""
    if not os.path.lexists(path):
        return {}, {}, None
    try:
        data = read_json(path, MAX_HASHES_BYTES)
    except Unreadable as exc:
        return {}, {}, f"is unreadable ({exc})"
    if not isinstance(data, dict) or data.get("version") != HASHES_VERSION:
        return {}, {}, f"is not a version-{HASHES_VERSION} memory of neuron-spec's"
    files, uploads = data.get("files"), data.get("uploads", {})
    started = {
        k: v
        for k, v in (uploads.items() if isinstance(uploads, dict) else [])
        if isinstance(v, str) and _SHA256.match(v)
    }
    if not isinstance(files, dict) or not isinstance(uploads, dict):
        return {}, started, "has no mapping of files and uploads"
    out = {key: entry for key, entry in files.items() if _sound(entry)}
    dropped = len(files) - len(out) + len(uploads) - len(started)
    problem = f"has {dropped} malformed entr{'y' if dropped == 1 else 'ies'}" if dropped else None
    return (
        {k: {"stamp": e["stamp"], "sha256": e["sha256"]} for k, e in out.items()},
        started,
        problem,
    )


def _sound(entry: Any) -> bool:
    """An entry exactly as HashCache writes it: a stamp of five integers and a SHA-256."""
    if not isinstance(entry, dict):
        return False
    stamp, digest = entry.get("stamp"), entry.get("sha256")
    return (
        isinstance(stamp, list)
        and len(stamp) == 5
        and all(as_int(x) is not None for x in stamp)
        and isinstance(digest, str)
        and _SHA256.match(digest) is not None
    )


class ChangedWhileUploading(Exception):
    """A local file changed between hashing and sending: what would be stored is not what
    was hashed. Nothing of it is kept; running the deploy again sends the new content."""


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
        warning = self.hashes.take_warning()
        if warning:
            self.say(warning)
        jobs: list[Future[Any]] = []
        open_uploads: list[tuple[str, LocalFile, str, list[int], dict[int, Any]]] = []
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
        for bucket, f, upload_id, stamp, etags in open_uploads:
            resolved = {n: (e.result() if isinstance(e, Future) else e) for n, e in etags.items()}
            if _stamp(f.path.stat()) != stamp:  # its parts may mix old and new bytes
                self.s3.abort_multipart_upload(Bucket=bucket, Key=f.key, UploadId=upload_id)
                self.hashes.remember_upload(upload_id, None)
                self.hashes.save()
                raise ChangedWhileUploading(
                    f"{f.path} changed while it was being uploaded; nothing of it was kept. "
                    "Run the deploy again once the checkpoint is complete."
                )
            self.s3.complete_multipart_upload(
                Bucket=bucket,
                Key=f.key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": resolved[n]} for n in sorted(resolved)]
                },
            )
            self.hashes.remember_upload(upload_id, None)
            with self._lock:
                self.report.uploaded.append(f.key)
        self.hashes.save()
        return self.report

    def _plan_file(
        self, pool: ThreadPoolExecutor, bucket: str, f: LocalFile, jobs: list[Future[Any]]
    ) -> tuple[str, list[int], dict[int, Any]] | None:
        """Skip, send whole, or start/resume in parts: (upload id, the file's stamp when it was
        hashed, part -> ETag or future)."""
        stamp = _stamp(f.path.stat())
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
        return upload_id, stamp, etags

    def _put(self, bucket: str, f: LocalFile, sha: str) -> None:
        """Send a small file whole. Its checksum is taken from the very bytes sent (S3 checks
        them against Content-MD5), so the stored SHA-256 always matches the stored object,
        even when the file changed after it was first hashed."""
        with f.path.open("rb") as src:
            body = src.read()
        sent_sha = hashlib.sha256(body).hexdigest()
        if sent_sha != sha:
            self.say(f"{f.path} changed since it was hashed: sending its current content")
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        self.s3.put_object(
            Bucket=bucket, Key=f.key, Body=body, ContentMD5=md5, Metadata={SHA_META: sent_sha}
        )
        self._progress(len(body), sent=True)
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
            # Only an upload started here for exactly this content: its metadata (the SHA-256
            # the object will carry) was fixed when it was created and cannot be read back.
            if self.hashes.upload_sha(up["UploadId"]) == sha:
                kept = self._verified_parts(bucket, f, up["UploadId"], part)
                if kept is not None:
                    return up["UploadId"], kept
            self.s3.abort_multipart_upload(Bucket=bucket, Key=f.key, UploadId=up["UploadId"])
            self.hashes.remember_upload(up["UploadId"], None)
        created = self.s3.create_multipart_upload(
            Bucket=bucket, Key=f.key, Metadata={SHA_META: sha}
        )
        upload_id = str(created["UploadId"])
        self.hashes.remember_upload(upload_id, sha)
        self.hashes.save()  # so that an interrupted deploy can resume this upload
        return upload_id, {}

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
