"""S3's naming rules for --bucket and prefixes: refused before any request, exit 2 naming the
rule (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html)."""

from __future__ import annotations

import pytest

from neuron_spec.cli.main import main
from neuron_spec.util.s3names import bucket_problem, uri_problem

from .conftest import CONFIGS

ROLE = "arn:aws:iam::123456789012:role/x"


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        ("s3://ns.-up/p", "hyphen next to a period"),
        ("s3://ns-.up/p", "hyphen next to a period"),
        ("s3://xn--nsup/p", "reserved prefix 'xn--'"),
        ("s3://sthree-bucket/p", "reserved prefix 'sthree-'"),
        ("s3://ns-up-s3alias/p", "reserved suffix '-s3alias'"),
        ("s3://ns-up--ol-s3/p", "reserved suffix '--ol-s3'"),
        ("s3://a..b/p", "two adjacent periods"),
        ("s3://192.168.5.4/p", "IP address"),
        ("s3://ab/p", "3 to 63 characters"),
        ("s3://" + "a" * 64 + "/p", "3 to 63 characters"),
        ("s3://My-Bucket/p", "lowercase"),
        ("s3://-bucket/p", "begins and ends"),
        ("s3://my-bucket/../escape", "'.' or '..' parts"),
        ("s3://my-bucket/a/./b", "'.' or '..' parts"),
        ("s3://my-bucket/a\x01b", "control characters"),
        ("s3://my-bucket/a\nb", "control characters"),
        ("s3://my-bucket/" + "p" * 1000, "at most 824 bytes"),
        ("s3://my-bucket/a\\b", "not '\\'"),
    ],
)
def test_names_s3_refuses_are_refused_naming_the_rule(uri, rule, capsys):
    assert rule in (uri_problem(uri) or "")
    rc = main(
        ["deploy", "sagemaker", str(CONFIGS / "demo-cpu.yaml"), "--role", ROLE,
         "--bucket", uri, "--region", "us-east-1", "--image-uri", "x", "--dry-run"]
    )  # fmt: skip
    assert rc == 2
    assert rule in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["my-bucket", "my.bucket.example", "a1b", "x" * 63, "bucket-2026.logs"]
)
def test_names_s3_accepts_pass(name):
    assert bucket_problem(name) is None
    assert uri_problem(f"s3://{name}/some/prefix/") is None


def test_the_artifact_mirror_follows_the_same_rules(write_config, capsys):
    path = write_config(
        """\
        backend: reference
        target: {model: llama-2-7b}
        draft: {model: llama-2-7b}
        compile: {s3_mirror: "s3://xn--mirror/neffs"}
        """
    )
    assert main(["validate", str(path)]) == 2
    assert "reserved prefix 'xn--'" in capsys.readouterr().err
