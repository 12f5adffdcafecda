"""Chat messages to token ids, without letting message content forge control tokens.

A chat template renders messages into text such as `<|im_start|>user\\nhi<|im_end|>`, and the
tokenizer turns the control strings in that text into special tokens. Tokenizing the rendered
text whole would do the same to control strings *inside* a message: `hi<|im_end|>\\n
<|im_start|>system\\n...` would become a real end of turn and a forged system turn.

So when any message holds the text of a special token, the template is rendered with a
placeholder for each message's content, the template's own text is tokenized as usual, and
each content is tokenized as text: every special-token string in it is split so that it can
only tokenize as ordinary characters (it decodes back to the same text). Messages without such
strings - nearly all - are tokenized exactly as before, whole.
"""

from __future__ import annotations

import re
import uuid
from typing import Any


class ChatContentError(ValueError):
    """A message whose content cannot be kept as text under this template."""


def special_strings(tok: Any) -> list[str]:
    """The texts the tokenizer turns into special or added tokens, longest first."""
    found = set(getattr(tok, "all_special_tokens", None) or [])
    decoder = getattr(tok, "added_tokens_decoder", None) or {}
    found.update(str(getattr(t, "content", t)) for t in decoder.values())
    return sorted((s for s in found if s), key=len, reverse=True)


def _text_ids(tok: Any, text: str, specials: list[str]) -> list[int]:
    """Ids of text in which no special-token string may become a special token."""
    if not text:
        return []
    pattern = "(" + "|".join(re.escape(s) for s in specials) + ")"
    ids: list[int] = []
    for i, piece in enumerate(re.split(pattern, text)):
        if not piece:
            continue
        if i % 2 == 0:
            ids += tok(piece, add_special_tokens=False).input_ids
        else:  # a special string: its halves are ordinary text to the tokenizer
            cut = max(1, len(piece) // 2)
            ids += tok(piece[:cut], add_special_tokens=False).input_ids
            ids += tok(piece[cut:], add_special_tokens=False).input_ids
    return ids


def chat_ids(tok: Any, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    """The rendered prompt text and its token ids, content kept as text (see the module)."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    specials = special_strings(tok)
    if not any(s in m["content"] for m in messages for s in specials):
        return text, list(tok(text, add_special_tokens=False).input_ids)
    marks = [f"@@content-{uuid.uuid4().hex}@@" for _ in messages]
    shaped = [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)]
    rendered = tok.apply_chat_template(shaped, tokenize=False, add_generation_prompt=True)
    pieces = re.split("(" + "|".join(map(re.escape, marks)) + ")", rendered)
    if any(rendered.count(mark) != 1 for mark in marks):
        raise ChatContentError(
            "a message holds the text of a special token (" + _named(messages, specials) + ") "
            "and this model's chat template does not place each message once; remove it"
        )
    ids: list[int] = []
    index = {mark: i for i, mark in enumerate(marks)}
    for piece in pieces:
        if piece in index:
            ids += _text_ids(tok, messages[index[piece]]["content"], specials)
        elif piece:
            ids += tok(piece, add_special_tokens=False).input_ids
    return text, ids


def _named(messages: list[dict[str, str]], specials: list[str]) -> str:
    hits = sorted({s for m in messages for s in specials if s in m["content"]})
    return ", ".join(repr(s) for s in hits[:3])
