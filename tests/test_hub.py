"""Hugging Face Hub repo ids as `model:`, against a local stand-in for the Hub (HF_ENDPOINT):
sized from config.json alone, offline mode, gated repos, the download `generate` makes, and
Hubs that hang, trickle, ask to be retried tomorrow or send 96 MB of config.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .hub_server import COMMIT, Hub, Silent

TARGET, DRAFT = "meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"


def llama31(hidden: int, inter: int, layers: int, heads: int) -> bytes:
    return json.dumps(
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
            "bos_token_id": 128000,
            "eos_token_id": [128001, 128008, 128009],
            "torch_dtype": "bfloat16",
        }
    ).encode()


@pytest.fixture
def hub(tmp_path):
    h = Hub()
    h.add(TARGET, {"config.json": llama31(8192, 28672, 80, 64),
                   "model-00001-of-00030.safetensors": b"never fetched"})  # fmt: skip
    h.add(DRAFT, {"config.json": llama31(4096, 14336, 32, 32)})
    h.add("meta-llama/Llama-3.3-70B-Instruct", {"config.json": b"{}"}, gated=True)
    yield h
    h.stop()


def run(
    args, tmp_path: Path, hub: Hub | None = None, timeout: float = 300, **env
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "NEURON_SPEC_HUB"))}
    base |= {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    if hub is not None:
        base["HF_ENDPOINT"] = hub.url
    return subprocess.run(
        [sys.executable, "-m", "neuron_spec", *args],
        capture_output=True, text=True, timeout=timeout, env=base | env,
    )  # fmt: skip


def config(tmp_path: Path, target: str = TARGET, draft: str = DRAFT) -> Path:
    path = tmp_path / "pair.yaml"
    path.write_text(
        "instance: trn1.32xlarge\nbackend: nxdi\n"
        f"target: {{model: {target}, amp: bf16, tp_degree: 32}}\n"
        f"draft: {{model: {draft}, amp: bf16, tp_degree: 32}}\n"
    )
    return path


@pytest.mark.slow
def test_validate_and_plan_size_a_hub_repo_from_its_config_alone(hub, tmp_path):
    cfg = config(tmp_path)
    proc = run(["validate", str(cfg), "--json"], tmp_path, hub)
    assert proc.returncode in (0, 1), proc.stderr
    codes = {f["code"] for f in json.loads(proc.stdout)["findings"]}
    assert "hub-model" in codes and "checkpoint-missing" not in codes
    plan = run(["plan", str(cfg), "--json"], tmp_path, hub)
    assert plan.returncode in (0, 1), plan.stderr
    body = json.loads(plan.stdout)
    assert body["models"]["target"]["vocab_size"] == 128256
    assert body["models"]["target"]["parameters"] > 60e9 > body["models"]["draft"]["parameters"]
    fetched = {p.rsplit("/", 1)[-1] for p in hub.requests if "/resolve/" in p}
    assert fetched == {"config.json"}  # no weights downloaded to size the pair
    # cached: offline mode now reads the cache and sends nothing
    before = len(hub.requests)
    again = run(["validate", str(cfg)], tmp_path, hub, HF_HUB_OFFLINE="1")
    assert again.returncode in (0, 1) and len(hub.requests) == before


@pytest.mark.slow
def test_offline_with_nothing_cached_is_exit_2_naming_the_repo(hub, tmp_path):
    proc = run(["validate", str(config(tmp_path))], tmp_path, hub, HF_HUB_OFFLINE="1")
    assert proc.returncode == 2
    assert TARGET in proc.stdout + proc.stderr and "HF_HUB_OFFLINE" in proc.stdout + proc.stderr
    assert hub.requests == []  # offline: not one request


@pytest.mark.slow
def test_a_gated_repo_without_a_token_gets_the_fix(hub, tmp_path):
    cfg = config(tmp_path, target="meta-llama/Llama-3.3-70B-Instruct")
    proc = run(["validate", str(cfg)], tmp_path, hub)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "is gated" in out and "HF_TOKEN" in out and "accept the license" in out


@pytest.mark.slow
def test_an_unknown_repo_and_a_local_directory_of_that_shape(hub, tmp_path):
    proc = run(["validate", str(config(tmp_path, target="nobody/no-such-model"))], tmp_path, hub)
    assert proc.returncode == 2 and "there is no repo nobody/no-such-model" in proc.stdout
    local = tmp_path / "meta-llama" / "Llama-3.1-8B-Instruct"  # exists next to the config:
    local.mkdir(parents=True)  # a path, never a Hub id
    (local / "config.json").write_bytes(llama31(4096, 14336, 32, 32))
    hub.requests.clear()
    proc = run(["validate", str(config(tmp_path, target=TARGET)), "--json"], tmp_path, hub)
    draft = [f for f in json.loads(proc.stdout)["findings"] if f["path"] == "draft.model"]
    assert [f["code"] for f in draft] == ["checkpoint-no-weights"]  # a warning, not an error
    assert all(DRAFT not in p for p in hub.requests)


@pytest.mark.slow
def test_a_directory_with_only_config_json_validates(tmp_path):
    for role in ("target", "draft"):
        (tmp_path / role).mkdir()
        (tmp_path / role / "config.json").write_bytes(llama31(4096, 14336, 32, 32))
    proc = run(["validate", str(config(tmp_path, "./target", "./draft")), "--json"], tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    findings = json.loads(proc.stdout)["findings"]
    assert not [f for f in findings if f["code"] == "checkpoint-missing"]
    assert {f["severity"] for f in findings if f["code"] == "checkpoint-no-weights"} == {"warning"}


@pytest.mark.reference
@pytest.mark.slow
def test_generate_downloads_a_hub_pair_once_then_runs_offline(hub, tmp_path):
    from .neuron_fixtures import make_checkpoint

    tiny = make_checkpoint(tmp_path / "tiny", seed=0)
    hub.add_dir("org/tiny-llama", tiny)
    cfg = tmp_path / "ref.yaml"
    cfg.write_text(
        "backend: reference\n"
        "target: {model: org/tiny-llama, amp: f32, n_positions: 256}\n"
        "draft: {model: org/tiny-llama, amp: f32, n_positions: 256}\n"
        "speculation: {draft_tokens: 2, acceptor: greedy}\n"
        "generation: {max_new_tokens: 5, max_prompt_tokens: 32}\n"
    )
    args = ["generate", str(cfg), "--prompt", "w1 w2 w3", "--json"]
    first = run(args, tmp_path, hub)
    assert first.returncode == 0, first.stderr
    assert "Fetching" in first.stderr  # huggingface_hub's progress bar
    fetched = [
        p for p, m in zip(hub.requests, hub.methods, strict=True)
        if p.endswith(".safetensors") and m == "GET"
    ]  # fmt: skip
    assert len(fetched) == 1  # one download for both roles
    offline = run(args, tmp_path, hub, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["token_ids"] == json.loads(first.stdout)["token_ids"]


# --- Hubs that hang, trickle, rate-limit or flood: bounded in time and size --------------------

QUICK = {"NEURON_SPEC_HUB_TIMEOUT": "2"}  # the default is HUB_TIMEOUT_S; tests need not wait it
PROMPTLY_S = 25  # 2 s of Hub time, plus starting Python on a busy machine


def _hub_finding(proc: subprocess.CompletedProcess, role: str = "target") -> dict:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    found = [f for f in json.loads(proc.stdout)["findings"] if f["path"] == f"{role}.model"]
    assert [f["code"] for f in found] == ["hub-unavailable"], found
    return found[0]


@pytest.mark.slow
def test_validate_against_a_hub_that_never_answers_exits_2_naming_it(tmp_path):
    silent = Silent()
    start = time.monotonic()
    try:
        proc = run(["validate", str(config(tmp_path)), "--json"], tmp_path,
                   timeout=60, HF_ENDPOINT=silent.url, **QUICK)  # fmt: skip
    finally:
        silent.stop()
    assert time.monotonic() - start < PROMPTLY_S
    for role in ("target", "draft"):  # the draft is not waited for a second time
        finding = _hub_finding(proc, role)
        assert (
            silent.url in finding["message"]
            and "no complete answer within 2 s" in (finding["message"])
        )
        assert "HF_ENDPOINT" in finding["fix"]


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("trickle", "too slowly to finish in time"),
        ("trickle-headers", "no complete answer within 2 s"),
        ("429", "HTTP 429 (too many requests) and asked to be retried after '86400' s"),
        ("503", "HTTP 503 (busy) and asked to be retried after '86400' s"),
        ("huge", "is 96000000 bytes long (Content-Length), more than the 1048576 bytes"),
        ("huge-chunked", "more than 1048576 bytes long"),
    ],
)
@pytest.mark.slow
def test_a_hostile_hub_ends_validate_promptly_with_a_located_error(hub, tmp_path, mode, says):
    hub.hostile[TARGET] = mode
    start = time.monotonic()
    proc = run(["validate", str(config(tmp_path)), "--json"], tmp_path, hub, timeout=60, **QUICK)
    assert time.monotonic() - start < PROMPTLY_S
    finding = _hub_finding(proc)
    assert hub.url in finding["message"] and says in finding["message"], finding
    assert "Waiting" not in proc.stderr  # huggingface_hub's wait for a Retry-After


@pytest.mark.slow
def test_plan_against_a_hub_that_never_answers_is_as_prompt(tmp_path):
    silent = Silent()
    start = time.monotonic()
    try:
        proc = run(["plan", str(config(tmp_path))], tmp_path, timeout=60,
                   HF_ENDPOINT=silent.url, **QUICK)  # fmt: skip
    finally:
        silent.stop()
    assert time.monotonic() - start < PROMPTLY_S
    assert proc.returncode == 2 and silent.url in proc.stdout + proc.stderr


def test_the_default_bound_keeps_a_silent_hub_within_30_s(monkeypatch):
    from neuron_spec.sources import hub

    monkeypatch.delenv(hub.TIMEOUT_ENV, raising=False)
    assert hub.hub_timeout() == hub.HUB_TIMEOUT_S
    # one wait per endpoint and process (the other role fails at once), Python's start aside
    assert hub.HUB_TIMEOUT_S + 10 <= 30


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf", "1e9"])
@pytest.mark.slow
def test_a_bad_hub_timeout_setting_is_a_located_error(hub, tmp_path, value):
    proc = run(["validate", str(config(tmp_path)), "--json"], tmp_path, hub, timeout=60,
               NEURON_SPEC_HUB_TIMEOUT=value)  # fmt: skip
    finding = _hub_finding(proc)
    assert "NEURON_SPEC_HUB_TIMEOUT" in finding["message"] and "(0, 600]" in finding["message"]


@pytest.mark.slow
def test_a_hub_that_stops_answering_falls_back_to_the_cached_config(hub, tmp_path):
    cfg = config(tmp_path)
    assert run(["validate", str(cfg)], tmp_path, hub).returncode in (0, 1)
    hub.hostile[TARGET] = hub.hostile[DRAFT] = "503"
    proc = run(["validate", str(cfg), "--json"], tmp_path, hub, timeout=60, **QUICK)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert "hub-unavailable" not in {f["code"] for f in json.loads(proc.stdout)["findings"]}


@pytest.mark.slow
def test_a_hub_config_json_out_of_range_is_a_config_error_naming_repo_and_key(hub, tmp_path):
    bad = json.loads(llama31(8192, 28672, 80, 64)) | {"num_attention_heads": 0,
                                                       "model_type": "\x1b[2J"}  # fmt: skip
    hub.add(TARGET, {"config.json": json.dumps(bad).encode()})
    proc = run(["validate", str(config(tmp_path)), "--json"], tmp_path, hub, timeout=60)
    assert proc.returncode == 2 and "\x1b" not in proc.stdout
    (problem,) = json.loads(proc.stdout)["problems"]
    assert problem["path"] == "num_attention_heads" and "from 1 to 4096" in problem["message"]
    assert problem["file"] == f"config.json of {TARGET} at {hub.url}"


@pytest.mark.slow
def test_generate_against_a_hub_that_never_answers_stops_before_loading(tmp_path):
    cfg = tmp_path / "ref.yaml"
    cfg.write_text(f"backend: reference\ntarget: {{model: {TARGET}}}\ndraft: {{model: {DRAFT}}}\n")
    silent = Silent()
    start = time.monotonic()
    try:
        proc = run(["generate", str(cfg), "--prompt", "hi"], tmp_path, timeout=60,
                   HF_ENDPOINT=silent.url, **QUICK)  # fmt: skip
    finally:
        silent.stop()
    assert time.monotonic() - start < PROMPTLY_S
    assert (
        proc.returncode == 2 and silent.url in proc.stderr and "nothing was loaded" in proc.stderr
    )


# --- either HTTP client huggingface_hub hands out ------------------------------------------------


@pytest.fixture(params=["own", "requests", "httpx"])
def client(request):
    """huggingface_hub's own client, or the kind another release hands out: a requests.Session
    (before 1.0, as transformers 4.x pins it) or an httpx client (1.0 on)."""
    if request.param == "own":
        yield pytest.importorskip("huggingface_hub").get_session()
        return
    if request.param == "requests":
        session = pytest.importorskip("requests").Session()
    else:
        session = pytest.importorskip("httpx").Client(follow_redirects=True)
    with session:
        yield session


def test_the_bounded_request_reads_through_either_kind_of_client(hub, client, request):
    import threading

    from neuron_spec.sources import hub as source

    stop = threading.Event()

    def get(repo: str, limit: int = source.MAX_CONFIG_BYTES, seconds: float = 5.0):
        url = f"{hub.url}/{repo}/resolve/main/config.json"
        with source._open(client, url, {}, 2.0) as response:
            short = response.status_code >= 400
            deadline = time.monotonic() + seconds
            return response, source._read(response, limit, deadline, stop, keep_short=short)

    response, body = get(DRAFT)
    assert response.status_code == 200 and body == hub.repos[DRAFT]["config.json"]
    assert response.headers.get("x-repo-commit") == COMMIT
    response, body = get("meta-llama/Llama-3.3-70B-Instruct", source.MAX_ERROR_BYTES)
    refused = source._settled(response, body)  # what hf_raise_for_status is given
    assert refused.status_code == 401 and refused.headers.get("x-error-code") == "GatedRepo"
    assert "restricted" in refused.json()["error"]
    if request.node.callspec.params["client"] == "own":
        # of the library's own type: hf_raise_for_status reads it as the Hub meant it
        import huggingface_hub.errors
        import huggingface_hub.utils

        with pytest.raises(huggingface_hub.errors.GatedRepoError):
            huggingface_hub.utils.hf_raise_for_status(refused)
    hub.hostile[TARGET] = "trickle"  # a byte every 0.2 s: no read waits long enough to fail
    start = time.monotonic()
    with pytest.raises(source._Unavailable, match="too slowly to finish in time"):
        get(TARGET, seconds=1.0)
    assert time.monotonic() - start < 5
    hub.hostile[TARGET] = "huge-chunked"
    with pytest.raises(source._TooLarge, match="more than 1048576 bytes long"):
        get(TARGET)
