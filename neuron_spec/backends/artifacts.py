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

import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NeuronSpecError, UsageError
from ..sources.download import confined
from ..util.localtree import walk
from ..util.safeio import Unreadable, printable, read_json

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest lists a few hundred files: a few hundred KB
MARKER = ".neuron-spec-cache"  # written into every cache root: prune refuses roots without it
KEY = re.compile(r"^[0-9a-f]{24}$")  # loadplan.cache_key's format: nothing else is an entry
STALE_TMP_S = 3600
_CHUNK = 1 << 20


class ArtifactError(NeuronSpecError):
    exit_code = 1


class NotACacheError(UsageError):
    """A directory that is not a neuron-spec artifact cache: nothing in it is deleted."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    """The entry's files (hidden ones too), links followed only inside the entry: a link a
    compiler or a hand left there never brings outside bytes into the manifest or the mirror."""
    return [p for p in walk(root, hidden=True).files if p.relative_to(root).as_posix() != MANIFEST]


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


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The entry's manifest if it is well formed (a mapping with a `files` mapping); None for
    anything else, however broken (unreadable, huge, nested too deeply, a link, not JSON)."""
    try:
        if (path / MANIFEST).is_symlink():
            return None
        manifest = read_json(path / MANIFEST, MAX_MANIFEST_BYTES)
    except (Unreadable, OSError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return manifest


def verify(path: Path, key: str | None = None) -> str | None:
    """None if the entry at path is complete and intact, else what is wrong. A manifest that
    is malformed, names another key, or lists a file outside the entry makes it broken; so
    does anything that cannot be read."""
    try:
        return _verify(path, key)
    except (OSError, RecursionError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return f"unreadable ({why})"


def _verify(path: Path, key: str | None) -> str | None:
    if not (path / MANIFEST).is_file():
        return "no manifest (an interrupted write?)"
    manifest = read_manifest(path)
    if manifest is None:
        return "unreadable manifest"
    if key is not None and manifest.get("key") != key:
        return "manifest of another entry"
    files: dict[str, Any] = manifest["files"]
    if not files:
        return "manifest lists no files"
    for rel, meta in files.items():
        f = confined(path, rel) if isinstance(rel, str) else None
        if f is None or not isinstance(meta, dict):
            return "unreadable manifest"
        if f.is_symlink() or not f.is_file():
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
    def __init__(
        self,
        root: Path,
        s3_uri: str | None = None,
        s3_client: Any = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.root = Path(root)
        self.s3_uri = s3_uri
        self._s3 = s3_client
        self._on_warning = warn
        self.warnings: list[str] = []  # mirror problems; the local cache still works

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if self._on_warning is not None:
            self._on_warning(message)

    # --- local ---------------------------------------------------------------------------

    def path(self, key: str) -> Path:
        if not KEY.match(key):
            raise ValueError(f"{key!r} is not a cache key")
        return self.root / key

    def lookup(self, key: str) -> Path | None:
        """A verified entry for key (pulled from the S3 mirror on a local miss), or None."""
        d = self.path(key)
        if d.exists():
            problem = verify(d, key)
            if problem is None:
                return d
            self.warn(f"cache entry {key} is unusable ({problem}); rebuilding it")
            self.discard(key)
        if self.s3_uri and self._pull(key):
            return d
        return None

    def discard(self, key: str) -> None:
        d = self.path(key)
        if not d.exists() and not d.is_symlink():
            return
        trash = self.root / f".trash-{key}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(d, trash)  # atomic: readers never see a half-deleted entry
        except FileNotFoundError:
            return  # another process discarded it first
        except OSError as exc:
            raise ArtifactError(
                f"cache entry {d} is unusable and cannot be removed ({exc.strerror}); "
                "remove it by hand, or point compile.artifact_cache elsewhere"
            ) from None
        _remove(trash)

    def _mark(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / MARKER
        if not marker.exists():
            marker.write_text("neuron-spec compiled-artifact cache\n", encoding="utf-8")

    def store(
        self, key: str, write: Callable[[Path], None], description: dict[str, Any] | None = None
    ) -> Path:
        """Run write(tmp_dir), then publish tmp_dir as the entry for key, atomically. When
        another process publishes the same key first, its entry is kept and used."""
        final = self.path(key)
        self._mark()
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
            if final.exists() and verify(final, key) is not None:
                self.discard(key)
            if not self._publish(tmp, final, key):
                return final  # another writer's verified entry
        except BaseException:
            _remove(tmp)
            raise
        if self.s3_uri:
            self._push(key)
        return final

    def _publish(self, tmp: Path, final: Path, key: str) -> bool:
        """Rename tmp into place; False (tmp removed) when a verified entry is already there."""
        if final.exists() and verify(final, key) is None:
            _remove(tmp)
            return False
        try:
            os.replace(tmp, final)
            return True
        except OSError as exc:  # a concurrent writer published between the check and here
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or verify(final, key) is not None:
                raise
            _remove(tmp)
            return False

    def entries(self) -> list[Entry]:
        """The cache's own entries: directories named like a cache key, nothing else."""
        out: list[Entry] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if not KEY.match(d.name) or d.is_symlink() or not d.is_dir():
                continue
            out.append(_entry(d))
        return out

    def foreign(self) -> list[str]:
        """Names in the root that are not the cache's: never touched by prune."""
        if not self.root.is_dir():
            return []
        own = {e.key for e in self.entries()}
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.name not in own
            and p.name != MARKER
            and not p.name.startswith((".tmp-", ".trash-"))
        )

    def is_cache(self) -> bool:
        return (self.root / MARKER).is_file() or bool(self.entries())

    def prune(
        self,
        *,
        older_than_s: float | None = None,
        broken: bool = False,
        everything: bool = False,
        dry_run: bool = False,
    ) -> list[Entry]:
        """Remove entries: all, the broken ones, or those older than a duration; and the
        temporary and trash directories interrupted writes left. Only the cache's own entries
        are ever removed; a directory that is not a cache is refused."""
        if not self.root.exists():
            return []
        if not self.is_cache():
            raise NotACacheError(
                f"{self.root} is not a neuron-spec artifact cache (no {MARKER} marker and no "
                "entries): nothing was deleted. Point --dir or compile.artifact_cache at the "
                "cache itself."
            )
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
            self._clean_leftovers(now)
        return doomed

    def _clean_leftovers(self, now: float) -> None:
        for leftover in self.root.iterdir():
            if leftover.name.startswith(".trash-"):
                _remove(leftover)
            elif leftover.name.startswith(".tmp-"):
                try:
                    age = now - leftover.lstat().st_mtime
                except FileNotFoundError:
                    continue
                if age > STALE_TMP_S or leftover.is_symlink():
                    _remove(leftover)

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
            self.warn(f"could not push {key} to {self.s3_uri}: {type(exc).__name__}: {exc}")

    def _pull(self, key: str) -> bool:
        bucket, prefix = self._bucket_prefix(key)
        tmp = self.root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            client = self._client()
            names: list[str] = []
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix + "/"
            ):
                names.extend(o["Key"][len(prefix) + 1 :] for o in page.get("Contents", []))
            if MANIFEST not in names:
                return False
            self._mark()
            tmp.mkdir()
            for name in names:
                target = confined(tmp, name)
                if target is None:
                    self.warn(
                        f"refused s3://{bucket}/{prefix}/{name} from the mirror: its name would "
                        "land outside the cache entry"
                    )
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, f"{prefix}/{name}", str(target))
            problem = verify(tmp, key)
            if problem is not None:
                self.warn(f"mirror entry {key} in {self.s3_uri} is unusable: {problem}")
                return False
            return self._publish(tmp, self.path(key), key) or verify(self.path(key), key) is None
        except Exception as exc:
            self.warn(f"could not pull {key} from {self.s3_uri}: {type(exc).__name__}: {exc}")
            return False
        finally:
            _remove(tmp)


def _entry(d: Path) -> Entry:
    """One entry as listed: what its manifest says, or a broken entry saying why not."""
    manifest = read_manifest(d) or {}
    desc = manifest.get("description")
    created = manifest.get("created")
    if (
        isinstance(created, bool)
        or not isinstance(created, (int, float))
        or not 0 <= created < 1e11
    ):
        created = None
    try:
        size = sum(f.lstat().st_size for f in d.rglob("*") if f.is_file())
    except OSError:
        size = 0
    return Entry(d.name, d, size, created, _flat(desc), verify(d, d.name))


def _flat(desc: Any) -> dict[str, Any]:
    """The description's plain fields (what store() writes: names, numbers), each string made
    printable; nested or odd values from a hand-edited manifest are left out."""
    if not isinstance(desc, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in list(desc.items())[:64]:
        if isinstance(v, str):
            out[printable(str(k), 64)] = printable(v)
        elif v is None or (isinstance(v, (bool, int, float)) and abs(v) < 2**63):
            out[printable(str(k), 64)] = v
    return out


def _remove(path: Path) -> None:
    """Remove a file, link or directory tree; gone already is fine."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
    except FileNotFoundError:
        pass


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".part")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
