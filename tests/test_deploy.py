"""SageMaker deployment against a moto server on 127.0.0.1: real boto3 HTTP calls to the S3
and SageMaker APIs."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import pytest

from neuron_spec.cli.main import main
from neuron_spec.config.spec import load_config
from neuron_spec.deploy import sagemaker as dp
from neuron_spec.errors import UsageError

from .conftest import CONFIGS, moto_clients

pytestmark = [pytest.mark.aws, pytest.mark.usefixtures("wheels_without_pip")]
ROLE = "arn:aws:iam::123456789012:role/SageMakerNeuronSpec"


@pytest.fixture
def aws(moto_endpoint):
    return moto_clients("deploy-bucket")


@pytest.fixture
def s3_config(tmp_path) -> Path:
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(
        "instance: inf2.48xlarge\nbackend: neuronx\n"
        "target: {model: s3://deploy-bucket/models/llama-2-70b/, architecture: llama-2-70b,"
        " amp: bf16, tp_degree: 24}\n"
        "draft: {model: s3://deploy-bucket/models/llama-2-7b/, architecture: llama-2-7b,"
        " amp: bf16, tp_degree: 24}\n"
        "speculation: {draft_tokens: 6, acceptor: greedy}\n"
    )
    return cfg


def opts(**kw) -> dp.DeployOptions:
    base = dict(
        role_arn=ROLE,
        bucket="s3://deploy-bucket/endpoints",
        endpoint_name="ns-test",
        region="us-east-1",
        poll_s=0.01,
        wait_timeout_s=30,
    )
    return dp.DeployOptions(**{**base, **kw})


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("role_arn", "arn:aws:iam::12345:role/x", "IAM role ARN"),
        ("role_arn", "my-role", "IAM role ARN"),
        ("bucket", "deploy-bucket", "starts with s3://"),
        ("bucket", "s3://Bad_Bucket", "only lowercase letters"),
        ("instance_type", "ml.m5.xlarge", "no NeuronCores"),
        ("endpoint_name", "bad_name!", "letters, digits"),
    ],
)
def test_invalid_input_fails_before_any_request(aws, s3_config, field, value, words):
    s3, sm, sent = aws
    with pytest.raises(UsageError, match=words):
        dp.deploy(
            load_config(s3_config),
            opts(**{field: value}),
            lambda _m: None,
            with_dependencies=False,
            clients=(s3, sm),
        )
    assert sent == []


def test_missing_checkpoints_and_catalog_names_are_refused_before_any_request(aws, tmp_path):
    cfg = tmp_path / "local.yaml"
    cfg.write_text(
        "backend: neuronx\ntarget: {model: /opt/models/a, tp_degree: 24}\n"
        "draft: {model: llama-2-7b, tp_degree: 24}\n"
    )
    with pytest.raises(UsageError) as exc:
        dp.deploy(load_config(cfg), opts(), lambda _m: None, clients=aws[:2])
    assert "target.model cannot be uploaded" in str(exc.value)
    assert "/opt/models/a does not exist" in str(exc.value)
    assert "draft.model is the catalog name 'llama-2-7b'" in str(exc.value)
    assert aws[2] == []


def test_dry_run_prints_every_request_and_sends_none(aws, s3_config, capsys):
    _, _, sent = aws
    rc = main(
        [
            "deploy",
            "sagemaker",
            str(s3_config),
            "--role",
            ROLE,
            "--bucket",
            "s3://deploy-bucket/endpoints",
            "--endpoint-name",
            "ns-dry",
            "--dry-run",
            "--json",
        ]
    )
    assert rc == 0 and sent == []
    reqs = json.loads(capsys.readouterr().out)
    assert [r["operation"] for r in reqs] == [
        "put_object",
        "create_model",
        "create_endpoint_config",
        "create_endpoint",
    ]
    variant = reqs[2]["params"]["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.inf2.48xlarge"
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] >= 3600
    assert "testing" not in json.dumps(reqs)  # no credentials in what is printed


@pytest.fixture
def cpu_config(tmp_path) -> Path:
    """A reference-backend pair: moto's SageMaker only accepts instance types from an old list
    without ml.inf2/ml.trn1 (real SageMaker has them), so the end-to-end flow runs on CPU types;
    the Neuron path is checked by validation and the dry run above."""
    cfg = tmp_path / "cpu.yaml"
    cfg.write_text(
        "backend: reference\n"
        "target: {model: s3://deploy-bucket/models/smollm2/, architecture: smollm2-135m}\n"
        "draft: {model: s3://deploy-bucket/models/smollm2/, architecture: smollm2-135m}\n"
    )
    return cfg


IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/neuron-spec-cpu:latest"


def test_a_reference_config_deploys_on_aws_cpu_pytorch_image(capsys):
    """No --image-uri: AWS's CPU PyTorch inference container of the region, a CPU instance,
    and the reference backend's libraries shipped as wheels for that image's Python."""
    demo = CONFIGS / "demo-cpu.yaml"
    role = "arn:aws:iam::123456789012:role/x"
    args = ["deploy", "sagemaker", str(demo), "--role", role, "--bucket", "s3://my-bucket/p",
            "--region", "us-east-1", "--dry-run", "--json"]  # fmt: skip
    assert main(args) == 0
    requests = json.loads(capsys.readouterr().out)
    model = next(r for r in requests if r["operation"] == "create_model")["params"]
    image = model["PrimaryContainer"]["Image"]
    assert image == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/"
        "pytorch-inference:2.6.0-cpu-py312-ubuntu22.04-sagemaker"
    )
    config = next(r for r in requests if r["operation"] == "create_endpoint_config")["params"]
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.xlarge"
    assert dp.default_instance_type(load_config(demo)) == "ml.m5.xlarge"


@pytest.mark.slow  # pip builds and downloads the wheels
def test_deploy_update_and_delete(aws, cpu_config, capsys):
    s3, sm, _ = aws
    args = [
        "deploy",
        "sagemaker",
        str(cpu_config),
        "--role",
        ROLE,
        "--bucket",
        "s3://deploy-bucket/endpoints",
        "--endpoint-name",
        "ns-e2e",
        "--instance-type",
        "ml.m5.xlarge",
        "--image-uri",
        IMAGE,
        "--initial-instance-count",
        "2",
        "--region",
        "us-east-1",
        "--json",
    ]
    assert main(args) == 0  # with the dependency wheels, as a user would
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "InService" and first["updated"] is False
    # the archive landed in the bucket, with wheels, the config and the entry point
    key = first["model_data"].removeprefix("s3://deploy-bucket/")
    archive = s3.get_object(Bucket="deploy-bucket", Key=key)["Body"].read()
    names = dp.tar_members(archive)
    assert "code/neuron-spec.yaml" in names and "code/inference.py" in names
    wheels = [Path(n).name for n in names if n.startswith("code/wheels/") and n.endswith(".whl")]
    assert any(w.startswith("neuron_spec-") for w in wheels)
    assert any(w.startswith("pydantic_core-") for w in wheels)  # no index needed
    assert any(w.startswith("accelerate-") for w in wheels)  # the reference backend's
    shipped_torch = [w for w in wheels if w.startswith(("torch-", "nvidia_", "triton-"))]
    assert shipped_torch == []  # the container has torch: never its 3 GB again
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        shipped = tar.extractfile("code/neuron-spec.yaml").read().decode()
    assert shipped == cpu_config.read_text()
    # model, endpoint configuration, endpoint
    model = sm.describe_model(ModelName=first["model"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == first["model_data"]
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["ExecutionRoleArn"] == ROLE
    variant = sm.describe_endpoint_config(EndpointConfigName=first["endpoint_config"])[
        "ProductionVariants"
    ][0]
    assert variant["InstanceType"] == "ml.m5.xlarge"
    assert variant["InitialInstanceCount"] == 2
    assert sm.describe_endpoint(EndpointName="ns-e2e")["EndpointStatus"] == "InService"

    # re-deploying with the same name updates the endpoint instead of failing
    again = dp.deploy(
        load_config(cpu_config),
        opts(
            endpoint_name="ns-e2e",
            initial_instance_count=3,
            instance_type="ml.m5.xlarge",
            image_uri=IMAGE,
        ),
        lambda _m: None,
        with_dependencies=False,
        clients=(s3, sm),
    )
    assert again["updated"] is True and again["endpoint_config"] != first["endpoint_config"]
    assert (
        sm.describe_endpoint(EndpointName="ns-e2e")["EndpointConfigName"]
        == again["endpoint_config"]
    )
    variant = sm.describe_endpoint_config(EndpointConfigName=again["endpoint_config"])[
        "ProductionVariants"
    ][0]
    assert variant["InitialInstanceCount"] == 3

    # delete removes endpoint, endpoint configuration and model
    assert main(["deploy", "delete", "ns-e2e", "--region", "us-east-1"]) == 0
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        sm.describe_endpoint(EndpointName="ns-e2e")
    with pytest.raises(ClientError):
        sm.describe_endpoint_config(EndpointConfigName=again["endpoint_config"])
    with pytest.raises(ClientError):
        sm.describe_model(ModelName=again["model"])
    # and what the first deploy created, no longer used since the update
    with pytest.raises(ClientError):
        sm.describe_model(ModelName=first["model"])
    with pytest.raises(ClientError):
        sm.describe_endpoint_config(EndpointConfigName=first["endpoint_config"])


@pytest.mark.reference
def test_the_entry_point_serves_a_pair_from_s3(aws, tmp_path, monkeypatch):
    """code/inference.py from the archive: downloads s3:// checkpoints, runs the preflight,
    loads the pair and answers a request, as the SageMaker container would call it."""
    from .neuron_fixtures import make_checkpoint

    s3, _, _ = aws
    target = make_checkpoint(tmp_path / "t", seed=0)
    draft = make_checkpoint(tmp_path / "d", seed=0, noise=0.003, base=target)
    for role, directory in (("target", target), ("draft", draft)):
        for f in directory.iterdir():
            s3.upload_file(str(f), "deploy-bucket", f"ckpt/{role}/{f.name}")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "backend: reference\n"
        "target: {model: s3://deploy-bucket/ckpt/target, amp: f32}\n"
        "draft: {model: s3://deploy-bucket/ckpt/draft, amp: f32}\n"
        "speculation: {draft_tokens: 3, acceptor: greedy}\n"
    )
    archive = dp.package(load_config(cfg), tmp_path / "model.tar.gz", with_dependencies=False)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "opt-ml-model", filter="data")
    monkeypatch.setenv("NEURON_SPEC_MODEL_DIR", str(tmp_path / "downloaded"))
    spec = importlib.util.spec_from_file_location(
        "inference", tmp_path / "opt-ml-model" / "code" / "inference.py"
    )
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    model = entry.model_fn(str(tmp_path / "opt-ml-model"))
    data = entry.input_fn(
        json.dumps({"prompt": "w1 w2 w3", "max_tokens": 8, "temperature": 0.0}), "application/json"
    )
    body, content_type = entry.output_fn(entry.predict_fn(data, model), "application/json")
    out = json.loads(body)
    assert content_type == "application/json"
    assert out["usage"]["completion_tokens"] >= 1 and isinstance(out["text"], str)
    assert (tmp_path / "downloaded" / "target" / "config.json").is_file()
    ids = {"prompt": [5, 6, 7], "max_tokens": 6, "temperature": 0.0, "ignore_eos": True}
    answer = entry.predict_fn(entry.input_fn(json.dumps(ids)), model)
    by_ids = json.loads(entry.output_fn(answer)[0])
    assert isinstance(by_ids["text"], str) and by_ids["usage"]["completion_tokens"] == 6
    assert by_ids["usage"]["prompt_tokens"] == 3
    with pytest.raises(entry.InvalidRequest) as exc:
        entry.input_fn("{}", "application/json")
    assert exc.value.status_code == 400 and json.loads(exc.value.phrase)["error"]["param"]
    too_long = entry.input_fn(json.dumps({"prompt": "w1 " * 5000, "max_tokens": 4}))
    with pytest.raises(entry.InvalidRequest) as exc:
        entry.predict_fn(too_long, model)
    assert exc.value.status_code == 400 and "n_positions" in exc.value.message


def _entry_module():
    spec = importlib.util.spec_from_file_location("inference_under_test", dp.ENTRY_POINT)
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    return entry


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": -5}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"prompt": "hi", "temperature": 5e-324}, "temperature"),
        ({"prompt": "hi", "seed": 2**70}, "seed"),
        ({"prompt": "hi", "stop": 5}, "stop"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [-1, 2]}, "prompt"),
        ({"prompt": "hi", "echo": True}, "echo"),
        ({"prompt": {"text": "hi"}}, "prompt"),
        ({"prompt": "\ud800"}, "prompt"),
        ({"prompt": ["p"] * 64}, "prompt"),
        ({"prompt": "hi", "surprise": 1}, "surprise"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.role"),
        ({"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "hi", "n": 2}, "n"),
        ({"prompt": "hi", "logprobs": 2}, "logprobs"),
        ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
    ],
)
def test_the_entry_point_refuses_what_serve_refuses_with_a_4xx(body, param):
    entry = _entry_module()
    raw = json.dumps(body).replace("\\\\ud800", "\\ud800")
    with pytest.raises(entry.InvalidRequest) as exc:
        entry.input_fn(raw, "application/json")
    assert 400 <= exc.value.status_code < 500
    error = json.loads(exc.value.phrase)["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_the_entry_point_refuses_other_content_and_broken_json():
    entry = _entry_module()
    with pytest.raises(entry.InvalidRequest) as exc:
        entry.input_fn(b"prompt=hi", "text/plain")
    assert exc.value.status_code == 415
    for raw in (b"{", b"[" * 100_000, b"\xff\xfe"):
        with pytest.raises(entry.InvalidRequest) as exc:
            entry.input_fn(raw, "application/json")
        assert exc.value.status_code == 400


# --- the cloud's faults: a fault-injecting proxy on 127.0.0.1 in front of the moto server -----


class FaultProxy:
    """Forwards every request to moto; `fault(op)` decides, per operation, whether to answer
    with an AWS error instead (S3 operations are named by method, SageMaker's by target)."""

    def __init__(self, upstream: str, fault):
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        proxy = self
        self.seen: list[str] = []
        self.faulted: list[str] = []
        target = urlsplit(upstream)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                op = self.headers.get("X-Amz-Target") or f"s3:{self.command}"
                proxy.seen.append(op)
                answer = fault(op, proxy.seen.count(op))
                if answer is not None:
                    proxy.faulted.append(op)
                    status, ctype, payload = answer
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = target.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()


def throttle(op: str):
    if op.startswith("s3:"):
        body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
        return 503, "application/xml", body
    return (
        400,
        "application/x-amz-json-1.1",
        json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode(),
    )


@pytest.fixture
def proxied(aws, moto_endpoint, monkeypatch):
    proxies: list[FaultProxy] = []

    def make(fault):
        p = FaultProxy(moto_endpoint, fault)
        proxies.append(p)
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        return p

    yield make
    for p in proxies:
        p.close()


def _deploy_args(cfg: Path, name: str) -> list[str]:
    return [
        "deploy", "sagemaker", str(cfg), "--role", ROLE, "--bucket",
        "s3://deploy-bucket/endpoints", "--endpoint-name", name, "--instance-type",
        "ml.m5.xlarge", "--image-uri", IMAGE, "--region", "us-east-1",
        "--no-dependency-wheels", "--json",
    ]  # fmt: skip


def _leftovers(sm, name: str) -> list[str]:
    models = [m["ModelName"] for m in sm.list_models()["Models"]]
    configs = [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]]
    return sorted(n for n in models + configs if n.startswith(name + "-"))


def test_deploy_succeeds_through_throttling(aws, proxied, cpu_config, capsys, monkeypatch):
    from botocore.retries.standard import ExponentialBackoff

    # botocore's retries as configured, waiting 10 ms instead of its backoff of up to seconds
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda _self, _context: 0.01)
    # the first two attempts of every S3 upload and SageMaker call are throttled
    proxy = proxied(lambda op, n: throttle(op) if n <= 2 and op != "s3:GET" else None)
    assert main(_deploy_args(cpu_config, "ns-throttled")) == 0, capsys.readouterr().err
    body = json.loads(capsys.readouterr().out)
    assert body["status"] == "InService"
    assert {"s3:PUT", "SageMaker.CreateModel", "SageMaker.CreateEndpoint"} <= set(proxy.faulted)
    assert len(proxy.faulted) >= 10


def test_a_deploy_that_fails_midway_leaves_nothing_behind(aws, proxied, cpu_config, capsys):
    _, sm, _ = aws

    def fault(op, _n):
        if op == "SageMaker.CreateEndpoint":
            body = {"__type": "ResourceLimitExceeded", "message": "endpoint quota reached"}
            return 400, "application/x-amz-json-1.1", json.dumps(body).encode()
        return None

    proxied(fault)
    assert main(_deploy_args(cpu_config, "ns-midway")) == 1
    err = capsys.readouterr().out + capsys.readouterr().err
    assert "CreateEndpoint failed: ResourceLimitExceeded: endpoint quota reached" in err
    assert "internal error" not in err
    assert _leftovers(sm, "ns-midway") == []  # model and endpoint config rolled back


def _model(sm, name: str, tags: list | None = None) -> None:
    extra = {"Tags": tags} if tags else {}
    sm.create_model(
        ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}, **extra
    )


def _endpoint_config(sm, name: str, model: str, tags: list | None = None) -> None:
    extra = {"Tags": tags} if tags else {}
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model,
                "InstanceType": "ml.m5.xlarge",
                "InitialInstanceCount": 1,
            }
        ],
        **extra,
    )


def test_delete_removes_what_an_earlier_failed_deploy_left(aws, capsys):
    _, sm, _ = aws
    name = "ns-orphans"
    ours = dp.ownership_tags(name, "0" * 64)
    _model(sm, f"{name}-20260101-000000", ours)
    _endpoint_config(sm, f"{name}-20260101-000000", f"{name}-20260101-000000", ours)
    # named alike, but not this endpoint's: another endpoint's, and one nobody tagged
    _model(sm, f"{name}-other-20260101-000000", dp.ownership_tags(f"{name}-other", "0" * 64))
    _model(sm, f"{name}-20260202-000000")
    assert main(["deploy", "delete", name, "--region", "us-east-1"]) == 0
    assert _leftovers(sm, name) == [f"{name}-20260202-000000", f"{name}-other-20260101-000000"]
    assert main(["deploy", "delete", name, "--region", "us-east-1"]) == 1
    assert "there is no endpoint ns-orphans" in capsys.readouterr().err


def test_delete_leaves_other_teams_and_models_in_use(aws, cpu_config, capsys):
    """The resources of the issue's report: another team's endpoint sharing the name, an
    untagged `prod-<stamp>` model and config, and a model a live endpoint of another config
    still uses."""
    _, sm, _ = aws
    other = [{"Key": "team", "Value": "other"}]
    _model(sm, "prod", other)
    _endpoint_config(sm, "prod", "prod", other)
    sm.create_endpoint(EndpointName="prod", EndpointConfigName="prod", Tags=other)
    _model(sm, "prod-20240101-120000")
    _endpoint_config(sm, "prod-20240101-120000", "prod-20240101-120000")
    assert main(["deploy", "delete", "prod", "--region", "us-east-1", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["deleted"] == [] and "not created by neuron-spec" in body["kept"][0]
    assert sm.describe_endpoint(EndpointName="prod")["EndpointStatus"] == "InService"
    assert _leftovers(sm, "prod") == ["prod-20240101-120000", "prod-20240101-120000"]
    sm.describe_model(ModelName="prod")

    # a deployed endpoint whose model another endpoint's configuration also uses
    assert main(_deploy_args(cpu_config, "ns-shared")) == 0
    first = json.loads(capsys.readouterr().out)
    for arn in (
        sm.describe_model(ModelName=first["model"])["ModelArn"],
        sm.describe_endpoint_config(EndpointConfigName=first["endpoint_config"])[
            "EndpointConfigArn"
        ],
        sm.describe_endpoint(EndpointName="ns-shared")["EndpointArn"],
    ):
        tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
        assert tags[dp.OWNER_TAG] == "neuron-spec" and tags[dp.ENDPOINT_TAG] == "ns-shared"
        assert len(tags[dp.CONFIG_TAG]) == 64
    _endpoint_config(sm, "team-b", first["model"], other)
    sm.create_endpoint(EndpointName="team-b", EndpointConfigName="team-b")
    assert main(["deploy", "delete", "ns-shared", "--region", "us-east-1"]) == 0
    out = capsys.readouterr().out
    assert f"kept model {first['model']}: endpoint configuration team-b references it" in out
    sm.describe_model(ModelName=first["model"])
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        sm.describe_endpoint(EndpointName="ns-shared")


def test_deploy_does_not_take_over_an_endpoint_it_did_not_create(aws, cpu_config, capsys):
    _, sm, _ = aws
    _model(sm, "theirs")
    _endpoint_config(sm, "theirs", "theirs")
    sm.create_endpoint(EndpointName="ns-theirs", EndpointConfigName="theirs")
    assert main(_deploy_args(cpu_config, "ns-theirs")) == 2
    assert "was not created by neuron-spec deploy" in capsys.readouterr().out  # --json
    assert sm.describe_endpoint(EndpointName="ns-theirs")["EndpointConfigName"] == "theirs"


def test_autoscale_registers_the_variant_and_delete_removes_it(aws, cpu_config, capsys):
    import boto3

    aas = boto3.client("application-autoscaling", region_name="us-east-1")
    rid = "endpoint/ns-scaled/variant/AllTraffic"
    assert main([*_deploy_args(cpu_config, "ns-scaled"), "--autoscale", "1:4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["autoscale"]["resource_id"] == rid
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])
    (target,) = targets["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    (policy,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)[
        "ScalingPolicies"
    ]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    metric = tracking["PredefinedMetricSpecification"]["PredefinedMetricType"]
    assert metric == "SageMakerVariantInvocationsPerInstance"
    # the target comes from the tokens/s and the request length (5 tokens/s on CPU, said)
    new = load_config(cpu_config).spec.generation.max_new_tokens
    assert tracking["TargetValue"] == pytest.approx(0.7 * 60 * 5 / new, rel=0.01)
    assert "assumed 5 tokens/s" in result["autoscale"]["target_source"]
    assert (
        result["autoscale"]["target_invocations_per_instance_per_minute"] == tracking["TargetValue"]
    )

    assert main(["deploy", "delete", "ns-scaled", "--region", "us-east-1", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    ops = [d["operation"] for d in done["deleted"]]
    assert ops[:3] == ["delete_scaling_policy", "deregister_scalable_target", "delete_endpoint"]
    assert not aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])[
        "ScalableTargets"
    ]
    assert not aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)[
        "ScalingPolicies"
    ]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--autoscale", "4:1"], "1 <= MIN <= MAX"),
        (["--autoscale", "two:five"], "MIN:MAX"),
        (["--autoscale", "0:3"], "1 <= MIN"),
        (["--autoscale-target", "5"], "needs --autoscale"),
    ],
)
def test_autoscale_refuses_what_cannot_scale(cpu_config, capsys, extra, words):
    args = _deploy_args(cpu_config, "ns-bad")
    assert main([*args[:-1], "--dry-run", *extra]) == 2
    assert words in capsys.readouterr().err


def test_autoscale_in_the_dry_run_and_an_explicit_target(cpu_config, capsys):
    args = [*_deploy_args(cpu_config, "ns-dry")[:-1], "--dry-run"]
    assert main([*args, "--autoscale", "2:6", "--autoscale-target", "12.5"]) == 0
    out = capsys.readouterr().out
    assert "register_scalable_target" in out and "'MaxCapacity': 6" in out
    assert "'TargetValue': 12.5" in out
    assert main(["deploy", "delete", "ns-dry", "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert shown.index("deregister_scalable_target") < shown.index("delete_endpoint(")
