"""`neuron-spec serve` as a real process on the real model (SmolLM2-135M-Instruct), over real
sockets: it loads while /health says 503, answers as `neuron-spec generate` does, speaks to the
OpenAI client, and drains on SIGTERM. The protocol itself is tested in this process on a tiny
checkpoint (test_serve.py); these tests prove the command and the model."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import CONFIGS
from .openai_checks import assert_streamed_logprobs_are_the_plain_ones
from .tiny_model import metric_value

pytestmark = [pytest.mark.reference, pytest.mark.model, pytest.mark.slow]
DEMO = CONFIGS / "demo-cpu.yaml"
PROMPT = "The capital of France is"
MODEL = "smollm2-135m-instruct"  # the served name: the target checkpoint directory's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m neuron_spec serve CONFIG` on a free port of 127.0.0.1, until ready."""

    def __init__(self, queue_size: int, log: Path, *extra: str, config: Path = DEMO):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "neuron_spec",
                "serve",
                str(config),
                "--port",
                str(self.port),
                "--queue-size",
                str(queue_size),
                *extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.health: list[int] = []
        deadline = time.time() + 240
        while time.time() < deadline:
            assert self.proc.poll() is None, log.read_text()
            try:
                code = httpx.get(self.url + "/health", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            self.health.append(code)
            if code == 200:
                return
            time.sleep(0.05)
        raise TimeoutError("the server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def complete(self, **body) -> httpx.Response:
        return httpx.post(self.url + "/v1/completions", json=body, timeout=300)

    def metric(self, name: str) -> float:
        return metric_value(httpx.get(self.url + "/metrics", timeout=10).text, name)


@pytest.fixture(scope="module")
def server(demo_checkpoint, tmp_path_factory):
    s = Server(queue_size=64, log=tmp_path_factory.mktemp("serve") / "server.log")
    yield s
    s.stop()


def test_health_goes_from_503_to_200(server):
    assert server.health[-1] == 200
    assert 503 in server.health  # it answered while the models were loading


def test_completion_equals_cli_generate(server):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuron_spec",
            "generate",
            str(DEMO),
            "--prompt",
            PROMPT,
            "--temperature",
            "0",
            "--max-new-tokens",
            "24",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    expected = json.loads(proc.stdout)
    r = server.complete(prompt=PROMPT, max_tokens=24, temperature=0.0)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == expected["text"]
    assert body["usage"]["completion_tokens"] == len(expected["token_ids"])
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + len(
        expected["token_ids"]
    )
    assert body["speculation"]["drafted"] >= body["speculation"]["accepted"] >= 0


def test_chat_completions_plain_and_streamed_with_the_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    out = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=16, temperature=0.0
    )
    text = out.choices[0].message.content
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert text and "<|im_start|>" not in text
    assert "Paris" in text  # the instruct model answers through its chat template
    assert out.usage.prompt_tokens > 20  # the template's system and role markers count
    events = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=16,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert events[0].choices[0].delta.role == "assistant"
    streamed = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert streamed == text
    assert events[-1].usage.completion_tokens == out.usage.completion_tokens


def test_logprobs_from_the_targets_distribution(server):
    """Chat logprobs with top_logprobs=2 and completions logprobs=3: one entry per returned
    token, from the target's own distribution (greedy picks its most likely token)."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8, temperature=0.0, logprobs=True, top_logprobs=2,
    )  # fmt: skip
    content = out.choices[0].logprobs.content
    assert 1 <= len(content) <= out.usage.completion_tokens
    assert "".join(c.token for c in content) == out.choices[0].message.content
    for c in content:
        assert c.logprob <= 0 and len(c.top_logprobs) == 2
        assert c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob
        assert c.token == c.top_logprobs[0].token  # greedy: the target's most likely token
        assert c.logprob == pytest.approx(c.top_logprobs[0].logprob)
        assert bytes(c.bytes).decode("utf-8", "replace") == c.token
    body = server.complete(prompt=PROMPT, max_tokens=6, temperature=0.0, logprobs=3).json()
    lp = body["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == body["choices"][0]["text"]
    assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["top_logprobs"])
    assert all(len(top) == 3 for top in lp["top_logprobs"])
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    plain = server.complete(prompt=PROMPT, max_tokens=6, temperature=0.0).json()
    assert plain["choices"][0]["logprobs"] is None
    assert plain["choices"][0]["text"] == body["choices"][0]["text"]
    r = server.complete(prompt=PROMPT, max_tokens=2, logprobs=21)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    assert "Input should" not in r.json()["error"]["message"]
    assert_streamed_logprobs_are_the_plain_ones(client, MODEL, out)


def test_full_queue_answers_429_and_sigterm_drains(demo_checkpoint, tmp_path):
    s = Server(queue_size=1, log=tmp_path / "small.log")
    try:
        with httpx.stream(
            "POST",
            s.url + "/v1/completions",
            timeout=300,
            json={
                "prompt": "Write a long story:",
                "max_tokens": 60,
                "temperature": 0.0,
                "stream": True,
            },
        ) as running:
            lines = running.iter_lines()
            next(line for line in lines if line.startswith("data: "))  # it is running now
            with cf.ThreadPoolExecutor(max_workers=3) as pool:
                futures = [
                    pool.submit(s.complete, prompt=PROMPT, max_tokens=2, temperature=0.0)
                    for _ in range(3)
                ]
                time.sleep(1.0)
                os.kill(s.proc.pid, signal.SIGTERM)  # graceful: the running request finishes
                rest = [line for line in lines if line.startswith("data: ")]
                responses = [f.result(timeout=120) for f in futures]
        assert rest[-1] == "data: [DONE]"
        codes = sorted(r.status_code for r in responses)
        assert 429 in codes
        limited = next(r for r in responses if r.status_code == 429)
        assert limited.headers["Retry-After"].isdigit()
        assert all(c in (200, 429, 503) for c in codes)  # the queued one: done, or told to go
        assert s.proc.wait(60) == 0
    finally:
        s.stop()


def test_health_says_saturated_and_sigterm_cancels_after_the_drain(demo_checkpoint, tmp_path):
    s = Server(1, tmp_path / "drain.log", "--drain-timeout", "2")
    try:
        with cf.ThreadPoolExecutor(max_workers=2) as pool:
            long = {"prompt": "Write a long story:", "max_tokens": 1500, "temperature": 0.0}
            running = pool.submit(s.complete, **long)
            time.sleep(1.5)  # running now
            queued = pool.submit(s.complete, prompt=PROMPT, max_tokens=2)
            deadline = time.time() + 30
            while True:  # the queue (capacity 1) is full: /health says so
                h = httpx.get(s.url + "/health", timeout=10)
                if h.status_code == 503 and h.json()["status"] == "saturated":
                    break
                assert time.time() < deadline, h.text
                time.sleep(0.05)
            t0 = time.perf_counter()
            os.kill(s.proc.pid, signal.SIGTERM)
            assert queued.result(timeout=60).status_code == 503  # told to go at once
            cancelled = running.result(timeout=60)
            assert (
                cancelled.status_code == 503 and "cancelled" in cancelled.json()["error"]["message"]
            )
            assert s.proc.wait(60) == 0  # no abort
            assert time.perf_counter() - t0 < 2 + 15  # the drain, then the cancelled step
    finally:
        s.stop()
