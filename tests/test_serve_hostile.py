"""`serve` against hostile and careless clients, in this process on a real socket, over a tiny
chat Llama built in the test: oversized bodies, blank and odd API keys, huge echoed values,
seeds at the edge of their range, log-probabilities of partial characters, Hub ids as model
names, and a long-lived batch that must not grow."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from neuron_spec.errors import UsageError

from .tiny_model import InProcessServer, raw_http, tiny_pair_yaml

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return tiny_pair_yaml(tmp_path_factory.mktemp("tiny-pair"))


@pytest.fixture(scope="module")
def server(pair):
    s = InProcessServer(pair, slots=4, api_key="s3cret-key")
    yield s
    s.stop()


AUTH = {"Authorization": "Bearer s3cret-key"}


def post(server, route: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(server.url + route, json=body, headers=headers or AUTH, timeout=120)


# --- bodies ----------------------------------------------------------------------------------


def test_a_declared_768_mib_body_is_refused_before_it_is_read(server):
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer s3cret-key\r\nContent-Length: {768 << 20}\r\n\r\n"
    ).encode()
    began = time.monotonic()
    answer = raw_http(server.port, head, b'{"prompt": "', read_timeout=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - began < 5
    assert b"at most 1048576" in answer


def test_a_chunked_body_is_read_only_up_to_the_limit(server):
    """The client keeps sending 64 KiB chunks; the server answers 413 once it has read past
    1 MiB and stops reading, so the client cannot push much more than that."""
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-key\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        )
        piece = b"x" * 65536
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        s.settimeout(2)
        try:
            while sent < (64 << 20):
                s.sendall(chunk)
                sent += len(piece)
        except OSError:
            pass  # the server closed the connection after its 413
        try:
            answer = s.recv(65536)
        except OSError:
            answer = b""
    assert sent < (16 << 20), f"the server kept reading: {sent} bytes sent"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_refused_values_are_not_echoed_whole(server):
    big = "y" * 900_000
    cases = [
        {"prompt": "hi", "suffix": big},
        {"prompt": "hi", big[:300_000]: 1},
        {"prompt": "hi", "model": big},
        {"prompt": "hi", "temperature": big},
    ]
    for body in cases:
        r = post(server, "/v1/completions", body)
        assert r.status_code in (400, 404), r.text[:300]
        assert len(r.content) < 2000, (r.status_code, len(r.content))
        assert r.json()["error"]["message"]


# --- API keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   ", "two words", "line\nbreak", "ключ", "tab\there"])
def test_keys_no_client_can_send_are_refused(key):
    from neuron_spec.serving.server import check_api_key

    with pytest.raises(UsageError):
        check_api_key(key, "--api-key")


def test_serve_with_a_blank_api_key_exits_2_before_loading(pair, capsys, monkeypatch):
    from neuron_spec.cli.main import main

    monkeypatch.delenv("NEURON_SPEC_API_KEY", raising=False)
    assert main(["serve", str(pair), "--api-key", "", "--port", "1"]) == 2
    assert "--api-key is empty" in capsys.readouterr().err
    monkeypatch.setenv("NEURON_SPEC_API_KEY", "")
    assert main(["serve", str(pair), "--port", "1"]) == 2
    assert "NEURON_SPEC_API_KEY is empty" in capsys.readouterr().err


def test_the_bearer_scheme_is_case_insensitive(server):
    from neuron_spec.serving.server import bearer_token

    assert bearer_token(b"bearer abc") == b"abc"
    assert bearer_token(b"Basic abc") == b""
    body = {"prompt": "hello", "max_tokens": 2}
    for header in ("Bearer s3cret-key", "bearer s3cret-key", "BEARER  s3cret-key"):
        r = post(server, "/v1/completions", body, {"Authorization": header})
        assert r.status_code == 200, (header, r.text)
    for header in ("Basic s3cret-key", "Bearer wrong", "s3cret-key", ""):
        r = post(server, "/v1/completions", body, {"Authorization": header})
        assert r.status_code == 401, header


# --- seeds, lengths --------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_the_largest_seed_with_several_choices(server, stream):
    body = {"prompt": "hello", "max_tokens": 3, "n": 3, "seed": 2**63 - 1, "temperature": 0.9}
    r = post(server, "/v1/completions", {**body, "stream": stream})
    assert r.status_code == 200, r.text
    if stream:
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert not any("error" in json.loads(e) for e in events[:-1])
    else:
        assert len(r.json()["choices"]) == 3


def test_a_too_long_request_names_the_field_the_client_sent(server):
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5000}
    r = post(server, "/v1/chat/completions", chat)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_completion_tokens"
    assert "max_completion_tokens (5000)" in r.json()["error"]["message"]
    r = post(
        server, "/v1/chat/completions", {**chat, "max_tokens": 5000, "max_completion_tokens": None}
    )
    assert r.json()["error"]["param"] == "max_tokens"


# --- log-probabilities of partial characters -------------------------------------------------


def _chat_logprobs(server, stream: bool) -> tuple[str, list[dict], dict]:
    body = {
        "messages": [{"role": "user", "content": "日本語で答えて"}],
        "max_tokens": 24,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": 2,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
        r = post(server, "/v1/chat/completions", body)
        events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
        text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
        entries = [
            x
            for e in events
            for c in e["choices"]
            for x in (c["logprobs"] or {}).get("content", [])
        ]
        return text, entries, events[-1]["usage"]
    r = post(server, "/v1/chat/completions", body).json()
    choice = r["choices"][0]
    return choice["message"]["content"], choice["logprobs"]["content"], r["usage"]


@pytest.mark.parametrize("stream", [False, True])
def test_every_token_has_a_logprob_entry_even_inside_a_character(server, stream):
    text, entries, usage = _chat_logprobs(server, stream)
    partial = [e for e in entries if "\\x" in e["token"]]
    assert partial, "the tiny model's answer should hold partial characters"
    eos = 1 if len(entries) < usage["completion_tokens"] else 0  # the EOS has no entry
    assert len(entries) == usage["completion_tokens"] - eos
    joined = bytes(b for e in entries for b in e["bytes"])
    assert joined.decode("utf-8", "replace") == text


def test_streamed_and_plain_logprobs_agree_and_completions_offsets_climb(server):
    plain, streamed = _chat_logprobs(server, False), _chat_logprobs(server, True)
    assert [e["bytes"] for e in plain[1]] == [e["bytes"] for e in streamed[1]]
    r = post(
        server,
        "/v1/completions",
        {"prompt": "日本", "max_tokens": 20, "temperature": 0.0, "logprobs": 1},
    ).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"])
    assert len(lp["tokens"]) >= r["usage"]["completion_tokens"] - 1
    assert lp["text_offset"] == sorted(lp["text_offset"])
    assert lp["text_offset"][-1] <= len(r["choices"][0]["text"])


# --- model names -----------------------------------------------------------------------------


def test_a_hub_id_is_served_under_its_full_name(tmp_path, pair):
    from neuron_spec.backends import load_generator
    from neuron_spec.config.spec import load_config
    from neuron_spec.serving.server import served_names

    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text(pair.read_text().replace("model: ./target", "model: tinyorg/tiny-model", 1))
    assert served_names(load_config(hub_yaml)) == (
        "tinyorg/tiny-model",
        frozenset({"tinyorg/tiny-model", "tiny-model"}),
    )
    local = load_config(pair)
    s = InProcessServer(hub_yaml, slots=2, loader=lambda _cfg: load_generator(local))
    try:
        for name, status in (("tinyorg/tiny-model", 200), ("tiny-model", 200), ("o/x", 404)):
            r = s.post("/v1/completions", prompt="hi", max_tokens=2, model=name)
            assert r.status_code == status, name
        listed = httpx.get(s.url + "/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["tinyorg/tiny-model"]
        assert httpx.get(s.url + "/v1/models/tinyorg/tiny-model").status_code == 200
    finally:
        s.stop()


# --- seeded requests: what holds -------------------------------------------------------------


def test_a_seeded_request_alone_is_reproducible_and_says_when_it_was_not_alone(server):
    body = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 1.0, "seed": 7}
    first, second = (post(server, "/v1/completions", body).json() for _ in range(2))
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert first["speculation"]["max_batch_rows"] == 1
    shared = post(server, "/v1/completions", {**body, "n": 3})
    assert shared.json()["speculation"]["max_batch_rows"] == 3


# --- a long-lived batch stays the same size --------------------------------------------------


def test_the_servers_batch_keeps_no_history(pair):
    from neuron_spec.backends import load_generator
    from neuron_spec.config.spec import load_config

    gen = load_generator(load_config(pair))
    batch = gen.open_batch(4)
    for i in range(30):
        row, _finish = gen.row([5, 6, 7 + i % 5], max_new_tokens=3)
        batch.admit(row)
        while batch.busy:
            batch.step()
    assert len(batch.steps) <= 1
    assert len(batch.target_step_seconds) <= 1
    assert len(batch.draft_step_seconds) <= 3


def test_concurrent_requests_all_answer(server):
    results = []

    def one(i: int) -> None:
        body = {"prompt": f"hello {i}", "max_tokens": 4}
        results.append(post(server, "/v1/completions", body).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results.count(200) == 12
