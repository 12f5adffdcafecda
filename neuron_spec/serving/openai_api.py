"""The OpenAI API surface neuron-spec serves: request schemas and response shapes for
/v1/completions and /v1/chat/completions (https://platform.openai.com/docs/api-reference).

Fields clients send with neutral values (echo false, penalties 0, logprobs null or false, no
tools, text response format, ...) are accepted, so unmodified clients and frameworks work.
A non-neutral value of a field neuron-spec does not implement is refused with a 400 naming the
field; an unknown field too. Nothing is silently ignored.
"""

from __future__ import annotations

import codecs
import time
import uuid
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_PROMPTS = 16
MAX_STOPS = 4
MAX_MESSAGES = 256
MIN_TEMPERATURE = 1e-4
MAX_LOGPROBS = 20  # alternatives per position, as OpenAI's chat top_logprobs

# field -> the values that change nothing (the default behaviour), for fields not implemented.
# Numbers compare by value (0 == 0.0); None is always neutral.
NEUTRAL_COMPLETION: dict[str, tuple[Any, ...]] = {
    "echo": (False,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "best_of": (1,),
    "logit_bias": ({},),
    "suffix": ("",),
    "min_p": (0,),
    "repetition_penalty": (1,),
}
NEUTRAL_CHAT: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),  # with no tools, both mean: answer in text
    "functions": ([],),
    "function_call": ("none", "auto"),
    "modalities": (["text"],),
    "store": (False,),
    "service_tier": ("auto", "default"),
    "min_p": (0,),
    "repetition_penalty": (1,),
}


class FieldProblem(ValueError):
    """A check across fields, reported as about one field (`field`) in plain words."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def clip(value: Any, limit: int = 80) -> str:
    """repr(value) in at most `limit` characters: an error shows what was refused, never a
    client's whole megabyte back to it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False  # OpenAI: a last chunk with usage and no choices, when true


class _Sampling(BaseModel):
    """What both endpoints implement, plus the neutral-only fields of each."""

    model_config = ConfigDict(extra="forbid", strict=True)
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {}

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=2**31 - 1)  # vLLM's extension; 0 = off
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1  # choices per prompt, each a batch row
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def unsupported(self) -> tuple[str, str] | None:
        """(field, message) for the first field set to a value neuron-spec does not
        implement; None when every field is supported or neutral."""
        for name, neutral in self.NEUTRAL.items():
            value = getattr(self, name, None)
            if value is not None and not any(value == n for n in neutral):
                allowed = " or ".join(repr(n) for n in neutral)
                fix = f"send {allowed}, or leave it out" if neutral else "leave it out"
                return name, f"{name}={clip(value)} is not supported by neuron-spec; {fix}"
        return None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise FieldProblem(
                "stream_options", "stream_options is only allowed when stream is true"
            )
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @field_validator("n")
    @classmethod
    def _n(cls, v: int) -> int:
        if not 1 <= v <= MAX_PROMPTS:
            raise FieldProblem("n", f"n={v}: give 1 to {MAX_PROMPTS} choices")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float | None) -> float | None:
        if v is not None and 0 < v < MIN_TEMPERATURE:
            raise ValueError(
                f"must be 0 (greedy) or at least {MIN_TEMPERATURE}: smaller values overflow "
                "the scaled logits"
            )
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > MAX_STOPS or any(not s for s in items):
            raise ValueError(f"give up to {MAX_STOPS} non-empty stop strings")
        if any(_has_surrogate(x) for x in items):
            raise ValueError("stop strings must be valid Unicode (a lone surrogate is not)")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def new_tokens(self) -> int | None:
        raise NotImplementedError

    @property
    def new_tokens_field(self) -> str:
        """The field that set `new_tokens`, to name in an error."""
        return "max_tokens"

    def logprob_count(self) -> int | None:
        """None: no log-probabilities wanted; N: each token's and N alternatives."""
        raise NotImplementedError


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    NEUTRAL = NEUTRAL_COMPLETION

    prompt: str | list[str]
    max_tokens: int | None = Field(default=None, ge=1)
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        items = [v] if isinstance(v, str) else v
        if not items or len(items) > MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts")
        if any(not p for p in items):
            raise ValueError("prompts must not be empty")
        if any(_has_surrogate(p) for p in items):
            raise ValueError("prompts must be valid Unicode (a lone surrogate is not)")
        return v

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def logprob_count(self) -> int | None:
        return self.logprobs

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= MAX_LOGPROBS:
            raise FieldProblem(
                "logprobs", f"logprobs={v}: give 0 to {MAX_LOGPROBS} alternatives per token"
            )
        return v

    @model_validator(mode="after")
    def _rows(self) -> CompletionRequest:
        if len(self.prompts()) * self.n > MAX_PROMPTS:
            raise FieldProblem(
                "n",
                f"{len(self.prompts())} prompts x n={self.n} choices is over {MAX_PROMPTS} "
                "sequences per request; send fewer prompts or a smaller n",
            )
        return self

    @property
    def new_tokens(self) -> int | None:
        return self.max_tokens


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    """POST /v1/chat/completions: messages rendered with the tokenizer's chat template."""

    NEUTRAL = NEUTRAL_CHAT

    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, str] | None = None
    tools: list[Any] | None = None
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None  # meaningless without tools: any value is neutral
    functions: list[Any] | None = None
    function_call: str | None = None
    modalities: list[str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    metadata: dict[str, str] | None = None

    @field_validator("messages")
    @classmethod
    def _messages(cls, v: list[Message]) -> list[Message]:
        if any(_has_surrogate(m.text()) for m in v):
            raise ValueError("messages must be valid Unicode (a lone surrogate is not)")
        return v

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def new_tokens_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _top_logprobs(self) -> ChatRequest:
        top = self.top_logprobs
        if top is not None and not 0 <= top <= MAX_LOGPROBS:
            raise FieldProblem("top_logprobs", f"top_logprobs={top}: give 0 to {MAX_LOGPROBS}")
        if top and not self.logprobs:
            raise FieldProblem("top_logprobs", "top_logprobs needs logprobs: true (send both)")
        return self

    def template_messages(self) -> list[dict[str, str]]:
        """The messages as chat templates expect them ('developer' is OpenAI's newer name for
        'system', which templates know)."""
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]


# --- responses -----------------------------------------------------------------------------------


def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def error_body(
    message: str, kind: str, param: str | None = None, code: Any = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def models_body(model: str, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "neuron-spec"}],
    }


class Pieces(Protocol):
    """What the logprobs shapes need of a tokenizer (token_bytes.TokenBytes)."""

    def raw(self, token: int) -> bytes: ...

    def text(self, token: int) -> str: ...

    def width(self, token: int) -> int: ...

    def lead(self, first: int) -> int: ...


class TextOffsets:
    """Character offsets in the decoded text, token after token: a token that ends inside a
    character moves the offset only once the character is complete."""

    def __init__(self, pieces: Pieces, lead: int = 0):
        self.pieces, self.skip = pieces, lead
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.chars = 0

    def advance(self, token: int) -> int:
        """The offset at which `token`'s text starts; then move past it."""
        at = self.chars
        data = self.pieces.raw(token) if self.pieces.width(token) else b""
        data, self.skip = data[self.skip :], max(0, self.skip - len(data))
        self.chars += len(self.decoder.decode(data))
        return at


def kept_tokens(
    tokens: list[int], pieces: Pieces, text: str, cut: bool, skip: frozenset[int]
) -> int:
    """How many of a choice's tokens its answer lists: every one before the first `skip`
    (EOS) id; when the text was cut at a stop string, those that start before the cut."""
    size = len(text.encode("utf-8"))
    at = -pieces.lead(tokens[0]) if tokens else 0
    for i, token in enumerate(tokens):
        if token in skip or (cut and at >= size and i > 0):
            return i
        at += pieces.width(token)
    return len(tokens)


def logprobs_body(
    chat: bool, entries: list[Any], pieces: Pieces, text: str, cut: bool, skip: frozenset[int]
) -> dict[str, Any]:
    """A choice's `logprobs` in the endpoint's shape, one entry per token of its answer
    (see kept_tokens): chat `{"content": [{token, logprob, bytes, top_logprobs}]}`,
    completions `{tokens, token_logprobs, top_logprobs, text_offset}`."""
    count = kept_tokens([e.token for e in entries], pieces, text, cut, skip)
    kept = entries[:count]
    offsets = TextOffsets(pieces, pieces.lead(kept[0].token) if kept else 0)
    return logprobs_part(chat, kept, pieces, [offsets.advance(e.token) for e in kept])


def logprobs_part(
    chat: bool, entries: list[Any], pieces: Pieces, offsets: list[int]
) -> dict[str, Any]:
    """`entries` in the endpoint's logprobs shape; `offsets`, their text offsets."""
    if chat:

        def one(token: int, logprob: float) -> dict[str, Any]:
            return {"token": pieces.text(token), "logprob": logprob,
                    "bytes": list(pieces.raw(token))}  # fmt: skip

        content = [
            {**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
            for e in entries
        ]
        return {"content": content, "refusal": None}
    return {
        "tokens": [pieces.text(e.token) for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{pieces.text(t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def logprobs_after(chat: bool, body: dict[str, Any] | None, sent: int) -> dict[str, Any] | None:
    """What of a choice's whole logprobs `body` follows its first `sent` tokens."""
    if body is None:
        return None
    if chat:
        return {"content": body["content"][sent:], "refusal": None}
    return {key: body[key][sent:] for key in ("tokens", "token_logprobs", "top_logprobs",
                                              "text_offset")}  # fmt: skip


def full_body(
    chat: bool, ident: str, created: int, model: str, result: dict[str, Any]
) -> dict[str, Any]:
    """A non-streamed answer: `result` holds the texts as completion choices."""
    choices = result["choices"]
    if chat:
        choices = [
            {
                "index": c["index"],
                "message": {"role": "assistant", "content": c["text"]},
                "logprobs": c["logprobs"],
                "finish_reason": c["finish_reason"],
            }
            for c in choices
        ]
    return {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        **result,
        "choices": choices,
    }


def chunk(
    chat: bool,
    ident: str,
    created: int,
    model: str,
    index: int,
    text: str | None,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed event. For chat, text None is the opening role delta; `logprobs` are
    those of the tokens whose text the event carries."""
    if chat:
        delta: dict[str, Any] = {}
        if text is None:
            delta = {"role": "assistant", "content": ""}
        elif text:
            delta = {"content": text}
        choice: dict[str, Any] = {"index": index, "delta": delta}
    else:
        choice = {"index": index, "text": text or ""}
    choice.update(logprobs=logprobs, finish_reason=finish_reason)
    return {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def usage_chunk(
    chat: bool, ident: str, created: int, model: str, result: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [],
        "usage": result["usage"],
        "speculation": result["speculation"],
    }
