"""What both Neuron backends (transformers-neuronx and NxD Inference) share, written once:
bringing a checkpoint into a loadable form (an s3:// prefix downloaded, a GGUF file
de-quantized to safetensors, each once and atomically) and the Generator around a loaded pair
(tokenizer, EOS ids from the config or the checkpoint, pad id). The artifact cache
(artifacts.py), the plan fingerprints and cache paths (neuron_plan.py) and the engine are shared
as well."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config.spec import ConfigFile
from ..engine.loop import EngineResult
from ..errors import GenerationError, UsageError
from ..sources.hf import eos_ids, load_tokenizer, pad_id
from .base import Backend, Generator


def prepare_checkpoint(
    role: str,
    how: str,
    source: str,
    checkpoint: str,
    say: Callable[[str], None],
    warn: Callable[[str], None],
) -> bool:
    """Download or convert `source` into `checkpoint` when `how` asks for it; True when done
    here, False when the backend must prepare it its own way (or it is ready as it is)."""
    if how in ("catalog", "missing"):
        raise UsageError(
            f"{role}.model: {checkpoint} cannot be loaded; run `neuron-spec validate` for details."
        )
    final = Path(checkpoint)
    if how == "direct" or final.is_dir():
        return True
    final.parent.mkdir(parents=True, exist_ok=True)
    if how == "s3":
        from ..sources.download import download_prefix

        say(f"{role}: downloading {source} (once)")
        download_prefix(source, final, warn=warn, progress=say)
        return True
    if how == "gguf":
        from ..sources.demo import convert_gguf  # transformers: only when converting

        say(f"{role}: converting {source} to safetensors (once)")
        convert_gguf(Path(source), final)
        return True
    return False


def neuron_generator(
    cfg: ConfigFile,
    backend: Backend,
    checkpoint: str,
    tokenizer_dir: str,
    max_prompt_tokens: int | None = None,
) -> Generator:
    """The Generator around a loaded Neuron pair: its tokenizer and EOS/pad ids."""
    tok = load_tokenizer(tokenizer_dir)
    eos = eos_ids(cfg.spec.generation.eos_token_id, Path(checkpoint), tok)
    return Generator(cfg, backend, tok, eos, pad_id(tok, eos), max_prompt_tokens)


RowDecoder = Callable[[Sequence[int], Any], "EngineResult"]
LIBRARY_ERRORS = (RuntimeError, ValueError, KeyError, AssertionError, AttributeError, StopIteration)


def decode_rows(
    prompts: Sequence[Sequence[int]], on_tokens: Any, one: RowDecoder, library: str
) -> EngineResult:
    """A batch decoded one row after another (the Neuron backends' loops are batch 1):
    `one(prompt, on_tokens_for_that_row)` decodes a row; its step records are widened to the
    batch with the row at its place, so metrics count per row. A library failure is a
    GenerationError naming the library."""
    import time

    result = EngineResult([], [], [], time.perf_counter(), [])
    rows = len(prompts)
    for row, prompt in enumerate(prompts):
        callback = None if on_tokens is None else (lambda _r, t, row=row: on_tokens(row, t))
        try:
            res = one(prompt, callback)
        except LIBRARY_ERRORS as exc:
            raise GenerationError(
                f"{library} generation failed: {type(exc).__name__}: {exc}"
            ) from exc
        _join(result, res, row, rows)
    result.end = time.perf_counter()
    return result


GroupDecoder = Callable[[list[list[int]], Any], "EngineResult"]


def decode_batches(
    prompts: Sequence[Sequence[int]], size: int, on_tokens: Any, run: GroupDecoder, library: str
) -> EngineResult:
    """Prompts in groups of the compiled batch size, each group one engine batch with every
    row at its own positions (`run(group, on_tokens_for_the_group)`); the results joined as
    one, step records widened to all rows. A library failure is a GenerationError."""
    import time

    result = EngineResult([], [], [], time.perf_counter(), [])
    for first in range(0, len(prompts), size):
        group = [list(p) for p in prompts[first : first + size]]
        callback = (
            None if on_tokens is None
            else (lambda row, new, first=first: on_tokens(first + row, new))
        )  # fmt: skip
        try:
            part = run(group, callback)
        except LIBRARY_ERRORS as exc:
            raise GenerationError(
                f"{library} generation failed: {type(exc).__name__}: {exc}"
            ) from exc
        _join(result, part, first, len(prompts))
    result.end = time.perf_counter()
    return result


def _join(result: EngineResult, part: EngineResult, first: int, rows: int) -> None:
    """Add a batch's result to the whole at rows first..; its steps widened to all rows."""
    for step in part.steps:
        pad_after = rows - first - len(step.accepted)
        step.accepted = [0] * first + step.accepted + [0] * pad_after
        step.emitted = [0] * first + step.emitted + [0] * pad_after
        if step.row_drafted is not None:
            step.row_drafted = [0] * first + step.row_drafted + [0] * pad_after
    for name in ("tokens", "finished_by_eos", "steps", "first_token_at"):
        getattr(result, name).extend(getattr(part, name))
    result.draft_step_seconds.extend(part.draft_step_seconds)
    result.target_step_seconds.extend(part.target_step_seconds)
