"""A property-based fuzzer of the config loader: thousands of generated documents (valid configs
with hostile values, broken structure, YAML tricks and byte-level damage) through
`neuron-spec validate`. Properties: never an internal error, exit 0/1/2 only, every config error
located by a line, messages of bounded size."""

from __future__ import annotations

import copy
import functools
import json
import random
from typing import Any

import pytest
import yaml

from neuron_spec.cli.main import main

from .conftest import BASE_CONFIG

DOCUMENTS = 2000
BASE: dict[str, Any] = yaml.safe_load(BASE_CONFIG)

HOSTILE_VALUES: list[Any] = [
    "__HUGE_INT__",  # replaced after dumping by 5000 digits: more than Python will print
    "__HUGE_HEX__",  # replaced by a hex integer of 4000 digits (over 4300 decimal ones)
    "__HEX_300__",  # a 300-digit hex: fits an int, overflows a float
    "__FLOAT_TAG__",  # replaced by `!!float 1`
    "__TIMESTAMP_TAG__",  # replaced by `!!timestamp 2024-01-01`
    "__E310__",  # replaced by 1.0e+310 (YAML reads it as a float: inf)
    -(10**30),
    2**64,
    2**63 - 1,
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
    5e-324,
    0,
    -1,
    True,
    None,
    "",
    " ",
    "a\x00b",
    "\ud800",
    "x" * 5000,
    "/" + "d" * 300 + "/model",
    "~/" + "/".join(["e"] * 2000),
    "s3://",
    "s3://bucket/../../etc",
    "../../../../etc/passwd",
    "model.gguf",
    "${HOME}/x",
    [],
    [1, 2, 3],
    [3, 2, 1],
    list(range(2000)),
    {"nested": {"deeper": [1, {"x": None}]}},
    {},
    [[[[[[]]]]]],
    "inf2.48xlarge ",
    "INF2.48XLARGE",
    "lossless ",
    "package.module:Class",
    ":",
    "f32",
    3.5,
]

# Text-level YAML tricks, substituted for a whole value.
YAML_TRICKS = [
    "!!bool maybe",
    "!!int 12x",
    "!!float abc",
    "!!binary aGVsbG8=",
    "!!timestamp 2024-13-45",
    "2024-01-01",
    "!!python/object:os.system ls",
    "&a [*a]",
    "*undefined",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "0x1F",
    "0o17",
    "1_000",
    "+.inf",
    ".NaN",
    "~",
    "'unterminated",
    '"\\x00"',
    '"\\ud800"',
    "{a: 1, a: 2}",
    "[" * 200 + "]" * 200,
    "{" * 60 + "}" * 60,
    "0x" + "f" * 4000,
    "-0x" + "f" * 300,
    "0b" + "1" * 5000,
    "0o" + "7" * 2000,
    "1e310",
    "1.0e+310",
    "-1.0e+310",
    "!!float 1",
    "!!float 1e310",
    "!!timestamp 2024-01-01",
    "!!timestamp 2024-01-01T10:00:00Z",
    "!!int 0x" + "f" * 300,
    "!!str 5",
    "[0x" + "f" * 300 + "]",
    "[1, 0x" + "f" * 4000 + "]",
]

# Placeholders in dumped documents and the YAML text each one stands for.
PLACEHOLDERS = {
    "__HUGE_INT__": "9" * 5000,
    "__HUGE_HEX__": "0x" + "f" * 4000,
    "__HEX_300__": "0x" + "f" * 300,
    "__FLOAT_TAG__": "!!float 1",
    "__TIMESTAMP_TAG__": "!!timestamp 2024-01-01",
    "__E310__": "1.0e+310",
}


def _leaves(node: Any, path: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*path, k))
            out.extend(_leaves(v, (*path, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*path, i))
            out.extend(_leaves(v, (*path, i)))
    return out


def _set(doc: Any, path: tuple, value: Any) -> None:
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _delete(doc: Any, path: tuple) -> None:
    node = doc
    for part in path[:-1]:
        node = node[part]
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _structural(rng: random.Random) -> str:
    doc = copy.deepcopy(BASE)
    for _ in range(rng.randint(1, 3)):
        paths = _leaves(doc)
        if not paths:
            break
        path = rng.choice(paths)
        op = rng.random()
        try:
            if op < 0.6:
                _set(doc, path, copy.deepcopy(rng.choice(HOSTILE_VALUES)))
            elif op < 0.75:
                _delete(doc, path)
            elif op < 0.9:
                parent = doc if len(path) == 1 else None
                (parent or doc)[rng.choice(["tragte", "speculatoin", "n_postions", "x" * 90])] = 1
            else:
                doc = rng.choice([[doc], "text", 42, None, [], {"target": doc}])
        except (KeyError, IndexError, TypeError):
            continue
    text = yaml.safe_dump(doc, allow_unicode=False, width=10**6)
    for placeholder, yaml_text in PLACEHOLDERS.items():
        text = text.replace(placeholder, yaml_text)
    return text


def _textual(rng: random.Random) -> str:
    lines = BASE_CONFIG.splitlines()
    op = rng.random()
    if op < 0.5:  # a YAML trick for one value
        i = rng.randrange(len(lines))
        head, sep, _ = lines[i].partition(": ")
        if sep:
            lines[i] = f"{head}: {rng.choice(YAML_TRICKS)}"
        else:
            lines.insert(i, f"extra: {rng.choice(YAML_TRICKS)}")
        return "\n".join(lines) + "\n"
    text = "\n".join(lines) + "\n"
    if op < 0.7:  # byte damage
        chars = list(text)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(chars))
            chars[pos] = rng.choice(["\t", ":", "-", "{", "]", "'", '"', "&", "*", "!", "\x00", ""])
        return "".join(chars)
    if op < 0.85:  # truncation
        return text[: rng.randrange(len(text))]
    # anchors and aliases: share sections, or nest aliases
    return text.replace("target: {", "target: &t {").replace(
        "draft:  {model: llama-2-7b,  amp: bf16, tp_degree: 32, n_positions: 2048, batch_size: 1}",
        rng.choice(["draft: *t", "draft: {<<: *t, model: llama-2-7b}", "draft: [*t, *t, *t]"]),
    )


@functools.cache  # every campaign reads the same documents: made once
def _documents(n: int, seed: int) -> tuple[str, ...]:
    rng = random.Random(seed)
    return tuple(_structural(rng) if rng.random() < 0.6 else _textual(rng) for _ in range(n))


def documents(n: int, seed: int = 20261122) -> list[str]:
    return list(_documents(n, seed))


def test_the_fuzzer_generates_varied_documents():
    docs = documents(DOCUMENTS)
    assert len(docs) == DOCUMENTS and len(set(docs)) > DOCUMENTS * 0.6


# A campaign in chunks: the first is the fast loop's sample, the rest run in the full loop.
CHUNKS = 8
CAMPAIGN = [
    pytest.param(i, marks=[pytest.mark.slow] if i else [], id=str(i)) for i in range(CHUNKS)
]


@pytest.mark.parametrize("chunk", CAMPAIGN)
def test_no_document_gives_an_internal_error(tmp_path, capsys, chunk):
    docs = documents(DOCUMENTS)[chunk::CHUNKS]
    failures: list[str] = []
    outcomes = {0: 0, 1: 0, 2: 0}
    path = tmp_path / "fuzz.yaml"
    for i, text in enumerate(docs):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        rc = main(["validate", str(path), "--json"])
        out, err = capsys.readouterr()
        if rc not in outcomes or "internal error" in err or "Traceback" in err:
            failures.append(f"#{i} rc={rc}: {err.strip()[:300]}\n{text[:300]}")
            continue
        outcomes[rc] += 1
        if len(out) + len(err) > 20_000:
            failures.append(f"#{i}: {len(out) + len(err)} bytes of output\n{out[:300]}")
        if rc == 2:
            body = json.loads(out)
            unlocated = [p for p in body.get("problems", []) if p.get("line") is None]
            if unlocated or "problems" not in body:
                failures.append(f"#{i} unlocated: {body}\n{text[:300]}")
    assert not failures, f"{len(failures)} of {len(docs)}:\n" + "\n---\n".join(failures[:8])
    assert outcomes[2] > len(docs) * 0.3  # most mutations are config errors ...
    assert outcomes[0] + outcomes[1] > 0  # ... and some still validate


@pytest.mark.parametrize("half", [0, pytest.param(1, marks=pytest.mark.slow)])
@pytest.mark.parametrize("command", ["plan", "generate"])
def test_plan_and_dry_run_survive_the_documents_that_validate_reads(
    tmp_path, capsys, command, half
):
    """plan and `generate --dry-run` go further than validate (memory model, predictions, the
    load plan): the documents that hold the numeric hazards must not break them either."""
    hazards = (*tuple(PLACEHOLDERS.values()), "0x", "e+310", "e310", "!!")
    docs = [d for d in documents(DOCUMENTS) if any(h in d for h in hazards)][:300]
    assert len(docs) >= 100
    docs = docs[half::2]  # half of them in the fast loop, the other half in the full loop
    extra = ["--dry-run", "--prompt", "hi"] if command == "generate" else []
    path = tmp_path / "fuzz.yaml"
    failures = []
    for i, text in enumerate(docs):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        rc = main([command, str(path), "--json", *extra])
        _out, err = capsys.readouterr()
        if rc not in (0, 1, 2) or "internal error" in err or "Traceback" in err:
            failures.append(f"#{i} rc={rc}: {err.strip()[:300]}\n{text[:300]}")
    assert not failures, f"{len(failures)} of {len(docs)}:\n" + "\n---\n".join(failures[:8])


def _bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        (_bomb(), 5, "expands to more than 10000 values"),
        (
            "x:\n" + "".join(f"  {line}\n" for line in _bomb().splitlines()) + "target: *i\n",
            6,
            "expands to more than 10000 values",
        ),
        ("target: " + "[" * 500 + "]" * 500 + "\n", 1, "nested more than 32 levels"),
        ("a: &a [b, *a]\n", 1, "refers to the collection that contains it"),
        ("target: {n_positions: " + "9" * 20_000 + "}\n", 1, "20000 characters long"),
        ("x: 1\n" + "y: z\n" * 300_000, 1, "a config is a few KB"),
        ('target: {model: "a\\0b"}\n', 1, "NUL"),
    ],
)
def test_bombs_and_their_cousins_are_located_config_errors(tmp_path, capsys, text, line, says):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    assert main(["validate", str(path), "--json"]) == 2
    body = json.loads(capsys.readouterr().out)
    (problem,) = body["problems"]
    assert problem["line"] == line and says in problem["message"]
    assert len(problem["message"]) < 300


def test_values_in_messages_are_bounded(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(BASE_CONFIG.replace("acceptor: lossless", "acceptor: " + "q" * 3000))
    assert main(["validate", str(path), "--json"]) == 2
    (problem,) = json.loads(capsys.readouterr().out)["problems"]
    assert problem["path"] == "speculation.acceptor" and "…" in problem["message"]
    assert len(problem["message"]) < 400
