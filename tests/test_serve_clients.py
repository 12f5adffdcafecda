"""What load testers, evaluation harnesses and the OpenAI SDK's helpers send, against `serve` in
this process on a real socket over a tiny chat Llama (tiny_model.py): vLLM's sampling and output
extensions, null as a field's default, token-id prompts, scoring (echo with logprobs), many stop
strings, refusals by name, each streamed choice's role delta and continuous usage, admission of
a burst while there is room, and CORS. The real guidellm and lm-eval runs are
benchmarks/clients.py."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from .tiny_model import InProcessServer, tiny_pair_yaml

pytestmark = pytest.mark.reference
PROMPT = "The capital of France is"
MODEL = "target"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    return tiny_pair_yaml(tmp_path_factory.mktemp("clients"))


@pytest.fixture(scope="module")
def server(pair):
    s = InProcessServer(pair, slots=4, queue_size=16)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tokenizer(pair):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(pair.parent / "target")


@pytest.fixture(scope="module")
def token_ids(tokenizer):
    """Token text as the server shows it -> id, for texts only one token has."""
    from neuron_spec.serving.token_bytes import TokenBytes

    pieces = TokenBytes(tokenizer)
    seen: dict[str, list[int]] = {}
    for i in range(len(tokenizer)):
        seen.setdefault(pieces.text(i), []).append(i)
    return {text: ids[0] for text, ids in seen.items() if len(ids) == 1}


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: httpx.Response, param: str, *words: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "Input should" not in error["message"]  # plain words, not the validator's
    for word in words:
        assert word in error["message"]
    return str(error["message"])


def events(server: InProcessServer, route: str, body: dict) -> list[dict]:
    out = []
    with httpx.stream("POST", server.url + route, json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[len("data: ") :]))
    return out


def greedy_tokens(server: InProcessServer, token_ids: dict, n: int = 10) -> list[int]:
    """The ids of the greedy continuation of PROMPT (its tokens of unique text)."""
    body = ok(server.complete(prompt=PROMPT, max_tokens=n, temperature=0.0, logprobs=0,
                              ignore_eos=True))  # fmt: skip
    return [token_ids.get(t, -1) for t in body["choices"][0]["logprobs"]["tokens"]]


# --- vLLM's extensions ---------------------------------------------------------------------------


def test_stop_token_ids_end_a_choice_and_min_tokens_defers_them(server, token_ids):
    ids = greedy_tokens(server, token_ids)
    at = next(i for i, t in enumerate(ids) if i >= 2 and t >= 0 and t not in ids[:i])
    body = {"prompt": PROMPT, "max_tokens": 10, "temperature": 0.0, "ignore_eos": True}
    stopped = ok(server.complete(**body, stop_token_ids=[ids[at]]))
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] == at + 1  # the stop token is the last one
    later = ok(server.complete(**body, stop_token_ids=[ids[at]], min_tokens=at + 2))
    assert later["usage"]["completion_tokens"] >= at + 2  # not before min_tokens
    refused(server.complete(**body, min_tokens=11), "min_tokens", "min_tokens=11")
    refused(server.complete(prompt=PROMPT, stop_token_ids=[10**6]), "stop_token_ids",
            "outside the vocabulary")  # fmt: skip


def test_ignore_eos_generates_the_requested_length(pair, token_ids):
    """A loaded pair whose EOS is a token the greedy continuation emits early: the request
    ends there, unless it sends ignore_eos (as guidellm does for fixed-length data)."""
    from neuron_spec.backends import load_generator

    eos: list[int] = []

    def early_eos(cfg):
        gen = load_generator(cfg)
        gen.eos_token_ids = list(eos)
        return gen

    s = InProcessServer(pair, slots=2, loader=early_eos)
    try:
        ids = greedy_tokens(s, token_ids)
        eos.append(ids[2])
        s.state.generator.eos_token_ids = list(eos)  # type: ignore[union-attr]
        body = {"prompt": PROMPT, "max_tokens": 10, "temperature": 0.0}
        short = ok(s.complete(**body))
        assert short["choices"][0]["finish_reason"] == "stop"
        assert short["usage"]["completion_tokens"] <= 3
        full = ok(s.complete(**body, ignore_eos=True))
        assert full["choices"][0]["finish_reason"] == "length"
        assert full["usage"]["completion_tokens"] == 10
        streamed = {**body, "stream": True, "ignore_eos": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
        usage = [e["usage"] for e in events(s, "/v1/completions", streamed) if "usage" in e]
        assert usage[-1]["completion_tokens"] == 10
    finally:
        s.stop()


def test_include_stop_str_in_output(server):
    text = ok(server.complete(prompt=PROMPT, max_tokens=16, temperature=0.0))["choices"][0]["text"]
    stop = text[4:6]
    at = text.find(stop)
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0.0, "stop": [stop]}
    assert ok(server.complete(**body))["choices"][0]["text"] == text[:at]
    kept = ok(server.complete(**body, include_stop_str_in_output=True))["choices"][0]
    assert kept["text"] == text[: at + len(stop)] and kept["finish_reason"] == "stop"


def test_skip_special_tokens_false_shows_them(tokenizer):
    from neuron_spec.engine.generation import Ending, TextStream

    ids = [*tokenizer("hello world").input_ids, tokenizer.eos_token_id]
    shown = TextStream(tokenizer, 1, None, Ending(skip_special=False)).finish([ids])[0]
    hidden = TextStream(tokenizer, 1, None, Ending()).finish([ids])[0]
    assert shown == hidden + "<|im_end|>"


def test_min_tokens_defers_a_stop_string(tokenizer):
    from neuron_spec.engine.generation import Ending, TextStream

    ids = tokenizer("hello world hello world").input_ids
    first = len(tokenizer("hello world").input_ids)
    late = TextStream(tokenizer, 1, None, Ending(stop=("hello",), min_tokens=first))
    assert late.finish([ids])[0] == "hello world "  # the first "hello" came too early
    assert TextStream(tokenizer, 1, None, Ending(stop=("hello",))).finish([ids])[0] == ""


def test_continuous_usage_on_every_streamed_chunk(server):
    body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0.0, "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    got = events(server, "/v1/completions", body)
    assert all("usage" in e for e in got)
    done = [e["usage"]["completion_tokens"] for e in got]
    assert done == sorted(done) and done[-1] == 12 and len(set(done)) > 2
    assert got[-1]["choices"] == [] and got[-1]["usage"]["prompt_tokens"] > 0
    plain = events(server, "/v1/completions", {**body, "stream_options": None})
    assert not any("usage" in e for e in plain)


# --- null, refusals, many stops ------------------------------------------------------------------


def test_null_is_the_default(server):
    nulls = {"n": None, "stream": None, "stream_options": None, "temperature": None,
             "top_p": None, "stop": None, "seed": None, "max_tokens": None, "logprobs": None,
             "echo": None, "ignore_eos": None, "min_tokens": None, "best_of": None,
             "user": None, "presence_penalty": None, "skip_special_tokens": None}  # fmt: skip
    body = ok(server.complete(prompt=PROMPT, **nulls))
    assert len(body["choices"]) == 1
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": None,
            "stream": None, "response_format": None, "tools": None,
            "top_logprobs": None}  # fmt: skip
    assert len(ok(server.post("/v1/chat/completions", **chat))["choices"]) == 1


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
         "response_format", "not supported"),
        ({"messages": [{"role": "user", "content": "hi"},
                       {"role": "assistant", "content": None, "tool_calls": [
                           {"id": "c1", "type": "function",
                            "function": {"name": "f", "arguments": "{}"}}]}]},
         "messages.tool_calls", "not supported"),
        ({"messages": [{"role": "user", "content": "hi"},
                       {"role": "tool", "tool_call_id": "c1", "content": "42"}]},
         "messages.role", "not supported"),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages.content", "required"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.role", "give one of"),
        ({"guided_json": {"type": "object"}}, "guided_json", "not supported"),
        ({"frobnicate": 1}, "frobnicate", "unknown field"),
        ({"stream_options": {"include_usage": True, "shiny": True}, "stream": True},
         "stream_options.shiny", "unknown field"),
    ],
)  # fmt: skip
def test_chat_refusals_name_the_field(server, body, param, words):
    full = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **body}
    refused(server.post("/v1/chat/completions", **full), param, words)


def test_neutral_vllm_fields_are_accepted(server):
    body = {"prompt": PROMPT, "max_tokens": 2, "use_beam_search": False, "length_penalty": 1.0,
            "spaces_between_special_tokens": True, "add_special_tokens": True, "priority": 0,
            "top_k": -1}  # fmt: skip
    assert len(ok(server.complete(**body))["choices"]) == 1
    refused(server.complete(prompt=PROMPT, use_beam_search=True), "use_beam_search",
            "not supported")  # fmt: skip


def test_many_stop_strings_each_bounded(server):
    from neuron_spec.serving.openai_api import MAX_STOP_CHARS, MAX_STOPS

    assert MAX_STOPS >= 16
    stops = [f"zq{i}" for i in range(MAX_STOPS - 1)] + ["\n"]
    assert len(ok(server.complete(prompt=PROMPT, max_tokens=4, stop=stops))["choices"]) == 1
    refused(server.complete(prompt=PROMPT, stop=[*stops, "x"]), "stop", f"at most {MAX_STOPS}")
    refused(server.complete(prompt=PROMPT, stop=["x" * (MAX_STOP_CHARS + 1)]), "stop",
            f"1 to {MAX_STOP_CHARS} characters")  # fmt: skip


# --- token-id prompts and scoring ----------------------------------------------------------------


def test_token_id_prompts_answer_as_their_text(server, tokenizer):
    ids = tokenizer(PROMPT).input_ids
    other = tokenizer("Once upon a time").input_ids
    want = ok(server.complete(prompt=PROMPT, max_tokens=6, temperature=0.0))
    one = ok(server.complete(prompt=ids, max_tokens=6, temperature=0.0))
    two = ok(server.complete(prompt=[ids, other], max_tokens=6, temperature=0.0))
    assert one["choices"][0]["text"] == want["choices"][0]["text"]
    assert two["choices"][0]["text"] == want["choices"][0]["text"] and len(two["choices"]) == 2
    assert one["usage"]["prompt_tokens"] == len(ids)
    refused(server.complete(prompt=[5, len(tokenizer)]), "prompt", "outside the vocabulary")
    refused(server.complete(prompt=[5, -1]), "prompt")
    refused(server.complete(prompt=[[5], []]), "prompt", "empty")
    refused(server.complete(prompt=[]), "prompt")
    refused(server.complete(prompt=[5] * 600), "prompt", "n_positions")  # as long text
    t0 = time.monotonic()
    refused(server.complete(prompt=[5] * 200_000), "prompt", "n_positions")  # a body's worth
    assert time.monotonic() - t0 < 10


def _target_logprobs(pair: Path, ids: list[int]) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(pair.parent / "target")
    with torch.inference_mode():
        lsm = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return [float(lsm[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_echo_scores_the_prompt_under_the_target(server, pair, tokenizer):
    ids = tokenizer(PROMPT).input_ids
    body = {"prompt": ids, "echo": True, "logprobs": 1, "temperature": 0.0}
    only = ok(server.complete(**body, max_tokens=0))["choices"][0]
    lp = only["logprobs"]
    assert len(lp["tokens"]) == len(ids) and only["text"] == tokenizer.decode(ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx(_target_logprobs(pair, ids), abs=1e-4)
    assert all(max(t.values()) >= v - 1e-6 for t, v in
               zip(lp["top_logprobs"][1:], lp["token_logprobs"][1:], strict=True))  # fmt: skip
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    more = ok(server.complete(**body, max_tokens=2))["choices"][0]
    plain = ok(server.complete(prompt=ids, max_tokens=2, temperature=0.0, logprobs=1))
    assert more["text"] == only["text"] + plain["choices"][0]["text"]
    assert more["logprobs"]["token_logprobs"][: len(ids)] == lp["token_logprobs"]
    assert len(more["logprobs"]["tokens"]) == len(ids) + 2
    assert more["logprobs"]["text_offset"][len(ids)] == len(only["text"])
    text = ok(server.complete(prompt=PROMPT, echo=True, max_tokens=3, temperature=0.0))
    assert text["choices"][0]["text"].startswith(PROMPT)
    refused(server.complete(prompt=PROMPT, max_tokens=0), "max_tokens", "echo")
    refused(server.complete(prompt=PROMPT, echo=True, stream=True), "echo", "not supported")


def test_echo_with_logprobs_is_refused_where_the_backend_cannot_score(pair):
    from neuron_spec.backends import load_generator
    from neuron_spec.backends.neuronx.backend import NeuronxPair
    from neuron_spec.backends.nxdi.backend import NxdiPair

    # the Neuron backends' compiled context encoding returns the last position's logits only
    assert not hasattr(NeuronxPair, "prompt_logits") and not hasattr(NxdiPair, "prompt_logits")

    class LastOnly:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            if name == "prompt_logits":
                raise AttributeError(name)
            return getattr(self.inner, name)

    def load(cfg):
        gen = load_generator(cfg)
        gen.backend = LastOnly(gen.backend)
        return gen

    s = InProcessServer(pair, slots=2, loader=load)
    try:
        r = s.complete(prompt=PROMPT, echo=True, logprobs=1, max_tokens=1)
        refused(r, "echo", "not supported by the reference backend")
        assert ok(s.complete(prompt=PROMPT, echo=True, max_tokens=1))["choices"][0]["text"]
    finally:
        s.stop()


# --- streaming helpers of the OpenAI SDK ---------------------------------------------------------


def test_every_streamed_choice_opens_with_its_role(server):
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
            "n": 3, "stream": True, "temperature": 1.0, "seed": 1}  # fmt: skip
    got = events(server, "/v1/chat/completions", body)
    first = {}
    for e in got:
        for c in e["choices"]:
            first.setdefault(c["index"], c["delta"])
    assert sorted(first) == [0, 1, 2]
    assert all(d.get("role") == "assistant" for d in first.values())


def test_openai_sdk_stream_helper_gives_every_choice_whole(server):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    msgs = [{"role": "user", "content": "Say hello."}]
    whole = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8,
                                           temperature=0.0).choices[0].message.content  # fmt: skip
    stop = whole[3:5]  # the helper's final completion wants choices that stopped
    want = whole[: whole.find(stop)]
    with client.chat.completions.stream(
        model=MODEL, messages=msgs, n=2, max_tokens=8, temperature=0.0, stop=[stop]
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert [c.index for c in final.choices] == [0, 1]
    for choice in final.choices:
        assert choice.message.role == "assistant" and choice.message.content == want
        assert choice.finish_reason == "stop"


# --- admission -----------------------------------------------------------------------------------


def _burst(server: InProcessServer, count: int, gate: threading.Event) -> list[httpx.Response]:
    """`count` requests at once while the worker is held in its first target pass (the
    first prompts being processed); the gate opens once every request has been admitted or
    refused."""
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0.0, "ignore_eos": True}
    gate.clear()
    with cf.ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(server.complete, **body) for _ in range(count)]
        deadline = time.monotonic() + 60
        room = server.state.capacity
        while server.state.admitted + sum(f.done() for f in futures) < count:
            assert time.monotonic() < deadline and server.state.admitted <= room
            time.sleep(0.01)
        gate.set()
        return [f.result(timeout=120) for f in futures]


def test_a_burst_is_admitted_while_there_is_room(pair):
    """24 at once to 8 slots and a queue of 16 while the first prompts are still being
    processed: every one is answered; 30: 24 answered, 6 refused 429 with Retry-After."""
    from neuron_spec.backends import load_generator

    gate = threading.Event()
    gate.set()

    def hold(*_args) -> None:
        gate.wait(60)

    def held(cfg):
        gen = load_generator(cfg)
        gen.backend.target.model.register_forward_pre_hook(hold)
        return gen

    s = InProcessServer(pair, slots=8, queue_size=16, loader=held)
    try:
        assert s.state.capacity == 24
        assert [r.status_code for r in _burst(s, 24, gate)] == [200] * 24
        got = _burst(s, 30, gate)
        assert sorted(r.status_code for r in got) == [200] * 24 + [429] * 6
        assert all(r.headers["Retry-After"].isdigit() for r in got if r.status_code == 429)
        assert s.state.admitted == 0  # every answered request left the count
    finally:
        gate.set()
        s.stop()


# --- CORS ----------------------------------------------------------------------------------------


def _preflight(server: InProcessServer, origin: str) -> httpx.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    return httpx.options(server.url + "/v1/chat/completions", headers=headers, timeout=30)


def test_cors_only_for_the_listed_origins(pair, server):
    allowed = "https://app.example.com"
    s = InProcessServer(pair, slots=1, api_key="sekret", cors_origins=[allowed])
    try:
        ok_pre = _preflight(s, allowed)
        assert ok_pre.status_code == 200  # the preflight needs no key
        assert ok_pre.headers["access-control-allow-origin"] == allowed
        assert "POST" in ok_pre.headers["access-control-allow-methods"]
        assert _preflight(s, "https://evil.example.com").status_code == 400
        r = httpx.post(s.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 1},
                       headers={"Origin": allowed, "Authorization": "Bearer sekret"})  # fmt: skip
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == allowed
    finally:
        s.stop()
    off = _preflight(server, allowed)  # no --cors-origin: no CORS at all
    assert off.status_code == 405 and "access-control-allow-origin" not in off.headers


BAD_ORIGINS = ["*", "https://a.example.com/", "app.example.com", "https://a.example.com/path",
               "ftp://a.example.com", "https://user@a.example.com"]  # fmt: skip


@pytest.mark.parametrize("origin", BAD_ORIGINS)
def test_cors_origin_must_be_an_origin(origin):
    from neuron_spec.errors import UsageError
    from neuron_spec.serving.server import check_origin

    with pytest.raises(UsageError, match="scheme://host"):
        check_origin(origin)
    assert check_origin("http://localhost:3000") == "http://localhost:3000"


def test_cors_origin_is_repeatable_and_checked_before_anything_loads(capsys, pair):
    from neuron_spec.cli.args import build_parser
    from neuron_spec.cli.main import main

    argv = ["serve", str(pair), "--cors-origin", "https://a.example", "--cors-origin",
            "http://localhost:3000"]  # fmt: skip
    assert build_parser(argv).parse_args(argv).cors_origin == argv[3::2]
    assert build_parser(argv[:2]).parse_args(argv[:2]).cors_origin == []
    assert main(["serve", str(pair), "--port", "1", "--cors-origin", "*"]) == 2
    assert "--cors-origin '*'" in capsys.readouterr().err
