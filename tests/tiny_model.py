"""A tiny chat Llama built in the test, and a `serve` running in this process on a real socket.

The checkpoint has a byte-level BPE tokenizer trained here on a few lines (so characters outside
ASCII are split over several byte tokens, as real byte-level tokenizers split CJK text), a
ChatML chat template, and a 2-layer Llama of hidden size 32: it loads in well under a second,
and nothing is downloaded.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog. " * 3,
    "hello world, speculative decoding makes large language models faster.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Once upon a time, in a land far away, there lived a small model.",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tiny_chat_checkpoint(directory: Path, seed: int = 0, noise: float = 0.0) -> Path:
    """A 2-layer Llama with a 300-token byte-level tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if noise:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def tiny_pair_yaml(root: Path, extra: str = "", model: str = "./target") -> Path:
    """A reference-backend config over a tiny target and a slightly different draft."""
    target = root / "target"
    if not (target / "config.json").is_file():
        make_tiny_chat_checkpoint(target, seed=0)
        make_tiny_chat_checkpoint(root / "draft", seed=0, noise=0.02)
    config = root / "pair.yaml"
    config.write_text(
        "backend: reference\n"
        f"target: {{model: {model}, tokenizer: ./target, amp: f32, n_positions: 512}}\n"
        "draft: {model: ./draft, amp: f32, n_positions: 512}\n"
        "speculation: {draft_tokens: 3, acceptor: lossless}\n"
        "generation: {max_new_tokens: 16}\n" + extra,
        encoding="utf-8",
    )
    return config


class InProcessServer:
    """`neuron-spec serve`'s app under uvicorn in a thread of this process, on a real socket
    of 127.0.0.1; `loader` loads the generator (by default, the config's pair)."""

    def __init__(
        self,
        config: Path,
        *,
        slots: int = 4,
        queue_size: int = 16,
        api_key: str | None = None,
        loader: Any = None,
        cors_origins: list[str] | None = None,
    ):
        import uvicorn

        from neuron_spec.backends import load_generator
        from neuron_spec.config.spec import load_config
        from neuron_spec.serving.scheduler import Scheduler
        from neuron_spec.serving.server import build_app, listen

        self.state = Scheduler(load_config(config), queue_size, slots=slots)
        app = build_app(self.state, loader or load_generator, api_key, cors_origins)
        self.sock = listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state.load_error:
                raise RuntimeError(self.state.load_error)
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError("the in-process server did not become ready")

    def post(self, route: str, **body: Any) -> Any:
        import httpx

        return httpx.post(self.url + route, json=body, timeout=120)

    def complete(self, **body: Any) -> Any:
        return self.post("/v1/completions", **body)

    def metric(self, name: str) -> float:
        """The sum of a Prometheus series from /metrics (`name` or `name{labels}`)."""
        import httpx

        return metric_value(httpx.get(self.url + "/metrics", timeout=10).text, name)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.state.stop_worker(timeout_s=30)
        self.sock.close()


def metric_value(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith(name + "_created"):
            head, value = line.rsplit(" ", 1)
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


def slowed_loader(seconds: float) -> Any:
    """A loader whose target sleeps `seconds` before each forward pass: a request of a few
    hundred tokens then runs for seconds, long enough to queue behind, hang up on, or join."""

    def load(cfg: Any) -> Any:
        from neuron_spec.backends import load_generator

        gen = load_generator(cfg)
        gen.backend.target.model.register_forward_pre_hook(lambda *_: time.sleep(seconds))
        return gen

    return load


def raw_http(port: int, head: bytes, body: bytes = b"", read_timeout: float = 10) -> bytes:
    """Send `head` (and `body`) over a plain socket; the server's answer (its head and a body
    of its Content-Length), or what came before the server closed or went quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head + body)
        data = b""
        while not _complete(data):
            try:
                part = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not part:
                break
            data += part
        return data


def _complete(data: bytes) -> bool:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value.strip())
    return False
