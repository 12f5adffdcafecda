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
from typing import Any

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
        ]
    )
    importlib.invalidate_caches()


def _download(uri: str, dest: Path) -> Path:
    """Copy every object under an s3:// prefix into dest (once, confined to dest)."""
    from neuron_spec.download import download_prefix

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


def model_fn(model_dir: str) -> Any:
    _install()
    from neuron_spec.backends import load_generator
    from neuron_spec.config import load_config
    from neuron_spec.host import HostFacts
    from neuron_spec.preflight import preflight

    config_path = _localize(CODE_DIR / CONFIG_NAME)
    cfg = load_config(config_path)
    host = HostFacts.none()
    if cfg.spec.backend == "neuronx" and cfg.spec.instance != "auto":
        from neuron_spec.host import resolve_host

        host = resolve_host(cfg.spec.instance)
    report = preflight(cfg.spec, host, cfg.base_dir)
    if not report.ok:
        raise RuntimeError(
            "preflight failed: "
            + "; ".join(f"{f.code} ({f.path}): {f.message}" for f in report.errors)
        )
    return load_generator(cfg)


def input_fn(body: bytes | str, content_type: str = "application/json") -> dict[str, Any]:
    if content_type not in ("application/json", "application/json; charset=utf-8"):
        raise ValueError(f"unsupported content type {content_type}; send application/json")
    data = json.loads(body)
    if not isinstance(data, dict) or not data.get("prompt"):
        raise ValueError('send {"prompt": "...", "max_tokens": N, "temperature": T, ...}')
    return data


def predict_fn(data: dict[str, Any], generator: Any) -> dict[str, Any]:
    stop = data.get("stop") or []
    result = generator.generate(
        data["prompt"],
        max_new_tokens=data.get("max_tokens"),
        temperature=data.get("temperature"),
        top_p=data.get("top_p"),
        seed=data.get("seed"),
        stop=[stop] if isinstance(stop, str) else stop,
    )
    m = result.metrics
    return {
        "text": result.text if isinstance(data["prompt"], list) else result.text[0],
        "usage": {
            "prompt_tokens": m.prompt_tokens,
            "completion_tokens": m.new_tokens,
            "total_tokens": m.prompt_tokens + m.new_tokens,
        },
        "speculation": {
            "drafted": m.drafted,
            "accepted": m.accepted,
            "acceptance_rate": m.acceptance_rate,
            "alpha": m.alpha,
        },
    }


def output_fn(prediction: dict[str, Any], accept: str = "application/json") -> tuple[str, str]:
    return json.dumps(prediction), "application/json"
