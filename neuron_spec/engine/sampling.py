"""Sampling math: warping logits into a distribution, and the speculative accept/resample step.

Pure tensor functions (torch). Names follow Leviathan et al. 2023 / Chen et al. 2023:
p is the target's distribution, q the draft's, gamma the number of draft tokens per step.
`speculative_step` is the vectorised step; `speculative_step_loop` is the same rule written
as plain loops, kept beside it as the reference the tests compare against.
"""

from __future__ import annotations

import torch


def warp(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Logits (..., V) -> probabilities (..., V) after temperature, top-k and top-p.

    temperature 0 means greedy: a one-hot distribution on the argmax (first index on ties).
    top_k 0 and top_p 1.0 are off. The most likely token always survives the filters.
    """
    logits = logits.float()
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        one_hot = torch.zeros_like(logits)
        return one_hot.scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    scaled = logits / temperature
    if top_k > 0 and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]  # (..., 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # (..., V)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of better tokens
        drop_sorted = mass_before >= top_p  # keep the smallest prefix reaching top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return torch.softmax(scaled, dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from probabilities (..., V) -> (...) int64."""
    flat = probs.reshape(-1, probs.shape[-1])
    drawn = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    return drawn.reshape(probs.shape[:-1])


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(p - q, 0)); falls back to p where p == q leaves nothing (then p was accepted
    with probability 1 anyway, so the fallback is never sampled in exact arithmetic)."""
    r = (p - q).clamp_min(0.0)
    total = r.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(1e-30), p)


def speculative_step(
    draft_tokens: torch.Tensor,  # (B, gamma) int64: x_1..x_gamma
    q: torch.Tensor,  # (B, gamma, V): draft distributions the x_i were drawn from
    p: torch.Tensor,  # (B, gamma + 1, V): target distributions at the gamma + 1 positions
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One speculative sampling step for a batch.

    Returns (tokens (B, gamma + 1) int64, counts (B,) int64): row b emits tokens[b, :counts[b]]
    (accepted drafts, then one resampled or bonus token); entries past the count are 0 and
    must not be read. 1 <= counts <= gamma + 1.
    """
    batch, gamma = draft_tokens.shape
    idx = draft_tokens.unsqueeze(-1)  # (B, gamma, 1)
    p_x = p[:, :gamma].gather(-1, idx).squeeze(-1)  # (B, gamma): p_i(x_i)
    q_x = q.gather(-1, idx).squeeze(-1)  # (B, gamma): q_i(x_i)
    u = torch.rand(batch, gamma, generator=generator, device=p.device)  # (B, gamma)
    ratio = torch.where(q_x > 0, p_x / q_x.clamp_min(1e-30), torch.zeros_like(p_x))
    accepted = u < ratio.clamp(max=1.0)  # (B, gamma): accept x_i w.p. min(1, p/q)
    n_accepted = accepted.int().cumprod(dim=-1).sum(dim=-1)  # (B,): length of accepted prefix
    rows = torch.arange(batch, device=p.device)  # (B,)
    p_n = p[rows, n_accepted]  # (B, V): target at the first rejection, or the bonus position
    no_draft = q.new_zeros(batch, 1, p.shape[-1])  # q is 0 at the bonus position
    q_n = torch.cat([q, no_draft], dim=1)[rows, n_accepted]  # (B, V)
    last = sample(_residual(p_n, q_n), generator)  # (B,): resample from norm(max(p - q, 0))
    positions = torch.arange(gamma + 1, device=p.device).unsqueeze(0)  # (1, gamma + 1)
    padded = torch.cat([draft_tokens, draft_tokens.new_zeros(batch, 1)], dim=1)  # (B, gamma + 1)
    tokens = torch.where(positions < n_accepted.unsqueeze(1), padded, torch.zeros_like(padded))
    tokens[rows, n_accepted] = last  # (B, gamma + 1)
    return tokens, (n_accepted + 1).long()


def speculative_step_loop(
    draft_tokens: torch.Tensor,
    q: torch.Tensor,
    p: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rule as `speculative_step`, one row and one position at a time.

    Draws random numbers in the same order (all uniforms first, then one sample per row), so
    with the same generator state both versions return identical results.
    """
    batch, gamma = draft_tokens.shape
    u = torch.rand(batch, gamma, generator=generator, device=p.device)
    tokens = torch.zeros(batch, gamma + 1, dtype=torch.long, device=p.device)
    counts = torch.zeros(batch, dtype=torch.long, device=p.device)
    residuals = []
    for b in range(batch):
        n = 0
        for i in range(gamma):
            x = int(draft_tokens[b, i])
            px, qx = float(p[b, i, x]), float(q[b, i, x])
            if qx > 0 and u[b, i] < min(1.0, px / qx):
                tokens[b, i] = x
                n += 1
            else:
                break
        q_n = q[b, n] if n < gamma else torch.zeros_like(p[b, n])
        residuals.append(_residual(p[b, n].unsqueeze(0), q_n.unsqueeze(0)).squeeze(0))
        counts[b] = n + 1
    last = sample(torch.stack(residuals), generator)
    for b in range(batch):
        tokens[b, int(counts[b]) - 1] = last[b]
    return tokens, counts


def greedy_step(
    draft_tokens: torch.Tensor, target_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: accept while the target's argmax equals the draft token, then emit
    the target's argmax. Deterministic; the output equals the target's greedy decoding.

    draft_tokens (B, gamma), target_logits (B, gamma + 1, V) -> (tokens (B, gamma + 1), counts (B,))
    """
    gamma = draft_tokens.shape[1]
    best = target_logits.argmax(dim=-1)  # (B, gamma + 1)
    match = (best[:, :gamma] == draft_tokens).int()  # (B, gamma)
    n_accepted = match.cumprod(dim=-1).sum(dim=-1)  # (B,)
    positions = torch.arange(gamma + 1, device=best.device).unsqueeze(0)
    tokens = torch.where(positions <= n_accepted.unsqueeze(1), best, torch.zeros_like(best))
    return tokens, (n_accepted + 1).long()


def point_mass_step(
    draft_tokens: torch.Tensor,  # (B, gamma) int64: x_1..x_gamma, each proposed with q = 1
    p: torch.Tensor,  # (B, gamma + 1, V): target distributions at the gamma + 1 positions
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One speculative sampling step for proposals that are point masses (a proposer without a
    draft model: prompt lookup, suffix matching). With q_i = δ(x_i) the rule of
    `speculative_step` becomes: accept x_i with probability p_i(x_i); at the first rejection
    emit a token drawn from p_i with x_i removed and renormalised (norm(max(p - q, 0))); when
    all pass, a bonus token drawn from p_gamma. The output is distributed exactly as p.

    Returns (tokens (B, gamma + 1), counts (B,)) like `speculative_step`.
    """
    batch, gamma = draft_tokens.shape
    idx = draft_tokens.unsqueeze(-1)  # (B, gamma, 1)
    p_x = p[:, :gamma].gather(-1, idx).squeeze(-1)  # (B, gamma): p_i(x_i)
    u = torch.rand(batch, gamma, generator=generator, device=p.device)  # (B, gamma)
    accepted = u < p_x  # accept x_i w.p. min(1, p/1)
    n_accepted = accepted.int().cumprod(dim=-1).sum(dim=-1)  # (B,)
    rows = torch.arange(batch, device=p.device)
    p_n = p[rows, n_accepted].clone()  # (B, V): at the first rejection, or the bonus position
    rejected = n_accepted < gamma  # rows whose proposal at n was refused
    refused = torch.cat([draft_tokens, draft_tokens.new_zeros(batch, 1)], dim=1)[rows, n_accepted]
    p_n[rows[rejected], refused[rejected]] = 0.0  # p without the refused token
    last = sample(p_n / p_n.sum(dim=-1, keepdim=True).clamp_min(1e-30), generator)  # (B,)
    positions = torch.arange(gamma + 1, device=p.device).unsqueeze(0)
    padded = torch.cat([draft_tokens, draft_tokens.new_zeros(batch, 1)], dim=1)
    tokens = torch.where(positions < n_accepted.unsqueeze(1), padded, torch.zeros_like(padded))
    tokens[rows, n_accepted] = last
    return tokens, (n_accepted + 1).long()
