"""SpeculativeGenerator and friends, as the double: v1 (0.10-0.12) or v2 (0.13) behaviour."""

from __future__ import annotations

import torch

from .llama.model import LlamaForSampling
from .version import api


class TokenAcceptor:
    def __call__(self, draft_ids, draft_scores, target_scores):
        raise NotImplementedError


class DraftProvider:
    def __call__(self, input_ids, k, cache_ids=None, start_ids=None):
        raise NotImplementedError


class DefaultTokenAcceptor(TokenAcceptor):
    """The DeepMind rule on the raw softmax (v2 shapes; v1 gets 2-D scores)."""

    def __call__(self, draft_ids, draft_scores, target_scores):
        if draft_scores.dim() == 2:
            draft_scores, target_scores = draft_scores.unsqueeze(0), target_scores.unsqueeze(0)
        q = torch.softmax(draft_scores, dim=-1)
        p = torch.softmax(target_scores, dim=-1)
        batch, g = draft_ids.shape
        out = torch.zeros(batch, g + 1, dtype=torch.int64)
        for b in range(batch):
            n = 0
            for i in range(g):
                x = int(draft_ids[b, i])
                if torch.rand(()) < min(1.0, float(p[b, i, x] / q[b, i, x])):
                    out[b, n] = x
                    n += 1
                else:
                    break
            resid = (p[b, n] - (q[b, n] if n < g else 0)).clamp(min=0)
            out[b, n] = torch.multinomial(resid / resid.sum(), 1)
        return out if api() == "v2" else out[:, : int((out[0] != 0).sum())]


class DraftModelForSpeculation(DraftProvider):
    """Argmax drafts from a LlamaForSampling."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, k, cache_ids=None, start_ids=None):
        start = 0 if cache_ids is None else int(cache_ids.reshape(-1)[0])
        scores = self.model(input_ids, cache_ids, start_ids)
        if start == 0:
            return scores.argmax(dim=1, keepdim=True), scores
        tokens, all_scores = [], []
        for i in range(k):
            token = scores.argmax(dim=1, keepdim=True)
            tokens.append(token)
            all_scores.append(scores)
            if i == k - 1:
                break
            scores = self.model(token, torch.tensor([start + i + 1]), start_ids)
        return torch.cat(tokens, dim=1), torch.stack(all_scores)


class SpeculativeGenerator:
    def __init__(self, draft, target, k=4, acceptor=None):
        if isinstance(draft, LlamaForSampling):
            draft = DraftModelForSpeculation(draft)
        if not callable(draft):
            raise TypeError("draft must be a LlamaForSampling or a DraftProvider")
        self.draft, self.target, self.k = draft, target, k
        self.acceptor = acceptor or DefaultTokenAcceptor()

    def sample(
        self, input_ids, sequence_length, start_ids=None, eos_token_id=None, streamer=None, **kwargs
    ):
        if api() == "v1":
            if kwargs:
                raise TypeError(f"sample() got unexpected keyword arguments {sorted(kwargs)}")
            return self._sample(input_ids, sequence_length, start_ids, eos_token_id, streamer)
        allowed = {"pad_token_id", "attention_mask", "output_logits"}
        if set(kwargs) - allowed:
            raise TypeError(
                f"sample() got unexpected keyword arguments {sorted(set(kwargs) - allowed)}"
            )
        if eos_token_id is not None and not isinstance(eos_token_id, int):
            raise ValueError("eos_token_id must be a single int")
        if input_ids.shape[0] > 1 and kwargs.get("attention_mask") is None:
            raise ValueError("batch > 1 needs attention_mask")
        out = self._sample(input_ids, sequence_length, start_ids, eos_token_id, streamer)
        pad = kwargs.get("pad_token_id", 0)
        padded = torch.full((out.shape[0], sequence_length), pad, dtype=out.dtype)
        padded[:, : out.shape[1]] = out
        return padded

    @torch.no_grad()
    def _sample(self, input_ids, sequence_length, start_ids, eos, streamer):
        if input_ids.shape[0] != 1:
            raise NotImplementedError("Batch size > 1 is not supported for speculative decoding")
        k, target = self.k, self.target
        prompt = input_ids.shape[1]
        positions = torch.arange(prompt)
        self.draft(input_ids, k - 1, positions, start_ids)  # context encoding
        first = target(input_ids, positions, start_ids).argmax(dim=-1)  # (1,)
        out = [int(first)]
        if streamer is not None:
            streamer.put(first)
        cur = prompt  # position of the last accepted token
        while prompt + len(out) < sequence_length and not (eos is not None and out[-1] == eos):
            last = torch.tensor([[out[-1]]])
            if sequence_length - (prompt + len(out)) < k:  # finish with plain greedy decoding
                nxt = int(target(last, torch.tensor([cur]), start_ids).argmax())
                out.append(nxt)
                cur += 1
                if streamer is not None:
                    streamer.put(torch.tensor([nxt]))
                continue
            draft_ids, draft_scores = self.draft(last, k - 1, torch.tensor([cur]), start_ids)
            window = torch.cat([last, draft_ids], dim=1)  # (1, k)
            scores = target.speculative_forward(window, torch.arange(cur, cur + k), start_ids, k)
            if api() == "v1":
                accepted = self.acceptor(draft_ids, draft_scores.squeeze(1), scores.squeeze(-1))
                tokens = accepted.reshape(-1).tolist()
            else:
                accepted = self.acceptor(
                    draft_ids, draft_scores.permute(1, 0, 2), scores.permute(2, 0, 1)
                )
                if accepted.shape != (1, k) or accepted.dtype != torch.int64:
                    raise ValueError(f"acceptor returned {tuple(accepted.shape)} {accepted.dtype}")
                n = int(torch.count_nonzero(accepted[0]))  # the library's own count
                tokens = accepted[0, :n].tolist()
            if eos is not None and eos in tokens:
                tokens = tokens[: tokens.index(eos) + 1]
            out.extend(int(t) for t in tokens)
            cur += len(tokens)
            if streamer is not None:
                streamer.put(accepted if api() == "v2" else torch.tensor(tokens))
        if streamer is not None:
            streamer.end()
        return torch.cat([input_ids, torch.tensor([out[: sequence_length - prompt]])], dim=1)
