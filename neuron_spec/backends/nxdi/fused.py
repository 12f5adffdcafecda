"""Fused speculation on NxDI: one compiled graph drafts k tokens, verifies them and accepts on
the device (greedy). neuron-spec calls `forward()` round by round instead of NxDI's generation
adapter (broken as published, and it stops up to k tokens short of max_length):
- the first call is context encoding of the prompt (padded by neuron-spec, pads at position 0,
  as in runner.py); its `fused_outputs[0]` is [first token, -1, ...];
- every later call feeds the last accepted token at its position; `fused_outputs` holds the
  accepted tokens padded with -1 and the next position, so a round accepted
  next position - position tokens: the count of drafts accepted is that minus one;
- the compiled length has k - 1 positions of headroom, so rounds run to exactly
  max_new_tokens; commits stop at any EOS of a list, at the budget, or when the stream says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...engine.loop import EngineResult, GenerationCancelled, StepRecord


def fused_generate(
    model: Any,
    prompt: Sequence[int],
    *,
    window: int,
    context_length: int,
    compiled_length: int,
    max_new: int,
    eos: Sequence[int],
    pad: int,
    on_tokens: Callable[[int, list[int]], Any] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> EngineResult:
    result = EngineResult([[]], [False], [], time.perf_counter(), [None])
    stop_ids = set(eos)
    t0 = time.perf_counter()
    out = _context(model, prompt, context_length, pad)
    first = int(out[0][0, 0])
    position = int(out[3][0, 0])
    result.target_step_seconds.append(time.perf_counter() - t0)
    done = _commit(result, [first], stop_ids, max_new, on_tokens)
    result.steps.append(StepRecord(time.perf_counter() - t0, 0, [0], [len(result.tokens[0])]))
    last = first
    while not done:
        if cancelled is not None and cancelled():
            raise GenerationCancelled()
        if position + window > compiled_length:
            raise ValueError(
                f"a fused round at position {position} would reach the compiled length "
                f"{compiled_length}; the request should have been refused before decoding"
            )
        t_step = time.perf_counter()
        outputs = model(
            input_ids=torch.tensor([[last]]),
            attention_mask=torch.ones((1, position), dtype=torch.long),
            position_ids=torch.tensor([[position]]),
            seq_ids=torch.zeros(1, dtype=torch.long),
        ).fused_outputs
        nxt = int(outputs[3][0, 0])
        accepted = [int(t) for t in outputs[0][0, : nxt - position]]
        result.target_step_seconds.append(time.perf_counter() - t_step)
        before = len(result.tokens[0])
        done = _commit(result, accepted, stop_ids, max_new, on_tokens)
        record = StepRecord(
            time.perf_counter() - t_step,
            window - 1,
            [len(accepted) - 1],
            [len(result.tokens[0]) - before],
        )
        result.steps.append(record)
        position, last = nxt, accepted[-1]
    result.end = time.perf_counter()
    return result


def _context(model: Any, prompt: Sequence[int], width: int, pad: int) -> list[torch.Tensor]:
    n = len(prompt)
    if n > width:
        raise ValueError(
            f"the prompt has {n} tokens; NxDI's context encoding was compiled for at most {width}"
        )
    ids = torch.full((1, width), pad, dtype=torch.long)
    ids[0, :n] = torch.tensor(list(prompt))
    mask = torch.zeros((1, width), dtype=torch.long)
    mask[0, :n] = 1
    positions = torch.zeros((1, width), dtype=torch.long)
    positions[0, :n] = torch.arange(n)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        seq_ids=torch.zeros(1, dtype=torch.long),
    )
    return list(out.fused_outputs)


def _commit(
    result: EngineResult,
    new: list[int],
    eos: set[int],
    max_new: int,
    on_tokens: Callable[[int, list[int]], Any] | None,
) -> bool:
    """Append what the row may keep; True when it is finished."""
    keep = new[: max_new - len(result.tokens[0])]
    for i, tok in enumerate(keep):
        if tok in eos:
            keep = keep[: i + 1]
            result.finished_by_eos[0] = True
            break
    result.tokens[0].extend(keep)
    if keep and result.first_token_at[0] is None:
        result.first_token_at[0] = time.perf_counter()
    stopped = bool(keep) and on_tokens is not None and bool(on_tokens(0, keep))
    return result.finished_by_eos[0] or len(result.tokens[0]) >= max_new or stopped
