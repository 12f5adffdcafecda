"""A job's answer assembled from its choices' Generations: the choices (text, finish reason,
log-probabilities), usage as OpenAI counts it, and the request's speculation figures; the
prompt in front of each choice for echo (with its tokens' log-probabilities when scored); and
which log-probabilities each streamed text delta carries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..engine.generation import Generation
from ..engine.loop import TokenLogprob
from .openai_api import TextOffsets, logprobs_body
from .token_bytes import TokenBytes

Shape = Callable[[Generation], dict[str, Any]]


def answer(results: list[Generation], n: int = 1, shape: Shape | None = None) -> dict[str, Any]:
    """A job's response body parts from its choices' Generations, in order (`n` per prompt;
    a prompt's tokens count once in usage, as OpenAI counts them). `shape(result)` gives a
    choice's logprobs, when they were asked for."""
    choices = []
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    spec: dict[str, Any] = {"drafted": 0, "accepted": 0, "target_passes": 0, "max_batch_rows": 1}
    for index, result in enumerate(results):
        m = result.metrics
        stopped = result.finished_by_stop[0] or result.finished_by_eos[0]
        choices.append(
            {
                "text": result.text[0],
                "index": index,
                "logprobs": shape(result) if shape and result.logprobs is not None else None,
                "finish_reason": "stop" if stopped else "length",
            }
        )
        usage["prompt_tokens"] += m.prompt_tokens if index % n == 0 else 0
        usage["completion_tokens"] += m.new_tokens
        spec["drafted"] += m.drafted
        spec["accepted"] += m.accepted
        spec["target_passes"] += m.target_passes
        spec["max_batch_rows"] = max(spec["max_batch_rows"], m.max_batch_rows)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    # an extension clients may ignore: what speculation proposed and kept for this request
    usage["proposed_tokens"], usage["accepted_tokens"] = spec["drafted"], spec["accepted"]
    spec["method"] = results[0].metrics.method if results else None
    spec["acceptance_rate"] = spec["accepted"] / spec["drafted"] if spec["drafted"] else None
    return {"choices": choices, "usage": usage, "speculation": spec}


def prompt_only(ids: list[list[int]], n: int, logprobs: bool) -> dict[str, Any]:
    """The answer of a request that generates nothing (max_tokens 0 with echo): each choice
    empty, to which `echoed` puts the prompt in front."""
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    choices: list[dict[str, Any]] = [
        {"text": "", "index": c, "logprobs": {k: [] for k in keys} if logprobs else None,
         "finish_reason": "length"}
        for c in range(len(ids) * n)
    ]  # fmt: skip
    prompt = sum(len(row) for row in ids)
    usage = {"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt,
             "proposed_tokens": 0, "accepted_tokens": 0}  # fmt: skip
    spec = {"drafted": 0, "accepted": 0, "target_passes": 0, "max_batch_rows": 1,
            "method": None, "acceptance_rate": None}  # fmt: skip
    return {"choices": choices, "usage": usage, "speculation": spec}


def echoed(
    body: dict[str, Any],
    texts: list[str],
    ids: list[list[int]],
    n: int,
    scored: list[list[TokenLogprob | None]] | None,
    pieces: TokenBytes,
) -> dict[str, Any]:
    """`body` with each completion choice's prompt in front of its text (echo), and, when the
    prompts were scored, the prompt's tokens in front of its logprobs: the first token's
    log-probability null, as OpenAI's legacy completions gave it; the completion's text
    offsets moved past the prompt's text."""
    for choice in body["choices"]:
        p = choice["index"] // n
        choice["text"] = texts[p] + choice["text"]
        part = choice["logprobs"]
        if part is not None and scored is not None:
            head = _prompt_part(ids[p], scored[p], pieces)
            shift = len(texts[p])
            part = {**part, "text_offset": [at + shift for at in part["text_offset"]]}
            choice["logprobs"] = {key: head[key] + part[key] for key in head}
    return body


def _prompt_part(
    ids: list[int], scored: list[TokenLogprob | None], pieces: TokenBytes
) -> dict[str, Any]:
    """A prompt's tokens in the completions logprobs shape."""
    offsets = TextOffsets(pieces, pieces.lead(ids[0]))
    return {
        "tokens": [pieces.text(t) for t in ids],
        "token_logprobs": [None if e is None else e.logprob for e in scored],
        "top_logprobs": [
            None if e is None else {pieces.text(t): lp for t, lp in e.top} for e in scored
        ],
        "text_offset": [offsets.advance(t) for t in ids],
    }


class StreamedLogprobs:
    """Which of a streamed choice's token logprobs each text delta carries: a token goes out
    with the delta that completes its bytes (a token inside a character waits for the rest),
    so every token is sent once, in order, with its text offset."""

    def __init__(self, pieces: TokenBytes, eos: frozenset[int]):
        self.pieces, self.eos = pieces, eos
        self.sent = 0  # entries sent so far
        self.shown = 0  # bytes of text sent so far
        self.covered = 0  # bytes of the tokens sent so far
        self.offsets: TextOffsets | None = None

    def take(self, entries: list[TokenLogprob], delta: str) -> tuple[list[TokenLogprob], list[int]]:
        self.shown += len(delta.encode("utf-8"))
        if self.offsets is None and entries:
            lead = self.pieces.lead(entries[0].token)
            self.offsets, self.covered = TextOffsets(self.pieces, lead), -lead
        take: list[TokenLogprob] = []
        while self.offsets is not None and self.sent + len(take) < len(entries):
            e = entries[self.sent + len(take)]
            width = self.pieces.width(e.token)
            if e.token in self.eos or self.covered + width > self.shown:
                break
            take.append(e)
            self.covered += width
        self.sent += len(take)
        offsets = [] if self.offsets is None else [self.offsets.advance(e.token) for e in take]
        return take, offsets


def logprob_shape(chat: bool, pieces: TokenBytes | None, eos: frozenset[int]) -> Shape | None:
    """How a choice's log-probabilities are written for the endpoint (None: no tokenizer)."""
    if pieces is None:
        return None

    def shape(result: Generation) -> dict[str, Any]:
        cut = bool(result.finished_by_stop and result.finished_by_stop[0])
        entries = result.logprobs[0] if result.logprobs else []
        return logprobs_body(chat, entries, pieces, result.text[0], cut, eos)

    return shape
