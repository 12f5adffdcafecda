"""The transformers-neuronx backend against the test double (API v1 and v2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from neuron_spec.backends import load_generator
from neuron_spec.backends.artifacts import verify
from neuron_spec.config.spec import load_config
from neuron_spec.errors import BackendUnavailableError

from .neuron_fixtures import (
    clean_neuron_env,  # noqa: F401  (autouse: the Neuron environment undone)
    drive_continuous_batch,
    make_checkpoint,
    reset_cores,
    use_double,
)

pytestmark = pytest.mark.reference
V1, V2 = "0.11.351", "0.13.322"
PROMPTS = ["w1 w5 w9 w3", "w7 w7 w2", "w40 w41 w42 w43 w44"]


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    target = make_checkpoint(root / "target", seed=0)
    draft = make_checkpoint(root / "draft", seed=0, noise=0.003, base=target)
    return target, draft


def write_config(
    tmp_path: Path,
    target: Path,
    draft: Path,
    backend: str,
    *,
    tp: int = 32,
    acceptor: str = "greedy",
    temperature: float = 0.0,
    extra: str = "",
    loop: str | None = None,
) -> Path:
    cfg = tmp_path / f"{backend}-{tp}-{acceptor}.yaml"
    cfg.write_text(
        f"instance: trn1.32xlarge\nbackend: {backend}\n"
        f"target: {{model: {target}, amp: f32, tp_degree: {tp}, n_positions: 256}}\n"
        f"draft: {{model: {draft}, amp: f32, tp_degree: {tp}, n_positions: 256}}\n"
        f"speculation: {{draft_tokens: 3, acceptor: {acceptor}, adaptive: false"
        f"{f', loop: {loop}' if loop else ''}}}\n"
        f"sampling: {{temperature: {temperature}, seed: 4}}\n"
        f"generation: {{max_new_tokens: 20, max_prompt_tokens: 32}}\n"
        f"compile: {{artifact_cache: {tmp_path / 'compiled'}}}\n{extra}"
    )
    return cfg


@pytest.mark.parametrize("version", [V1, V2])
def test_greedy_neuronx_equals_reference(tmp_path, monkeypatch, pair_dirs, version):
    use_double(monkeypatch, version)
    target, draft = pair_dirs
    neuron = load_generator(load_config(write_config(tmp_path, target, draft, "neuronx")))
    reference = load_generator(load_config(write_config(tmp_path, target, draft, "reference")))
    drafted = accepted = 0
    for prompt in PROMPTS:
        a = neuron.generate(prompt)
        b = reference.generate(prompt)
        assert a.token_ids == b.token_ids
        assert a.text == b.text
        assert len(a.token_ids[0]) == 20 or a.finished_by_eos[0]
        drafted += a.metrics.drafted
        accepted += a.metrics.accepted
    assert drafted > 0 and 0 < accepted <= drafted  # exact counts, from the acceptor's records
    pair = neuron.backend
    # kwargs come only from the validated spec: nothing the library would silently ignore
    assert pair.draft.ignored_kwargs == {} and pair.target.ignored_kwargs == {}
    assert list(pair.target.speculation) == [(4, 1)]  # window = draft_tokens + 1
    assert os.environ["NEURON_RT_VISIBLE_CORES"] == "0-31"


@pytest.mark.parametrize("version", [V1, V2])
def test_second_run_loads_compiled_artifacts(tmp_path, monkeypatch, pair_dirs, version):
    use_double(monkeypatch, version)
    import transformers_neuronx._runtime as runtime

    target, draft = pair_dirs
    cfg = load_config(write_config(tmp_path, target, draft, "neuronx"))
    first = load_generator(cfg)
    assert first.backend.events == [("draft", "compiled"), ("target", "compiled")]
    out1 = first.generate(PROMPTS[0]).token_ids
    reset_cores()  # a new process
    second = load_generator(cfg)
    assert second.backend.events == [("draft", "loaded"), ("target", "loaded")]
    assert [e["event"] for e in runtime.events] == ["load", "load"]
    assert second.generate(PROMPTS[0]).token_ids == out1
    entries = sorted(p for p in (tmp_path / "compiled").iterdir() if not p.name.startswith("."))
    assert len(entries) == 2 and all(verify(e) is None for e in entries)
    assert (tmp_path / "compiled" / ".neuron-spec-cache").is_file()  # prune knows its own


@pytest.mark.parametrize("version", [V1, V2])
def test_corrupted_entry_is_rebuilt_not_loaded(tmp_path, monkeypatch, pair_dirs, version):
    use_double(monkeypatch, version)
    import transformers_neuronx._runtime as runtime

    target, draft = pair_dirs
    cfg = load_config(write_config(tmp_path, target, draft, "neuronx"))
    gen = load_generator(cfg)
    target_key = gen.backend.plan.target.cache_key
    neff = next((tmp_path / "compiled" / target_key).glob("*.neff"))
    neff.write_bytes(neff.read_bytes()[:-10] + b"corrupted!")  # same size, wrong bytes
    reset_cores()
    again = load_generator(cfg)
    assert again.backend.events == [("draft", "loaded"), ("target", "compiled")]
    assert [e["event"] for e in runtime.events] == ["load", "compile"]
    assert verify(tmp_path / "compiled" / target_key) is None
    assert any("fails its checksum" in w for w in again.backend.cache.warnings)


def test_partial_entry_without_manifest_is_never_loaded(tmp_path, monkeypatch, pair_dirs):
    use_double(monkeypatch, V2)
    target, draft = pair_dirs
    cfg = load_config(write_config(tmp_path, target, draft, "neuronx"))
    gen = load_generator(cfg)
    key = gen.backend.plan.draft.cache_key
    (tmp_path / "compiled" / key / "manifest.json").unlink()  # as if killed mid-write
    reset_cores()
    again = load_generator(cfg)
    assert again.backend.events[0] == ("draft", "compiled")


def test_lossless_sampling_uses_the_sampled_draft_provider(tmp_path, monkeypatch, pair_dirs):
    use_double(monkeypatch, V2)
    import transformers_neuronx.speculation as spec_mod

    seen = []
    original = spec_mod.SpeculativeGenerator.__init__

    def spy(self, draft, target, k=4, acceptor=None):
        seen.append(type(draft).__name__)
        original(self, draft, target, k, acceptor)

    monkeypatch.setattr(spec_mod.SpeculativeGenerator, "__init__", spy)
    target, draft = pair_dirs
    cfg = write_config(
        tmp_path, target, draft, "neuronx", acceptor="lossless", temperature=0.8, loop="library"
    )
    gen = load_generator(load_config(cfg))
    a = gen.generate(PROMPTS[1], seed=11)
    b = gen.generate(PROMPTS[1], seed=11)
    assert seen == ["SampledDraftProvider", "SampledDraftProvider"]
    assert a.token_ids == b.token_ids  # seeded
    assert a.metrics.drafted >= a.metrics.accepted


def test_different_tp_for_a_second_model_fails_like_the_runtime(tmp_path, monkeypatch, pair_dirs):
    use_double(monkeypatch, V2)
    from transformers_neuronx import LlamaForSampling

    target, draft = pair_dirs
    a = LlamaForSampling.from_pretrained(str(draft), n_positions=128, amp="f32", tp_degree=8)
    a.to_neuron()
    b = LlamaForSampling.from_pretrained(str(target), n_positions=128, amp="f32", tp_degree=16)
    with pytest.raises(RuntimeError, match="nrt_load_collectives"):
        b.to_neuron()


def test_missing_library_is_a_clear_error(tmp_path, pair_dirs, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers_neuronx", None)  # import fails
    target, draft = pair_dirs
    with pytest.raises(BackendUnavailableError, match="Deep Learning AMI"):
        load_generator(load_config(write_config(tmp_path, target, draft, "neuronx")))


def test_bin_checkpoint_is_split_once_and_tokenizer_stays(tmp_path, monkeypatch, pair_dirs):
    use_double(monkeypatch, V2)
    target, _ = pair_dirs
    draft_bin = make_checkpoint(
        tmp_path / "draft-bin", seed=0, noise=0.003, base=target, bin_format=True
    )
    cfg = load_config(write_config(tmp_path, target, draft_bin, "neuronx"))
    gen = load_generator(cfg)
    plan = gen.backend.plan
    assert plan.draft.prepare == "split"
    split = Path(plan.draft.checkpoint)
    assert (split / "pytorch_model.bin" / "key_to_filename.json").is_file()
    assert plan.draft.tokenizer == str(draft_bin)
    assert gen.generate(PROMPTS[0]).token_ids  # generates from the split checkpoint


def test_bench_compares_target_sample_with_the_compiled_window(tmp_path, monkeypatch, pair_dirs):
    use_double(monkeypatch, V2)
    from neuron_spec.errors import UsageError
    from neuron_spec.planning.bench import run_bench

    target, draft = pair_dirs
    gen = load_generator(load_config(write_config(tmp_path, target, draft, "neuronx")))
    report = run_bench(gen, PROMPTS[:1] + PROMPTS[2:], [3], max_new=12)
    row = report["speculative"][0]
    assert row["draft_tokens"] == 3 and row["outputs_match_target"] is True
    assert report["baseline"]["new_tokens"] == row["new_tokens"]
    with pytest.raises(UsageError, match="compiled for draft_tokens=3"):
        gen.generate(PROMPTS[0], draft_tokens=5)


# --- both loops, every release --------------------------------------------------------------

RELEASES = ["0.11.351", "0.12.313", "0.13.322"]
CASES = [(v, loop) for v in RELEASES for loop in ("library", "engine")]


def loop_config(tmp_path, target, draft, backend, loop="library", *, sampling="", eos=""):
    """n_positions 24 with max_new_tokens 20: a 4-token prompt fills it exactly. loop None
    leaves the key out: the default loop. Every step proposes draft_tokens (adaptive off): the
    loops are compared step for step, and the tiny random pair's low acceptance would
    otherwise teach the engine to stop proposing."""
    cfg = tmp_path / f"{backend}-{loop}.yaml"
    chosen = f", loop: {loop}" if loop else ""
    cfg.write_text(
        f"instance: trn1.32xlarge\nbackend: {backend}\n"
        f"target: {{model: {target}, amp: f32, tp_degree: 32, n_positions: 24}}\n"
        f"draft: {{model: {draft}, amp: f32, tp_degree: 32, n_positions: 24}}\n"
        f"speculation: {{draft_tokens: 3, acceptor: {'lossless' if sampling else 'greedy'}"
        f"{chosen}, adaptive: false}}\n"
        f"sampling: {{{sampling or 'temperature: 0'}, seed: 4}}\n"
        f"generation: {{max_new_tokens: 20, max_prompt_tokens: 4{eos}}}\n"
        f"compile: {{artifact_cache: {tmp_path / 'compiled'}}}\n"
    )
    return load_config(cfg)


def streamed(gen, prompt, **kwargs):
    parts: list[str] = []
    result = gen.generate(prompt, on_text=lambda _r, t: parts.append(t), **kwargs)
    return result, "".join(parts)


@pytest.mark.parametrize("version,loop", CASES)
def test_every_loop_on_every_release(tmp_path, monkeypatch, pair_dirs, version, loop):
    use_double(monkeypatch, version, tmp_path / "meta")
    from neuron_spec.engine.generation import RequestTooLong

    target, draft = pair_dirs
    eos = ", eos_token_id: 95"  # rarely generated: every output runs to max_new_tokens
    reference = load_generator(loop_config(tmp_path, target, draft, "reference", eos=eos))
    neuron = load_generator(loop_config(tmp_path, target, draft, "neuronx", loop, eos=eos))
    assert neuron.backend.api == ("v1" if version.startswith("0.11") else "v2")
    for prompt in PROMPTS[:2]:  # 4 and 3 tokens: prompt + 20 new tokens reaches n_positions
        want = reference.generate(prompt)
        got, text = streamed(neuron, prompt)
        assert got.token_ids == want.token_ids  # greedy: token for token
        assert text == got.text[0]  # the stream is exactly the generated text
        assert len(got.token_ids[0]) == 20
        assert got.metrics.drafted > 0 and got.metrics.accepted <= got.metrics.drafted
        tpot = got.metrics.time_per_output_token_s
        assert tpot["p50"] is not None and tpot["p99"] >= tpot["p50"] > 0
        assert got.metrics.time_to_first_token_s > 0
    with pytest.raises(RequestTooLong, match="n_positions=24"):
        neuron.generate(PROMPTS[2])  # 5 tokens + 20 > 24
    sampled, text = streamed(neuron, PROMPTS[0], temperature=0.8, draft_tokens=0)
    assert text == sampled.text[0] and (
        len(sampled.token_ids[0]) == 20 or sampled.finished_by_eos[0]
    )


@pytest.mark.parametrize("version,loop", CASES)
def test_lossless_sampling_gives_exactly_max_new_tokens(
    tmp_path, monkeypatch, pair_dirs, version, loop
):
    use_double(monkeypatch, version, tmp_path / "meta")
    target, draft = pair_dirs
    cfg = loop_config(
        tmp_path,
        target,
        draft,
        "neuronx",
        loop,
        sampling="temperature: 0.8",
        eos=", eos_token_id: 95",
    )
    neuron = load_generator(cfg)
    for seed in (1, 2):
        got, text = streamed(neuron, PROMPTS[0], seed=seed)
        assert len(got.token_ids[0]) == 20 and text == got.text[0]
        again = neuron.generate(PROMPTS[0], seed=seed)
        assert again.token_ids == got.token_ids  # seeded


@pytest.mark.parametrize("version,loop", CASES)
def test_an_eos_list_ends_the_text_at_any_of_its_ids(
    tmp_path, monkeypatch, pair_dirs, version, loop
):
    use_double(monkeypatch, version, tmp_path / "meta")
    target, draft = pair_dirs
    plain = load_generator(
        loop_config(tmp_path, target, draft, "reference", eos=", eos_token_id: 95")
    )
    greedy = plain.generate(PROMPTS[0]).token_ids[0]
    b = greedy[7]
    cut = greedy[: greedy.index(b) + 1]
    a = next(t for t in range(3, 96) if t not in greedy)
    cfg = loop_config(tmp_path, target, draft, "neuronx", loop, eos=f", eos_token_id: [{a}, {b}]")
    neuron = load_generator(cfg)
    got, text = streamed(neuron, PROMPTS[0])
    assert got.token_ids[0] == cut and got.finished_by_eos[0] and text == got.text[0]
    b_position = 4 + len(cut) - 1
    starts = [s for name, s, _w in neuron.backend.target.calls if name == "speculative_forward"]
    assert max(starts) < b_position  # no window was verified after the one that emitted b


@pytest.mark.parametrize("version", RELEASES)
def test_a_target_that_emits_id_0_engine_loop_equals_reference(
    tmp_path, monkeypatch, pair_dirs, version
):
    use_double(monkeypatch, version, tmp_path / "meta")
    target, draft = pair_dirs
    plain = load_generator(loop_config(tmp_path, target, draft, "reference"))
    greedy = plain.generate(PROMPTS[0]).token_ids[0]
    swapped_t = swap_ids(target, tmp_path / "t0", 0, greedy[2])
    swapped_d = swap_ids(draft, tmp_path / "d0", 0, greedy[2])
    ids = [[1, 5, 9, 3]]
    ref = load_generator(loop_config(tmp_path, swapped_t, swapped_d, "reference"))
    eng = load_generator(loop_config(tmp_path, swapped_t, swapped_d, "neuronx", "engine"))
    want = ref.generate("", prompt_token_ids=ids).token_ids[0]
    assert 0 in want
    assert eng.generate("", prompt_token_ids=ids).token_ids[0] == want
    reset_cores()
    default = load_generator(loop_config(tmp_path, swapped_t, swapped_d, "neuronx", None))
    assert default.backend.loop == "engine"  # the default loop keeps id 0 too
    assert default.generate("", prompt_token_ids=ids).token_ids[0] == want


@pytest.mark.parametrize("version", RELEASES)
def test_the_default_loop_is_the_exact_one_and_runs_the_target_alone(
    tmp_path, monkeypatch, pair_dirs, version
):
    """No `loop:` in the config: the engine drives the pair (exact first token when sampling);
    `--draft-tokens 0` samples from the target alone to exactly max_new_tokens."""
    use_double(monkeypatch, version, tmp_path / "meta")
    target, draft = pair_dirs
    cfg = loop_config(tmp_path, target, draft, "neuronx", None, sampling="temperature: 0.8")
    assert cfg.spec.speculation.loop == "engine"
    gen = load_generator(cfg)
    assert gen.backend.loop == "engine"
    alone = gen.generate("", prompt_token_ids=[[1, 5, 9, 3]], draft_tokens=0, max_new_tokens=12)
    assert len(alone.token_ids[0]) == 12 and alone.metrics.drafted == 0
    both = gen.generate("", prompt_token_ids=[[1, 5, 9, 3]], max_new_tokens=12)
    assert len(both.token_ids[0]) == 12 and both.metrics.drafted > 0


def swap_ids(src: Path, dst: Path, a: int, b: int) -> Path:
    """The same model with token ids a and b exchanged (embedding and output rows)."""
    import shutil

    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for weight in (model.model.embed_tokens.weight, model.lm_head.weight):
            weight[[a, b]] = weight[[b, a]]
    model.save_pretrained(dst)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    return dst


def test_stale_artifacts_are_freed_before_recompiling(tmp_path, monkeypatch, pair_dirs):
    """An entry that verifies but whose NEFFs match no graph of this model: to_neuron() has
    loaded the weights before it fails, so the retry must free them (the device holds two)."""
    use_double(monkeypatch, V2)
    from neuron_spec.backends.artifacts import ArtifactCache

    target, draft = pair_dirs
    cfg = load_config(write_config(tmp_path, target, draft, "neuronx"))
    key = load_generator(cfg).backend.plan.target.cache_key
    reset_cores()
    cache = ArtifactCache(tmp_path / "compiled")
    cache.discard(key)
    cache.store(key, lambda d: (d / "0123456789abcdef0123.neff").write_bytes(b"other"), {})
    again = load_generator(cfg)
    assert again.backend.events == [("draft", "loaded"), ("target", "compiled")]
    assert any("do not match" in w for w in again.backend.cache.warnings)
    assert again.generate(PROMPTS[0]).token_ids


def test_an_exported_cc_flags_that_differs_from_the_config_is_refused(
    tmp_path, monkeypatch, pair_dirs
):
    use_double(monkeypatch, V2)
    from neuron_spec.errors import UsageError

    target, draft = pair_dirs
    cfg = write_config(tmp_path, target, draft, "neuronx", extra="compile: {cc_flags: -O1}\n")
    text = cfg.read_text().replace(f"compile: {{artifact_cache: {tmp_path / 'compiled'}}}\n", "")
    cfg.write_text(text)
    monkeypatch.setenv("NEURON_CC_FLAGS", "-O2")
    with pytest.raises(UsageError, match="NEURON_CC_FLAGS is exported as '-O2'"):
        load_generator(load_config(cfg))
    monkeypatch.setenv("NEURON_CC_FLAGS", "-O1")
    gen = load_generator(load_config(cfg))
    assert gen.backend.plan.target.key_material["NEURON_CC_FLAGS"] == "-O1"


class _Markov:
    """A network whose next-token logits depend on the last token only (5 live tokens)."""

    def __init__(self, probs: torch.Tensor, vocab: int):
        self.logits = torch.full((probs.shape[0], vocab), float("-inf"))
        self.logits[:, : probs.shape[1]] = probs.log()

    def __call__(self, ids):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.logits[ids[0]].unsqueeze(0))


def _chain(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(5, 5, generator=g) * 1.5, dim=-1)


@pytest.mark.slow  # a sampling campaign (2000 runs each); the acceptor's: test_sampling.py
@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 3)])
def test_engine_loop_is_lossless_including_the_first_token(
    monkeypatch, pair_dirs, temperature, top_k
):
    """Chi-square of the first token and of whole 3-token outputs against the warped target
    chain, through the double's graphs and positional caches."""
    from scipy.stats import chisquare

    from neuron_spec.backends.neuronx.runner import NeuronxRunner
    from neuron_spec.config.spec import SamplingSpec
    from neuron_spec.engine.acceptors import LosslessAcceptor
    from neuron_spec.engine.loop import speculative_generate
    from neuron_spec.engine.sampling import warp

    use_double(monkeypatch, V2)
    from transformers_neuronx import LlamaForSampling

    target_path, draft_path = pair_dirs
    p, q = _chain(1), _chain(2)
    models = []
    for path, probs, window in ((target_path, p, 3), (draft_path, q, None)):
        m = LlamaForSampling.from_pretrained(str(path), n_positions=16, amp="f32", tp_degree=2)
        if window:
            m.enable_speculative_decoder(window)
        m.to_neuron()
        m.hf = _Markov(probs, 96)
        models.append(m)
    target = NeuronxRunner(models[0], 16, 96, window=3)
    draft = NeuronxRunner(models[1], 16, 96)
    acceptor = LosslessAcceptor(SamplingSpec(temperature=temperature, top_k=top_k, seed=5))
    counts: dict[tuple[int, ...], int] = {}
    n = 2000
    for _ in range(n):
        out = speculative_generate(target, draft, acceptor, [[1]], draft_tokens=2, max_new_tokens=3)
        key = tuple(out.tokens[0])
        counts[key] = counts.get(key, 0) + 1
    pw = warp(torch.log(p), temperature, top_k)  # the warped target chain (5, 5)
    exact = {}
    for a in range(5):
        for b in range(5):
            for c in range(5):
                exact[(a, b, c)] = float(pw[1, a] * pw[a, b] * pw[b, c])
    keys = [key for key, e in exact.items() if e * n >= 5]
    rest_e = n - sum(exact[key] * n for key in keys)
    observed = [counts.get(key, 0) for key in keys] + [n - sum(counts.get(key, 0) for key in keys)]
    expected = [exact[key] * n for key in keys] + [rest_e]
    if rest_e < 1e-6:
        observed, expected = observed[:-1], expected[:-1]
    expected = [e * sum(observed) / sum(expected) for e in expected]  # float rounding
    assert chisquare(observed, expected).pvalue > 1e-3
    first = [sum(v for key, v in counts.items() if key[0] == t) for t in range(5)]
    live = [t for t in range(5) if pw[1, t] > 0]
    want = [float(pw[1, t]) for t in live]
    p_first = chisquare([first[t] for t in live], [w * n / sum(want) for w in want]).pvalue
    assert p_first > 1e-3
    assert sum(first[t] for t in range(5) if t not in live) == 0  # top-k respected


@pytest.mark.parametrize("version,loop", CASES)
def test_cli_stream_prints_exactly_the_generated_text(
    tmp_path, monkeypatch, capsys, pair_dirs, version, loop
):
    import json

    from neuron_spec.cli.main import main

    use_double(monkeypatch, version, tmp_path / "meta")
    target, draft = pair_dirs
    cfg = loop_config(tmp_path, target, draft, "neuronx", loop, eos=", eos_token_id: 95")
    args = ["generate", str(cfg.path), "--prompt", PROMPTS[0]]  # 4 + 20 tokens = n_positions
    assert main([*args, "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    reset_cores()  # a new process
    assert main([*args, "--stream"]) == 0
    out = capsys.readouterr().out
    assert len(want["token_ids"]) == 20 and want["text"]
    assert out.startswith(want["text"] + "\n")  # the text, then the figures
    assert "accepted / drafted" in out[len(want["text"]) :]


def test_a_failed_save_after_compiling_still_generates_and_says_why(
    tmp_path, monkeypatch, capsys, pair_dirs
):

    use_double(monkeypatch, V2)
    target, draft = pair_dirs
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache directory should go")
    cfg = write_config(tmp_path, target, draft, "neuronx")
    text = cfg.read_text().replace(str(tmp_path / "compiled"), str(blocker / "compiled"))
    cfg.write_text(text)
    gen = load_generator(load_config(cfg))
    assert gen.generate(PROMPTS[0]).token_ids  # the compiled pair in memory serves
    warned = gen.warnings()
    assert len(warned) == 2 and all("could not be saved" in w for w in warned)
    assert "next one compiles again" in warned[0]


def batch_config(
    tmp_path, target, draft, backend, *, sampling="", eos=", eos_token_id: 95", models=""
):
    """batch_size 4, k = 5 (draft_tokens 4), n_positions 40 (`models`: more fields of both)."""
    cfg = tmp_path / f"{backend}-batch.yaml"
    shape = f"amp: f32, tp_degree: 32, n_positions: 40, batch_size: 4{models}"
    cfg.write_text(
        f"instance: trn1.32xlarge\nbackend: {backend}\n"
        f"target: {{model: {target}, {shape}}}\n"
        f"draft: {{model: {draft}, {shape}}}\n"
        f"speculation: {{draft_tokens: 4, acceptor: {'lossless' if sampling else 'greedy'}, "
        "adaptive: false}\n"
        f"sampling: {{{sampling or 'temperature: 0'}, seed: 4}}\n"
        f"generation: {{max_new_tokens: 24, max_prompt_tokens: 8{eos}}}\n"
        f"compile: {{artifact_cache: {tmp_path / 'compiled'}}}\n"
    )
    return load_config(cfg)


BATCH_PROMPTS = ["w1 w5 w9 w3", "w7", "w40 w41 w42 w43 w44 w45", "w2 w2"]  # one is 1 token


@pytest.mark.parametrize("version", ["0.12.313", "0.13.322"])
def test_a_batch_of_rows_at_their_own_positions_equals_each_prompt_alone(
    tmp_path, monkeypatch, pair_dirs, version
):
    use_double(monkeypatch, version, tmp_path / "meta")
    target, draft = pair_dirs
    reference = load_generator(batch_config(tmp_path, target, draft, "reference"))
    neuron = load_generator(batch_config(tmp_path, target, draft, "neuronx"))
    model = neuron.backend.target
    assert model.lhs_aligned and model.batch_sizes == [4]  # padding_side='right', batch 4
    assert model.cb.max_num_seqs == 4 and model.context_batch_sizes == [1]
    got = neuron.generate(BATCH_PROMPTS)
    assert got.token_ids == [reference.generate(p).token_ids[0] for p in BATCH_PROMPTS]
    assert all(len(t) == 24 for t in got.token_ids)
    rows = got.metrics.per_row
    assert sum(r["drafted"] for r in rows) == got.metrics.drafted > 0
    # one target pass per step for all four rows, the rows at different positions in it
    spread = [pos for (name, *_), pos in zip(model.calls, model.row_positions, strict=True)
              if name == "speculative_forward"]  # fmt: skip
    assert spread and any(len(set(p)) > 1 for p in spread)
    assert got.metrics.target_passes < sum(
        reference.generate(p).metrics.target_passes for p in BATCH_PROMPTS
    )
    # prompts were encoded one slot at a time (continuous batching's batch-1 prompt graph)
    encoded = [rows for (name, _, width), rows in zip(model.calls, model.row_positions,
               strict=True) if name == "forward" and width > 1]  # fmt: skip
    assert encoded and all(len(r) == 1 for r in encoded) and len({r[0] for r in encoded}) > 1
    # every row wrote its own sequence slot (start_ids = arange(4)), none past n_positions
    assert sorted(model.kv) == [0, 1, 2, 3]
    assert max(max(slot) for slot in model.kv.values()) < 40


@pytest.mark.parametrize("version", ["0.12.313", "0.13.322"])
def test_a_sampled_batch_and_a_row_that_stops_at_its_eos(tmp_path, monkeypatch, pair_dirs, version):
    use_double(monkeypatch, version, tmp_path / "meta")
    target, draft = pair_dirs
    sampled = load_generator(
        batch_config(tmp_path, target, draft, "neuronx", sampling="temperature: 0.8")
    )
    out = sampled.generate(BATCH_PROMPTS)
    # lossless: every row runs to exactly max_new_tokens unless it samples its EOS
    for tokens, by_eos in zip(out.token_ids, out.finished_by_eos, strict=True):
        assert len(tokens) == 24 or (by_eos and tokens[-1] == 95 and len(tokens) < 24)
    assert sum(len(t) == 24 for t in out.token_ids) >= 2
    del sampled  # frees its NeuronCore memory for the next pair
    import gc

    gc.collect()
    plain = load_generator(batch_config(tmp_path, target, draft, "reference"))
    alone = plain.generate(BATCH_PROMPTS[1]).token_ids[0]
    stop = alone[5]  # row 1 meets it early; an id it emits
    cfg = batch_config(tmp_path, target, draft, "neuronx", eos=f", eos_token_id: {stop}")
    neuron = load_generator(cfg)
    got = neuron.generate(BATCH_PROMPTS)
    assert got.finished_by_eos[1] and got.token_ids[1] == alone[: alone.index(stop) + 1]
    longest = max(range(4), key=lambda r: len(got.token_ids[r]))
    assert len(got.token_ids[longest]) > len(got.token_ids[1])  # the others went on


def test_batch_speculation_needs_the_engine_on_0_12(tmp_path, monkeypatch, pair_dirs):
    from neuron_spec.errors import UsageError

    use_double(monkeypatch, "0.11.351", tmp_path / "meta")
    target, draft = pair_dirs
    with pytest.raises(UsageError, match="no batched speculation graphs"):
        load_generator(batch_config(tmp_path, target, draft, "neuronx"))


@pytest.mark.parametrize("version", ["0.12.313", "0.13.322"])
def test_rows_join_a_running_batch_on_transformers_neuronx(
    tmp_path, monkeypatch, pair_dirs, version
):
    """`serve`'s continuous batch on the compiled batch of 4: rows admitted while others
    are mid-decode (their prompts fed beside the others' one-token steps, at their own
    positions), each equal to its prompt alone."""
    use_double(monkeypatch, version, tmp_path / "meta")
    target, draft = pair_dirs
    reference = load_generator(batch_config(tmp_path, target, draft, "reference"))
    neuron = load_generator(batch_config(tmp_path, target, draft, "neuronx"))
    batch = neuron.open_batch(4)
    assert batch is not None and not batch.elastic and batch.slots == 4
    # the one-token prompt first: row 0 starts at position 0, which the speculation graph
    # cannot take under continuous batching (one-token passes instead)
    prompts = [BATCH_PROMPTS[1], BATCH_PROMPTS[0], *BATCH_PROMPTS[2:], "w9 w8 w7", "w3"]
    waiting = [(p, neuron.row(neuron.encode([p])[0], max_new_tokens=10)) for p in prompts]
    assert drive_continuous_batch(
        batch, waiting, lambda p: reference.generate(p, max_new_tokens=10).token_ids[0]
    )
    model = neuron.backend.target
    assert max(max(slot) for slot in model.kv.values()) < 40


@pytest.mark.parametrize("estimate", [6, 4])
def test_prompts_longer_than_the_context_bucket_on_a_transformers_neuronx_batch(
    tmp_path, monkeypatch, pair_dirs, estimate
):
    """Under continuous batching transformers-neuronx asserts a prompt call no wider than
    its largest context bucket, and a speculation window no wider either: a row's prompt is
    encoded up to the bucket and the rest fed with the other rows' steps; with a bucket
    narrower than the window (4 < k = 5) every step is one-token passes."""
    use_double(monkeypatch, "0.13.322", tmp_path / "meta")
    target, draft = pair_dirs
    models = f", context_length_estimate: {estimate}"
    reference = load_generator(batch_config(tmp_path, target, draft, "reference"))
    neuron = load_generator(batch_config(tmp_path, target, draft, "neuronx", models=models))
    prompts = ["w10 w11 w12 w13 w14 w15 w16 w17", *BATCH_PROMPTS[1:]]
    got = neuron.generate(prompts, max_new_tokens=8)
    assert got.token_ids == [reference.generate(p, max_new_tokens=8).token_ids[0] for p in prompts]
    calls = neuron.backend.target.calls
    assert max(width for name, _, width in calls if name == "forward") == estimate
    assert any(name == "speculative_forward" for name, *_ in calls) == (estimate >= 5)
