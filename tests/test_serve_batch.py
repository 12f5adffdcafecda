"""`serve --batch-size 8`: continuous batching, in this process on a real socket, over a tiny
chat Llama built in the test. Requests decode together, join a running batch, and leave it on
their own."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time

import httpx
import pytest

from .tiny_model import InProcessServer, slowed_loader, tiny_pair_yaml

pytestmark = pytest.mark.reference
PROMPT = "The capital of France is"
PROMPTS = [
    PROMPT,
    "Once upon a time",
    "def fibonacci(n):",
    "Water boils at",
    "The three primary colours are",
    "Dear diary, today",
    "In 1969, astronauts",
    "The quick brown fox",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return tiny_pair_yaml(tmp_path_factory.mktemp("serve-batch"))


@pytest.fixture(scope="module")
def batched(pair):
    """8 slots, as `serve --batch-size 8`."""
    s = InProcessServer(pair, slots=8, queue_size=16)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def batched_slowly(pair):
    """The same, with a target pass of 30 ms: 60 tokens take long enough for a late request
    to join while the others still run."""
    s = InProcessServer(pair, slots=8, queue_size=16, loader=slowed_loader(0.03))
    yield s
    s.stop()


def greedy(server: InProcessServer, prompt: str, n: int) -> dict:
    r = server.complete(prompt=prompt, max_tokens=n, temperature=0.0)
    assert r.status_code == 200, r.text
    return r.json()


def stream_events(
    server: InProcessServer, body: dict, on_first=None, close_after: int | None = None
):
    """A streamed completion: (events, done, [perf_counter of each text event])."""
    events, stamps, done = [], [], False
    body = {**body, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            events.append(json.loads(line[6:]))
            if events[-1]["choices"] and events[-1]["choices"][0]["text"]:
                stamps.append(time.perf_counter())
                if len(stamps) == 1 and on_first is not None:
                    on_first()
                if close_after is not None and len(stamps) >= close_after:
                    break  # the client goes away mid-stream
    return events, done, stamps


def text_of(events: list[dict]) -> str:
    return "".join(c["text"] for e in events for c in e["choices"])


def test_concurrent_greedy_requests_equal_each_alone(batched):
    alone = [greedy(batched, p, 24)["choices"][0]["text"] for p in PROMPTS]
    with cf.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: greedy(batched, p, 24), PROMPTS))
    same = sum(t["choices"][0]["text"] == a for t, a in zip(together, alone, strict=True))
    assert same >= 7  # greedy in a batch of 8 is greedy alone (rounding may flip a near-tie)
    assert batched.metric("neuron_spec_batch_slots") == 8


def test_a_late_request_gets_its_first_token_before_the_others_finish(batched_slowly):
    batched = batched_slowly
    started = threading.Barrier(8)
    long_body = {"max_tokens": 60, "temperature": 0.0}
    with cf.ThreadPoolExecutor(7) as pool:
        long_runs = [
            pool.submit(
                stream_events, batched, {"prompt": p, **long_body}, lambda: started.wait(120)
            )
            for p in PROMPTS[:7]
        ]
        started.wait(120)  # all seven are decoding now
        late_sent = time.perf_counter()
        _, late_done, late_stamps = stream_events(
            batched, {"prompt": PROMPTS[7], "max_tokens": 3, "temperature": 0.0}
        )
        others = [f.result(timeout=300) for f in long_runs]
    assert late_done and late_stamps
    first_finish = min(stamps[-1] for _, _, stamps in others)
    assert late_sent < late_stamps[0] < first_finish  # it joined the running batch
    assert all(done for _, done, _ in others)


def test_a_client_that_disconnects_mid_stream_leaves_the_others_complete(batched):
    cancelled_before = batched.metric('neuron_spec_requests_total{status="cancelled"}')
    alone = [greedy(batched, p, 40)["choices"][0]["text"] for p in PROMPTS[1:]]
    body = {"max_tokens": 40, "temperature": 0.0}
    with cf.ThreadPoolExecutor(8) as pool:
        leaving = pool.submit(stream_events, batched, {"prompt": PROMPTS[0], **body}, None, 2)
        staying = [pool.submit(stream_events, batched, {"prompt": p, **body}) for p in PROMPTS[1:]]
        _, left_done, _ = leaving.result(timeout=300)
        results = [f.result(timeout=300) for f in staying]
    assert not left_done
    texts = [text_of(events) for events, _, _ in results]
    assert sum(t == a for t, a in zip(texts, alone, strict=True)) >= 6  # of 7, as above
    assert all(done for _, done, _ in results)
    deadline = time.time() + 30
    while time.time() < deadline:
        if batched.metric('neuron_spec_requests_total{status="cancelled"}') > cancelled_before:
            break
        time.sleep(0.2)
    assert batched.metric('neuron_spec_requests_total{status="cancelled"}') > cancelled_before


def test_n_choices_of_several_prompts_are_rows_of_the_batch(batched):
    r = batched.complete(prompt=PROMPTS[:2], n=3, max_tokens=6, temperature=1.0, seed=11)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    # choice k is prompt k // 3 with seed 11 + k % 3: each equals that request alone
    for k in (0, 4):
        one = batched.complete(
            prompt=PROMPTS[k // 3], max_tokens=6, temperature=1.0, seed=11 + k % 3
        ).json()
        assert choices[k]["text"] == one["choices"][0]["text"]
    assert len({c["text"] for c in choices[:3]}) > 1


def test_stream_with_n_choices_streams_every_index(batched):
    events, done, _ = stream_events(
        batched, {"prompt": PROMPT, "n": 2, "max_tokens": 5, "temperature": 0.7, "seed": 1}
    )
    assert done
    finished = [c["index"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert sorted(finished) == [0, 1]
