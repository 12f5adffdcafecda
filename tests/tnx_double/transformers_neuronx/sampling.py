"""Host-side sampling as the library does it, per release.

- top_k must be a positive int or None, top_p a float in (0, 1] (ValueError otherwise, in
  every release); temperature must be a positive float (checked by the sampling loop).
- `select_tokens` defaults to top_k=1: the speculation loops call it without arguments, so
  their first token is always the target's argmax.
- LlamaForSampling.sample's loop: v1 compares with one eos id (a list fails inside torch);
  from 0.12 a list of ids is accepted. Both stream each token and call streamer.end().
"""

from __future__ import annotations

import torch

from .version import at_least


def validate_top_k_top_p(top_k, top_p):
    if top_k is not None and (not isinstance(top_k, int) or top_k <= 0):
        raise ValueError("top_k has to be a strictly positive int.")
    if top_p is not None and (not isinstance(top_p, float) or not 0.0 < top_p <= 1.0):
        raise ValueError(
            "top_p has to be a strictly positive float that less than or equal to 1.0."
        )


def filter_scores(scores, top_k, top_p):
    """(values, indices) of the candidates that survive top-k, then top-p, per row."""
    validate_top_k_top_p(top_k, top_p)
    vocab = scores.shape[-1]
    if top_k is not None:
        values, indices = torch.topk(scores, min(top_k, vocab))
    else:
        values, indices = torch.sort(scores, descending=True)
    if top_p is not None and top_p < 1.0:
        probs = torch.softmax(values.float(), dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the better candidates
        values = values.masked_fill(before >= top_p, float("-inf"))
    return values, indices


def select_tokens(scores, top_k=1, top_p=1.0, temperature=1.0):
    values, indices = filter_scores(scores, top_k, top_p)
    probs = torch.softmax(values, dim=-1)
    pick = torch.multinomial(probs, num_samples=1, replacement=True)
    return torch.gather(indices, 1, pick)


def _draw(scores, top_k, top_p, temperature):
    if temperature != 1.0:
        scores = scores / temperature
    values, indices = filter_scores(scores, top_k, top_p)
    probs = torch.softmax(values.float(), dim=-1)
    return torch.gather(indices, 1, torch.multinomial(probs, 1, replacement=True))


def sample_llama(
    model,
    input_ids,
    start_ids,
    sequence_length,
    eos_token_id,
    top_k,
    top_p,
    temperature,
    streamer,
    cache_ids,
):
    validate_top_k_top_p(top_k, top_p)
    scores = model(input_ids, cache_ids, start_ids)
    if at_least(0, 12):
        return _loop_v2(
            model,
            input_ids,
            start_ids,
            scores,
            sequence_length,
            eos_token_id,
            top_k,
            top_p,
            temperature,
            streamer,
            cache_ids,
        )
    return _loop_v1(
        model,
        input_ids,
        start_ids,
        scores,
        sequence_length,
        eos_token_id,
        top_k,
        top_p,
        temperature,
        streamer,
        cache_ids,
    )


def _check_temperature(temperature):
    if not isinstance(temperature, float) or not temperature > 0:
        raise ValueError("temperature has to be a strictly positive float.")


def _loop_v1(
    model,
    input_ids,
    start_ids,
    scores,
    sequence_length,
    eos,
    top_k,
    top_p,
    temperature,
    streamer,
    cache_ids,
):
    _check_temperature(temperature)
    done = torch.full((input_ids.shape[0], 1), False)
    tokens = [input_ids]
    start = input_ids.shape[1]
    if cache_ids:  # truth value of a one-element tensor: position 0 counts as "no cache_ids"
        start = cache_ids.item() + 1
    for position in range(start, sequence_length):
        picked = _draw(scores, top_k, top_p, temperature)
        done = torch.logical_or(done, picked == eos)
        token = torch.where(done.eq(True), eos, picked)  # a list of eos ids fails here
        tokens.append(token)
        if streamer:
            streamer.put(token)
        if position + 1 >= sequence_length or done.all():
            break
        scores = model(picked, torch.as_tensor([position], dtype=torch.int32), start_ids)
    if streamer:
        streamer.end()
    return torch.cat(tokens, dim=-1)


def _loop_v2(
    model,
    input_ids,
    start_ids,
    scores,
    sequence_length,
    eos,
    top_k,
    top_p,
    temperature,
    streamer,
    cache_ids,
):
    _check_temperature(temperature)
    eos_ids = torch.tensor([eos] if isinstance(eos, int) else eos, dtype=torch.int32)
    done = torch.full((input_ids.shape[0], 1), False)
    tokens = [input_ids]
    start = input_ids.shape[1]
    if cache_ids is None:
        cache_ids = torch.as_tensor([start - 1], dtype=torch.int32)
    else:
        start = int(cache_ids.flatten().max()) + 1
    for position in range(start, sequence_length):
        picked = _draw(scores, top_k, top_p, temperature)
        is_eos = torch.isin(picked, eos_ids)
        done = torch.logical_or(done, is_eos)
        token = torch.where(torch.logical_and(done, ~is_eos), eos_ids[0], picked)
        tokens.append(token)
        if streamer:
            streamer.put(token)
        if position + 1 > sequence_length or done.all():  # never true for the length: one
            break  # more forward pass runs after the last token
        cache_ids = cache_ids + 1
        scores = model(picked, cache_ids, start_ids)
    if streamer:
        streamer.end()
    return torch.cat(tokens, dim=-1)
