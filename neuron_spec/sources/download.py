"""Downloads from outside, confined: every object key or archive member is resolved against
its destination and refused when it is absolute, holds '..' or an empty segment, or would land
outside. One helper serves every download (checkpoints for the Neuron backend, the SageMaker
entry point)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any


def confined(dest: Path, relative: str) -> Path | None:
    """dest / relative, or None when relative could escape dest."""
    if not relative or relative.startswith("/") or "\\" in relative or "\x00" in relative:
        return None
    parts = PurePosixPath(relative).parts
    if any(p in ("", ".", "..") for p in relative.split("/")) or not parts:
        return None
    target = (dest / Path(*parts)).resolve()
    root = dest.resolve()
    return target if target == root or root in target.parents else None


def download_prefix(
    uri: str,
    dest: Path,
    client: Any = None,
    warn: Callable[[str], None] = lambda _m: None,
    progress: Callable[[str], None] = lambda _m: None,
) -> Path:
    """Copy every object under an s3:// prefix into dest, once and atomically: objects land
    in a temporary sibling that is renamed into place only when all of them arrived."""
    if (dest / ".complete").is_file():
        return dest
    if client is None:
        import boto3

        client = boto3.client("s3")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    count = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                relative = key[len(prefix) :]
                if relative.endswith("/") and obj.get("Size", 0) == 0:
                    continue  # a "folder" placeholder
                target = confined(tmp, relative)
                if target is None:
                    warn(f"refused s3://{bucket}/{key}: its name would land outside {dest}")
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                progress(f"downloading s3://{bucket}/{key}")
                client.download_file(bucket, key, str(target))
                count += 1
        if count == 0:
            raise FileNotFoundError(f"no objects under {uri}")
        (tmp / ".complete").write_text("ok\n", encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
