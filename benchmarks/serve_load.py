"""A bounded load test of `neuron-spec serve` on loopback: N concurrent short completions.

Starts the server on 127.0.0.1 (a free port), waits until /health says ready, fires N
concurrent requests once, and prints JSON: status codes, lost requests, and the latency
distribution. Only 127.0.0.1 is contacted; the run stops by itself.

    python benchmarks/serve_load.py [--config configs/demo-cpu.yaml] [--requests 50]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "neuron_spec",
            "serve",
            args.config,
            "--port",
            str(port),
            "--queue-size",
            str(args.requests),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                print(json.dumps({"error": "the server did not become ready"}))
                return 1
            time.sleep(0.2)

        def one(i: int) -> tuple[int, float]:
            t0 = time.perf_counter()
            try:
                r = httpx.post(
                    url + "/v1/completions",
                    timeout=600,
                    json={
                        "prompt": f"Question {i}: name a colour.",
                        "max_tokens": args.max_tokens,
                        "temperature": 0.0,
                    },
                )
                return r.status_code, time.perf_counter() - t0
            except httpx.HTTPError:
                return 0, time.perf_counter() - t0  # 0: no response (lost)

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(max_workers=args.requests) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        lat = sorted(t for _, t in results)
        q = statistics.quantiles(lat, n=100)
        print(
            json.dumps(
                {
                    "requests": args.requests,
                    "max_tokens": args.max_tokens,
                    "status_codes": dict(collections.Counter(c for c, _ in results)),
                    "server_errors_5xx": sum(1 for c, _ in results if c >= 500),
                    "lost": sum(1 for c, _ in results if c == 0),
                    "wall_s": round(wall, 3),
                    "throughput_rps": round(args.requests / wall, 3),
                    "latency_s": {
                        "min": round(lat[0], 3),
                        "p50": round(q[49], 3),
                        "p90": round(q[89], 3),
                        "p99": round(q[98], 3),
                        "max": round(lat[-1], 3),
                    },
                },
                indent=2,
            )
        )
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


if __name__ == "__main__":
    raise SystemExit(main())
