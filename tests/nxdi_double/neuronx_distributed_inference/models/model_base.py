"""NeuronBaseForCausalLM as 0.8 drives it (models/model_base.py, model_wrapper.py,
application_base.py at cd3abf3), over a tiny Hugging Face Llama.

Reproduced, each with a test in tests/test_nxdi_double.py:
- graph inventory per mode: context encoding always; then a fused speculation graph, or a
  speculation graph of width k (and no token-generation graph), or a token-generation graph;
- a missing attention mask is inferred from position_ids (which are then required);
- routing: position_ids.min() == 0 is context encoding; else the fused graph; else width == k
  is the speculation graph; else token generation (AttributeError on a speculative target);
- buckets: context encoding pads ids with pad_token_id, mask with 0 and positions with 1 up to
  the bucket and refuses inputs past the largest; the others need mask width + k below a bucket
  or equal to the largest ("exceeds largest bucket");
- outputs: context encoding returns the logits of the padded index holding the first maximal
  position id (a one-token prompt reads a pad slot); sampling off gives float32 logits in both
  `.logits` and `.tokens`; on-device greedy gives int32 tokens; the speculation graph with
  do_sample samples its last position only; fused gives `fused_outputs` = [accepted (B, k)
  padded -1, next input id, next mask, next position];
- the KV cache is positional per seq id: context encoding fills positions [0, bucket) of the
  row, other graphs scatter at position_ids, attention reads the cache where the mask is 1 and
  the active tokens causally; nothing is cleared by reset(); fewer rows than compiled are
  padded with the first row into the missing seq ids (whose caches take its writes); more
  rows than compiled run in chunks of the compiled batch, one after another;
- continuous batching: the context encoding graph must be batch 1 (compile asserts "only
  supports single seq_id" otherwise) and writes only the row of its seq id; without it a
  context encoding of the full batch rewrites every row;
- compile() writes neuron_config.json and model.pt; load() reads model.pt without checking it
  against the config; to_cpu() refuses speculation.

0.9 (c63afe0, ef2731e), diffed against cd3abf3 function by function: `forward`,
`_get_model_outputs`, `preprocess_inputs`, `_infer_attention_mask`, `reset`, the fused model's
`_token_gen_forward`, `ModelWrapper` padding and routing, `KVCacheManager` writes and the
attention's prior/active masks (`compute_for_token_gen`) are unchanged on every path above (the
changes are NKI kernel calls, off here, and tensor replacement). What differs, reproduced:
- forward() takes exactly the library's keywords, never **kwargs (all releases); ef2731e adds
  `tensor_capture_hook` and every output carries `captured_tensors = None`;
- compile() takes `disable_fail_fast` from c63afe0 on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

import torch

from .. import _release, _runtime

CTE, TKG, SPEC, FUSED = (
    "context_encoding_model",
    "token_generation_model",
    "speculation_model",
    "fused_speculation_model",
)
COMPILED_MODEL_FILE_NAME = "model.pt"
PAD_TOKEN = -1  # acceptance padding in fused outputs


def _seq_bucket(tag, buckets, input_len, speculation_length):
    """ModelWrapper._get_seq_bucket with first_fit."""
    required = input_len + speculation_length
    for bucket in buckets:
        if required < bucket:
            return bucket
    if required == buckets[-1]:
        return buckets[-1]
    raise ValueError(f"Input len {input_len} exceeds largest bucket ({buckets[-1]}) for {tag}")


def _infer_attention_mask(position_ids):
    """NeuronBaseForCausalLM.preprocess_inputs without a mask (_infer_attention_mask, 0.8
    cd3abf3, same in 0.9 c63afe0/ef2731e): position_ids are then required. Several tokens
    per row: 1 where a token's position id is at least its column, as wide as the tokens
    (a speculation window thus sees only its first k cached positions); one token: 1 on
    the row's positions below its own, as wide as the largest position id. In the
    position ids' dtype."""
    if position_ids is None:
        raise AssertionError(
            "need to call forward with position_ids if attention_mask is not provided"
        )
    batch, width = position_ids.shape
    if width != 1:
        columns = torch.arange(width).expand(batch, width)
        return (position_ids >= columns).to(position_ids.dtype)
    columns = torch.arange(int(position_ids.max())).expand(batch, -1)
    return (position_ids > columns).to(position_ids.dtype)


class _Wrapper:
    """One compiled graph: its tag, batch size, width and buckets."""

    def __init__(self, tag, nc, width):
        self.tag, self.width = tag, width
        self.batch_size = {CTE: nc.ctx_batch_size, SPEC: nc.spec_batch_size}.get(
            tag, nc.tkg_batch_size
        )
        self.buckets = [nc.max_context_length] if tag == CTE else [nc.max_length]

    def describe(self):
        return {
            "tag": self.tag,
            "batch": self.batch_size,
            "width": self.width,
            "buckets": self.buckets,
        }


class NeuronBaseForCausalLM(torch.nn.Module):
    def __init__(self, model_path, config=None):
        super().__init__()
        if config is None:
            from .config import InferenceConfig

            config = InferenceConfig.load(model_path)
        self.validate_config(config)
        self.config = config
        self.neuron_config = nc = config.neuron_config
        self.model_path = model_path
        self.on_device_sampling = nc.on_device_sampling_config is not None
        self.vocab_size = config.vocab_size
        self.kv_cache_populated = False
        self.models = [_Wrapper(CTE, nc, nc.max_context_length)]
        if nc.enable_fused_speculation:
            self.models.append(_Wrapper(FUSED, nc, 1))
        elif nc.speculation_length > 0:
            self.models.append(_Wrapper(SPEC, nc, nc.speculation_length))
        else:
            self.models.append(_Wrapper(TKG, nc, 1))
        self.kv = {}  # seq id -> {position: token}; the fused model's draft has its own
        self.draft_kv = {}
        self.hf = None
        self.draft_hf = None

    @classmethod
    def validate_config(cls, config):
        if not hasattr(config, "neuron_config"):
            raise ValueError("Config must include a NeuronConfig")
        fused = getattr(config, "fused_spec_config", None)
        if (
            fused is not None
            and (fused.draft_config.neuron_config.torch_dtype != config.neuron_config.torch_dtype)
            and config.neuron_config.cast_type == "config"
        ):
            raise ValueError(
                "cast-type must be set to 'as-declared' to be able to run different precisions "
                "for draft and target model!"
            )

    def __getattr__(self, name):
        tags = {m.tag: m for m in self.__dict__.get("models", [])}
        if name in (CTE, TKG, SPEC, FUSED) and name in tags:
            return tags[name]
        return super().__getattr__(name)

    # --- compile and load ---------------------------------------------------------------

    if _release.AT_LEAST_0_9:  # c63afe0 adds disable_fail_fast

        def compile(
            self, compiled_model_path, debug=False, pre_shard_weights_hook=None, dry_run=False,
            disable_fail_fast=False,
        ):  # fmt: skip
            self._compile(compiled_model_path, dry_run)

    else:

        def compile(
            self, compiled_model_path, debug=False, pre_shard_weights_hook=None, dry_run=False
        ):
            self._compile(compiled_model_path, dry_run)

    def _compile(self, compiled_model_path, dry_run):
        nc = self.neuron_config
        if nc.is_continuous_batching and nc.ctx_batch_size != 1:  # traced in KVCacheManager
            raise AssertionError("only supports single seq_id")
        path = os.path.join(os.path.normpath(compiled_model_path), "")
        self.config.save(path)
        if dry_run:
            return
        traced = {
            "graphs": [m.describe() for m in self.models],
            "config": self.config.to_json_string(),
        }
        with open(path + COMPILED_MODEL_FILE_NAME, "w", encoding="utf-8") as f:
            json.dump(traced, f)
        _runtime.EVENTS.append(("compile", path))

    def load(
        self, compiled_model_path, start_rank_id=None, local_ranks_size=None, skip_warmup=False
    ):
        path = os.path.join(os.path.normpath(compiled_model_path), "")
        if not os.path.isfile(path + COMPILED_MODEL_FILE_NAME):
            raise ValueError(
                f"The provided filename {path + COMPILED_MODEL_FILE_NAME} does not exist"
            )
        with open(path + COMPILED_MODEL_FILE_NAME, encoding="utf-8") as f:
            json.load(f)  # what was traced is not compared with this config: the library doesn't
        self.hf = self._load_hf(getattr(self.config, "_name_or_path", None) or self.model_path)
        fused = self.config.fused_spec_config
        if fused is not None:
            self.draft_hf = self._load_hf(fused.draft_model_path)
        _runtime.EVENTS.append(("load", path))

    def _load_hf(self, path):
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(path)
        return model.to(self.neuron_config.torch_dtype).eval()

    def to_cpu(self):
        if self.neuron_config.speculation_length > 0:
            raise NotImplementedError("Speculation is not yet supported for CPU inference.")
        self.hf = self._load_hf(self.model_path)

    def reset(self):
        self.kv_cache_populated = False  # the cache itself is left as it is

    # --- forward ------------------------------------------------------------------------

    # forward() takes exactly the library's keywords (no **kwargs: another keyword is a
    # TypeError); ef2731e adds tensor_capture_hook, applied to captured tensors (none here).
    if _release.ADAPTER_FIXED:

        def forward(
            self, input_ids=None, seq_ids=None, attention_mask=None, position_ids=None,
            past_key_values=None, inputs_embeds=None, sampling_params=None, prev_hidden=None,
            labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
            adapter_ids=None, medusa_args=None, return_dict=None, llava_args=None,
            input_capture_hook=None, tensor_capture_hook=None, slot_mapping=None,
            block_table=None, full_context_lens=None, computed_context_lens=None, tf_args=None,
        ):  # fmt: skip
            out = self._forward(input_ids, seq_ids, attention_mask, position_ids)
            if tensor_capture_hook and out.captured_tensors:
                tensor_capture_hook(self, out.captured_tensors)
            return out

    else:

        def forward(
            self, input_ids=None, seq_ids=None, attention_mask=None, position_ids=None,
            past_key_values=None, inputs_embeds=None, sampling_params=None, prev_hidden=None,
            labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
            adapter_ids=None, medusa_args=None, return_dict=None, llava_args=None,
            input_capture_hook=None, slot_mapping=None, block_table=None,
            full_context_lens=None, computed_context_lens=None, tf_args=None,
        ):  # fmt: skip
            return self._forward(input_ids, seq_ids, attention_mask, position_ids)

    def _forward(self, input_ids, seq_ids, attention_mask, position_ids):
        if self.hf is None:
            raise RuntimeError(
                "Forward called before load. Run load() or load_state_dict() making calling forward"
            )
        if attention_mask is None:
            attention_mask = _infer_attention_mask(position_ids)
        if seq_ids is None:
            seq_ids = torch.arange(input_ids.shape[0])
        nc = self.neuron_config
        if int(position_ids.min()) == 0:
            out = self._run(
                self.context_encoding_model, input_ids, attention_mask, position_ids, seq_ids
            )
            self.kv_cache_populated = True
        elif nc.enable_fused_speculation:
            out = self._run(
                self.fused_speculation_model, input_ids, attention_mask, position_ids, seq_ids
            )
        elif input_ids.shape[-1] == nc.speculation_length:
            out = self._run(
                self.speculation_model, input_ids, attention_mask, position_ids, seq_ids
            )
        else:
            out = self._run(
                self.token_generation_model, input_ids, attention_mask, position_ids, seq_ids
            )
        return self._construct_output(out)

    def _construct_output(self, out):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        result = CausalLMOutputWithPast(
            logits=None if self.on_device_sampling else out, hidden_states=out
        )
        if self.neuron_config.enable_fused_speculation:
            result.fused_outputs = out
        else:
            result.tokens = out
        if _release.ADAPTER_FIXED:
            result.captured_tensors = None  # ef2731e: tensor capture, off
        return result

    def _run(self, wrapper, input_ids, attention_mask, position_ids, seq_ids):
        """ModelWrapper.forward: pad to the bucket, pad rows to the compiled batch, run."""
        nc = self.neuron_config
        if wrapper.tag == CTE:
            bucket = _seq_bucket(CTE, wrapper.buckets, attention_mask.shape[1], 0)
            pad = bucket - input_ids.shape[1]
            input_ids = torch.nn.functional.pad(
                input_ids, (0, pad), value=self.config.pad_token_id or 0
            )
            attention_mask = torch.nn.functional.pad(attention_mask, (0, pad), value=0)
            position_ids = torch.nn.functional.pad(position_ids, (0, pad), value=1)
        else:
            spec = nc.speculation_length if wrapper.tag in (SPEC, FUSED) else 0
            bucket = _seq_bucket(wrapper.tag, wrapper.buckets, attention_mask.shape[1], spec)
            if attention_mask.shape[1] > nc.max_length:
                raise ValueError(
                    f"Attention mask supplied (length={attention_mask.shape[1]}) is longer "
                    f"than max_length ({nc.max_length} tokens)"
                )
            attention_mask = torch.nn.functional.pad(
                attention_mask, (0, bucket - attention_mask.shape[1]), value=0
            )
        rows, size = seq_ids.shape[0], wrapper.batch_size
        if rows > size:  # ModelWrapper.forward: chunks of the compiled batch, one after another
            inputs = (input_ids, attention_mask, position_ids, seq_ids)
            parts = [
                self._batch(wrapper, *(t[i : i + size] for t in inputs))
                for i in range(0, rows, size)
            ]
            if isinstance(parts[0], list):
                return [torch.cat(x, dim=0) for x in zip(*parts, strict=True)]
            return torch.cat(parts, dim=0)
        return self._batch(wrapper, input_ids, attention_mask, position_ids, seq_ids)

    def _batch(self, wrapper, input_ids, attention_mask, position_ids, seq_ids):
        """One run of a compiled graph: fewer rows than compiled are padded (_forward_with_pad:
        the first row fills the missing seq ids, in sorted order, and the outputs are picked
        back)."""
        nc = self.neuron_config
        rows = seq_ids.shape[0]
        if rows < wrapper.batch_size:
            missing = [s for s in range(wrapper.batch_size) if s not in seq_ids.tolist()]
            seq_ids = torch.cat([seq_ids, torch.tensor(missing, dtype=seq_ids.dtype)])
            pad_rows = lambda t: torch.cat([t, t[:1].expand(len(missing), *t.shape[1:])])  # noqa: E731
            input_ids, attention_mask, position_ids = map(
                pad_rows, (input_ids, attention_mask, position_ids)
            )
        if wrapper.tag == FUSED:
            out = self._fused_step(input_ids, attention_mask, position_ids, seq_ids)
        elif wrapper.tag == CTE and nc.enable_fused_speculation:
            out = self._fused_context(input_ids, attention_mask, position_ids, seq_ids)
        else:
            logits = self._graph(
                self.hf, self.kv, wrapper.tag, input_ids, attention_mask, position_ids, seq_ids
            )
            out = self._sample(logits, wrapper.tag)
        return [o[:rows] for o in out] if isinstance(out, list) else out[:rows]

    # --- one graph over the positional cache --------------------------------------------

    @torch.no_grad()
    def _graph(self, hf, kv, tag, input_ids, attention_mask, position_ids, seq_ids):
        """Float32 logits: (B, 1, V) for context encoding and token generation, (B, k, V)
        for speculation. Writes the cache as the device does."""
        out = []
        for b in range(input_ids.shape[0]):
            row = kv.setdefault(int(seq_ids[b]), {})
            ids, pos, mask = (
                input_ids[b].tolist(),
                position_ids[b].tolist(),
                attention_mask[b].tolist(),
            )
            if tag == CTE:
                index = max(range(len(pos)), key=lambda i: (pos[i], -i))  # first maximal
                seq = ids[: index + 1]
                logits = hf(
                    torch.tensor([seq]), position_ids=torch.tensor([pos[: index + 1]])
                ).logits
                out.append(logits[0, -1:].float())
                for p in range(len(ids)):  # fill_prefix: [0, bucket) by index
                    row[p] = ids[p]
            else:
                prior = [q for q, m in enumerate(mask) if m == 1]
                seq = [row.get(q, 0) for q in prior] + ids  # unwritten slots hold garbage
                positions = prior + pos
                logits = hf(torch.tensor([seq]), position_ids=torch.tensor([positions])).logits
                out.append(logits[0, -len(ids) :].float())
                for p, t in zip(pos, ids, strict=True):
                    row[int(p)] = int(t)
        return torch.stack(out)

    def _sample(self, logits, tag):
        cfg = self.neuron_config.on_device_sampling_config
        if cfg is None:
            return logits
        if tag == SPEC and not cfg.do_sample:
            return logits.argmax(dim=2).to(torch.int32)
        last = logits[:, -1, :]  # the speculation graph samples only its last position
        if cfg.do_sample:
            top = torch.topk(last, max(1, int(cfg.top_k)), dim=-1)
            probs = torch.softmax(top.values / float(cfg.temperature), dim=-1)
            return top.indices.gather(1, torch.multinomial(probs, 1)).squeeze(1).to(torch.int32)
        return last.argmax(dim=-1).to(torch.int32)

    # --- fused speculation (NeuronFusedSpecModel) ---------------------------------------

    def _fused_context(self, input_ids, attention_mask, position_ids, seq_ids):
        k = self.neuron_config.speculation_length
        target = self._graph(
            self.hf, self.kv, CTE, input_ids, attention_mask, position_ids, seq_ids
        )
        self._graph(
            self.draft_hf, self.draft_kv, CTE, input_ids, attention_mask, position_ids, seq_ids
        )
        first = target[:, -1].argmax(dim=-1).to(torch.int32).reshape(-1, 1)
        padded = torch.cat(
            [first, torch.full((first.shape[0], k - 1), PAD_TOKEN, dtype=torch.int32)], 1
        )
        cur_len = attention_mask.sum(dim=1).to(torch.int32).reshape(-1, 1)
        return [padded, padded[:, :1], self._next_mask(cur_len, attention_mask.shape[1]), cur_len]

    def _fused_step(self, input_ids, attention_mask, position_ids, seq_ids):
        k = self.neuron_config.speculation_length
        batch = input_ids.shape[0]
        candidates = input_ids
        draft_mask = copy.deepcopy(attention_mask)
        for i in range(k):  # k draft steps; the last draft is never verified
            pos = position_ids + i
            logits = self._graph(
                self.draft_hf, self.draft_kv, TKG, candidates[:, -1:], draft_mask, pos, seq_ids
            )
            draft_mask.index_fill_(1, pos.to(torch.int64).squeeze(), 1)  # one column for every row
            candidates = torch.cat([candidates, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        target_pos = position_ids + torch.arange(k)
        target = self._graph(
            self.hf, self.kv, SPEC, candidates[:, :-1], attention_mask, target_pos, seq_ids
        )
        target_tokens = target.argmax(dim=2).to(torch.int32)
        drafted, selected = candidates[:, 1:-1], target_tokens[:, :-1]
        n = ((drafted != selected).cumsum(dim=-1) < 1).sum(dim=-1, keepdim=True).reshape(
            batch, 1
        ) + 1
        keep = torch.arange(k).expand(batch, k) < n
        accepted = torch.where(keep, target_tokens, torch.full_like(target_tokens, PAD_TOKEN))
        next_pos = (position_ids + n).to(torch.int32)
        last = accepted[torch.arange(batch), (n.squeeze(1) - 1)].reshape(batch, 1)
        return [accepted, last, self._next_mask(next_pos, attention_mask.shape[1]), next_pos]

    @staticmethod
    def _next_mask(next_pos, width):
        return (next_pos.expand(-1, width) - 1 >= torch.arange(width).view(1, -1)).to(torch.int32)


def graph_digest(model):
    """What the double compiled, as the tests see it."""
    return hashlib.sha256(json.dumps([m.describe() for m in model.models]).encode()).hexdigest()
