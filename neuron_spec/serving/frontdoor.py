"""One request model for every front door: `serve`'s HTTP routes and the SageMaker entry point
parse a body, tokenize its prompts and size its answer here, with the same schema
(openai_api.py), the same limits and the same errors - a `RequestError` with the HTTP status
and the field to name - so no door accepts what another refuses."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .chat import chat_ids
from .openai_api import ChatRequest, CompletionRequest, FieldProblem, clip

if TYPE_CHECKING:
    from ..backends.base import Generator
    from ..engine.generation import Ending

MAX_BODY_BYTES = 1 << 20
Request = CompletionRequest | ChatRequest


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def parse_body(raw: bytes | str, schema: type[Request]) -> Request:
    """The request in `raw` (JSON), validated; RequestError naming the field otherwise."""
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(raw)
    except RecursionError:
        raise RequestError(400, "the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    return validate(payload, schema)


def validate(payload: Any, schema: type[Request]) -> Request:
    try:
        body = schema.model_validate(payload)
    except RecursionError:
        raise RequestError(400, "the body is nested too deeply") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(first["loc"])
        param = param if param is None or len(param) <= 80 else param[:79] + "…"
        part = _non_text_part(payload)
        if part is not None:
            raise RequestError(
                400,
                f"messages: only text content is supported (a {part!r} part was sent); send "
                "the text alone",
                "messages",
            ) from None
        problem = (first.get("ctx") or {}).get("error")
        if isinstance(problem, FieldProblem):
            raise RequestError(400, str(problem), problem.field) from None
        if first["type"] == "extra_forbidden":
            raise RequestError(
                400,
                f"unknown field {param!r}: neuron-spec does not know it; leave it out "
                "(docs/clients.md lists the fields it accepts)",
                param,
            ) from None
        got = clip(first.get("input"))
        raise RequestError(400, f"{param}: {first['msg']} (got {got})", param) from None
    refused = body.unsupported()
    if refused is not None:
        raise RequestError(400, refused[1], refused[0])
    return body


def _non_text_part(payload: Any) -> str | None:
    """The type of the first message content part that is not text (an image, audio), if any."""
    messages = payload.get("messages") if isinstance(payload, dict) else None
    for m in messages if isinstance(messages, list) else []:
        content = m.get("content") if isinstance(m, dict) else None
        for p in content if isinstance(content, list) else []:
            kind = p.get("type") if isinstance(p, dict) else None
            if isinstance(kind, str) and kind != "text":
                return kind[:40]
    return None


_TYPE_STEP = re.compile(r"^(str|int|float|bool|dict|list|none|[\w-]+\[.*\])$")


def _param(loc: tuple[Any, ...]) -> str | None:
    """The field a validation error is about, without pydantic's list indexes and union
    branch names (`stop.str`, `prompt.list[str]` are `stop`, `prompt`)."""
    steps = [str(x) for x in loc if not isinstance(x, int) and not _TYPE_STEP.match(str(x))]
    return ".".join(steps) or None


def prompts(generator: Generator, req: Request) -> tuple[list[str], list[list[int]]]:
    """The request's prompt texts and tokens; a chat goes through the tokenizer's chat
    template, its content kept as text (chat.py); token-id prompts are checked against the
    vocabulary and decoded for their text. RequestError (400) when it cannot."""
    where = "messages" if isinstance(req, ChatRequest) else "prompt"
    try:
        vocab = len(generator.tokenizer)
        _check_ids("stop_token_ids", req.stop_token_ids or [], vocab)
        if isinstance(req, CompletionRequest):
            given: list[Any] = req.prompts()
            if isinstance(given[0], str):
                texts = [str(p) for p in given]
                return texts, generator.encode(texts)
            rows: list[list[int]] = [list(p) for p in given]
            longest = max(len(row) for row in rows)
            if longest >= generator.n_positions:  # before decoding a body's worth of ids
                raise RequestError(
                    400,
                    f"the prompt is {longest} tokens; n_positions={generator.n_positions} "
                    "leaves no room to generate",
                    "prompt",
                )
            _check_ids("prompt", [t for row in rows for t in row], vocab)
            return [generator.tokenizer.decode(row) for row in rows], rows
        tok = generator.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ValueError(
                "this model's tokenizer has no chat template; send the prompt to "
                "/v1/completions instead"
            )
        text, ids = chat_ids(tok, req.template_messages())
        return [text], [ids]
    except ValueError as exc:
        raise RequestError(400, str(exc), where) from None


def _check_ids(field: str, ids: list[int], vocab: int) -> None:
    """Every id names a token of the vocabulary (RequestError 400 naming `field`)."""
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise RequestError(
            400, f"{field}: token id {bad} is outside the vocabulary (0 to {vocab - 1})", field
        )


def new_tokens(req: Request, ids: list[list[int]], n_positions: int, default: int) -> int:
    """The new tokens to generate: max_tokens, or by default what fits (at most `default`).
    RequestError (400, naming the field to shorten) when prompt + max_tokens cannot fit."""
    where = "messages" if isinstance(req, ChatRequest) else "prompt"
    longest = max(len(i) for i in ids)
    room = n_positions - longest
    if room < 1:
        raise RequestError(
            400,
            f"the prompt is {longest} tokens; n_positions={n_positions} leaves no room to generate",
            where,
        )
    wanted = req.new_tokens
    if wanted is None:
        wanted = min(default, room)
    elif wanted > room:
        raise RequestError(
            400,
            f"the prompt ({longest} tokens) + {req.new_tokens_field} ({wanted}) exceeds "
            f"n_positions={n_positions}: at most {room} new tokens fit",
            req.new_tokens_field,
        )
    if req.min_tokens > wanted:
        raise RequestError(
            400,
            f"min_tokens={req.min_tokens} is more than the {wanted} new tokens of this request "
            f"({req.new_tokens_field}); send at most {wanted}",
            "min_tokens",
        )
    return wanted


def ending(req: Request) -> Ending:
    """How the request's rows end and what their text shows (stop strings, stop token ids,
    ignore_eos, min_tokens, include_stop_str_in_output, skip_special_tokens)."""
    from ..engine.generation import Ending

    return Ending(
        stop=tuple(req.stops()),
        stop_token_ids=tuple(req.stop_token_ids or ()),
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        include_stop=req.include_stop_str_in_output,
        skip_special=req.skip_special_tokens,
    )
