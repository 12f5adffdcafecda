"""Continuous batching against one request at a time: `neuron-spec serve` with
`--batch-size B` beside the same server at `--batch-size 1`, on loopback.

Both servers load once and warm up unmeasured at the highest level, each for at least
--warmup rounds and --warmup-seconds of serving (a server is long-lived: with
`speculation.adaptive`, the engine learns there what a step of each proposal length costs at
each occupancy, see engine/policy.py, and the CPU backend how many threads each pass size
wants). The warm-up is timed, not counted in rounds, because a round of the batched server is
a fraction of the batch-1 server's: one round gave the batch-1 server about 300 steps to
learn from and the batch of 8 about 50. In one process without HTTP the batch of 8 made
132-139 tokens/s in its second round and 145-156 in most later ones (AMD EPYC, 2026-12-07,
four runs); beside a process spinning on one core, the server's batch of 8 made 70-99 in
the two rounds after one warm-up round and 96-108 after 10 s. The JSON says how many warm-up
rounds and seconds each server had. Then for each concurrency
level (1, 4, 8, 16 by default) and each round, the batch-1 server and the batched one take
turns, so a busy machine slows both alike. Every client streams one greedy completion of its
own prompt. Printed as JSON, per server and level: aggregate output tokens/s, p50/p99 time
to first token (from sending) and time per output token, and how many batched outputs equal
the batch-1 server's for the same prompt (greedy decoding is deterministic; a difference
comes from floating-point rounding, which batching may change).
Only 127.0.0.1 is contacted.

    python benchmarks/serve_batching.py [--config configs/demo-cpu.yaml] [--batch-size 8]
        [--clients 1,4,8,16] [--max-tokens 48] [--rounds 2] [--warmup 1] [--warmup-seconds 10]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The best way to learn a new language is",
    "In 1969, astronauts",
    "Water boils at",
    "My favourite colour is",
    "To be or not to be,",
    "The three primary colours are",
    "A haiku about the sea:",
    "Photosynthesis is the process by which",
    "The quick brown fox",
    "Here is a recipe for pancakes:",
    "The largest planet in the solar system",
    "Dear diary, today",
    "import numpy as np\n",
]


def start(config: str, batch: int, queue: int) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "neuron_spec", "serve", config, "--port", str(port)]
    cmd += ["--batch-size", str(batch), "--queue-size", str(queue), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(json.dumps({"error": f"the server at {url} did not become ready"}))


def one(client: httpx.Client, url: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed greedy completion: its text, tokens and timings."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    sent = time.perf_counter()
    first = last = None
    text, tokens = "", 0
    with client.stream("POST", url + "/v1/completions", json=body, timeout=900) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                if choice.get("text"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text += choice["text"]
    ttft = (first or time.perf_counter()) - sent
    tpot = (last - first) / (tokens - 1) if first and last and tokens > 1 else None
    return {"text": text, "tokens": tokens, "ttft": ttft, "tpot": tpot}


def pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 4)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 4)


def level(
    client: httpx.Client, url: str, clients: int, max_tokens: int
) -> tuple[dict[str, Any], list[str]]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(clients)]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=clients) as pool:
        runs = list(pool.map(lambda p: one(client, url, p, max_tokens), prompts))
    wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in runs)
    figures = {
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 3),
        "ttft_s": {
            "p50": pct([r["ttft"] for r in runs], 50),
            "p99": pct([r["ttft"] for r in runs], 99),
        },
        "tpot_s": {
            "p50": pct([r["tpot"] for r in runs], 50),
            "p99": pct([r["tpot"] for r in runs], 99),
        },
    }
    return figures, [r["text"] for r in runs]


def warm_up(client: httpx.Client, url: str, clients: int, args: argparse.Namespace) -> dict:
    """Unmeasured rounds until the server has had --warmup rounds and --warmup-seconds."""
    rounds, spent = 0, 0.0
    while rounds < args.warmup or spent < args.warmup_seconds:
        start = time.perf_counter()
        level(client, url, clients, args.max_tokens)
        spent += time.perf_counter() - start
        rounds += 1
    return {"rounds": rounds, "seconds": round(spent, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--clients", default="1,4,8,16", help="concurrency levels, comma-separated")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2, help="alternations per level")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first, at least")
    ap.add_argument(
        "--warmup-seconds", type=float, default=10.0,
        help="each server warms up until it has served this long (and --warmup rounds)",
    )  # fmt: skip
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    queue = max(levels) + 1
    servers = {"batch_1": start(args.config, 1, queue)}
    servers[f"batch_{args.batch_size}"] = start(args.config, args.batch_size, queue)
    client: httpx.Client | None = None
    try:
        # one client with a connection pool for the run, as load testers keep one: making an
        # httpx client per request costs about 20 ms of the benchmark's own CPU (its TLS
        # context), which landed in the batched server's time to first token. Idle
        # connections are dropped after 1 s, well before the server's keep-alive (5 s) ends
        # them while the other server takes its turn.
        limits = httpx.Limits(max_connections=max(levels), keepalive_expiry=1.0)
        client = httpx.Client(limits=limits)
        for proc, url in servers.values():
            wait_ready(proc, url)
        warmup = {
            name: warm_up(client, url, max(levels), args)
            for name, (_, url) in servers.items()
        }  # fmt: skip
        out: dict[str, Any] = {"config": args.config, "max_tokens": args.max_tokens,
                               "batch_size": args.batch_size, "rounds": args.rounds,
                               "warmup": warmup, "levels": {}}  # fmt: skip
        for clients in levels:
            row: dict[str, Any] = {name: [] for name in servers}
            texts: dict[str, list[str]] = {}
            for _ in range(args.rounds):
                for name, (_, url) in servers.items():  # alternate: batch 1, then batched
                    figures, texts[name] = level(client, url, clients, args.max_tokens)
                    row[name].append(figures)
            base, batched = (row[name] for name in servers)
            ratio = statistics.median(
                b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(base, batched, strict=True)
            )
            one_t, many_t = (texts[name] for name in servers)
            row["throughput_ratio"] = round(ratio, 3)
            row["outputs_equal_to_batch_1"] = (
                f"{sum(a == b for a, b in zip(one_t, many_t, strict=True))}/{clients}"
            )
            out["levels"][str(clients)] = row
            print(f"{clients} clients: x{ratio:.2f}", file=sys.stderr)
        print(json.dumps(out, indent=2))
        return 0
    finally:
        if client is not None:
            client.close()
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
