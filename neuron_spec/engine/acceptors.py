"""Acceptors: decide which draft tokens to keep. Usable by neuron-spec's engine and by
transformers-neuronx's SpeculativeGenerator (both API generations).

Each acceptor has
- `samples_draft`: whether drafts must be *sampled* from the warped draft distribution
  (lossless) or taken by argmax (greedy, neuronx-default);
- `accept(draft_ids (B, g), draft_logits (B, g, V) or None, target_logits (B, g+1, V))` ->
  `(tokens (B, g+1), counts (B,))`, explicit counts, for neuron-spec's own loop. Draft logits
  None: the proposals are point masses (a proposer without a draft model proposed them with
  certainty, q = δ(x)), which every acceptor handles;
- `__call__(draft_ids, draft_scores, target_scores)`, transformers-neuronx's TokenAcceptor
  convention: v1 (<= 0.12) passes `(1, k-1)`, `(k-1, V)`, `(k, V)` and expects `(1, n)`;
  v2 (0.12 on) passes `(bs, k-1)`, `(bs, k-1, V)`, `(bs, k, V)` and expects `(bs, k)` int64
  right-padded with 0.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple, Protocol

import torch

from ..config.spec import SamplingSpec
from ..errors import ConfigError, ConfigProblem
from .sampling import greedy_step, point_mass_step, sample, speculative_step, warp


class AcceptorCall(NamedTuple):
    """One call through the transformers-neuronx convention (row 0)."""

    drafted: int
    accepted: int  # drafts kept, by the acceptor's own count
    library_count: int  # tokens the library will commit: v2 counts non-zero ids


class Acceptor(Protocol):
    samples_draft: bool

    def accept(
        self,
        draft_ids: torch.Tensor,
        draft_logits: torch.Tensor | None,
        target_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def draft_token(self, draft_logits: torch.Tensor) -> torch.Tensor: ...


class _Base:
    """Shared plumbing: the transformers-neuronx call convention on top of `accept`."""

    samples_draft = False
    # a point-mass proposal x is kept exactly as often as the target's own next token is x
    # (true of greedy, lossless and transformers-neuronx's rule; not known of a user's)
    keeps_point_mass_as_drawn = True

    def __init__(
        self, sampling: SamplingSpec | None = None, generator: torch.Generator | None = None
    ):
        self.sampling = sampling or SamplingSpec()
        if generator is None:
            generator = torch.Generator()
            if self.sampling.seed is not None:
                generator.manual_seed(self.sampling.seed)
            else:
                generator.seed()
        self.generator = generator
        # Every call made through the transformers-neuronx convention: exact counts, beside
        # what the library will make of the result (v2 advances by its non-zero entries).
        self.calls: list[AcceptorCall] = []

    # Whether accept() reads the draft logits; the engine skips gathering them when not.
    uses_draft_logits = True

    def accept(
        self,
        draft_ids: torch.Tensor,
        draft_logits: torch.Tensor | None,
        target_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def draft_token(self, draft_logits: torch.Tensor) -> torch.Tensor:
        """Pick the next draft token from draft logits (B, V) -> (B,)."""
        return draft_logits.argmax(dim=-1)

    def __call__(
        self, draft_ids: torch.Tensor, draft_scores: torch.Tensor, target_scores: torch.Tensor
    ) -> torch.Tensor:
        if draft_scores.dim() == 2:  # v1: one sequence, no batch dimension on the scores
            tokens, counts = self.accept(
                draft_ids.reshape(1, -1), draft_scores.unsqueeze(0), target_scores.unsqueeze(0)
            )
            n = int(counts[0])
            self.calls.append(AcceptorCall(draft_ids.numel(), n - 1, n))
            return tokens[:, :n]
        tokens, counts = self.accept(draft_ids, draft_scores, target_scores)
        k = tokens.shape[1]
        keep = torch.arange(k, device=tokens.device).unsqueeze(0) < counts.unsqueeze(1)
        block = torch.where(keep, tokens, torch.zeros_like(tokens)).to(torch.int64)
        n = int(counts[0])
        self.calls.append(
            AcceptorCall(draft_ids.shape[1], n - 1, int(torch.count_nonzero(block[0])))
        )
        return block


class GreedyAcceptor(_Base):
    """Keep drafts while they equal the target's argmax; then the target's argmax.
    The output equals the target's own greedy decoding, token for token."""

    name = "greedy"
    uses_draft_logits = False

    def accept(
        self,
        draft_ids: torch.Tensor,
        draft_logits: torch.Tensor | None,
        target_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return greedy_step(draft_ids, target_logits)


class LosslessAcceptor(_Base):
    """Speculative sampling with the configured warping (temperature, top-k, top-p) applied to
    both distributions; drafts must be sampled from the warped draft distribution. The output
    is distributed exactly as sampling from the warped target. At temperature 0 it is greedy."""

    name = "lossless"
    samples_draft = True

    @property
    def uses_draft_logits(self) -> bool:  # type: ignore[override]
        return self.sampling.temperature > 0

    def _warp(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        return warp(logits, s.temperature, s.top_k, s.top_p)

    def draft_token(self, draft_logits: torch.Tensor) -> torch.Tensor:
        if self.sampling.temperature == 0:
            return draft_logits.argmax(dim=-1)
        return sample(self._warp(draft_logits), self.generator)

    def accept(
        self,
        draft_ids: torch.Tensor,
        draft_logits: torch.Tensor | None,
        target_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sampling.temperature == 0:
            return greedy_step(draft_ids, target_logits)
        p = self._warp(target_logits)  # (B, g+1, V)
        if draft_logits is None:  # point-mass proposals
            return point_mass_step(draft_ids, p, self.generator)
        q = self._warp(draft_logits)  # (B, g, V)
        return speculative_step(draft_ids, q, p, self.generator)


class NeuronxDefaultAcceptor(_Base):
    """transformers-neuronx's DefaultTokenAcceptor, reproduced for comparison: drafts by argmax,
    then the speculative-sampling rule on the raw softmax of both models, ignoring temperature,
    top-k and top-p. Because the drafts were not sampled from q, the output follows neither
    greedy decoding nor the target's distribution."""

    name = "neuronx-default"

    def accept(
        self,
        draft_ids: torch.Tensor,
        draft_logits: torch.Tensor | None,
        target_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(target_logits.float(), dim=-1)
        if draft_logits is None:
            return point_mass_step(draft_ids, p, self.generator)
        q = torch.softmax(draft_logits.float(), dim=-1)
        return speculative_step(draft_ids, q, p, self.generator)


class CallableAcceptor(_Base):
    """Adapts a user's transformers-neuronx-style acceptor (only `__call__`) to `accept`.

    The user's acceptor is called with v2 shapes; its zero-padded (bs, k) result is counted as
    transformers-neuronx counts it (non-zero entries), so a real token id 0 ends the count.
    """

    name = "custom"
    keeps_point_mass_as_drawn = False

    def __init__(self, inner: Any, sampling: SamplingSpec | None = None):
        super().__init__(sampling)
        self.inner = inner
        self.samples_draft = bool(getattr(inner, "samples_draft", False))

    def draft_token(self, draft_logits: torch.Tensor) -> torch.Tensor:
        fn = getattr(self.inner, "draft_token", None)
        return fn(draft_logits) if fn else draft_logits.argmax(dim=-1)

    def accept(
        self,
        draft_ids: torch.Tensor,
        draft_logits: torch.Tensor | None,
        target_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if draft_logits is None:  # point masses, as logits the user's acceptor can read
            draft_logits = point_mass_logits(draft_ids, target_logits.shape[-1])
        if hasattr(self.inner, "accept"):
            out: tuple[torch.Tensor, torch.Tensor] = self.inner.accept(
                draft_ids, draft_logits, target_logits
            )
            return out
        result = torch.as_tensor(self.inner(draft_ids, draft_logits, target_logits))
        if result.dim() == 1:
            result = result.unsqueeze(0)
        k = target_logits.shape[1]
        tokens = torch.zeros(result.shape[0], k, dtype=torch.long)
        tokens[:, : result.shape[1]] = result[:, :k].long()
        counts = (tokens != 0).int().cumprod(dim=-1).sum(dim=-1).clamp(min=1)
        return tokens, counts.long()


def point_mass_logits(draft_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """Logits (B, g, V) of point masses on draft_ids: 0 there, -inf elsewhere."""
    logits = torch.full((*draft_ids.shape, vocab), float("-inf"))
    return logits.scatter_(-1, draft_ids.unsqueeze(-1), 0.0)


BUILTIN: dict[str, type[_Base]] = {
    "greedy": GreedyAcceptor,
    "lossless": LosslessAcceptor,
    "neuronx-default": NeuronxDefaultAcceptor,
}


def make_acceptor(name: str, sampling: SamplingSpec, path: str = "speculation.acceptor") -> _Base:
    """Build the acceptor a config names: a built-in, or 'package.module:Class'."""
    if name in BUILTIN:
        return BUILTIN[name](sampling)
    module_name, _, class_name = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            [
                ConfigProblem(
                    path,
                    f"cannot import acceptor {name!r}: {exc}.",
                    "check the module is importable (on PYTHONPATH) and the class name.",
                )
            ]
        ) from None
    try:
        inner = cls(sampling) if _takes_argument(cls) else cls()
    except Exception as exc:  # a user's constructor: report, don't crash
        raise ConfigError(
            [ConfigProblem(path, f"constructing {name} failed: {type(exc).__name__}: {exc}.")]
        ) from None
    if isinstance(inner, _Base):
        return inner
    return CallableAcceptor(inner, sampling)


def _takes_argument(cls: type) -> bool:
    import inspect

    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


class SampledDraftProvider:
    """A transformers-neuronx `DraftProvider` whose drafts are *sampled* from the warped
    draft distribution, the companion of LosslessAcceptor on the Neuron path.

    transformers-neuronx's own DraftModelForSpeculation drafts by argmax, which breaks the
    speculative-sampling guarantee. This provider keeps its call convention:
    `__call__(input_ids, k, cache_ids=None, start_ids=None) -> (tokens, scores)`.
    - cache_ids None or starting at 0: context encoding; one token, scores (batch, vocab).
    - otherwise: k tokens drafted one at a time; tokens (batch, k) and the scores in the
      shape each loop generation hands on: v1 passes them to the acceptor unchanged and
      expects (k, vocab) (batch 1); v2 transposes (k, batch, vocab) itself.
    Scores are the draft's raw logits, so the acceptor warps p and q the same way.

    `model(input_ids, cache_ids, start_ids)` must return the logits of the last position,
    (batch, vocab), as LlamaForSampling's forward does.
    """

    def __init__(self, model: Any, acceptor: _Base, api: str = "v2"):
        if api not in ("v1", "v2"):
            raise ValueError(f"api must be 'v1' or 'v2', got {api!r}")
        self.model = model
        self.acceptor = acceptor  # provides the warping and the seeded generator
        self.api = api

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        return self.acceptor.draft_token(logits).reshape(-1, 1).to(torch.int64)  # (batch, 1)

    def __call__(
        self,
        input_ids: torch.Tensor,
        k: int,
        cache_ids: torch.Tensor | None = None,
        start_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = input_ids.shape[0]
        start = 0 if cache_ids is None else int(cache_ids.reshape(-1)[0])
        logits = self.model(input_ids, cache_ids, start_ids)  # (batch, vocab)
        if start == 0:
            return self._pick(logits), logits
        tokens, scores = [], []
        for i in range(k):
            token = self._pick(logits)
            tokens.append(token)
            scores.append(logits)
            if i == k - 1:
                break
            position = torch.full((batch,), start + i + 1, dtype=torch.int32)
            next_cache = position if batch == 1 else position.reshape(batch, 1)
            logits = self.model(token, next_cache, start_ids)
        if self.api == "v1":
            return torch.cat(tokens, dim=1), torch.cat(scores, dim=0)  # (k, vocab)
        return torch.cat(tokens, dim=1), torch.stack(scores)  # (k, batch, vocab)
