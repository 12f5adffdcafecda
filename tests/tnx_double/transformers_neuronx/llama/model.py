"""LlamaForSampling as the double: the library's interface and failure modes, a small
Hugging Face Llama underneath, and a positional KV cache like the device's."""

from __future__ import annotations

import bisect
import hashlib
import json
import os

import torch

from .. import _runtime, sampling
from ..version import RELEASE, at_least


def _int_or_int_list(name, value):
    values = value if isinstance(value, list) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise TypeError(f"{name} must be an int or a list of ints, got {value!r}")
    return sorted(values)


def _find(buckets, size):
    """bucket.find: the smallest bucket >= size, else the largest; None without buckets."""
    if not buckets:
        return None
    return buckets[bisect.bisect_left(buckets, size, hi=len(buckets) - 1)]


def _find_checkpoint(path):
    """The loader's priority; the split format is a *directory* pytorch_model.bin."""
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
    raise FileNotFoundError(f"Can't find a checkpoint (model.safetensors, ...) in {path}")


class _Graph:
    """One compiled program: its HLO digest and, once compiled or loaded, its NEFF bytes."""

    def __init__(self, name, hlo):
        self.name = name
        self.hlo = hlo
        self.neff = None

    @property
    def neff_name(self):
        # The library names a NEFF by the first 20 hex digits of sha256(HLO bytes): nothing
        # about the compiler, its flags or the weights.
        return hashlib.sha256(self.hlo.encode()).hexdigest()[:20] + ".neff"


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
        self.context_buckets = [n // 2 for n in self.n_positions]
        if context_length_estimate is not None:
            cle = _int_or_int_list("context_length_estimate", context_length_estimate)
            assert max(cle) <= max(self.n_positions)
            self.context_buckets = [c for c in cle if c > 0]
        self.path = str(path)
        self.checkpoint_format = _find_checkpoint(self.path)
        with open(os.path.join(self.path, "config.json")) as f:
            self.config = json.load(f)
        self.amp, self.tp_degree, self.neuron_config = amp, tp_degree, neuron_config
        # padding_side='right': 2-D cache ids, rows at their own positions, each row's writes
        # going to the sequence slot its start_ids entry names
        self.lhs_aligned = bool(getattr(neuron_config, "lhs_aligned", False))
        # continuous batching: prompts are encoded one sequence at a time (a batch-1 context
        # graph) into the slot start_ids names; one-token calls are padded to max_num_seqs
        self.cb = getattr(neuron_config, "continuous_batching", None)
        self.context_batch_sizes = [1] if self.cb else self.batch_sizes
        self.ignored_kwargs = dict(kwargs)  # the real library ignores unknown kwargs silently
        self.speculation = {}  # (k, batch_size) -> _Graph, in registration order
        self.on_neuron = False
        self.compiled_dir = None
        self.hf = None
        self.kv = {}  # row -> {position: token}: what each KV slot was computed from
        self.calls = []  # ("forward" | "speculative_forward", first position, width)
        self.row_positions = []  # per call, each row's first position
        return self

    # --- graphs, compilation, serialization ----------------------------------------------

    def _hlo(self, kind, width, batch):
        shape = {
            key: self.config.get(key)
            for key in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "vocab_size",
            )
        }
        return json.dumps(
            [
                kind,
                width,
                batch,
                self.n_positions,
                self.amp,
                self.tp_degree,
                repr(self.neuron_config),
                shape,
            ],
            sort_keys=True,
        )

    def _base_graphs(self):
        graphs = [_Graph(f"token_{b}", self._hlo("token", 1, b)) for b in self.batch_sizes]
        for c in self.context_buckets:
            for b in self.context_batch_sizes:
                graphs.append(_Graph(f"context_{c}_{b}", self._hlo("context", c, b)))
        return graphs

    def _all_graphs(self):
        return [*self.graphs, *self.speculation.values()]

    def enable_speculative_decoder(
        self, speculation_length, batch_sizes=None, token_tree=None, **kwargs
    ):
        if not at_least(0, 10, 0, 360) and batch_sizes is not None:
            raise TypeError(
                "enable_speculative_decoder() got an unexpected keyword argument 'batch_sizes'"
            )
        if not at_least(0, 12) and token_tree is not None:
            raise TypeError(
                "enable_speculative_decoder() got an unexpected keyword argument 'token_tree'"
            )
        if kwargs:
            raise TypeError(
                f"enable_speculative_decoder() got unexpected keyword arguments {sorted(kwargs)}"
            )
        ks = [speculation_length] if isinstance(speculation_length, int) else speculation_length
        sizes = [batch_sizes] if isinstance(batch_sizes, int) else (batch_sizes or self.batch_sizes)
        for k in ks:
            for b in sizes:
                # Registered, but compiled only by a later to_neuron(): called after it, the
                # graph stays uncompiled and nothing says so.
                self.speculation[(k, b)] = _Graph(
                    f"speculation_{k}_{b}", self._hlo("speculation", k, b)
                )

    def to_neuron(self):
        if self.speculation and getattr(self.neuron_config, "cache_layout", "SBH") == "BSH":
            # layers/attention_utils.update_indices_speculative adds to `indices` before
            # assigning it on the BSH branch, while the speculation graph is traced
            raise UnboundLocalError(
                "cannot access local variable 'indices' where it is not associated with a value"
            )
        self.graphs = self._base_graphs()
        self._load_weights()
        graphs = self._all_graphs()
        if self.compiled_dir is not None:
            if not os.path.isdir(self.compiled_dir):
                raise FileNotFoundError(f"Did not find directory: {self.compiled_dir}.")
            for g in graphs:
                try:
                    with open(os.path.join(self.compiled_dir, g.neff_name), "rb") as f:
                        g.neff = f.read()
                except FileNotFoundError:
                    raise FileNotFoundError(
                        "Could not find a matching NEFF for your HLO in this directory. "
                        "Ensure that the model you are trying to load is the same type and has "
                        'the same parameters as the one you saved or call "save" on this '
                        "model to reserialize it."
                    ) from None
            _runtime.record("load", path=self.path, tp=self.tp_degree, graphs=len(graphs))
        else:
            flags = os.environ.get("NEURON_CC_FLAGS", "")
            for g in graphs:
                g.neff = f"NEFF {g.name} flags={flags!r} release={RELEASE}\n".encode() * 32
            _runtime.record("compile", path=self.path, tp=self.tp_degree, graphs=len(graphs))
        _runtime.claim_cores(self.tp_degree)
        self.on_neuron = True

    def _load_weights(self):
        from transformers import AutoConfig, LlamaForCausalLM

        _runtime.allocate_weights(self)
        fmt, is_dir = self.checkpoint_format
        if fmt == "pytorch_model.bin" and is_dir:
            hf = LlamaForCausalLM(AutoConfig.from_pretrained(self.path))
            d = os.path.join(self.path, "pytorch_model.bin")
            with open(os.path.join(d, "key_to_filename.json")) as f:
                names = json.load(f)
            hf.load_state_dict({k: torch.load(os.path.join(d, v)) for k, v in names.items()})
        else:
            hf = LlamaForCausalLM.from_pretrained(self.path, dtype=torch.float32)
        self.hf = hf.eval()

    def save(self, directory):
        if os.path.isfile(directory):
            raise FileExistsError(
                f"Artifacts should be saved to a directory. Found existing file: {directory}"
            )
        os.makedirs(directory, exist_ok=True)
        graphs = self._all_graphs() if self.on_neuron else [_Graph("unbuilt", "")]
        for g in graphs:
            with open(os.path.join(directory, g.neff_name), "wb") as f:
                assert g.neff is not None, (
                    "cannot save a model which has not been successfully compiled"
                )
                f.write(g.neff)

    def load(self, directory):
        self.compiled_dir = directory  # read by the next to_neuron(), after the weights

    # --- execution ----------------------------------------------------------------------

    def _bucket(self, last_position):
        """The token-generation bucket that holds last_position; none: StopIteration, as the
        decoder's `next(...)` over its buckets raises."""
        return next(n for n in self.n_positions if n >= last_position + 1)

    def _slots(self, batch, start_ids):
        """The sequence slot each row reads and writes. With 2-D cache ids it is the row's
        start_ids entry, and start_ids defaults to zeros: every row then writes slot 0."""
        if not self.lhs_aligned:
            return list(range(batch))
        if start_ids is None:
            return [0] * batch
        return [int(s) for s in start_ids.reshape(-1)[:batch]]

    def _write(self, input_ids, cache_ids, start_ids=None):
        batch, width = input_ids.shape
        if cache_ids is None:
            positions = torch.arange(width).repeat(batch, 1)
        elif cache_ids.dim() == 2:
            if not self.lhs_aligned:
                raise AssertionError(
                    f"Copying tensor from host to device: buffer ((1, {width})) and "
                    f"tensor ({tuple(cache_ids.shape)}) have different shapes!"
                )
            positions = cache_ids
        else:
            positions = cache_ids.reshape(1, -1).repeat(batch, 1)
        if positions.shape[1] != width:
            raise AssertionError(
                f"cache_ids {tuple(positions.shape)} and input_ids "
                f"{tuple(input_ids.shape)} have different shapes!"
            )
        self._bucket(int(positions.max()))
        slots = self._slots(batch, start_ids)
        for b in range(batch):
            row = self.kv.setdefault(slots[b], {})
            for j in range(width):
                row[int(positions[b, j])] = int(input_ids[b, j])
        return positions, slots

    @torch.no_grad()
    def _logits_at(self, row, position):
        slots = self.kv[row]
        ids = [slots.get(p, 0) for p in range(position + 1)]  # unwritten slots hold garbage
        return self.hf(torch.tensor([ids])).logits[0, -1].float()

    def __call__(self, input_ids, cache_ids=None, start_ids=None):
        return self.forward(input_ids, cache_ids, start_ids)

    def forward(self, input_ids, cache_ids=None, start_ids=None):
        """Logits of the last position: (batch, vocab), float32."""
        if not self.on_neuron:
            raise AttributeError("'NoneType' object has no attribute 'run'")
        if self.cb and start_ids is not None:
            return self._continuous_forward(input_ids, cache_ids, start_ids)
        if input_ids.shape[0] not in self.batch_sizes:
            raise KeyError(input_ids.shape[0])
        positions, slots = self._write(input_ids, cache_ids, start_ids)
        self.calls.append(("forward", int(positions[0, 0]), input_ids.shape[1]))
        self.row_positions.append(positions[:, 0].tolist())
        if self.lhs_aligned and input_ids.shape[1] > 1:
            last = positions.max(dim=1).values  # vectorized last token: each row's largest id
        else:
            last = positions[:, -1]
        return torch.stack([self._logits_at(slots[b], int(last[b])) for b in range(len(slots))])

    def _continuous_forward(self, input_ids, cache_ids, start_ids):
        """base._prepare_for_continuous_batching (0.12 6c0b875, 0.13 1ade6d7): more than one
        token with row 0 at cache id 0 is context encoding, each sequence through the batch-1
        graph into its own slot; one token is token generation padded to max_num_seqs."""
        width = input_ids.shape[1]
        seq_ids = start_ids.flatten()
        if width > 1 and int(cache_ids.flatten()[0]) == 0:
            return self._continuous_context(input_ids, cache_ids, seq_ids)
        if width > 1:  # the speculation preprocessing, then no graph of this width: unmodelled
            raise NotImplementedError("the double models forward() of width > 1 at cache id > 0")
        return self._continuous_token(input_ids, cache_ids, seq_ids)

    def _continuous_context(self, input_ids, cache_ids, seq_ids):
        """The context branch: each sequence through the batch-1 graph into its slot."""
        self._context_checks(input_ids, cache_ids)
        rows = [
            self._encode_one(input_ids[i : i + 1], cache_ids[i : i + 1], seq_ids[i])
            for i in range(input_ids.shape[0])
        ]
        return torch.cat(rows)

    def _context_checks(self, input_ids, cache_ids):
        """What the context branch asserts: one cache-id row per sequence, and a width no
        larger than the context bucket bucket.find gives (the largest when none fits; None
        without context buckets, which the comparison refuses with a TypeError). Returns
        that bucket."""
        n, width = input_ids.shape
        if n != cache_ids.shape[0]:
            raise AssertionError(f"invalid n_active_seqs ({n} vs {cache_ids.shape[0]})")
        bucket = _find(self.context_buckets, width)
        if not width <= bucket:
            raise AssertionError(f"invalid input prompt length ({width} <= {bucket})")
        return bucket

    def _continuous_token(self, input_ids, cache_ids, seq_ids):
        """The token-generation branch builds the full batch's ids and cache ids as zeros in
        input_ids' dtype (both of them) and scatter_s the caller's rows into them by seq id:
        token 0 at cache id 0 in every slot left out of the call (which overwrites that
        slot's position 0), and torch's own errors for cache ids of another dtype
        ("scatter(): Expected self.dtype to be equal to src.dtype"), shape or device."""
        full = self.cb.max_num_seqs
        ids = torch.zeros((full, 1), dtype=input_ids.dtype)
        pos = torch.zeros((full, 1), dtype=input_ids.dtype)
        index = seq_ids.unsqueeze(-1).to(torch.int64)
        ids.scatter_(dim=0, index=index, src=input_ids)
        pos.scatter_(dim=0, index=index, src=cache_ids)
        if full not in self.batch_sizes:
            raise KeyError(full)
        positions, _ = self._write(ids, pos, torch.arange(full, dtype=torch.int32))
        self.calls.append(("forward", int(positions[0, 0]), 1))
        self.row_positions.append(positions[:, 0].tolist())
        logits = torch.stack([self._logits_at(b, int(positions[b, 0])) for b in range(full)])
        return self._select(logits, seq_ids)

    def _select(self, logits, seq_ids):
        """_postprocess: the rows in order are the first n; otherwise 0.13 picks them by seq
        id, while 0.12 returns a full batch as it ran (in slot order)."""
        n = seq_ids.shape[0]
        if torch.equal(seq_ids, torch.arange(n)) or (not at_least(0, 13) and n == len(logits)):
            return logits[:n]
        return logits[seq_ids.to(torch.long)]

    def _encode_one(self, input_ids, cache_ids, slot):
        if 1 not in self.context_batch_sizes:
            raise KeyError(1)
        positions, _ = self._write(input_ids, cache_ids, slot.reshape(1))
        self.calls.append(("forward", 0, input_ids.shape[1]))
        self.row_positions.append([int(slot)])
        return self._logits_at(int(slot), int(positions.max())).unsqueeze(0)

    def _speculation_graph(self, width, batch, speculation_length):
        if not at_least(0, 10, 0, 360):
            return speculation_length, self.speculation[speculation_length, batch]
        # From 0.10.0.360 the lookup compares an int with (k, batch) keys, so it always falls
        # through to the bucket search: the smallest registered k >= the input width (in
        # registration order, by bisection), else the largest; KeyError only when that k was
        # not registered for this batch size.
        ks = [k for (k, _b) in self.speculation]
        if not ks:
            raise KeyError((speculation_length, batch))
        k = ks[bisect.bisect_left(ks, width, hi=len(ks) - 1)]
        return k, self.speculation[k, batch]

    def _continuous_speculation(self, input_ids, cache_ids):
        """speculative_forward under continuous batching runs _prepare_for_continuous_batching
        first (base.py, 0.12 6c0b875, 0.13 1ade6d7). Row 0 at cache id 0 takes its context
        branch, whose cache ids (padded to a context bucket wider than the window) the
        speculation graph's buffer refuses; a window exactly that wide runs. Otherwise it
        asserts the width fits a context bucket, the batch has a speculation graph and the
        cache ids (made 2-D) have one row per sequence, then pads them to the speculation
        bucket with max(context buckets) - 1."""
        batch, width = input_ids.shape
        if int(cache_ids.flatten()[0]) == 0:
            bucket = self._context_checks(input_ids, cache_ids)
            if bucket == width:
                return cache_ids
            raise AssertionError(
                f"Copying tensor from host to device: buffer (({batch}, {width})) and "
                f"tensor (({batch}, {bucket})) have different shapes!"
            )
        bucket = _find(self.context_buckets, width)
        if not width <= bucket:
            raise AssertionError(f"invalid input prompt length ({width} <= {bucket})")
        batches = [b for (_k, b) in self.speculation]
        if batch not in batches:
            raise AssertionError(
                f"invalid batch size for speculative forward ({batch} not in {batches})"
            )
        if cache_ids.dim() == 1:
            cache_ids = cache_ids.unsqueeze(0)
        if cache_ids.shape[0] != batch:
            raise AssertionError(
                f"invalid n_active_seqs ({batch} vs {cache_ids.shape[0]}) in speculative forward"
            )
        k, _graph = self._speculation_graph(width, batch, None)
        padded = torch.full((batch, k), max(self.context_buckets) - 1, dtype=cache_ids.dtype)
        padded[:, :width] = cache_ids[:, :width]
        return padded

    def speculative_forward(
        self, input_ids, cache_ids=None, start_ids=None, speculation_length=None
    ):
        """Logits for each position of the window: (k, vocab, batch)."""
        if not self.on_neuron:
            raise AttributeError("'NoneType' object has no attribute 'run'")
        batch, width = input_ids.shape
        continuous = self.cb and start_ids is not None
        if continuous:
            cache_ids = self._continuous_speculation(input_ids, cache_ids)
        k, graph = self._speculation_graph(width, batch, speculation_length)
        if continuous and width < k:
            # _prepare_for_continuous_batching padded the cache ids to the speculation bucket
            # with max(context buckets) - 1, and the ids are right-padded with 0: every row
            # writes token 0 there
            input_ids = torch.cat(
                [input_ids, torch.zeros((batch, k - width), dtype=input_ids.dtype)], 1
            )
            width = k
        if graph.neff is None:  # registered after to_neuron(): never compiled, never loaded
            raise AttributeError("'NoneType' object has no attribute 'inputs_host_to_device'")
        if width != k:
            raise AssertionError(
                f"Copying tensor from host to device: buffer ((1, {k})) and "
                f"tensor ((1, {width})) have different shapes!"
            )
        positions, slots = self._write(input_ids, cache_ids, start_ids)
        self.calls.append(("speculative_forward", int(positions[0, 0]), width))
        self.row_positions.append(positions[:, 0].tolist())
        logits = torch.stack(
            [
                torch.stack(
                    [self._logits_at(slots[b], int(positions[b, j])) for b in range(batch)], -1
                )
                for j in range(width)
            ]
        )
        return logits  # (k, vocab, batch)

    @torch.no_grad()
    def sample(
        self,
        input_ids,
        sequence_length,
        cache_ids=None,
        start_ids=None,
        top_k=50,
        top_p=1.0,
        eos_token_override=None,
        temperature=1.0,
        streamer=None,
        stopping_criteria_list=None,
        no_repeat_ngram_size=None,
        **kwargs,
    ):
        if input_ids.shape[0] not in self.batch_sizes:
            raise ValueError(
                f"Model not compiled for batch_size : {input_ids.shape[0]}. "
                f"Acceptable batch_size is one of the following "
                f"{self.batch_sizes}"
            )
        eos = self.config.get("eos_token_id") if eos_token_override is None else eos_token_override
        return sampling.sample_llama(
            self,
            input_ids,
            start_ids,
            sequence_length,
            eos,
            top_k,
            top_p,
            temperature,
            streamer,
            cache_ids,
        )
