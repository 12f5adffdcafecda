"""LlamaForSampling, as the double: strict about the contract, small Llama underneath."""

from __future__ import annotations

import hashlib
import json
import os

import torch

from .. import _runtime
from ..version import __version__, api

_AMPS = {"f32": torch.float32, "f16": torch.float32, "bf16": torch.float32}  # compute in f32


def _int_or_int_list(name, value):
    values = value if isinstance(value, list) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise TypeError(f"{name} must be an int or a list of ints, got {value!r}")
    return values


def _find_checkpoint(path):
    for name, is_dir in (
        ("model.safetensors", False),
        ("model.safetensors.index.json", False),
        ("pytorch_model.bin", True),
        ("pytorch_model.bin", False),
        ("pytorch_model.bin.index.json", False),
    ):
        full = os.path.join(path, name)
        if os.path.isdir(full) if is_dir else os.path.isfile(full):
            return name, is_dir
    raise FileNotFoundError(f"Can't find a checkpoint in {path}")


class LlamaForSampling:
    def __init__(self):
        raise RuntimeError("use LlamaForSampling.from_pretrained")

    @classmethod
    def from_pretrained(
        cls,
        path,
        *,
        n_positions=2048,
        batch_size=1,
        amp="f32",
        tp_degree=2,
        context_length_estimate=None,
        neuron_config=None,
        **kwargs,
    ):
        self = object.__new__(cls)
        self.n_positions = _int_or_int_list("n_positions", n_positions)
        self.batch_sizes = _int_or_int_list("batch_size", batch_size)
        if amp not in ("f32", "f16", "bf16"):
            raise ValueError(f"amp must be one of f32, f16, bf16, got {amp!r}")
        if isinstance(tp_degree, bool) or not isinstance(tp_degree, int) or tp_degree < 1:
            raise TypeError(f"tp_degree must be a positive int, got {tp_degree!r}")
        cle = None
        if context_length_estimate is not None:
            cle = _int_or_int_list("context_length_estimate", context_length_estimate)
            assert max(cle) <= max(self.n_positions), "context_length_estimate > n_positions"
        self.path = str(path)
        self.checkpoint_format = _find_checkpoint(self.path)
        with open(os.path.join(self.path, "config.json")) as f:
            self.config = json.load(f)
        self.amp, self.tp_degree, self.cle, self.neuron_config = amp, tp_degree, cle, neuron_config
        self.ignored_kwargs = dict(kwargs)  # the real library ignores unknown kwargs silently
        self.speculation = {}  # (k, batch) -> registered
        self.on_neuron = False
        self.load_dir = None
        self.hf = None
        self.tokens = {}  # row -> {position: token}, the "KV cache"
        return self

    # --- compilation and artifacts -----------------------------------------------------------

    def enable_speculative_decoder(self, k, batch_sizes=None, **kwargs):
        if self.on_neuron:
            raise RuntimeError("enable_speculative_decoder must be called before to_neuron()")
        if api() == "v1":
            if kwargs or (batch_sizes is not None and __version__.startswith("0.10.0.21")):
                raise TypeError("enable_speculative_decoder() got an unexpected keyword argument")
        elif set(kwargs) - {"token_tree"}:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        ks = _int_or_int_list("k", k)
        for kk in ks:
            for bs in batch_sizes or self.batch_sizes:
                self.speculation[(kk, bs)] = True

    def _graphs(self):
        flags = os.environ.get("NEURON_CC_FLAGS", "")
        base = {
            "path_config": self.config,
            "amp": self.amp,
            "tp": self.tp_degree,
            "version": __version__,
            "flags": flags,
            "neuron_config": repr(self.neuron_config),
        }
        graphs = {f"token_{n}": n for n in self.n_positions}
        for c in self.cle or self.n_positions:
            for bs in self.batch_sizes:
                graphs[f"context_{c}_{bs}"] = (c, bs)
        for k, bs in sorted(self.speculation):
            graphs[f"speculation_{k}_{bs}"] = (k, bs)
        out = {}
        for name, shape in graphs.items():
            blob = json.dumps({**base, "graph": name, "shape": shape}, sort_keys=True, default=str)
            out[name] = hashlib.sha256(blob.encode()).hexdigest()[:20]
        return out

    def to_neuron(self):
        if self.on_neuron:
            raise RuntimeError("to_neuron() was already called")
        _runtime.claim_cores(self.tp_degree)
        graphs = self._graphs()
        if self.load_dir is not None:
            if not os.path.isdir(self.load_dir):
                raise FileNotFoundError(f"No such directory: {self.load_dir}")
            for name, h in graphs.items():
                neff = os.path.join(self.load_dir, f"{h}.neff")
                if not os.path.isfile(neff):
                    raise FileNotFoundError(f"{neff} ({name}) not found")
            _runtime.record("load", path=self.path, tp=self.tp_degree, graphs=len(graphs))
        else:
            _runtime.record("compile", path=self.path, tp=self.tp_degree, graphs=len(graphs))
        from transformers import AutoConfig, LlamaForCausalLM

        fmt, is_dir = self.checkpoint_format
        if fmt == "pytorch_model.bin" and is_dir:  # the split format
            config = AutoConfig.from_pretrained(self.path)
            hf = LlamaForCausalLM(config)
            d = os.path.join(self.path, "pytorch_model.bin")
            with open(os.path.join(d, "key_to_filename.json")) as f:
                mapping = json.load(f)
            hf.load_state_dict({k: torch.load(os.path.join(d, v)) for k, v in mapping.items()})
        else:
            hf = LlamaForCausalLM.from_pretrained(self.path, dtype=_AMPS[self.amp])
        self.hf = hf.eval()
        self.on_neuron = True

    def save(self, directory):
        if not self.on_neuron:
            raise RuntimeError("save() needs compiled graphs: call to_neuron() first")
        os.makedirs(directory, exist_ok=True)
        for name, h in self._graphs().items():
            with open(os.path.join(directory, f"{h}.neff"), "wb") as f:
                f.write(f"NEFF {name} {h}\n".encode() * 64)

    def load(self, directory):
        self.load_dir = str(directory)  # read at the next to_neuron()

    # --- execution ------------------------------------------------------------------------

    def _require_neuron(self):
        if not self.on_neuron:
            raise RuntimeError("the model is not on Neuron: call to_neuron() first")

    def _write(self, input_ids, cache_ids):
        batch, seq = input_ids.shape
        if cache_ids is None:
            positions = torch.arange(seq).repeat(batch, 1)
        else:
            positions = (
                cache_ids.reshape(batch, -1)
                if cache_ids.dim() == 2
                else cache_ids.reshape(1, -1).repeat(batch, 1)
            )
        if positions.shape[1] != seq:
            raise ValueError(
                f"cache_ids {tuple(positions.shape)} do not match "
                f"input_ids {tuple(input_ids.shape)}"
            )
        if int(positions.max()) >= max(self.n_positions):
            raise IndexError(
                f"cache position {int(positions.max())} >= n_positions {max(self.n_positions)}"
            )
        for b in range(batch):
            row = self.tokens.setdefault(b, {})
            if int(positions[b, 0]) == 0:
                row.clear()  # context encoding starts a new sequence
            for j in range(seq):
                row[int(positions[b, j])] = int(input_ids[b, j])
        return positions

    @torch.no_grad()
    def _logits_at(self, b, position):
        row = self.tokens[b]
        ids = [row.get(p, 0) for p in range(position + 1)]  # unwritten slots hold garbage
        return self.hf(torch.tensor([ids])).logits[0, -1].float()

    def __call__(self, input_ids, cache_ids=None, start_ids=None):
        return self.forward(input_ids, cache_ids, start_ids)

    def forward(self, input_ids, cache_ids=None, start_ids=None):
        """Logits of the last position: (batch, vocab), float32."""
        self._require_neuron()
        positions = self._write(input_ids, cache_ids)
        return torch.stack(
            [self._logits_at(b, int(positions[b, -1])) for b in range(input_ids.shape[0])]
        )

    def speculative_forward(self, input_ids, cache_ids, start_ids=None, speculation_length=None):
        """Logits for each of k positions: (k, vocab, batch)."""
        self._require_neuron()
        batch, k = input_ids.shape
        if (speculation_length or k, batch) not in self.speculation:
            raise KeyError((speculation_length or k, batch))
        positions = self._write(input_ids, cache_ids)
        out = torch.stack(
            [
                torch.stack(
                    [self._logits_at(b, int(positions[b, j])) for b in range(batch)], dim=-1
                )
                for j in range(k)
            ]
        )
        return out  # (k, vocab, batch)

    @torch.no_grad()
    def sample(
        self,
        input_ids,
        sequence_length,
        start_ids=None,
        top_k=50,
        top_p=1.0,
        temperature=1.0,
        eos_token_override=None,
        streamer=None,
        **kwargs,
    ):
        self._require_neuron()
        for name, value in (("temperature", temperature), ("top_p", top_p)):
            if not isinstance(value, float):
                raise ValueError(f"{name} must be a float, got {value!r}")
        eos = (
            eos_token_override
            if eos_token_override is not None
            else self.config.get("eos_token_id")
        )
        ids = input_ids.clone()
        logits = self.forward(ids)
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        while ids.shape[1] < sequence_length:
            if top_k == 1:
                nxt = logits.argmax(dim=-1)
            else:
                scaled = logits / temperature
                if top_k > 0:
                    kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(scaled, dim=-1), 1).squeeze(-1)
            ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
            if streamer is not None:
                streamer.put(nxt)
            if eos is not None:
                done |= nxt == eos
                if bool(done.all()):
                    break
            if ids.shape[1] < sequence_length:
                logits = self.forward(nxt.unsqueeze(1), torch.tensor([ids.shape[1] - 1]))
        if streamer is not None:
            streamer.end()
        return ids
