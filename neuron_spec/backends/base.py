"""The contract between the backends and everything above them.

A backend loads a draft/target pair for some hardware and exposes it as a `Backend`: it
decodes token ids through neuron-spec's engine (`decode`), hands the engine the Runners of a
continuous batch when its models can batch (`batch_runners`), and says what it worked around
(`warnings`). A `Generator` wraps a Backend with its tokenizer and the config: text in, text and
figures out, one request as a row of a continuous batch. The CLI, the server and the SageMaker
entry point hold a Generator; each backend module's `load(cfg, progress)` returns one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..config.spec import ConfigFile, SamplingSpec
from ..engine.acceptors import Acceptor, make_acceptor
from ..engine.generation import (
    Ending,
    Generation,
    RequestTooLong,
    TextCallback,
    TextStream,
    compute_metrics,
    output_token_seconds,
)
from ..engine.loop import (
    Batch,
    Decode,
    EngineResult,
    ProposerFactory,
    Row,
    StreamCallback,
    TokenLogprob,
    logprobs_of,
)
from ..engine.policy import LengthPolicy
from ..engine.proposers import PromptLookup, SuffixLookup, SuffixStore
from ..engine.runner import Runner

Progress = Callable[[str], None]
RunnerPair = tuple[Runner, Runner | None]  # the target's and the draft's


class Backend(Protocol):
    """A loaded pair (or a target alone, for proposers without a draft model) on its
    hardware."""

    name: str  # "reference" | "neuronx" | "nxdi"
    device: str  # "cpu", "cuda", "neuron"
    # what a token of verify width is assumed to cost, as a share of a one-token pass, until
    # the engine has measured it: a CPU's matrix products grow with the width, an
    # accelerator's memory-bound pass barely does
    width_cost: float
    # what loading did, model by model, in order: (role, "loaded" | "compiled"), where the
    # backend compiles (a compiled-artifact cache hit loads, a miss compiles); empty where
    # nothing is compiled (reference)
    events: list[tuple[str, str]]

    def decode(
        self, prompts: Sequence[Sequence[int]], acceptor: Acceptor, how: Decode
    ) -> EngineResult:
        """Generate for every prompt (token ids) through the engine."""
        ...

    def batch_runners(self, slots: int) -> RunnerPair | None:
        """The target's Runner and the draft model's (None when none is loaded) for a
        continuous batch of `slots` rows; None when the compiled models decode one sequence
        at a time."""
        ...

    def verify_width(self, gamma: int) -> int:
        """How wide the target's pass is when a step proposes gamma tokens: gamma + 1 where
        the width is free (PyTorch), the compiled window where it is not (Neuron)."""
        ...

    def warnings(self) -> list[str]:
        """What the backend could not do but worked around (never fatal, never silent)."""
        ...

    def device_memory_peak(self) -> int | None:
        """The most device memory the models have held, in bytes, where the device says
        (a CUDA GPU); None where it does not (the CPU, NeuronCores through these libraries)."""
        ...


class Generator:
    """A loaded pair with its tokenizer: `generate` text as often as you like, or make each
    request a row of a continuous batch (`open_batch`, `row`)."""

    def __init__(
        self,
        cfg: ConfigFile,
        backend: Backend,
        tokenizer: Any,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        max_prompt_tokens: int | None = None,
    ):
        self.cfg = cfg
        self.spec = cfg.spec
        self.backend = backend
        self.tokenizer = tokenizer
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.max_prompt_tokens = max_prompt_tokens  # a backend compiled for shorter prompts
        sp = cfg.spec.speculation
        # earlier outputs, for the suffix proposer: one store for as long as the pair is loaded
        self.suffix = SuffixStore(sp.ngram_min, sp.ngram_max, sp.suffix_tokens)
        self.policies: dict[tuple[str, int], LengthPolicy] = {}  # what the policies learned

    def lookup(self, method: str) -> ProposerFactory | None:
        """Fresh lookup proposers for `method`; None for the draft model."""
        sp = self.spec.speculation
        if method == "ngram":
            return lambda _slots: PromptLookup(sp.ngram_min, sp.ngram_max)
        if method == "suffix":
            return lambda _slots: SuffixLookup(self.suffix, sp.ngram_min, sp.ngram_max)
        return None

    def policy(self, method: str, gamma: int, adaptive: bool | None = None) -> LengthPolicy | None:
        """The length policy for `method` at up to `gamma` tokens (kept across calls: what it
        measured stays true for the loaded pair); None when lengths are fixed."""
        if gamma == 0 or not (self.spec.speculation.adaptive if adaptive is None else adaptive):
            return None
        key = (method, gamma)
        if key not in self.policies:
            self.policies[key] = LengthPolicy(
                gamma,
                self.backend.verify_width,
                draft_passes=method == "draft",
                token_share=self.backend.width_cost,
            )
        return self.policies[key]

    def method(self, method: str | None) -> str:
        """The proposal method of a call: the config's unless given; a draft model must be
        loaded for `draft`."""
        chosen = method or self.spec.speculation.method
        if chosen == "draft" and self.spec.draft_model is None:
            raise ValueError(
                "speculation.method draft needs a draft model and this config loads none; use "
                "ngram or suffix, or add a draft: section with method: draft"
            )
        return chosen

    @property
    def device(self) -> str:
        return self.backend.device

    def warnings(self) -> list[str]:
        return self.backend.warnings()

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        ids = [list(self.tokenizer(p).input_ids) for p in prompts]
        for p, row in zip(prompts, ids, strict=True):
            if not row:
                raise ValueError(f"prompt {p!r} encodes to no tokens")
        return ids

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        draft_tokens: int | None = None,
        on_text: TextCallback | None = None,
        prompt_token_ids: Sequence[Sequence[int]] | None = None,
        stop: Sequence[str] = (),
        cancelled: Callable[[], bool] | None = None,
        method: str | None = None,
        adaptive: bool | None = None,
        ending: Ending | None = None,
        on_tokens: StreamCallback | None = None,
    ) -> Generation:
        """Generate for one prompt or a batch. `method` and `adaptive` override the config's
        speculation.method and speculation.adaptive for this call. `on_text(row, delta)`
        receives text as tokens are accepted; `stop` strings end a row (the text is cut
        before the stop string, which is not returned); `cancelled()` is polled between steps
        and aborts the call with GenerationCancelled when it turns true. `ending` gives the
        stop strings (instead of `stop`) and how rows end (engine.generation.Ending);
        `on_tokens(row, new)` sees each row's accepted tokens before their text."""
        ending = _ending(stop, ending)
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = (
            [list(p) for p in prompt_token_ids]
            if prompt_token_ids is not None
            else self.encode(batch)
        )
        max_new = max_new_tokens or self.spec.generation.max_new_tokens
        self.check_lengths(ids, max_new)
        sampling = self._sampling(temperature, top_k, top_p, seed)
        acceptor = make_acceptor(self.spec.speculation.acceptor, sampling)
        gamma = self.spec.speculation.draft_tokens if draft_tokens is None else draft_tokens
        chosen = self.method(method)
        stream = TextStream(self.tokenizer, len(ids), on_text, ending)
        how = Decode(
            draft_tokens=gamma,
            max_new_tokens=max_new,
            eos_token_ids=sorted(ending.finishing_ids(self.eos_token_ids)),
            pad_token_id=self.pad_token_id,
            on_tokens=_watched(stream, on_tokens),
            cancelled=cancelled,
            lookup=self.lookup(chosen),
            policy=self.policy(chosen, gamma, adaptive),
            min_new_tokens=ending.min_tokens,
        )
        res = self.backend.decode(ids, acceptor, how)
        texts = stream.finish(res.tokens)
        metrics = compute_metrics(res, sum(len(p) for p in ids), gamma, chosen)
        out = Generation(texts, res.tokens, res.finished_by_eos, metrics, ids, stream.stopped)
        out.token_seconds = output_token_seconds(res)
        return out

    def open_batch(self, slots: int) -> Batch | None:
        """A continuous batch of `slots` rows on this pair, or None when the backend decodes
        one sequence at a time (then requests run one after another)."""
        pair = self.backend.batch_runners(slots)
        if pair is None:
            return None
        target, draft = pair
        gamma = self.spec.speculation.draft_tokens
        method = self.method(None)
        lookup = self.lookup(method)
        return Batch(
            target,
            lookup(slots) if lookup is not None else draft,
            slots,
            draft_tokens=gamma,
            pad_token_id=self.pad_token_id,
            policy=self.policy(method, gamma),
            history=False,  # each row keeps its own steps; the batch may run for days
        )

    def row(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        logprobs: int | None = None,
        ending: Ending | None = None,
    ) -> tuple[Row, Callable[[], Generation]]:
        """One request as a row of a continuous batch (see `open_batch`), with its own
        sampling, seed, stop strings and budget; and the function that turns the finished
        row into its Generation. `logprobs`: N to record each emitted token's log-probability
        under the target and the N most likely alternatives (None: not recorded). `ending`:
        as in `generate`."""
        ending = _ending(stop, ending)
        ids = [list(prompt_ids)]
        max_new = max_new_tokens or self.spec.generation.max_new_tokens
        self.check_lengths(ids, max_new)
        sampling = self._sampling(temperature, top_k, top_p, seed)
        acceptor = make_acceptor(self.spec.speculation.acceptor, sampling)
        text_cb = None if on_text is None else (lambda _row, delta: on_text(delta))
        stream = TextStream(self.tokenizer, 1, text_cb, ending)
        callback = (lambda new: stream.on_tokens(0, new)) if stream.active else None
        eos = ending.finishing_ids(self.eos_token_ids)
        row = Row(ids[0], max_new, eos, acceptor, callback, cancelled, logprobs=logprobs)
        row.min_new = ending.min_tokens
        # a request that gives its own seed and samples always drafts, so it draws its random
        # numbers as it does alone (its output equals the output alone only while its logits
        # do too: see max_batch_rows in the metrics)
        row.pinned = seed is not None and sampling.temperature > 0

        def finish() -> Generation:
            res = row.result
            texts = stream.finish(res.tokens)
            sp = self.spec.speculation
            metrics = compute_metrics(res, len(ids[0]), sp.draft_tokens, sp.method)
            gen = Generation(texts, res.tokens, res.finished_by_eos, metrics, ids, stream.stopped)
            gen.logprobs = None if logprobs is None else [row.token_logprobs]
            return gen

        return row, finish

    @property
    def scores_prompts(self) -> bool:
        """Whether the backend returns the target's logits over a prompt (`prompt_logprobs`)."""
        return hasattr(self.backend, "prompt_logits")

    def prompt_logprobs(self, ids: Sequence[int], top: int) -> list[TokenLogprob | None]:
        """Each prompt token's log-probability under the target given the tokens before it,
        and the `top` most likely tokens there; None for the first token, which has no
        context. NotImplementedError where the backend cannot return prompt logits."""
        scorer = getattr(self.backend, "prompt_logits", None)
        if scorer is None:
            raise NotImplementedError(
                f"the {self.backend.name} backend returns the logits of a prompt's last "
                "position only"
            )
        out: list[TokenLogprob | None] = [None]
        for logits in scorer(ids):  # (n, V): the next tokens' logits
            out += logprobs_of(logits, list(ids[len(out) : len(out) + len(logits)]), top)
        return out

    def _sampling(
        self,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
    ) -> SamplingSpec:
        """The config's sampling with this call's overrides."""
        s = self.spec.sampling
        return SamplingSpec(
            temperature=s.temperature if temperature is None else float(temperature),
            top_k=s.top_k if top_k is None else top_k,
            top_p=s.top_p if top_p is None else float(top_p),
            seed=s.seed if seed is None else seed,
        )

    @property
    def n_positions(self) -> int:
        """The longest sequence (prompt + generated) every loaded model is configured for."""
        return self.spec.n_positions

    def check_lengths(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
        """Refuse a request that cannot fit n_positions before any model runs (ValueError,
        which the CLI shows as a usage error and the server as a 400)."""
        limit = self.n_positions
        longest = max(len(p) for p in prompts)
        if self.max_prompt_tokens is not None and longest > self.max_prompt_tokens:
            raise RequestTooLong(
                f"the prompt has {longest} tokens; the models' prompt encoding was compiled for "
                f"at most {self.max_prompt_tokens} (generation.max_prompt_tokens). Fix: shorten "
                "the prompt, or raise generation.max_prompt_tokens and load again.",
                "prompt",
            )
        if longest + max_new_tokens > limit:
            raise RequestTooLong(
                f"the prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = "
                f"{longest + max_new_tokens} exceeds n_positions={limit}, the longest sequence "
                "the models were configured for. Fix: shorten the prompt, lower "
                "max_new_tokens, or raise n_positions in the config."
            )


def _ending(stop: Sequence[str], ending: Ending | None) -> Ending:
    """The call's Ending: `ending`, or `stop` strings alone (never both)."""
    if ending is None:
        return Ending(stop=tuple(s for s in stop if s))
    if stop:
        raise ValueError("give stop strings in `ending` or in `stop`, not both")
    return ending


def _watched(stream: TextStream, on_tokens: StreamCallback | None) -> StreamCallback | None:
    """The engine's token callback: `on_tokens` (when given), then the text stream's."""
    if on_tokens is None:
        return stream.on_tokens if stream.active else None

    def both(row: int, new: list[int]) -> bool:
        on_tokens(row, new)
        return stream.on_tokens(row, new) if stream.active else False

    return both
