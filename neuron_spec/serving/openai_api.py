"""The OpenAI API surface neuron-spec serves: request schemas and response shapes for
/v1/completions and /v1/chat/completions (https://platform.openai.com/docs/api-reference), with
the sampling and output extensions vLLM-compatible servers accept and load testers and
evaluation harnesses send (https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html).

The policy for fields (docs/clients.md):
- implemented fields are honoured, `null` meaning the field's default, as in OpenAI's API;
- fields clients send with neutral values (penalties 0, no tools, text response format, ...)
  are accepted with those values, so unmodified clients and frameworks work; any other value
  is refused with a 400 that names the field and says it is not supported;
- a field this module does not know is refused by name too: ignoring it would change what
  the client gets without a word. Nothing is silently ignored.
"""

from __future__ import annotations

import codecs
import time
import uuid
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_PROMPTS = 16
MAX_STOPS = 32  # stop strings per request (evaluation tasks send 5 or 6)
MAX_STOP_CHARS = 256  # each; streamed text is held back by the longest stop string
MAX_STOP_TOKEN_IDS = 32
MAX_MESSAGES = 256
MIN_TEMPERATURE = 1e-4
MAX_LOGPROBS = 20  # alternatives per position, as OpenAI's chat top_logprobs

# field -> the values that change nothing (the default behaviour), for fields not implemented.
# Numbers compare by value (0 == 0.0); None is always neutral.
NEUTRAL_BOTH: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "min_p": (0,),
    "repetition_penalty": (1,),
    # vLLM's extensions, at their defaults
    "use_beam_search": (False,),
    "length_penalty": (1,),
    "spaces_between_special_tokens": (True,),
    "prompt_logprobs": (),
    "truncate_prompt_tokens": (),
    "guided_json": (),
    "guided_regex": (),
    "guided_choice": (),
    "guided_grammar": (),
    "priority": (0,),
    "return_tokens_as_token_ids": (False,),
}
NEUTRAL_COMPLETION: dict[str, tuple[Any, ...]] = {
    **NEUTRAL_BOTH,
    "best_of": (1,),
    "suffix": ("",),
    "add_special_tokens": (True,),  # a text prompt is tokenized with them
    "response_format": ({"type": "text"},),
}
NEUTRAL_CHAT: dict[str, tuple[Any, ...]] = {
    **NEUTRAL_BOTH,
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),  # with no tools, both mean: answer in text
    "functions": ([],),
    "function_call": ("none", "auto"),
    "modalities": (["text"],),
    "store": (False,),
    "service_tier": ("auto", "default"),
    "prediction": (),
    "audio": (),
    "web_search_options": (),
    "reasoning_effort": (),
    "add_special_tokens": (False,),  # the chat template writes them
    "add_generation_prompt": (True,),
    "continue_final_message": (False,),
    "echo": (False,),
    "chat_template": (),
    "chat_template_kwargs": ({},),
    "documents": (),
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


def not_supported(name: str, value: Any, neutral: tuple[Any, ...]) -> str:
    """The refusal of a field neuron-spec does not implement, set to `value`."""
    allowed = " or ".join(repr(n) for n in neutral)
    fix = f"send {allowed}, or leave it out" if neutral else "leave it out"
    return f"{name}={clip(value)} is not supported by neuron-spec; {fix}"


class _Nullable(BaseModel):
    """`null` is the field's default, as OpenAI's API reads it: the key is dropped before
    validation (only for fields whose default is not None)."""

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            k: v
            for k, v in data.items()
            if not (v is None and k in fields and fields[k].default is not None)
        }


class StreamOptions(_Nullable):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False  # OpenAI: a last chunk with usage and no choices, when true
    continuous_usage_stats: bool = False  # vLLM: usage so far on every chunk, when true


class _Sampling(_Nullable):
    """What both endpoints implement; fields not declared here go to `model_extra` and are
    checked by `unsupported` against the endpoint's NEUTRAL values."""

    model_config = ConfigDict(extra="allow", strict=True)
    NEUTRAL: ClassVar[dict[str, tuple[Any, ...]]] = {}

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=2**31 - 1)  # vLLM's; 0 or -1 = off
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1  # choices per prompt, each a batch row
    user: str | None = None
    # vLLM's extensions (docs/clients.md)
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    stop_token_ids: list[int] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def unsupported(self) -> tuple[str, str] | None:
        """(field, message) for the first field set to a value neuron-spec does not
        implement, or that it does not know; None when every field is supported or
        neutral."""
        for name, value in (self.model_extra or {}).items():
            if name not in self.NEUTRAL:
                shown = name if len(name) <= 80 else name[:79] + "…"
                return shown, (
                    f"unknown field {shown!r}: neuron-spec does not know it, and ignoring it "
                    "could change the answer without a word; leave it out (docs/clients.md "
                    "lists the fields it accepts)"
                )
            neutral = self.NEUTRAL[name]
            if value is not None and not any(value == n for n in neutral):
                return name, not_supported(name, value, neutral)
        if self.stream_options is not None and not self.stream:
            return "stream_options", "stream_options is only allowed when stream is true"
        if not self.skip_special_tokens and self.logprob_count() is not None:
            return "skip_special_tokens", (
                "skip_special_tokens=false is not supported together with logprobs; send one"
            )
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

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
        if len(items) > MAX_STOPS:
            raise FieldProblem("stop", f"{len(items)} stop strings: give at most {MAX_STOPS}")
        if any(not s or len(s) > MAX_STOP_CHARS for s in items):
            raise FieldProblem("stop", f"each stop string needs 1 to {MAX_STOP_CHARS} characters")
        if any(_has_surrogate(x) for x in items):
            raise ValueError("stop strings must be valid Unicode (a lone surrogate is not)")
        return v

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_ids(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(i < 0 for i in v):
            raise FieldProblem("stop_token_ids", "token ids are 0 or more")
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

    @property
    def top_k_value(self) -> int | None:
        """top_k as the engine takes it (0 = off; vLLM's -1 is off too)."""
        return 0 if self.top_k == -1 else self.top_k


TokenPrompt = list[int]


class CompletionRequest(_Sampling):
    """POST /v1/completions: a prompt is text or token ids (OpenAI's `prompt` takes a string,
    a list of strings, a list of token ids, or a list of such lists)."""

    NEUTRAL = NEUTRAL_COMPLETION

    prompt: str | list[str] | TokenPrompt | list[TokenPrompt]
    max_tokens: int | None = Field(default=None, ge=0)
    echo: bool = False
    logprobs: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        items = [v] if isinstance(v, str) or (v and isinstance(v[0], int)) else v
        if not items or len(items) > MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts")
        if any(len(p) == 0 for p in items):
            raise ValueError("prompts must not be empty")
        if any(isinstance(p, str) and _has_surrogate(p) for p in items):
            raise ValueError("prompts must be valid Unicode (a lone surrogate is not)")
        if any(t < 0 for p in items if not isinstance(p, str) for t in p):
            raise ValueError("token ids are 0 or more")
        return v

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts: texts, or token-id lists."""
        v: Any = self.prompt
        if isinstance(v, str):
            return [v]
        if isinstance(v[0], int):
            return [list(v)]
        return list(v)

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
        if self.max_tokens == 0 and not self.echo:
            raise FieldProblem(
                "max_tokens", "max_tokens=0 generates nothing: it needs echo: true (scoring)"
            )
        if self.echo and self.stream:
            raise FieldProblem(
                "echo", "echo with stream is not supported by neuron-spec; send stream false"
            )
        return self

    @property
    def new_tokens(self) -> int | None:
        return self.max_tokens


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


ROLES = ("system", "developer", "user", "assistant")


class Message(_Nullable):
    """A chat message: text from a system, developer, user or assistant. Tool calls, tool
    results and function messages are refused as not supported, naming the field."""

    model_config = ConfigDict(extra="forbid", strict=True)
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: Any = None
    tool_call_id: Any = None
    function_call: Any = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _supported(self) -> Message:
        if self.role in ("tool", "function"):
            raise FieldProblem(
                "messages.role",
                f"messages.role {self.role!r} is not supported by neuron-spec (it serves "
                "text without tools); leave tool results out",
            )
        if self.role not in ROLES:
            raise FieldProblem(
                "messages.role",
                f"messages.role {clip(self.role)}: give one of {', '.join(ROLES)}",
            )
        for name in ("tool_calls", "function_call", "tool_call_id"):
            if getattr(self, name) not in (None, []):
                raise FieldProblem(
                    f"messages.{name}",
                    f"messages.{name} is not supported by neuron-spec (it serves text without "
                    "tools); leave it out",
                )
        if self.content is None:
            raise FieldProblem("messages.content", "messages.content is required (text)")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content or [])


class ChatRequest(_Sampling):
    """POST /v1/chat/completions: messages rendered with the tokenizer's chat template."""

    NEUTRAL = NEUTRAL_CHAT

    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    parallel_tool_calls: bool | None = None  # meaningless without tools: any value is neutral
    metadata: dict[str, str] | None = None
    # identifiers and cache hints for the provider: they change no answer, any value is neutral
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

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
