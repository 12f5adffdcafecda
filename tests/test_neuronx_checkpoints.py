"""Checkpoints transformers-neuronx cannot read as they are, prepared once and loaded on the
double of every release: a `.bin` (split), a GGUF file (de-quantized to safetensors) and an
`s3://` prefix on a moto server (downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuron_spec.backends import load_generator
from neuron_spec.config.spec import load_config

from .neuron_fixtures import (
    clean_neuron_env,  # noqa: F401  (autouse: the Neuron environment undone)
    make_checkpoint,
    reset_cores,
    use_double,
)

pytestmark = pytest.mark.reference
RELEASES = ["0.11.351", "0.12.313", "0.13.322"]
PROMPT = "w1 w5 w9 w3"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    target = make_checkpoint(root / "target", seed=0)
    draft = make_checkpoint(root / "draft", seed=0, noise=0.003, base=target)
    return target, draft


def config(path: Path, target: str, draft: str, backend: str, cache: Path, *, tp=32, n_pos=64):
    path.write_text(
        f"instance: trn1.32xlarge\nbackend: {backend}\n"
        f"target: {{model: {target}, amp: f32, tp_degree: {tp}, n_positions: {n_pos}}}\n"
        f"draft: {{model: {draft}, amp: f32, tp_degree: {tp}, n_positions: {n_pos}}}\n"
        "speculation: {draft_tokens: 3, acceptor: greedy}\n"
        "generation: {max_new_tokens: 12, max_prompt_tokens: 16}\n"
        f"compile: {{artifact_cache: {cache}}}\n"
    )
    return load_config(path)


@pytest.mark.parametrize("version", RELEASES)
def test_bin_checkpoint_loads_on_every_release(tmp_path, monkeypatch, pair, version):
    use_double(monkeypatch, version, tmp_path / "meta")
    target, _ = pair
    draft_bin = make_checkpoint(tmp_path / "bin", seed=0, noise=0.003, base=target, bin_format=True)
    cache = tmp_path / "compiled"
    want = load_generator(
        config(tmp_path / "r.yaml", str(target), str(draft_bin), "reference", cache)
    ).generate(PROMPT)
    gen = load_generator(config(tmp_path / "n.yaml", str(target), str(draft_bin), "neuronx", cache))
    assert gen.backend.plan.draft.prepare == "split"
    assert gen.generate(PROMPT).token_ids == want.token_ids


def _upload(client, directory: Path, bucket: str, prefix: str) -> None:
    for f in sorted(directory.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(directory)}")


@pytest.mark.aws
@pytest.mark.parametrize("version", RELEASES)
def test_s3_checkpoint_is_downloaded_once_and_loads(
    tmp_path, monkeypatch, pair, s3_server, version
):
    use_double(monkeypatch, version, tmp_path / "meta")
    target, draft = pair
    prefix = f"models/{version}/target"
    _upload(s3_server, target, "fleet-artifacts", prefix)
    url = f"s3://fleet-artifacts/{prefix}"
    cache = tmp_path / "compiled"
    want = load_generator(
        config(tmp_path / "r.yaml", str(target), str(draft), "reference", cache)
    ).generate(PROMPT)
    gen = load_generator(config(tmp_path / "n.yaml", url, str(draft), "neuronx", cache))
    assert gen.backend.plan.target.prepare == "s3"
    local = Path(gen.backend.plan.target.checkpoint)
    assert (local / "model.safetensors").is_file() and (local / "config.json").is_file()
    assert gen.generate(PROMPT).token_ids == want.token_ids
    # prepared once: with the objects gone, a second load still works from the local copy
    for obj in s3_server.list_objects_v2(Bucket="fleet-artifacts", Prefix=prefix)["Contents"]:
        s3_server.delete_object(Bucket="fleet-artifacts", Key=obj["Key"])
    reset_cores()  # a new process
    again = load_generator(config(tmp_path / "n2.yaml", url, str(draft), "neuronx", cache))
    assert again.generate(PROMPT).token_ids == want.token_ids


@pytest.fixture(scope="module")
def gguf_reference(tmp_path_factory, demo_checkpoint):
    """The demo GGUF on the reference backend (transformers de-quantizes it: the slow part),
    once for every release: its file, the cache of conversions, and what it generates."""
    from neuron_spec.sources.demo import demo_gguf_path

    gguf = demo_gguf_path()
    assert gguf.is_file()  # fetched with the demo checkpoint
    tmp = tmp_path_factory.mktemp("gguf-reference")
    cache = tmp_path_factory.getbasetemp() / "gguf-cache"  # one conversion for all releases
    want = load_generator(
        config(tmp / "r.yaml", str(gguf), str(demo_checkpoint), "reference", cache, tp=1)
    ).generate("The capital of France is")
    return gguf, cache, want


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("version", RELEASES)
def test_gguf_checkpoint_is_converted_once_and_loads(
    tmp_path_factory, monkeypatch, demo_checkpoint, gguf_reference, version
):
    """The demo pair as shipped (SmolLM2-135M-Instruct Q4_1 GGUF as the target), on one core."""
    gguf, cache, want = gguf_reference
    tmp = tmp_path_factory.mktemp(f"gguf-{version}")
    use_double(monkeypatch, version, tmp / "meta")
    gen = load_generator(
        config(tmp / "n.yaml", str(gguf), str(demo_checkpoint), "neuronx", cache, tp=1)
    )
    assert gen.backend.plan.target.prepare == "gguf"
    assert (Path(gen.backend.plan.target.checkpoint) / "model.safetensors").is_file()
    assert gen.generate("The capital of France is").token_ids == want.token_ids
