"""S3's naming rules, checked before any request: a bucket name S3 would refuse, or a key prefix
that would make keys S3 refuses or that path-minded tools misread, is a usage error naming the
rule - not an AWS error half-way through a deploy.

Bucket rules: https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
(general purpose buckets); keys: https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html
(at most 1024 bytes of UTF-8).
"""

from __future__ import annotations

import re

MAX_KEY_BYTES = 1024
# deploy and the artifact mirror add their own names under a prefix: leave them room
KEY_ROOM = 200

_BUCKET_CHARS = re.compile(r"^[a-z0-9.-]+$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def bucket_problem(name: str) -> str | None:
    """Which of S3's bucket naming rules `name` breaks, or None."""
    if not 3 <= len(name) <= 63:
        return f"a bucket name has 3 to 63 characters ({len(name)} given)"
    if not _BUCKET_CHARS.match(name):
        return "a bucket name holds only lowercase letters, digits, periods and hyphens"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "a bucket name begins and ends with a letter or digit"
    if ".." in name:
        return "a bucket name has no two adjacent periods"
    if ".-" in name or "-." in name:
        return "a bucket name has no hyphen next to a period (not valid in a DNS name)"
    if _IPV4.match(name):
        return "a bucket name is not formatted as an IP address"
    for prefix in _RESERVED_PREFIXES:
        if name.startswith(prefix):
            return f"a bucket name does not start with the reserved prefix '{prefix}'"
    for suffix in _RESERVED_SUFFIXES:
        if name.endswith(suffix):
            return f"a bucket name does not end with the reserved suffix '{suffix}'"
    return None


def prefix_problem(prefix: str) -> str | None:
    """What is wrong with a key prefix, or None."""
    if _CONTROL.search(prefix):
        return "a key prefix holds no control characters"
    if "\\" in prefix:
        return "a key prefix uses '/' between its parts, not '\\'"
    if any(part in (".", "..") for part in prefix.strip("/").split("/") if prefix.strip("/")):
        return "a key prefix has no '.' or '..' parts (tools that map keys to paths misread them)"
    size = len(prefix.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES - KEY_ROOM:
        return (
            f"a key prefix is at most {MAX_KEY_BYTES - KEY_ROOM} bytes ({size} given): keys "
            f"are at most {MAX_KEY_BYTES} bytes and neuron-spec adds its own names"
        )
    return None


def uri_problem(uri: str) -> str | None:
    """What is wrong with an s3://bucket[/prefix] URI, or None."""
    if not uri.startswith("s3://"):
        return "an S3 URL starts with s3://"
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    return bucket_problem(bucket) or prefix_problem(prefix)
