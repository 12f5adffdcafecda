"""The prompts `neuron-spec verify` generates from: fixed and shipped with the package, so two
reports of the same config, on two hosts or two releases, decoded the same text. Each is short
(under 60 tokens with a Llama tokenizer: every shipped config's prompt budget holds it) and
they differ in kind: prose to continue, code, a list, a text to answer about (where a
lookup's proposals pay) and a chat-style question. Changing them is a new PROMPT_SET."""

from __future__ import annotations

PROMPT_SET = "verify-1"

PROMPTS: tuple[str, ...] = (
    "The history of the printing press begins",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "The planets of the solar system, in order from the Sun, are:\n1. Mercury\n2.",
    "Text: The bridge opened in 1932 and carried trains until 1989, when it was closed for "
    "repairs. It reopened in 1994 for cars only.\nQuestion: When did the bridge reopen, and "
    "for what?\nAnswer: The bridge reopened",
    "Question: Why is the sky blue during the day?\nAnswer:",
)
