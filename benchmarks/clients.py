"""The tools users point at a server, unmodified, against `neuron-spec serve`: guidellm (load)
and EleutherAI's lm-evaluation-harness (accuracy).

Starts `neuron-spec serve CONFIG --batch-size 8` on 127.0.0.1 (a free port), waits until
/health says ready, then runs
- guidellm: a synchronous and a concurrent (8 streams) benchmark, each with streaming on and
  off, on fixed-length synthetic data (prompt and output lengths without spread; guidellm
  sends ignore_eos, and streamed requests ask for usage on every chunk);
- lm-eval `--model local-completions` (its default tokenized_requests: token-id prompts) on the
  two small tasks in benchmarks/lm_eval_tasks/: a generate_until task with 5 stop strings and a
  multiple_choice task (log-likelihoods from echo + logprobs requests);
- lm-eval `--model local-chat-completions --apply_chat_template` on the generate_until task;
and prints JSON: per guidellm run the requests (successful, errored, incomplete), the output
token counts against the requested length and the throughput; per lm-eval task its scores;
`checks` says whether every request succeeded with the requested length and every task
scored (exit 1 otherwise). Only 127.0.0.1 is contacted: the tools run with the Hugging Face
offline switches, their tokenizer the served model's local folder.

guidellm and lm-eval go in an environment of their own (their dependencies differ from
neuron-spec's): `python -m venv tools && tools/bin/pip install guidellm==0.8.1
"lm-eval[api]==0.4.13"`, then `python benchmarks/clients.py --tools tools/bin`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "benchmarks" / "lm_eval_tasks"
UNTIL_TASK, CHOICE_TASK = "neuron_spec_capitals_until", "neuron_spec_facts_choice"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo-cpu.yaml"))
    ap.add_argument("--tools", help="folder holding the guidellm and lm_eval commands "
                    "(default: found on PATH)")  # fmt: skip
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--sync-requests", type=int, default=4)
    ap.add_argument("--concurrent-requests", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per tool run")
    args = ap.parse_args()
    guidellm, lm_eval = _tool(args.tools, "guidellm"), _tool(args.tools, "lm_eval")
    model, tokenizer = _served(args.config)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start(args.config, port)
    out: dict[str, Any] = {"config": args.config, "batch_size": 8, "model": model}
    try:
        _wait_ready(url, server)
        with tempfile.TemporaryDirectory() as work:
            tools = _Tools(url, model, tokenizer, Path(work), args.timeout)
            out["guidellm"] = [
                tools.guidellm(guidellm, profile, stream, count, args)
                for profile, count in (
                    ("synchronous", args.sync_requests),
                    ("concurrent", args.concurrent_requests),
                )
                for stream in (False, True)
            ]
            out["lm_eval"] = {
                "local-completions": tools.lm_eval(lm_eval, chat=False),
                "local-chat-completions": tools.lm_eval(lm_eval, chat=True),
            }
    finally:
        _stop(server)
    out["checks"] = _checks(out, args.output_tokens)
    print(json.dumps(out, indent=2))
    return 0 if all(out["checks"].values()) else 1


class _Tools:
    """The two tools' command lines against the server, and what their reports say."""

    def __init__(self, url: str, model: str, tokenizer: str, work: Path, timeout: float):
        self.url, self.model, self.tokenizer = url, model, tokenizer
        self.work, self.timeout = work, timeout
        self.env = {**os.environ, **OFFLINE}

    def guidellm(
        self, command: str, profile: str, stream: bool, count: int, args: argparse.Namespace
    ) -> dict[str, Any]:
        name = f"{profile}-{'stream' if stream else 'plain'}"
        report = self.work / f"guidellm-{name}.json"
        shape = "kind=concurrent,streams=8" if profile == "concurrent" else "kind=synchronous"
        cmd = [
            command, "run",
            "--backend", f"kind=openai_http,target={self.url},model={self.model},"
            f"request_format=/v1/completions,stream={str(stream).lower()}",
            "--profile", shape,
            "--constraint", f"kind=max_requests,count={count}",
            "--data", f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},"
            f"output_tokens={args.output_tokens}",
            "--tokenizer", f"kind=huggingface_auto,model={self.tokenizer}",
            "--output", f"kind=json,path={report}",
            "--disable-console",
        ]  # fmt: skip
        began = time.monotonic()
        run = self._run(cmd)
        result: dict[str, Any] = {"run": name, "exit": run.returncode,
                                  "seconds": round(time.monotonic() - began, 1)}  # fmt: skip
        if not report.is_file():
            return {**result, "error": run.stderr[-2000:]}
        return {**result, **_guidellm_figures(json.loads(report.read_text()), args)}

    def lm_eval(self, command: str, chat: bool) -> dict[str, Any]:
        route = "chat/completions" if chat else "completions"
        model_args = (
            f"model={self.model},base_url={self.url}/v1/{route},num_concurrent=1,max_retries=1"
        )
        if not chat:  # token-id prompts need the model's tokenizer
            model_args += f",tokenizer={self.tokenizer}"
        output = self.work / f"lm-eval-{'chat' if chat else 'completions'}"
        cmd = [
            command,
            "--model", "local-chat-completions" if chat else "local-completions",
            "--model_args", model_args,
            "--tasks", UNTIL_TASK if chat else f"{UNTIL_TASK},{CHOICE_TASK}",
            "--include_path", str(TASKS),
            "--output_path", str(output),
            *(["--apply_chat_template"] if chat else []),
        ]  # fmt: skip
        began = time.monotonic()
        run = self._run(cmd)
        result: dict[str, Any] = {"exit": run.returncode,
                                  "seconds": round(time.monotonic() - began, 1)}  # fmt: skip
        reports = sorted(output.rglob("results_*.json"))
        if not reports:
            return {**result, "error": run.stderr[-2000:]}
        scores = json.loads(reports[-1].read_text())["results"]
        result["scores"] = {
            task: {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            for task, metrics in scores.items()
        }
        return result

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        # lm-eval finds the tasks' data files relative to the repository root
        return subprocess.run(
            cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=self.timeout
        )


def _guidellm_figures(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Requests, output token counts and throughput of a guidellm report's one benchmark."""
    bench = report["benchmarks"][0]
    metrics = bench["metrics"]
    tokens = metrics["output_token_count"]["successful"]
    return {
        "requests": metrics["request_totals"],
        "output_tokens_requested": args.output_tokens,
        "output_tokens": {k: tokens[k] for k in ("min", "max", "mean", "count")},
        "requests_per_s": metrics["requests_per_second"]["successful"]["mean"],
        "output_tokens_per_s": metrics["output_tokens_per_second"]["successful"]["mean"],
        "max_concurrency": metrics["request_concurrency"]["successful"]["max"],
        "ttft_ms_median": metrics["time_to_first_token_ms"]["successful"]["median"],
    }


def _checks(out: dict[str, Any], wanted: int) -> dict[str, bool]:
    runs = out.get("guidellm", [])
    evals = out.get("lm_eval", {})
    return {
        "guidellm_all_runs_reported": bool(runs) and all("requests" in r for r in runs),
        "guidellm_no_failed_requests": all(
            r.get("requests", {}).get("errored", 1) == 0
            and r.get("requests", {}).get("incomplete", 1) == 0
            and r.get("requests", {}).get("successful", 0) > 0
            for r in runs
        ),
        "guidellm_output_tokens_as_requested": all(
            r.get("output_tokens", {}).get("min") == wanted
            and r.get("output_tokens", {}).get("max") == wanted
            for r in runs
        ),
        "lm_eval_completions_scored": {UNTIL_TASK, CHOICE_TASK}
        <= set(evals.get("local-completions", {}).get("scores", {})),
        "lm_eval_chat_scored": UNTIL_TASK
        in evals.get("local-chat-completions", {}).get("scores", {}),
    }


def _tool(folder: str | None, name: str) -> str:
    found = shutil.which(name, path=folder) if folder else shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found{' in ' + folder if folder else ' on PATH'}; see --help")
    return found


def _served(config: str) -> tuple[str, str]:
    """The name the server answers to, and the local folder of the target's tokenizer."""
    from neuron_spec.config.spec import load_config
    from neuron_spec.serving.server import served_names

    cfg = load_config(Path(config))
    target = cfg.spec.target
    folder = Path(os.path.expanduser(target.tokenizer or target.model))
    if not folder.is_absolute():
        folder = cfg.base_dir / folder
    return served_names(cfg)[0], str(folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(config: str, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "neuron_spec", "serve", config, "--batch-size", "8",
           "--port", str(port), "--queue-size", "64"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"serve exited with {server.returncode} before it was ready")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    sys.exit("serve was not ready in time")


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    raise SystemExit(main())
