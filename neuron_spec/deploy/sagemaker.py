"""SageMaker real-time endpoints through boto3.

deploy: validate the inputs (before any request) -> resolve the region (--region, the
environment, the AWS profile) and AWS's Neuron container there -> upload local checkpoint
directories (upload.py: multipart, parallel, resumable, unchanged files skipped) -> package
model.tar.gz (the config with those checkpoints as s3:// URLs, the inference entry point,
neuron-spec and its dependencies as wheels) -> upload it -> create the model and the endpoint
configuration -> create the endpoint, or update it when it exists -> wait until InService.
delete: remove the endpoint, its endpoint configurations and models - only what deploy created
(every resource it creates is tagged neuron-spec:managed-by, neuron-spec:endpoint and the
config's SHA-256), never a model another endpoint configuration references.

Every API request is first built as data (`Request`), so `--dry-run` prints exactly what would
be sent. Credentials come from boto3's usual chain and are never printed.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.spec import ConfigFile
from ..config.yamlread import show
from ..errors import NeuronSpecError, UsageError
from ..util.s3names import uri_problem
from . import autoscale
from .autoscale import Scaling
from .awsregion import CPU_PYTHON, cpu_image, neuron_image, resolve_region
from .requests import Request
from .upload import (
    PART_BYTES,
    WORKERS,
    ChangedWhileUploading,
    Checkpoint,
    Uploader,
    local_checkpoints,
)

ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
BUCKET_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")
ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
NEURON_INSTANCE_TYPES = (
    "ml.inf2.xlarge",
    "ml.inf2.8xlarge",
    "ml.inf2.24xlarge",
    "ml.inf2.48xlarge",
    "ml.trn1.2xlarge",
    "ml.trn1.32xlarge",
)
# Compilation of a 70B pair takes tens of minutes: the container must be given that long.
STARTUP_TIMEOUT_S = 3600
DOWNLOAD_TIMEOUT_S = 3600
VOLUME_GB = 512
CONTAINER_PYTHON = ("3.10", "manylinux2014_x86_64")


class DeployError(NeuronSpecError):
    exit_code = 1


@dataclass
class DeployOptions:
    role_arn: str
    bucket: str  # s3://bucket[/prefix]
    instance_type: str = "ml.inf2.48xlarge"
    initial_instance_count: int = 1
    endpoint_name: str | None = None
    region: str | None = None
    image_uri: str | None = None
    wait_timeout_s: float = 3600.0
    poll_s: float = 30.0
    part_bytes: int = PART_BYTES  # multipart part size for checkpoint files
    upload_workers: int = WORKERS
    autoscale: Scaling | None = None  # register the variant with Application Auto Scaling


@dataclass
class DeployPlan:
    endpoint: str
    model_name: str
    config_name: str
    s3_bucket: str
    s3_key: str
    image: str
    region: str = ""
    region_source: str = ""
    config_sha256: str = ""
    checkpoints: list[Checkpoint] = field(default_factory=list)
    rewrite: dict[str, str] = field(default_factory=dict)  # role -> s3:// URI of its upload
    requests: list[Request] = field(default_factory=list)

    @property
    def sagemaker_requests(self) -> list[Request]:
        return [r for r in self.requests if r.service == "sagemaker"]


def validate(cfg: ConfigFile, opts: DeployOptions) -> list[str]:
    """Every problem with the inputs; nothing is sent anywhere."""
    problems = []
    if not ROLE_ARN.match(opts.role_arn):
        problems.append(
            f"--role {opts.role_arn!r} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
        )
    broken = uri_problem(opts.bucket)
    if broken or not BUCKET_URI.match(opts.bucket):
        problems.append(
            f"--bucket {show(opts.bucket)} is not a usable S3 URL (s3://bucket/prefix): "
            f"{broken or 'write it as s3://bucket/prefix'}"
        )
    if cfg.spec.neuron and opts.instance_type not in NEURON_INSTANCE_TYPES:
        problems.append(
            f"--instance-type {opts.instance_type!r} has no NeuronCores; use one of "
            f"{', '.join(NEURON_INSTANCE_TYPES)}"
        )
    elif not re.match(r"^ml\.[a-z0-9]+\.[a-z0-9]+$", opts.instance_type):
        problems.append(f"--instance-type {opts.instance_type!r} is not a SageMaker instance type")
    if cfg.spec.backend == "nxdi" and not opts.image_uri:
        problems.append(
            "backend: nxdi needs --image-uri: a Neuron container with NxD Inference 0.8 to 0.10 "
            "(SDK 2.28 to 2.31) inside; the default image is AWS's transformers-neuronx container"
        )
    if opts.initial_instance_count < 1:
        problems.append("--initial-instance-count must be at least 1")
    name = opts.endpoint_name or default_endpoint_name(cfg)
    if not ENDPOINT_NAME.match(name):
        problems.append(f"--endpoint-name {name!r}: letters, digits and hyphens, at most 63")
    problems += _checkpoint_problems(cfg)
    return problems


def _checkpoint_problems(cfg: ConfigFile) -> list[str]:
    """An endpoint needs weights: s3:// URLs, or local checkpoints deploy uploads."""
    from ..sources.checkpoint import resolve_model

    problems = []
    for role, m in cfg.spec.models():
        r = resolve_model(m.model, cfg.base_dir, m.architecture)
        if r.kind == "catalog":
            problems.append(
                f"{role}.model is the catalog name {m.model!r}: an endpoint needs weights; "
                "set it to a local checkpoint directory (deploy uploads it) or an s3:// URL"
            )
        elif r.problem:
            problems.append(f"{role}.model cannot be uploaded: {r.problem}")
    return problems


def default_instance_type(cfg: ConfigFile) -> str:
    """Where a config runs when --instance-type is not given: a Neuron instance for a Neuron
    backend, a 4-vCPU, 16 GiB CPU instance for the reference backend."""
    return "ml.m5.xlarge" if cfg.spec.backend == "reference" else "ml.inf2.48xlarge"


def default_endpoint_name(cfg: ConfigFile) -> str:
    stem = cfg.path.stem if cfg.path else "neuron-spec"
    return re.sub(r"[^a-zA-Z0-9-]", "-", f"neuron-spec-{stem}")[:63].strip("-")


def plan_deploy(
    cfg: ConfigFile, opts: DeployOptions, exists: bool, stamp: str | None = None
) -> DeployPlan:
    problems = validate(cfg, opts)
    if problems:
        raise UsageError("cannot deploy:\n  " + "\n  ".join(problems))
    region, region_source = resolve_region(opts.region)
    endpoint = opts.endpoint_name or default_endpoint_name(cfg)
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    m = BUCKET_URI.match(opts.bucket)
    assert m is not None  # validated above
    prefix = (m.group("prefix") or "").strip("/")
    prefix = prefix + "/" if prefix else ""
    key = f"{prefix}{endpoint}/{stamp}/model.tar.gz"
    if opts.image_uri:
        image = opts.image_uri
    else:
        image = cpu_image(region) if cfg.spec.backend == "reference" else neuron_image(region)
    model_name = f"{endpoint}-{stamp}"[:63]
    config_name = f"{endpoint}-{stamp}"[:63]
    plan = DeployPlan(endpoint, model_name, config_name, m.group("bucket"), key, image)
    plan.region, plan.region_source = region, region_source
    plan.config_sha256 = hashlib.sha256(cfg.path.read_bytes()).hexdigest() if cfg.path else ""
    plan.checkpoints, plan.rewrite = local_checkpoints(cfg, plan.s3_bucket, prefix)
    plan.requests = [
        *(_upload_request(c, opts) for c in plan.checkpoints),
        *_requests(plan, opts, exists),
        *(autoscale.requests(endpoint, opts.autoscale) if opts.autoscale else []),
    ]
    return plan


def _upload_request(c: Checkpoint, opts: DeployOptions) -> Request:
    return Request(
        "s3",
        "upload_checkpoint",
        {
            "Source": str(c.local),
            "Destination": f"s3://{c.bucket}/{c.prefix}",
            "Files": len(c.files),
            "Bytes": c.total_bytes,
            **({"SkippedLinks": c.skipped} if c.skipped else {}),
        },
        f"multipart ({opts.part_bytes // 2**20} MiB parts, {opts.upload_workers} in parallel), "
        "resumable; files already there with the same SHA-256 are skipped",
    )


def _requests(plan: DeployPlan, opts: DeployOptions, exists: bool) -> list[Request]:
    endpoint, key, image = plan.endpoint, plan.s3_key, plan.image
    model_name, config_name = plan.model_name, plan.config_name
    tags = ownership_tags(endpoint, plan.config_sha256)
    return [
        Request(
            "s3",
            "put_object",
            {"Bucket": plan.s3_bucket, "Key": key, "Body": b""},
            "the packaged model.tar.gz",
        ),
        Request(
            "sagemaker",
            "create_model",
            {
                "ModelName": model_name,
                "ExecutionRoleArn": opts.role_arn,
                "PrimaryContainer": {
                    "Image": image,
                    "ModelDataUrl": f"s3://{plan.s3_bucket}/{key}",
                    "Environment": {
                        "SAGEMAKER_PROGRAM": "inference.py",
                        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                        "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(STARTUP_TIMEOUT_S),
                        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                    },
                },
                "Tags": tags,
            },
        ),
        Request(
            "sagemaker",
            "create_endpoint_config",
            {
                "EndpointConfigName": config_name,
                "ProductionVariants": [
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": model_name,
                        "InstanceType": opts.instance_type,
                        "InitialInstanceCount": opts.initial_instance_count,
                        "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_TIMEOUT_S,
                        "ModelDataDownloadTimeoutInSeconds": DOWNLOAD_TIMEOUT_S,
                        "VolumeSizeInGB": VOLUME_GB,
                    }
                ],
                "Tags": tags,
            },
        ),
        Request(
            "sagemaker",
            "update_endpoint" if exists else "create_endpoint",
            {"EndpointName": endpoint, "EndpointConfigName": config_name}
            | ({} if exists else {"Tags": tags}),
            "the endpoint exists: switch it to the new configuration" if exists else "",
        ),
    ]


# --- packaging ---------------------------------------------------------------------------------

# The SageMaker inference entry point, shipped as code/inference.py (standard library only)
ENTRY_POINT = Path(__file__).resolve().parents[1] / "serving" / "sagemaker_entry.py"


def _project_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise DeployError(
            "packaging needs neuron-spec's source tree (pyproject.toml next to "
            "the neuron_spec package); install it with `pip install -e .`"
        )
    return root


# The reference backend's dependencies a CPU PyTorch container lacks (torch it has).
REFERENCE_WHEELS = ("transformers", "gguf", "safetensors", "accelerate", "numpy")
EXTRAS_FILE = "extras.txt"  # in code/wheels: what the entry point installs besides neuron-spec
# What every container neuron-spec deploys to already has, and is never shipped: accelerate
# requires torch, and pip would otherwise download torch with its CUDA libraries (about 3 GB)
# into the archive, where pip on the endpoint would leave it unused.
CONTAINER_HAS = frozenset({"torch"})


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements(wheel: Path) -> list[str]:
    """A wheel's own requirements (its Requires-Dist without an extra's)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode("utf-8")
    reqs = [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]  # fmt: skip
    return [r for r in reqs if not re.search(r"\bextra\s*==", r)]


def build_wheels(
    dest: Path,
    with_dependencies: bool = True,
    python: str | None = None,
    extra: tuple[str, ...] = (),
) -> list[Path]:
    """neuron-spec's wheel, plus wheels of its dependencies (and of `extra` requirements,
    listed in extras.txt for the entry point) for the container's Python."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    proc = subprocess.run(
        [*pip, "wheel", "--no-deps", "--quiet", "-w", str(dest), str(_project_root())],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise DeployError(f"building the neuron-spec wheel failed: {proc.stderr.strip()[-800:]}")
    if with_dependencies:
        from importlib.metadata import requires

        deps = [
            r.split(";")[0].strip() for r in (requires("neuron-spec") or []) if "extra ==" not in r
        ]
        reference = {  # name -> the requirement as neuron-spec states it
            re.split(r"[<>=!~ \[]", r, maxsplit=1)[0]: r.split(";")[0].strip()
            for r in (requires("neuron-spec") or [])
            if 'extra == "reference"' in r
        }
        wanted = [reference.get(name, name) for name in extra]
        if extra:
            (dest / EXTRAS_FILE).write_text("\n".join(wanted) + "\n", encoding="utf-8")
        python = python or CONTAINER_PYTHON[0]
        download = [
            *pip,
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--python-version",
            python,
            "--platform",
            CONTAINER_PYTHON[1],
            "-d",
            str(dest),
        ]

        def fetch(requirements: list[str], *flags: str) -> None:
            proc = subprocess.run(
                [*download, *flags, *requirements], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise DeployError(f"downloading dependency wheels failed: {proc.stderr[-800:]}")

        if wanted:  # the extras alone first, then what they need but the container has
            before = set(dest.glob("*.whl"))
            fetch(wanted, "--no-deps")
            for wheel in sorted(set(dest.glob("*.whl")) - before):
                deps += [r for r in _requirements(wheel) if _name(r) not in CONTAINER_HAS]
        fetch(deps)
    return sorted(dest.glob("*.whl"))


def package(
    cfg: ConfigFile,
    out: Path,
    with_dependencies: bool = True,
    rewrite: dict[str, str] | None = None,
    image_is_default_cpu: bool = False,
) -> Path:
    """Write model.tar.gz: code/inference.py, code/neuron-spec.yaml, code/wheels/*.whl.
    `rewrite` (role -> s3:// URI) replaces uploaded local checkpoints in the shipped config."""
    if cfg.path is None:
        raise DeployError("packaging needs the config file on disk")
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "code"
        code.mkdir()
        shutil.copy(ENTRY_POINT, code / "inference.py")
        _ship_config(cfg.path, code / "neuron-spec.yaml", rewrite or {})
        cpu = cfg.spec.backend == "reference" and image_is_default_cpu
        build_wheels(
            code / "wheels",
            with_dependencies,
            python=CPU_PYTHON if cpu else None,
            extra=REFERENCE_WHEELS if cfg.spec.backend == "reference" else (),
        )
        part = out.with_name(out.name + ".part")
        with tarfile.open(part, "w:gz") as tar:
            tar.add(code, arcname="code")
        part.replace(out)  # never a half-written archive under the final name
    return out


def _ship_config(source: Path, dest: Path, rewrite: dict[str, str]) -> None:
    """The config as written, or with each uploaded role's model (and a tokenizer that pointed
    at the same local place) replaced by its s3:// URI."""
    if not rewrite:
        shutil.copy(source, dest)
        return
    import yaml

    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    for role, uri in rewrite.items():
        section = data[role]
        if section.get("tokenizer") in (None, section.get("model")):
            section.pop("tokenizer", None)
        section["model"] = uri
    text = "# shipped by neuron-spec deploy: local checkpoints replaced by their uploads\n"
    dest.write_text(text + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


# --- execution ---------------------------------------------------------------------------------


# botocore's standard retry mode: throttling and transient errors are retried with
# exponential backoff and jitter, up to this many attempts per request.
RETRIES = {"mode": "standard", "max_attempts": 8}


def _clients(region: str | None) -> tuple[Any, Any]:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=region)
    config = Config(retries=RETRIES)
    return session.client("s3", config=config), session.client("sagemaker", config=config)


def _autoscaling_client(region: str | None) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=region)
    return session.client("application-autoscaling", config=Config(retries=RETRIES))


def _aws_errors() -> tuple[type[BaseException], ...]:
    """Every exception an AWS call through boto3 can raise."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError, Boto3Error)


def _aws_message(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        op = getattr(exc, "operation_name", "request")
        return f"{op} failed: {err.get('Code', '?')}: {err.get('Message', str(exc))}"
    return f"{type(exc).__name__}: {exc}"


def endpoint_exists(sm: Any, name: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        sm.describe_endpoint(EndpointName=name)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound"):
            return False
        raise


def deploy(
    cfg: ConfigFile,
    opts: DeployOptions,
    progress: Callable[[str], None] = lambda _msg: None,
    with_dependencies: bool = True,
    clients: tuple[Any, Any] | None = None,
    on_bytes: Callable[[int, int], None] | None = None,
    autoscaling: Any = None,
) -> dict[str, Any]:
    """Deploy CONFIG; `on_bytes(n, total)` follows the checkpoint upload; with
    `opts.autoscale`, the variant is registered for auto scaling once InService."""
    problems = validate(cfg, opts)  # before any request, even the existence check
    if problems:
        raise UsageError("cannot deploy:\n  " + "\n  ".join(problems))
    plan = plan_deploy(cfg, opts, exists=False)  # region and image: a usage error, nothing sent
    s3, sm = clients or _clients(plan.region)
    created: list[Request] = []  # what to delete again if the deploy fails before the switch
    uploads: dict[str, Any] = {}
    try:
        exists = endpoint_exists(sm, plan.endpoint)
        if exists:
            arn = sm.describe_endpoint(EndpointName=plan.endpoint)["EndpointArn"]
            if not _is_ours(sm, arn, plan.endpoint):
                raise UsageError(
                    f"endpoint {plan.endpoint} exists in {plan.region} and was not created by "
                    "neuron-spec deploy (it lacks the neuron-spec tags): it is left alone. "
                    "Choose another --endpoint-name."
                )
        plan = plan_deploy(cfg, opts, exists)
        if plan.checkpoints:
            uploads = _upload_checkpoints(s3, plan, opts, progress, on_bytes)
        with tempfile.TemporaryDirectory() as tmp:
            progress("packaging model.tar.gz (config, entry point, wheels)")
            archive = package(
                cfg,
                Path(tmp) / "model.tar.gz",
                with_dependencies,
                plan.rewrite,
                image_is_default_cpu=not opts.image_uri and cfg.spec.backend == "reference",
            )
            progress(f"uploading to s3://{plan.s3_bucket}/{plan.s3_key}")
            s3.upload_file(str(archive), plan.s3_bucket, plan.s3_key)
        _create(sm, plan, created, progress)
    except _aws_errors() as exc:
        left = _roll_back(sm, created, progress)
        raise DeployError(f"AWS {_aws_message(exc)}{left}") from None
    try:
        status = wait(sm, plan.endpoint, opts.wait_timeout_s, opts.poll_s, progress)
        scaling = [r for r in plan.requests if r.service == "application-autoscaling"]
        if scaling:
            aas = autoscaling or _autoscaling_client(plan.region)
            for req in scaling:
                progress(f"{req.operation} {req.params['ResourceId']}")
                getattr(aas, req.operation)(**req.params)
    except _aws_errors() as exc:
        raise DeployError(
            f"AWS {_aws_message(exc)}; remove what was deployed with: "
            f"neuron-spec deploy delete {plan.endpoint}"
        ) from None
    return {
        "endpoint": plan.endpoint,
        "model": plan.model_name,
        "endpoint_config": plan.config_name,
        "model_data": f"s3://{plan.s3_bucket}/{plan.s3_key}",
        "status": status,
        "updated": exists,
        "region": plan.region,
        "image": plan.image,
        "checkpoints": {role: uri for role, uri in plan.rewrite.items()},
        "upload": uploads,
        "autoscale": None
        if opts.autoscale is None
        else {
            "resource_id": autoscale.resource_id(plan.endpoint),
            "min": opts.autoscale.low,
            "max": opts.autoscale.high,
            "target_invocations_per_instance_per_minute": opts.autoscale.target,
            "target_source": opts.autoscale.source,
        },
    }


def _upload_checkpoints(
    s3: Any,
    plan: DeployPlan,
    opts: DeployOptions,
    progress: Callable[[str], None],
    on_bytes: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    total = sum(c.total_bytes for c in plan.checkpoints)
    for c in plan.checkpoints:
        progress(
            f"checkpoint {c.local} -> s3://{c.bucket}/{c.prefix} "
            f"({len(c.files)} files, {c.total_bytes / 1e9:.2f} GB)"
        )
        for why in c.skipped:
            progress(f"warning: not uploaded: {why}")
    uploader = Uploader(
        s3,
        on_bytes=(lambda n: on_bytes(n, total)) if on_bytes else (lambda _n: None),
        say=progress,
        part_bytes=opts.part_bytes,
        workers=opts.upload_workers,
    )
    try:
        report = uploader.upload(plan.checkpoints)
    except ChangedWhileUploading as exc:
        raise DeployError(str(exc)) from None
    progress(
        f"checkpoints: {len(report.uploaded)} file(s) sent ({report.bytes_sent / 1e9:.2f} GB), "
        f"{len(report.skipped)} already there unchanged"
    )
    return {**report.to_dict(), "skipped_links": [s for c in plan.checkpoints for s in c.skipped]}


def _create(
    sm: Any, plan: DeployPlan, created: list[Request], progress: Callable[[str], None]
) -> None:
    """Create the model and the endpoint configuration, then create or switch the endpoint;
    `created` lists the deletions that undo what succeeded, until the endpoint call does."""
    undo = {
        "create_model": lambda p: Request(
            "sagemaker", "delete_model", {"ModelName": p["ModelName"]}
        ),
        "create_endpoint_config": lambda p: Request(
            "sagemaker", "delete_endpoint_config", {"EndpointConfigName": p["EndpointConfigName"]}
        ),
    }
    for req in plan.sagemaker_requests:
        p = req.params
        name = p.get("ModelName") or p.get("EndpointConfigName") or p.get("EndpointName")
        progress(f"{req.operation} {name}")
        getattr(sm, req.operation)(**req.params)
        if req.operation in undo:
            created.append(undo[req.operation](p))
    created.clear()  # the endpoint uses them now: `deploy delete` removes them with it


def _roll_back(sm: Any, created: list[Request], progress: Callable[[str], None]) -> str:
    """Delete what a failed deploy created; say what could not be deleted."""
    failed = []
    for req in reversed(created):
        progress(f"rolling back: {req.render()}")
        try:
            getattr(sm, req.operation)(**req.params)
        except _aws_errors():
            failed.append(req.render())
    if failed:
        return "; could not remove " + ", ".join(failed) + " (delete them in the console)"
    return "; nothing was left behind" if created else ""


def wait(
    sm: Any, endpoint: str, timeout_s: float, poll_s: float, progress: Callable[[str], None]
) -> str:
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        desc = sm.describe_endpoint(EndpointName=endpoint)
        status = str(desc["EndpointStatus"])
        if status != last:
            progress(f"endpoint {endpoint}: {status}")
            last = status
        if status == "InService":
            return status
        if status in ("Failed", "RollingBack", "OutOfService"):
            raise DeployError(
                f"endpoint {endpoint} is {status}: {desc.get('FailureReason', 'no reason given')}"
            )
        if time.monotonic() > deadline:
            raise DeployError(
                f"endpoint {endpoint} still {status} after {timeout_s:.0f} s; "
                "it keeps going: check it in the SageMaker console"
            )
        time.sleep(poll_s)


@dataclass
class Deletion:
    """What `deploy delete` removed (or would), and what it left with the reason."""

    requests: list[Request]
    kept: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "deleted": [{"operation": r.operation, "params": r.params} for r in self.requests],
            "kept": self.kept,
        }


def delete(
    name: str,
    region: str | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
    clients: tuple[Any, Any] | None = None,
    dry_run: bool = False,
    autoscaling: Any = None,
) -> Deletion:
    """Delete an endpoint neuron-spec deployed, its endpoint configurations and models, and
    those an earlier deploy of it left behind - only resources tagged as created by neuron-spec
    for this endpoint, and never a model that another endpoint configuration references."""
    if not ENDPOINT_NAME.match(name):
        raise UsageError(f"{name!r} is not an endpoint name")
    if dry_run:
        return Deletion(delete_plan(name), [])  # sends nothing: not even the lookups
    where = resolve_region(region)[0]
    _, sm = clients or _clients(where)
    try:
        found = _owned(sm, name)
        if not found.requests and not found.kept:
            raise DeployError(f"there is no endpoint {name}, and nothing a deploy of it left")
        ours = any(r.operation == "delete_endpoint" for r in found.requests)
        aas = (autoscaling or _autoscaling_client(where)) if ours else None
        if aas is not None:  # scaling goes first: it would act on a vanishing variant
            found.requests[:0] = autoscale.removal(aas, name)
        for req in found.requests:
            progress(req.render())
            client = aas if req.service == "application-autoscaling" else sm
            getattr(client, req.operation)(**req.params)
        for why in found.kept:
            progress(f"kept: {why}")
        return found
    except _aws_errors() as exc:
        raise DeployError(f"cannot delete {name}: AWS {_aws_message(exc)}") from None


def delete_plan(name: str) -> list[Request]:
    """What `deploy delete NAME` does, as requests with placeholders for what only AWS knows."""
    ours = f"tagged {OWNER_TAG}={OWNER} and {ENDPOINT_TAG}={name}"
    return [
        Request("sagemaker", "describe_endpoint", {"EndpointName": name}, "finds its config"),
        Request("sagemaker", "list_tags", {"ResourceArn": "<the endpoint's ARN>"}, ours + "?"),
        Request(
            "sagemaker",
            "list_endpoint_configs",
            {},
            "every configuration, to find the models other configurations still use",
        ),
        *autoscale.removal_plan(name),
        Request("sagemaker", "delete_endpoint", {"EndpointName": name}, f"only if {ours}"),
        Request(
            "sagemaker",
            "delete_endpoint_config",
            {"EndpointConfigName": "<each configuration of this endpoint>"},
            f"only if {ours} and no other endpoint uses it",
        ),
        Request(
            "sagemaker",
            "delete_model",
            {"ModelName": "<each model of this endpoint>"},
            f"only if {ours} and no configuration kept references it",
        ),
    ]


# Every resource deploy creates carries these tags; delete removes only what carries them.
OWNER_TAG, OWNER = "neuron-spec:managed-by", "neuron-spec"
ENDPOINT_TAG = "neuron-spec:endpoint"
CONFIG_TAG = "neuron-spec:config-sha256"


def ownership_tags(endpoint: str, config_sha: str) -> list[dict[str, str]]:
    return [
        {"Key": OWNER_TAG, "Value": OWNER},
        {"Key": ENDPOINT_TAG, "Value": endpoint},
        {"Key": CONFIG_TAG, "Value": config_sha},
    ]


def _is_ours(sm: Any, arn: str, endpoint: str) -> bool:
    tags = {t["Key"]: t["Value"] for t in _all_tags(sm, arn)}
    return tags.get(OWNER_TAG) == OWNER and tags.get(ENDPOINT_TAG) == endpoint


def _all_tags(sm: Any, arn: str) -> list[dict[str, str]]:
    tags: list[dict[str, str]] = []
    kwargs: dict[str, Any] = {"ResourceArn": arn}
    while True:
        page = sm.list_tags(**kwargs)
        tags.extend(page.get("Tags", []))
        if not page.get("NextToken"):
            return tags
        kwargs["NextToken"] = page["NextToken"]


def _configs(sm: Any) -> dict[str, dict[str, Any]]:
    """Every endpoint configuration: name -> {arn, models}."""
    out: dict[str, dict[str, Any]] = {}
    for page in sm.get_paginator("list_endpoint_configs").paginate():
        for c in page.get("EndpointConfigs", []):
            desc = sm.describe_endpoint_config(EndpointConfigName=c["EndpointConfigName"])
            models = {v["ModelName"] for v in desc.get("ProductionVariants", [])}
            out[c["EndpointConfigName"]] = {"arn": c["EndpointConfigArn"], "models": models}
    return out


def _live_configs(sm: Any) -> dict[str, str]:
    """Endpoint configuration -> the endpoint using it, over every endpoint."""
    out = {}
    for page in sm.get_paginator("list_endpoints").paginate():
        for ep in page.get("Endpoints", []):
            desc = sm.describe_endpoint(EndpointName=ep["EndpointName"])
            out[desc["EndpointConfigName"]] = ep["EndpointName"]
    return out


def _owned(sm: Any, name: str) -> Deletion:
    """The deletions `deploy delete NAME` may make, and what it must leave, with why."""
    requests: list[Request] = []
    kept: list[str] = []
    live = _live_configs(sm)
    if endpoint_exists(sm, name):
        arn = sm.describe_endpoint(EndpointName=name)["EndpointArn"]
        if not _is_ours(sm, arn, name):
            kept.append(
                f"endpoint {name}: not created by neuron-spec deploy (no {OWNER_TAG} and "
                f"{ENDPOINT_TAG}={name} tags); delete it in the SageMaker console if it is yours"
            )
            return Deletion([], kept)
        requests.append(Request("sagemaker", "delete_endpoint", {"EndpointName": name}))
        live = {c: ep for c, ep in live.items() if ep != name}
    configs = _configs(sm)
    doomed_configs = []
    for cname, c in configs.items():
        if not _is_ours(sm, c["arn"], name):
            continue
        if cname in live:
            kept.append(f"endpoint configuration {cname}: endpoint {live[cname]} uses it")
            continue
        doomed_configs.append(cname)
    referenced = {m for cn, c in configs.items() if cn not in doomed_configs for m in c["models"]}
    requests += [
        Request("sagemaker", "delete_endpoint_config", {"EndpointConfigName": c})
        for c in doomed_configs
    ]
    # deploy names its models <endpoint>-<stamp>, cut to 63 characters
    for page in sm.get_paginator("list_models").paginate(NameContains=name[:47]):
        for m in page.get("Models", []):
            if not _is_ours(sm, m["ModelArn"], name):
                continue
            if m["ModelName"] in referenced:
                users = sorted(
                    c
                    for c, v in configs.items()
                    if m["ModelName"] in v["models"] and c not in doomed_configs
                )
                kept.append(
                    f"model {m['ModelName']}: endpoint configuration {', '.join(users)} "
                    "references it"
                )
                continue
            requests.append(Request("sagemaker", "delete_model", {"ModelName": m["ModelName"]}))
    return Deletion(requests, kept)


def dry_run(cfg: ConfigFile, opts: DeployOptions) -> list[Request]:
    """The requests a deploy would make (assuming the endpoint does not exist yet)."""
    return plan_deploy(cfg, opts, exists=False).requests


def tar_members(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return tar.getnames()


def tar_text(archive: bytes, member: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        f = tar.extractfile(member)
        if f is None:
            raise KeyError(member)
        return f.read().decode("utf-8")
