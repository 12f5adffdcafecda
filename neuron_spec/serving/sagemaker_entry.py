"""SageMaker inference entry point, shipped as code/inference.py inside model.tar.gz.

AWS's PyTorch Neuron inference container serves a model through the SageMaker inference
toolkit, which calls model_fn once, then input_fn / predict_fn / output_fn per request.
The archive carries neuron-spec and its dependencies as wheels (code/wheels), installed
without a package index, and the deployment config (code/neuron-spec.yaml). Checkpoints given
as s3:// URLs are downloaded to local disk before loading.

This file is self-contained (standard library only until neuron-spec is installed).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # installed from code/wheels when the endpoint starts
    from neuron_spec.backends.base import Generator
    from neuron_spec.serving.frontdoor import Request

CODE_DIR = Path(__file__).resolve().parent
CONFIG_NAME = "neuron-spec.yaml"
LOCAL_MODELS = Path(os.environ.get("NEURON_SPEC_MODEL_DIR", "/tmp/neuron-spec-models"))


def _install() -> None:
    try:
        importlib.import_module("neuron_spec")
        return
    except ImportError:
        pass
    wheels = CODE_DIR / "wheels"
    extras = wheels / "extras.txt"  # the reference backend's libraries, when it is deployed
    wanted = extras.read_text(encoding="utf-8").split() if extras.is_file() else []
    subprocess.check_call(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            "neuron-spec",
            *wanted,
        ]
    )
    importlib.invalidate_caches()


def _download(uri: str, dest: Path) -> Path:
    """Copy every object under an s3:// prefix into dest (once, confined to dest)."""
    from neuron_spec.sources.download import download_prefix

    return download_prefix(uri, dest, warn=lambda m: print(f"neuron-spec: {m}", flush=True))


def _fetch(uri: str, dest: Path) -> str:
    """A prefix becomes a directory; a URI naming a .gguf file is fetched with its prefix and
    the local file is returned."""
    if uri.lower().endswith(".gguf"):
        prefix, _, name = uri.rpartition("/")
        return str(_download(prefix + "/", dest) / name)
    return str(_download(uri, dest))


def _localize(config_path: Path) -> Path:
    """Rewrite s3:// model locations to downloaded local directories."""
    import yaml

    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    local: dict[str, str] = {}  # one download per URI, even when both roles share it
    for role in ("target", "draft"):
        model = data.get(role, {}).get("model", "")
        if isinstance(model, str) and model.startswith("s3://"):
            if model not in local:
                local[model] = _fetch(model, LOCAL_MODELS / role)
            data[role]["model"] = local[model]
    if not local:
        return config_path
    out = LOCAL_MODELS / CONFIG_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data), encoding="utf-8")
    return out


def model_fn(model_dir: str) -> Generator:
    _install()
    from neuron_spec.backends import load_generator
    from neuron_spec.config.spec import load_config
    from neuron_spec.host.facts import HostFacts
    from neuron_spec.preflight.check import preflight

    config_path = _localize(CODE_DIR / CONFIG_NAME)
    cfg = load_config(config_path)
    host = HostFacts.none()
    if cfg.spec.backend in ("neuronx", "nxdi") and cfg.spec.instance != "auto":
        from neuron_spec.host.facts import resolve_host

        host = resolve_host(cfg.spec.instance)
    report = preflight(cfg.spec, host, cfg.base_dir)
    if not report.ok:
        raise RuntimeError(
            "preflight failed: "
            + "; ".join(f"{f.code} ({f.path}): {f.message}" for f in report.errors)
        )
    return load_generator(cfg)


def _toolkit_error() -> type[Exception]:
    """The SageMaker inference toolkit answers an exception of this class with its
    status_code and phrase (the body); any other exception becomes a 500."""
    try:
        from sagemaker_inference.errors import BaseInferenceToolkitError

        return BaseInferenceToolkitError  # type: ignore[no-any-return]
    except ImportError:
        return Exception


class InvalidRequest(_toolkit_error()):  # type: ignore[misc]
    """A 4xx in OpenAI's error shape, naming the field, as `serve` answers it."""

    def __init__(self, status: int, message: str, param: str | None = None):
        error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
        self.status_code, self.message = status, message
        self.phrase = json.dumps({"error": error})
        Exception.__init__(self, status, message, self.phrase)


def input_fn(body: bytes | str, content_type: str = "application/json") -> Request:
    """The request, validated with `serve`'s schema and limits: a body with `messages` is a
    chat completion, any other a completion ({"prompt": ..., "max_tokens": ..., ...})."""
    from neuron_spec.serving import frontdoor
    from neuron_spec.serving.openai_api import ChatRequest, CompletionRequest

    if content_type.split(";")[0].strip().lower() != "application/json":
        raise InvalidRequest(415, f"unsupported content type {content_type}; send application/json")
    try:
        raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
        probe = json.loads(raw) if len(raw) <= frontdoor.MAX_BODY_BYTES else None
        schema = (
            ChatRequest if isinstance(probe, dict) and "messages" in probe else CompletionRequest
        )
        request = frontdoor.parse_body(raw, schema)
        if request.stream:
            raise frontdoor.RequestError(
                400, "stream is not available here: send it false", "stream"
            )
        if request.logprob_count() is not None:
            raise frontdoor.RequestError(
                400, "logprobs are not returned by this endpoint; leave them out", "logprobs"
            )
        if isinstance(request, CompletionRequest) and request.echo:
            raise frontdoor.RequestError(
                400, "echo is not available here: send it false (or use serve)", "echo"
            )
        if request.n != 1:
            raise frontdoor.RequestError(
                400,
                f"n={request.n}: this endpoint returns one text per prompt; send n=1 (or leave "
                "it out) and invoke again for another sample",
                "n",
            )
        return request
    except (ValueError, RecursionError):
        raise InvalidRequest(400, "the body is not valid JSON") from None
    except frontdoor.RequestError as exc:
        raise InvalidRequest(exc.status, exc.message, exc.param) from None


def predict_fn(request: Request, generator: Generator) -> dict[str, Any]:
    from neuron_spec.serving import frontdoor

    try:
        texts, ids = frontdoor.prompts(generator, request)
        max_new = frontdoor.new_tokens(
            request, ids, generator.n_positions, generator.cfg.spec.generation.max_new_tokens
        )
    except frontdoor.RequestError as exc:
        raise InvalidRequest(exc.status, exc.message, exc.param) from None
    outputs, totals = [], {"prompt": 0, "new": 0, "drafted": 0, "accepted": 0}
    alphas = []
    for text, row in zip(texts, ids, strict=True):
        result = generator.generate(
            text,
            prompt_token_ids=[row],
            max_new_tokens=max_new,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k_value,
            seed=request.seed,
            ending=frontdoor.ending(request),
        )
        m = result.metrics
        outputs.append(result.text[0])
        for key, value in (("prompt", m.prompt_tokens), ("new", m.new_tokens)):
            totals[key] += value
        totals["drafted"] += m.drafted
        totals["accepted"] += m.accepted
        alphas.append(m.alpha)
    prompt = getattr(request, "prompt", None)
    single = not isinstance(prompt, list) or isinstance(prompt[0], int)  # one text or id list
    return {
        "text": outputs[0] if single else outputs,
        "usage": {
            "prompt_tokens": totals["prompt"],
            "completion_tokens": totals["new"],
            "total_tokens": totals["prompt"] + totals["new"],
            "proposed_tokens": totals["drafted"],
            "accepted_tokens": totals["accepted"],
        },
        "speculation": {
            "drafted": totals["drafted"],
            "accepted": totals["accepted"],
            "acceptance_rate": totals["accepted"] / totals["drafted"]
            if totals["drafted"]
            else None,
        },
    }


def output_fn(prediction: dict[str, Any], accept: str = "application/json") -> tuple[str, str]:
    return json.dumps(prediction), "application/json"
