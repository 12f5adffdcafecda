"""SpeculativeGenerator, acceptors and the draft provider, as each release has them.

v1 (0.10, 0.11) and v2 (0.12, 0.13) differ in shapes, in the loop's end and in streaming;
both reproduce the library's defects, because neuron-spec must cope with them:
- the first new token is the target's argmax (select_tokens' default top_k=1), whatever the
  acceptor;
- eos_token_id is one int (a list fails inside torch);
- v1 passes the provider's draft scores to the acceptor unchanged, and when fewer than k
  positions remain it finishes with target.sample(top_k=1): greedy, and not streamed;
- v2 streams the prompt first, then every zero-padded (bs, k) block, including the one that
  runs past sequence_length; it speculates while the cache position is below sequence_length,
  so it writes up to k - 2 positions past it; it advances by count_nonzero of the acceptor's
  row, so an emitted id 0 is lost and the KV slot of the previous token is overwritten.
"""

from __future__ import annotations

import torch

from . import sampling
from .llama.model import LlamaForSampling
from .version import api


class TokenAcceptor:
    def __call__(self, draft_ids, draft_scores, target_scores):
        raise NotImplementedError(f"{self.__class__} is an abstract class.")


class DraftProvider:
    def __call__(self, input_ids, k, cache_ids=None, start_ids=None):
        raise NotImplementedError(f"{self.__class__} is an abstract class.")


def _deepmind_row(ids, q, p):
    """One row of the DeepMind rule on raw softmaxes: ids (g,), q (g, V), p (g+1, V) ->
    accepted drafts followed by one resampled or bonus token."""
    g = ids.shape[0]
    px = p[:g].gather(1, ids.view(-1, 1)).view(-1)
    qx = q.gather(1, ids.view(-1, 1)).view(-1)
    ok = torch.rand(g) < torch.clamp(px / qx, max=1.0)
    n = g if bool(ok.all()) else int(torch.argmin(ok.to(torch.uint8)))
    rest = p[n] if n == g else torch.clamp(p[n] - q[n], min=0.0)
    last = torch.multinomial(rest, 1, replacement=True)
    return torch.cat([ids[:n], last])


class DefaultTokenAcceptor(TokenAcceptor):
    def __call__(self, draft_ids, draft_scores, target_scores):
        if api() == "v1":  # (1, k-1), (k-1, V), (k, V) -> (1, n)
            g, vocab = draft_scores.shape
            assert target_scores.shape == (g + 1, vocab)
            q, p = torch.softmax(draft_scores, -1), torch.softmax(target_scores, -1)
            return _deepmind_row(draft_ids.view(-1), q, p).view(1, -1)
        bs, g, vocab = draft_scores.shape  # (bs, k-1), (bs, k-1, V), (bs, k, V) -> (bs, k)
        assert target_scores.shape == (bs, g + 1, vocab)
        q, p = torch.softmax(draft_scores, -1), torch.softmax(target_scores, -1)
        out = torch.zeros(bs, g + 1, dtype=torch.int64)
        for b in range(bs):
            row = _deepmind_row(draft_ids[b], q[b], p[b])
            out[b, : row.shape[0]] = row
        return out


class DraftModelForSpeculation(DraftProvider):
    """Argmax drafts from a plain LlamaForSampling."""

    def __init__(self, model, **kwargs):
        self.model = model

    def __call__(self, input_ids, k, cache_ids=None, start_ids=None):
        batch = input_ids.shape[0]
        if api() == "v1":
            start = cache_ids.item() if cache_ids else 0  # a tensor's truth value
        elif cache_ids is None:
            start = 0
        else:
            start = cache_ids.item() if cache_ids.dim() == 1 else cache_ids[0][0]
        scores = self.model(input_ids, cache_ids, start_ids)
        if start == 0:  # context encoding: one token
            return torch.argmax(scores, dim=1, keepdim=True), scores
        tokens, all_scores = [], []
        for i in range(k):
            token = torch.argmax(scores, dim=1, keepdim=True)
            tokens.append(token)
            all_scores.append(scores)
            if i == k - 1:
                break
            position = torch.as_tensor([start + i + 1] * batch, dtype=torch.int32)
            if batch > 1:
                position = position.reshape(batch, 1)
            scores = self.model(token, position, start_ids)
        if api() == "v1":
            return torch.cat(tokens, dim=1), torch.cat(all_scores, dim=0)  # (k, V) at bs 1
        return torch.cat(tokens, dim=1), torch.stack(all_scores)  # (k, bs, V)


class _Generator:
    def __init__(self, draft, target, k=4, acceptor=None):
        if isinstance(draft, LlamaForSampling):
            draft = DraftModelForSpeculation(draft)
        self.draft, self.target, self.k = draft, target, k
        self.acceptor = acceptor or DefaultTokenAcceptor()


class _GeneratorV1(_Generator):
    @torch.no_grad()
    def sample(self, input_ids, sequence_length, start_ids=None, eos_token_id=None, streamer=None):
        batch, start = input_ids.shape
        if batch > 1:
            raise NotImplementedError(
                "Current speculative sampling loop supported only with batch size = 1."
            )
        k = self.k
        self.draft(input_ids, k, None, start_ids)
        next_id = sampling.select_tokens(self.target(input_ids, None, start_ids))
        if streamer:
            streamer.put(next_id)
        stop_on_eos = eos_token_id is not None
        if stop_on_eos:
            done = torch.full((batch, 1), False)
            eos = torch.tensor(eos_token_id, dtype=torch.int32)
        tokens = [input_ids, next_id]
        current = start
        while True:
            if stop_on_eos:
                done |= next_id == eos  # an eos list cannot broadcast into (1, 1)
                if done.all():
                    break
            draft_ids, draft_scores = self.draft(
                next_id, k - 1, torch.tensor([current], dtype=torch.int32), start_ids
            )
            window = torch.cat([next_id, draft_ids], dim=1)
            scores = self.target.speculative_forward(
                input_ids=window,
                cache_ids=torch.arange(current, current + window.shape[1]),
                start_ids=start_ids,
                speculation_length=k,
            )
            accepted = self.acceptor(draft_ids, draft_scores, scores.squeeze(dim=-1))
            if accepted.dim() != 2:
                accepted = accepted.view(1, -1)
            n = accepted.shape[1]
            if sequence_length - n < k:
                accepted = accepted[:, : sequence_length - len(tokens)]
            for i in range(n):
                token = accepted[:, i : i + 1]
                if stop_on_eos:
                    done |= token == eos
                current += 1
                tokens.append(token)
                if streamer:
                    streamer.put(token)
                if current >= sequence_length - 1 or (stop_on_eos and done.all()):
                    if streamer:
                        streamer.end()
                    return torch.cat(tokens, dim=-1)
            next_id = accepted[:, -1:]
            if n == k:  # the last draft token was never fed to the draft
                self.draft(accepted[:, -2:-1], 1, torch.tensor([current - 1]), start_ids)
            if current >= sequence_length - 1 - k:  # greedy tail on the target, not streamed
                tail = self.target.sample(
                    next_id,
                    sequence_length=sequence_length,
                    cache_ids=torch.tensor([current], dtype=torch.int32),
                    top_k=1,
                )
                tokens.append(tail[:, 1:])
                break
        if streamer:
            streamer.end()
        return torch.cat(tokens, dim=-1)


class _GeneratorV2(_Generator):
    @torch.no_grad()
    def sample(
        self,
        input_ids,
        sequence_length,
        start_ids=None,
        eos_token_id=None,
        pad_token_id=0,
        attention_mask=None,
        streamer=None,
        output_logits=False,
    ):
        batch, context = input_ids.shape
        k = self.k
        cache_ids = None
        if batch > 1:
            assert attention_mask is not None, (
                "The attention mask needs to be provided for speculation where batch_size>1"
            )
            cache_ids = torch.arange(context).reshape(1, context).expand(batch, context)
            cache_ids = cache_ids.mul(attention_mask)
            if start_ids is None:
                start_ids = torch.arange(batch)
        self.draft(input_ids, k, cache_ids, start_ids)
        target_scores = self.target(input_ids, cache_ids, start_ids)
        if streamer:
            streamer.put(input_ids)  # the prompt, echoed as Hugging Face streamers expect
        next_ids = sampling.select_tokens(target_scores)
        if streamer:
            streamer.put(next_ids)
        done = torch.full((batch, 1), False)
        stop_on_eos = eos_token_id is not None
        if stop_on_eos:
            eos = torch.tensor(eos_token_id, dtype=torch.int64)
        tokens = torch.full((batch, sequence_length + k + 1), pad_token_id, dtype=torch.int64)
        tokens.scatter_(1, torch.arange(context).repeat(batch, 1), input_ids.to(torch.int64))
        ends = torch.tensor([context], dtype=torch.int64)
        if attention_mask is not None:
            ends = torch.count_nonzero(attention_mask, dim=1)
        cache_ids = ends.clone()
        tokens.scatter_(1, ends.view(-1, 1), next_ids)
        ends += 1
        offsets = torch.arange(k, dtype=torch.int64).repeat(batch, 1)
        while True:
            if stop_on_eos:
                done |= next_ids == eos  # an eos list cannot broadcast into (bs, 1)
                if batch > 1:
                    next_ids[done] = eos
            if done.all():
                break
            draft_cache = cache_ids.view(-1, 1) if batch > 1 else cache_ids
            draft_ids, draft_scores = self.draft(next_ids, k - 1, draft_cache, start_ids)
            if batch == 1:
                window_ids = torch.arange(cache_ids[0], cache_ids[0] + draft_ids.shape[1] + 1)
            else:
                window_ids = offsets + cache_ids.view(-1, 1)
            window = torch.cat([next_ids, draft_ids], dim=1)
            scores = self.target.speculative_forward(
                input_ids=window, cache_ids=window_ids, start_ids=start_ids, speculation_length=k
            )
            draft_scores = torch.transpose(draft_scores, 0, 1)  # (bs, k-1, V)
            scores = torch.transpose(torch.transpose(scores, 0, 2), 1, 2)  # (bs, k, V)
            accepted = self.acceptor(draft_ids, draft_scores, scores)
            counts = torch.count_nonzero(accepted, dim=1)  # an emitted id 0 is not counted
            positions = offsets + ends.view(-1, 1)
            if stop_on_eos:
                after_eos = (accepted == eos_token_id).cumsum(1).bool() | done.view(-1, 1)
                accepted[after_eos] = eos_token_id
            tokens.scatter_(1, positions, accepted)
            cache_ids += counts
            ends += counts
            next_ids = accepted[:, counts - 1]  # row 0's count indexes every row
            if batch > 1:
                next_ids = next_ids[:, 0].view(-1, 1)
            if streamer:
                streamer.put(accepted)
            if stop_on_eos:
                done |= after_eos.any(dim=1).view(-1, 1)
            if (counts == k).any():
                catch_up = cache_ids - 1
                if batch > 1:
                    catch_up = catch_up.view(-1, 1)
                self.draft(accepted[:, -2:-1], 1, catch_up, start_ids)
            ends = torch.clamp(ends, max=sequence_length)
            cache_ids = torch.clamp(cache_ids, max=sequence_length)
            done.logical_or_(torch.eq(cache_ids, sequence_length).unsqueeze(1))
        if streamer:
            streamer.end()
        return tokens[:, :sequence_length]


SpeculativeGenerator = _GeneratorV2 if api() == "v2" else _GeneratorV1
