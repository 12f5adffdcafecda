"""Deploying from where the user stands: the region and its image, and local checkpoints
uploaded to a moto S3 server on 127.0.0.1 (multipart, parallel, resumable, unchanged files
skipped). Every --dry-run sends nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from neuron_spec.cli.main import main
from neuron_spec.config.spec import load_config
from neuron_spec.deploy import sagemaker as dp
from neuron_spec.deploy.awsregion import neuron_image, resolve_region
from neuron_spec.deploy.upload import SHA_META, HashCache, Uploader, local_checkpoints
from neuron_spec.errors import UsageError

from .conftest import CONFIGS, moto_clients

pytestmark = [pytest.mark.aws, pytest.mark.usefixtures("wheels_without_pip")]
ROLE = "arn:aws:iam::123456789012:role/SageMakerNeuronSpec"
MiB = 1024 * 1024


@pytest.fixture
def aws(moto_endpoint):
    return moto_clients("up-bucket")


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A checkpoint-shaped directory: a 12 MiB weights file (3 parts of 5 MiB) and small files."""
    d = tmp_path / "tiny-llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32000}))
    (d / "tokenizer.json").write_text("{}")
    (d / "model.safetensors").write_bytes(os.urandom(12 * MiB))
    (d / ".complete").write_text("not part of the checkpoint")
    return d


def _config(tmp_path: Path, model: Path) -> Path:
    cfg = tmp_path / "local-pair.yaml"
    cfg.write_text(
        "instance: inf2.48xlarge\nbackend: neuronx\n"
        f"target: {{model: {model}, architecture: llama-2-70b, tp_degree: 24}}\n"
        f"draft: {{model: {model}, architecture: llama-2-7b, tp_degree: 24}}\n"
    )
    return cfg


# --- region and image --------------------------------------------------------------------------


def test_region_comes_from_flag_environment_then_profile(tmp_path):
    aws_config = tmp_path / "config"
    aws_config.write_text("[default]\nregion = ap-south-1\n[profile work]\nregion = eu-west-3\n")
    env = {"AWS_CONFIG_FILE": str(aws_config)}
    assert resolve_region("us-west-2", {**env, "AWS_REGION": "eu-west-1"}) == (
        "us-west-2",
        "--region",
    )
    assert resolve_region(None, {**env, "AWS_REGION": "eu-west-1"}) == ("eu-west-1", "AWS_REGION")
    assert resolve_region(None, {**env, "AWS_DEFAULT_REGION": "sa-east-1"})[0] == "sa-east-1"
    assert resolve_region(None, env) == ("ap-south-1", f"profile default in {aws_config}")
    assert resolve_region(None, {**env, "AWS_PROFILE": "work"})[0] == "eu-west-3"
    with pytest.raises(UsageError, match="no AWS region") as exc:
        resolve_region(None, {"AWS_CONFIG_FILE": str(tmp_path / "none")})
    assert "--region" in str(exc.value) and "aws configure set region" in str(exc.value)


def test_the_image_follows_the_region():
    assert neuron_image("eu-west-1").startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/")
    assert "pytorch-inference-neuronx" in neuron_image("ap-northeast-1")
    with pytest.raises(UsageError, match="no Neuron inference container in us-west-1"):
        neuron_image("us-west-1")


def _dry(config: Path, *extra: str) -> list[str]:
    return [
        "deploy", "sagemaker", str(config), "--role", ROLE,
        "--bucket", "s3://up-bucket/endpoints", "--endpoint-name", "ns-up", "--dry-run", *extra,
    ]  # fmt: skip


def test_dry_run_in_eu_west_1_shows_the_upload_and_the_regions_image(
    aws, tmp_path, checkpoint, monkeypatch, capsys
):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    config = _config(tmp_path, checkpoint)
    assert main(_dry(config)) == 0
    out = capsys.readouterr().out
    assert "# region eu-west-1 (from AWS_DEFAULT_REGION)" in out
    assert "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference-neuronx" in out
    assert f"# upload {checkpoint}: 3 file(s)" in out  # the hidden leftover is not uploaded
    assert out.count("upload_checkpoint(") == 1  # both roles share the directory: once
    assert main(_dry(config, "--json")) == 0
    reqs = json.loads(capsys.readouterr().out)
    up = reqs[0]
    assert up["operation"] == "upload_checkpoint" and up["params"]["Files"] == 3
    assert up["params"]["Bytes"] == sum(p.stat().st_size for p in checkpoint.iterdir()) - len(
        "not part of the checkpoint"
    )
    assert [r["operation"] for r in reqs][1:3] == ["put_object", "create_model"]
    assert "eu-west-1" in reqs[2]["params"]["PrimaryContainer"]["Image"]
    assert aws[2] == []  # nothing was sent


def test_no_region_is_a_clear_exit_2(aws, tmp_path, checkpoint, monkeypatch, capsys):
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    assert main(_dry(_config(tmp_path, checkpoint))) == 2
    err = capsys.readouterr().err
    assert "no AWS region" in err and "internal error" not in err
    assert main(["deploy", "delete", "ns-up"]) == 2
    assert aws[2] == []


def test_delete_dry_run_sends_nothing(aws, capsys):
    assert main(["deploy", "delete", "ns-anything", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "delete_endpoint({'EndpointName': 'ns-anything'})" in out
    assert aws[2] == []


# --- the uploader ---------------------------------------------------------------------------


def _uploader(s3, tmp_path, **kw) -> Uploader:
    return Uploader(s3, part_bytes=5 * MiB, workers=4, hashes=HashCache(tmp_path / "h.json"), **kw)


def test_upload_is_multipart_then_skipped_when_unchanged(aws, tmp_path, checkpoint):
    s3, _, sent = aws
    uploads, rewrite = local_checkpoints(
        load_config(_config(tmp_path, checkpoint)), "up-bucket", "t1/"
    )
    assert len(uploads) == 1 and rewrite["target"] == rewrite["draft"] == uploads[0].uri
    seen: list[int] = []
    report = _uploader(s3, tmp_path, on_bytes=seen.append).upload(uploads)
    assert sorted(Path(k).name for k in report.uploaded) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert sum(seen) == uploads[0].total_bytes == report.bytes_sent
    assert sum("partNumber=" in u for u in sent) == 3  # 12 MiB in 5 MiB parts
    key = next(f.key for f in uploads[0].files if f.key.endswith("model.safetensors"))
    body = s3.get_object(Bucket="up-bucket", Key=key)
    assert body["Body"].read() == (checkpoint / "model.safetensors").read_bytes()
    assert len(body["Metadata"][SHA_META]) == 64
    sent.clear()
    again = _uploader(s3, tmp_path).upload(uploads)
    assert again.uploaded == [] and len(again.skipped) == 3 and again.bytes_sent == 0
    assert not any(u.startswith("PUT") for u in sent)  # only HEAD requests


def test_a_changed_file_is_sent_again(aws, tmp_path, checkpoint):
    s3, _, _ = aws
    cfg = load_config(_config(tmp_path, checkpoint))
    uploads, _ = local_checkpoints(cfg, "up-bucket", "t2/")
    _uploader(s3, tmp_path).upload(uploads)
    (checkpoint / "tokenizer.json").write_text('{"changed": true}')
    uploads, _ = local_checkpoints(cfg, "up-bucket", "t2/")
    report = _uploader(s3, tmp_path).upload(uploads)
    assert [Path(k).name for k in report.uploaded] == ["tokenizer.json"]


def test_an_interrupted_upload_resumes_with_the_missing_parts_only(aws, tmp_path, checkpoint):
    s3, _, sent = aws
    uploads, _ = local_checkpoints(load_config(_config(tmp_path, checkpoint)), "up-bucket", "t3/")

    class Flaky:
        """s3, except that part 3 fails: the process died mid-upload."""

        def __getattr__(self, name):
            return getattr(s3, name)

        def upload_part(self, **kw):
            if kw["PartNumber"] == 3:
                raise ConnectionError("network went away")
            return s3.upload_part(**kw)

    with pytest.raises(ConnectionError):
        _uploader(Flaky(), tmp_path).upload(uploads)
    sent.clear()
    report = _uploader(s3, tmp_path).upload(uploads)
    key = next(k for k in report.resumed)
    assert key.endswith("model.safetensors") and report.resumed[key] == 2
    assert [u for u in sent if "partNumber=" in u and u.startswith("PUT")] == [
        u for u in sent if "partNumber=3" in u and u.startswith("PUT")
    ]
    got = s3.get_object(Bucket="up-bucket", Key=key)["Body"].read()
    assert got == (checkpoint / "model.safetensors").read_bytes()
    assert s3.list_multipart_uploads(Bucket="up-bucket", Prefix="t3/").get("Uploads", []) == []


# --- a real deploy of local checkpoints ---------------------------------------------------

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/neuron-spec-cpu:latest"


def _deploy(config: Path, name: str) -> list[str]:
    return [
        "deploy", "sagemaker", str(config), "--role", ROLE,
        "--bucket", "s3://up-bucket/endpoints", "--endpoint-name", name,
        "--instance-type", "ml.m5.xlarge", "--image-uri", IMAGE, "--region", "us-east-1",
        "--no-dependency-wheels", "--json",
    ]  # fmt: skip


def test_deploy_uploads_local_checkpoints_once_and_ships_their_urls(
    aws, tmp_path, checkpoint, capsys
):
    s3, _, _ = aws
    config = tmp_path / "cpu-local.yaml"
    config.write_text(
        "backend: reference\n"
        f"target: {{model: {checkpoint}, architecture: smollm2-135m}}\n"
        f"draft: {{model: {checkpoint}, architecture: smollm2-135m}}\n"
    )
    assert main(_deploy(config, "ns-local")) == 0, capsys.readouterr().err
    first = json.loads(capsys.readouterr().out)
    assert len(first["upload"]["uploaded"]) == 3 and first["upload"]["skipped"] == []
    uri = first["checkpoints"]["target"]
    assert uri == first["checkpoints"]["draft"] and uri.startswith("s3://up-bucket/endpoints/")
    archive = s3.get_object(
        Bucket="up-bucket", Key=first["model_data"].removeprefix("s3://up-bucket/")
    )["Body"].read()
    shipped = dp.tar_text(archive, "code/neuron-spec.yaml")
    assert f"model: {uri}" in shipped and str(checkpoint) not in shipped
    assert main(_deploy(config, "ns-local")) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["updated"] is True
    assert second["upload"]["uploaded"] == [] and len(second["upload"]["skipped"]) == 3


@pytest.mark.model
@pytest.mark.slow
def test_the_demo_pair_deploys_from_its_local_directory(aws, demo_checkpoint, capsys):
    config = CONFIGS / "demo-cpu.yaml"
    assert main(_deploy(config, "ns-demo")) == 0, capsys.readouterr().err
    first = json.loads(capsys.readouterr().out)
    names = sorted(Path(k).name for k in first["upload"]["uploaded"])
    assert "model.safetensors" in names and "config.json" in names
    assert main(_deploy(config, "ns-demo")) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["upload"]["uploaded"] == [] and second["upload"]["bytes_sent"] == 0
    assert sorted(Path(k).name for k in second["upload"]["skipped"]) == names
