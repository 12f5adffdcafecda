"""The bytes each token contributes to the text, for log-probabilities that list every token.

A token is often part of a character: byte-level BPE (GPT-2, Llama-3, SmolLM2) splits a
three-byte Japanese character over two or three tokens, and SentencePiece's byte fallback
(Llama-2) writes bytes as `<0xE3>` tokens. Decoding such a token alone gives U+FFFD, and text
offsets counted from those replacement characters drift, so logprobs would drop the entries of
partial characters. OpenAI's API (and vLLM) list one entry per token; the `bytes` of each
entry carry what its text cannot show. This module gives those bytes, from the tokenizer's own
vocabulary: byte-level tokens through the GPT-2 byte alphabet, `<0xNN>` tokens as that byte,
SentencePiece pieces with `▁` as a space; anything else as its decoded text.

Written here rather than taken from a library: `tokenizers` exposes no per-token byte view, and
transformers' decode returns text with replacement characters.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[str, int]:
    """GPT-2's reversible map from bytes to printable characters, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _decoder_types(tok: Any) -> set[str]:
    """The types of the fast tokenizer's decoder (and of a Sequence's members)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return set()
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return set()
    members = decoder.get("decoders") or [decoder]
    return {str(d.get("type")) for d in members if isinstance(d, dict)}


class TokenBytes:
    """Per token id: its bytes, its text as an API shows it, and the bytes it adds to the
    decoded output (0 for special tokens, which decoding skips)."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.special = frozenset(int(i) for i in (getattr(tok, "all_special_ids", None) or []))
        kinds = _decoder_types(tok)
        self.byte_level = "ByteLevel" in kinds
        self._cache: dict[int, bytes] = {}

    def raw(self, token: int) -> bytes:
        found = self._cache.get(token)
        if found is None:
            found = self._cache[token] = self._lookup(token)
        return found

    def _lookup(self, token: int) -> bytes:
        piece = self.tok.convert_ids_to_tokens(token)
        if not isinstance(piece, str):
            return b""
        byte = _BYTE_TOKEN.fullmatch(piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        if token in self.special:
            return piece.encode("utf-8")
        alphabet = _byte_alphabet()
        if self.byte_level and all(ch in alphabet for ch in piece):
            return bytes(alphabet[ch] for ch in piece)
        if "▁" in piece:  # SentencePiece: the word-boundary mark is a space
            return piece.replace("▁", " ").encode("utf-8")
        return str(self.tok.decode([token])).encode("utf-8")

    def text(self, token: int) -> str:
        """The token as text; bytes that are not a whole character are written as \\xNN."""
        return self.raw(token).decode("utf-8", "backslashreplace")

    def width(self, token: int) -> int:
        """Bytes this token adds to the decoded text."""
        return 0 if token in self.special else len(self.raw(token))

    def lead(self, first: int) -> int:
        """Bytes decoding drops before the first token's text (SentencePiece removes the
        space of a leading `▁`), so that byte counts line up with the decoded text."""
        alone = str(self.tok.decode([first], skip_special_tokens=True))
        if "\ufffd" in alone:
            return 0
        return max(0, self.width(first) - len(alone.encode("utf-8")))
