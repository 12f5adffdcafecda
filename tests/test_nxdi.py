"""backend: nxdi against the NxD Inference double, at 0.8 (cd3abf3) and, where a release could
change the outcome, 0.9 (c63afe0) too: both speculation modes give the reference backend's
tokens, sampling is exactly lossless (unfused), lengths and EOS lists are honoured, compiled
artifacts are reused only for the config they were compiled for, and a release lacking what the
backend drives is refused by name before anything compiles."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from neuron_spec.backends import load_generator
from neuron_spec.cli.main import main
from neuron_spec.config.spec import load_config

from .neuron_fixtures import (
    NXDI_RELEASE,
    NXDI_RELEASES,
    drive_continuous_batch,
    make_checkpoint,
    use_nxdi_double,
)

pytestmark = pytest.mark.reference
PROMPTS = [[1, 5, 9, 3], [7], [4, 4, 8]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("nxdi-pair")
    target = make_checkpoint(root / "target", seed=0)
    draft = make_checkpoint(root / "draft", seed=0, noise=0.01, base=target)
    return target, draft


@pytest.fixture
def nxdi(request, monkeypatch, tmp_path):
    """The double at 0.8.16251, or at the release a test parametrizes it with (indirect)."""
    release = getattr(request, "param", NXDI_RELEASE)
    use_nxdi_double(monkeypatch, tmp_path / "meta", release)
    return release


# the releases with public source, and 0.10 as a stand-in on 0.9's surface (no source)
WITH_0_10 = (*NXDI_RELEASES, "0.10.18399")


def config(tmp_path: Path, pair, backend="nxdi", mode="unfused", *, gamma=3, sampling="",
           eos="", name=None, adaptive=False) -> Path:  # fmt: skip
    """n_positions 24 with max_new_tokens 20: a 4-token prompt fills it exactly. Fixed
    lengths unless `adaptive` (the engine choosing each step's length: on the tiny random pair
    it soon stops proposing, and catches the draft up when it proposes again), so the figures
    of proposals do not depend on measured times."""
    target, draft = pair
    acceptor = "lossless" if sampling else "greedy"
    path = tmp_path / (name or f"{backend}-{mode}-{gamma}.yaml")
    path.write_text(
        f"instance: trn1.32xlarge\nbackend: {backend}\n"
        f"target: {{model: {target}, amp: f32, tp_degree: 32, n_positions: 24}}\n"
        f"draft: {{model: {draft}, amp: f32, tp_degree: 32, n_positions: 24}}\n"
        f"speculation: {{draft_tokens: {gamma}, acceptor: {acceptor}, adaptive: {adaptive}}}\n"
        f"sampling: {{{sampling or 'temperature: 0'}, seed: 4}}\n"
        f"generation: {{max_new_tokens: 20, max_prompt_tokens: 4{eos}}}\n"
        f"nxdi: {{speculation_mode: {mode}}}\n"
        f"compile: {{artifact_cache: {tmp_path / 'compiled'}}}\n"
    )
    return path


@pytest.mark.parametrize("nxdi", WITH_0_10, indirect=True)
@pytest.mark.parametrize("mode", ["unfused", "fused"])
def test_greedy_tokens_equal_the_reference_for_every_length(tmp_path, nxdi, pair, mode):
    ref = load_generator(load_config(config(tmp_path, pair, "reference")))
    gen = load_generator(load_config(config(tmp_path, pair, "nxdi", mode, adaptive=True)))
    for prompt in PROMPTS:
        want = ref.generate("", prompt_token_ids=[prompt]).token_ids[0]
        assert len(want) == 20  # prompt + 20 fills n_positions for the 4-token prompt
        for n in (1, 2, 3, 4, 7, 20):
            got = gen.generate("", prompt_token_ids=[prompt], max_new_tokens=n)
            assert got.token_ids[0] == want[:n], (prompt, n)
    fixed = config(tmp_path, pair, "nxdi", mode, adaptive=False, name="fixed.yaml")
    metrics = load_generator(load_config(fixed)).generate("", prompt_token_ids=[PROMPTS[0]]).metrics
    assert metrics.drafted > 0 and 0 < metrics.accepted <= metrics.drafted


def test_a_draft_that_first_proposes_late_catches_up_past_the_compiled_context(
    tmp_path, nxdi, pair, monkeypatch
):
    """The engine proposes nothing for the first steps (as the length policy may choose), so
    the draft's first feed holds the 4-token prompt and every token emitted since: more than
    its context encoding was compiled for (max_prompt_tokens 4). The rest goes through token
    generation; the output is still the target's."""
    from neuron_spec.engine.policy import LengthPolicy

    chosen: list[int] = []

    def late(self, rows, plans):
        chosen.append(0 if len(chosen) < 8 else self.gamma_max)
        return chosen[-1]

    ref = load_generator(load_config(config(tmp_path, pair, "reference")))
    want = ref.generate("", prompt_token_ids=[PROMPTS[0]]).token_ids[0]
    monkeypatch.setattr(LengthPolicy, "choose", late)
    gen = load_generator(load_config(config(tmp_path, pair, "nxdi", adaptive=True)))
    got = gen.generate("", prompt_token_ids=[PROMPTS[0]])
    assert got.token_ids[0] == want
    assert chosen[:8] == [0] * 8 and got.metrics.drafted > 0


@pytest.mark.parametrize("mode", ["unfused", "fused"])
def test_an_eos_list_ends_the_text_at_its_second_id(tmp_path, nxdi, pair, mode):
    ref = load_generator(load_config(config(tmp_path, pair, "reference")))
    want = ref.generate("", prompt_token_ids=[PROMPTS[0]]).token_ids[0]
    a, b = 95, want[5]  # b is emitted sixth; a never is
    assert a not in want[:6] and b not in want[:5]
    eos = f", eos_token_id: [{a}, {b}]"
    gen = load_generator(
        load_config(config(tmp_path, pair, "nxdi", mode, eos=eos, name="eos.yaml"))
    )
    got = gen.generate("", prompt_token_ids=[PROMPTS[0]])
    assert got.token_ids[0] == want[:6] and got.finished_by_eos == [True]


def test_a_second_load_compiles_nothing_and_a_changed_draft_tokens_compiles_anew(
    tmp_path, nxdi, pair
):
    first = load_generator(load_config(config(tmp_path, pair)))
    assert first.backend.events == [("draft", "compiled"), ("target", "compiled")]
    again = load_generator(load_config(config(tmp_path, pair)))
    assert again.backend.events == [("draft", "loaded"), ("target", "loaded")]
    other = load_generator(load_config(config(tmp_path, pair, gamma=2)))
    assert other.backend.events == [("draft", "loaded"), ("target", "compiled")]
    ref = load_generator(load_config(config(tmp_path, pair, "reference")))
    want = ref.generate("", prompt_token_ids=[PROMPTS[0]]).token_ids[0]
    assert other.generate("", prompt_token_ids=[PROMPTS[0]]).token_ids[0] == want
    fused = load_generator(load_config(config(tmp_path, pair, mode="fused")))
    assert fused.backend.events == [("target", "compiled")]


def test_the_target_alone_compiles_a_plain_target_once(tmp_path, nxdi, pair):
    ref = load_generator(load_config(config(tmp_path, pair, "reference")))
    want = ref.generate("", prompt_token_ids=[PROMPTS[1]]).token_ids[0]
    gen = load_generator(load_config(config(tmp_path, pair)))
    alone = gen.generate("", prompt_token_ids=[PROMPTS[1]], draft_tokens=0)
    assert alone.token_ids[0] == want and alone.metrics.drafted == 0
    # the draft here has the target's architecture and compiled graphs hold no weights, so
    # the plain target is the draft's cache entry, loaded with the target's weights
    assert gen.backend.events[-1] == ("plain-target", "loaded")
    gen.generate("", prompt_token_ids=[PROMPTS[0]], draft_tokens=0)
    assert [e for e in gen.backend.events if e[0] == "plain-target"] == [("plain-target", "loaded")]


def _warped(hf, prefix: list[int], temperature: float, top_k: int) -> torch.Tensor:
    with torch.no_grad():
        logits = hf(torch.tensor([prefix])).logits[0, -1].float() / temperature
    top = torch.topk(logits, top_k)
    probs = torch.zeros_like(logits)
    probs[top.indices] = torch.softmax(top.values, dim=-1)
    return probs


@pytest.mark.slow  # a sampling campaign: about 40 s
def test_unfused_sampling_is_exactly_lossless(tmp_path, nxdi):
    """T=0.8, top-k 3 over 3 new tokens (27 outcomes): chi-square of the first token and of the
    whole output against the target's warped distribution; exactly max_new_tokens each time."""
    from scipy.stats import chisquare
    from transformers import LlamaForCausalLM

    target = make_checkpoint(tmp_path / "t", seed=3)
    draft = make_checkpoint(tmp_path / "d", seed=3, noise=0.02, base=target)
    cfg = config(tmp_path, (target, draft), sampling="temperature: 0.8, top_k: 3")
    gen = load_generator(load_config(cfg))
    prompt, n = [1, 5, 9], 1500
    seqs: Counter[tuple[int, ...]] = Counter()
    drafted = accepted = 0
    for seed in range(n):
        out = gen.generate("", prompt_token_ids=[prompt], max_new_tokens=3, seed=seed)
        assert len(out.token_ids[0]) == 3
        seqs[tuple(out.token_ids[0])] += 1
        drafted, accepted = drafted + out.metrics.drafted, accepted + out.metrics.accepted
    assert 0 < accepted < drafted  # both accepting and rejecting paths ran
    hf = LlamaForCausalLM.from_pretrained(target).eval()
    p1 = _warped(hf, prompt, 0.8, 3)
    firsts = Counter(s[0] for s in seqs.elements())
    live = [int(t) for t in torch.nonzero(p1).flatten()]
    assert (
        chisquare([firsts[t] for t in live], _scaled([float(p1[t]) for t in live], n)).pvalue > 1e-3
    )
    expected = {}
    for a in live:
        p2 = _warped(hf, [*prompt, a], 0.8, 3)
        for b in torch.nonzero(p2).flatten().tolist():
            p3 = _warped(hf, [*prompt, a, b], 0.8, 3)
            for c in torch.nonzero(p3).flatten().tolist():
                expected[(a, b, c)] = float(p1[a] * p2[b] * p3[c]) * n
    assert set(seqs) <= set(expected)
    keys = sorted(expected)
    assert chisquare([seqs[k] for k in keys], _scaled([expected[k] for k in keys], n)).pvalue > 1e-3


def _scaled(weights: list[float], n: int) -> list[float]:
    total = sum(weights)
    return [w * n / total for w in weights]


def test_generate_json_and_stream_through_the_cli(tmp_path, nxdi, pair, capsys):
    cfg = config(tmp_path, pair)
    assert main(["generate", str(cfg), "--prompt", "w1 w2 w3", "--json", "--quiet"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert {"text", "token_ids", "finished_by_eos", "metrics"} <= set(body)
    assert body["metrics"]["drafted"] > 0 and body["metrics"]["accepted"] >= 0
    assert main(["generate", str(cfg), "--prompt", "w1 w2 w3", "--stream", "--quiet"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.startswith(body["text"])


def test_fused_with_sampling_is_refused_before_loading(tmp_path, nxdi, pair, capsys):
    cfg = config(tmp_path, pair, mode="fused", sampling="temperature: 0.8")
    assert main(["generate", str(cfg), "--prompt", "w1 w2"]) == 2
    err = capsys.readouterr().err
    assert "speculation_mode: unfused" in err
    assert not (tmp_path / "compiled").exists()  # nothing was compiled or loaded
    greedy = config(tmp_path, pair, mode="fused", name="fused-greedy.yaml")
    assert main(["generate", str(greedy), "--prompt", "w1 w2", "--temperature", "0.8"]) == 2
    assert "speculation_mode: unfused" in capsys.readouterr().err


def test_dry_run_prints_the_nxdi_call_plan_from_validated_fields(capsys):
    from .conftest import CONFIGS

    cfg = CONFIGS / "trn1-llama2-70b-7b-nxdi.yaml"
    assert main(["generate", str(cfg), "--dry-run", "--prompt", "hi", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    draft, target = plan["models"]
    assert plan["backend"] == "nxdi" and plan["speculation_mode"] == "unfused"
    assert target["neuron_config"]["speculation_length"] == 7  # draft_tokens 6 + 1
    assert (
        target["neuron_config"]["seq_len"] == 2048 + 6 and draft["neuron_config"]["seq_len"] == 2048
    )
    for m in (draft, target):
        assert m["neuron_config"]["torch_dtype"] == "bfloat16"  # always passed explicitly
        assert m["neuron_config"]["max_context_length"] == 512  # generation.max_prompt_tokens
        assert "on_device_sampling_config" not in m["neuron_config"]  # logits to the host
    assert main(["generate", str(cfg), "--dry-run", "--prompt", "hi"]) == 0
    text = capsys.readouterr().out
    assert "NeuronConfig keywords" in text and "speculation_length': 7" in text


def test_several_prompts_report_per_row_figures_that_sum_to_the_totals(tmp_path, nxdi, pair):
    ref = load_generator(load_config(config(tmp_path, pair, "reference")))
    gen = load_generator(load_config(config(tmp_path, pair)))
    for g in (ref, gen):
        out = g.generate("", prompt_token_ids=[PROMPTS[0], PROMPTS[2]], max_new_tokens=12)
        rows = out.metrics.per_row
        assert len(rows) == 2 and all(r["drafted"] > 0 for r in rows)
        assert sum(r["drafted"] for r in rows) == out.metrics.drafted
        assert sum(r["accepted"] for r in rows) == out.metrics.accepted
    want = [
        ref.generate("", prompt_token_ids=[p]).token_ids[0][:12] for p in (PROMPTS[0], PROMPTS[2])
    ]
    assert (
        gen.generate("", prompt_token_ids=[PROMPTS[0], PROMPTS[2]], max_new_tokens=12).token_ids
        == want
    )


# --- batch_size > 1: each row at its own positions, continuous batching ---------------------

BATCH_PROMPTS = [[1, 5, 9, 3], [7], [40, 41, 42, 43, 44, 45], [2, 2]]  # one is 1 token


def batch_config(tmp_path, pair, backend="nxdi", *, sampling="", eos=", eos_token_id: 95",
                 mode="unfused", draft_batch=4):  # fmt: skip
    """batch_size 4, k = 5 (draft_tokens 4), n_positions 40."""
    target, draft = pair
    path = tmp_path / f"{backend}-{mode}-batch.yaml"
    path.write_text(
        f"instance: trn1.32xlarge\nbackend: {backend}\n"
        f"target: {{model: {target}, amp: f32, tp_degree: 32, n_positions: 40, batch_size: 4}}\n"
        f"draft: {{model: {draft}, amp: f32, tp_degree: 32, n_positions: 40, "
        f"batch_size: {draft_batch}}}\n"
        f"speculation: {{draft_tokens: 4, acceptor: {'lossless' if sampling else 'greedy'}}}\n"
        f"sampling: {{{sampling or 'temperature: 0'}, seed: 4}}\n"
        f"generation: {{max_new_tokens: 24, max_prompt_tokens: 8{eos}}}\n"
        f"nxdi: {{speculation_mode: {mode}}}\n"
        f"compile: {{artifact_cache: {tmp_path / 'compiled'}}}\n"
    )
    return load_config(path)


def record_calls(model) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(graph, position_ids, seq_ids) of every compiled-graph run of `model`."""
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    run = model._run

    def recorded(wrapper, ids, mask, positions, seq_ids):
        calls.append((wrapper.tag, positions.clone(), seq_ids.clone()))
        return run(wrapper, ids, mask, positions, seq_ids)

    model._run = recorded
    return calls


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_a_batch_on_nxdi_equals_each_prompt_alone_with_rows_at_their_own_positions(
    tmp_path, nxdi, pair
):
    reference = load_generator(batch_config(tmp_path, pair, "reference"))
    gen = load_generator(batch_config(tmp_path, pair))
    target = gen.backend.target
    nc = target.neuron_config
    assert nc.is_continuous_batching and nc.ctx_batch_size == 1 and nc.spec_batch_size == 4
    calls = record_calls(target)
    got = gen.generate("", prompt_token_ids=BATCH_PROMPTS)
    want = [reference.generate("", prompt_token_ids=[p], max_new_tokens=24) for p in BATCH_PROMPTS]
    assert got.token_ids == [w.token_ids[0] for w in want]
    assert got.finished_by_eos == [w.finished_by_eos[0] for w in want]
    assert sum(len(t) == 24 for t in got.token_ids) >= 2  # the others stopped at their EOS
    rows = got.metrics.per_row
    assert sum(r["drafted"] for r in rows) == got.metrics.drafted > 0
    # one target pass per step for all four rows, at different positions within it
    spec = [pos for tag, pos, _ in calls if tag == "speculation_model"]
    assert spec and all(p.shape == (4, 5) for p in spec)
    assert any(len(set(p[:, 0].tolist())) > 1 for p in spec)
    assert all(
        seq.tolist() == [0, 1, 2, 3] for tag, _, seq in calls if tag != "context_encoding_model"
    )
    # each row's context encoding ran alone, into its own slot
    cte = [seq.tolist() for tag, _, seq in calls if tag == "context_encoding_model"]
    assert sorted(cte) == [[0], [1], [2], [3]]
    assert got.metrics.target_passes < sum(w.metrics.target_passes for w in want)
    # nothing written at or past the compiled length (n_positions + k - 1)
    assert max(max(slot) for slot in target.kv.values()) < 40 + 4


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_a_sampled_nxdi_batch_and_a_row_that_stops_at_its_eos(tmp_path, nxdi, pair):
    sampled = load_generator(batch_config(tmp_path, pair, sampling="temperature: 0.8"))
    out = sampled.generate("", prompt_token_ids=BATCH_PROMPTS)
    # lossless: every row runs to exactly max_new_tokens unless it samples its EOS
    for tokens, by_eos in zip(out.token_ids, out.finished_by_eos, strict=True):
        assert len(tokens) == 24 or (by_eos and tokens[-1] == 95 and len(tokens) < 24)
    assert sum(len(t) == 24 for t in out.token_ids) >= 2
    plain = load_generator(batch_config(tmp_path, pair, "reference"))
    alone = plain.generate("", prompt_token_ids=[BATCH_PROMPTS[1]], max_new_tokens=24)
    alone_ids = alone.token_ids[0]
    stop = alone_ids[5]  # row 1 meets it early; an id it emits
    (tmp_path / "eos").mkdir()
    gen = load_generator(batch_config(tmp_path / "eos", pair, eos=f", eos_token_id: {stop}"))
    got = gen.generate("", prompt_token_ids=BATCH_PROMPTS)
    assert got.finished_by_eos[1] and got.token_ids[1] == alone_ids[: alone_ids.index(stop) + 1]
    assert max(len(t) for t in got.token_ids) > len(got.token_ids[1])  # the others went on


@pytest.mark.parametrize("nxdi", NXDI_RELEASES, indirect=True)
def test_rows_join_a_running_batch_on_nxdi(tmp_path, nxdi, pair):
    """`serve`'s continuous batch: rows admitted while others are mid-decode are context-
    encoded alone into their slots, the others' KV untouched; each equals its prompt alone."""
    reference = load_generator(batch_config(tmp_path, pair, "reference"))
    gen = load_generator(batch_config(tmp_path, pair))
    batch = gen.open_batch(4)
    assert batch is not None and not batch.elastic and batch.slots == 4
    prompts = [*BATCH_PROMPTS, [9, 8, 7], [3]]
    pending = [(p, gen.row(p, max_new_tokens=10)) for p in prompts]

    def alone(prompt):
        return reference.generate("", prompt_token_ids=[prompt], max_new_tokens=10).token_ids[0]

    assert drive_continuous_batch(batch, pending, alone)


def test_nxdi_batches_only_unfused_with_one_batch_size(tmp_path, nxdi, pair):
    from neuron_spec.errors import UsageError

    with pytest.raises(UsageError, match="fused draft loop is batch 1"):
        load_generator(batch_config(tmp_path, pair, mode="fused"))
    with pytest.raises(UsageError, match=r"differs from target\.batch_size"):
        load_generator(batch_config(tmp_path, pair, draft_batch=1))


# --- the load-time check of what the backend drives (0.10 has no public source) ---------------


def _refused_before_compiling(tmp_path, pair, capsys, *pieces: str) -> None:
    cfg = config(tmp_path, pair, name="surface.yaml")
    assert main(["generate", str(cfg), "--prompt", "w1 w2"]) == 2
    err = capsys.readouterr().err
    for piece in pieces:
        assert piece in err, (piece, err)
    import neuronx_distributed_inference._runtime as runtime

    assert runtime.EVENTS == [] and not (tmp_path / "compiled").exists()


@pytest.mark.parametrize("nxdi", ["0.10.18399"], indirect=True)
def test_a_neuron_config_that_drops_a_keyword_is_refused_with_the_release(
    tmp_path, nxdi, pair, capsys, monkeypatch
):
    """A stand-in 0.10 whose NeuronConfig no longer knows `speculation_length` (it would only
    log a warning and compile a target without a speculation graph)."""
    from neuronx_distributed_inference.models.config import NeuronConfig

    init = NeuronConfig.__init__

    def without(self, **kwargs):
        kwargs.pop("speculation_length", None)
        init(self, **kwargs)

    monkeypatch.setattr(NeuronConfig, "__init__", without)
    _refused_before_compiling(
        tmp_path, pair, capsys, "NxD Inference 0.10.18399 (Neuron SDK 2.31)",
        "`speculation_length` (given 4, reads back 0)", "0.8.16251 (SDK 2.28)",
    )  # fmt: skip


@pytest.mark.parametrize("nxdi", ["0.10.18399"], indirect=True)
def test_a_forward_without_seq_ids_is_refused_with_the_release(
    tmp_path, nxdi, pair, capsys, monkeypatch
):
    from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM

    def forward(self, input_ids=None, attention_mask=None, position_ids=None):
        raise AssertionError("never called")

    monkeypatch.setattr(NeuronBaseForCausalLM, "forward", forward)
    _refused_before_compiling(
        tmp_path, pair, capsys, "0.10.18399", "NeuronLlamaForCausalLM.forward(", "'seq_ids'"
    )


@pytest.mark.parametrize("nxdi", ["0.9.17334"], indirect=True)
def test_0_9_without_the_nki_packages_names_what_is_missing(
    tmp_path, nxdi, pair, capsys, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "nkilib", None)  # not importable in this environment
    _refused_before_compiling(
        tmp_path, pair, capsys, "NxD Inference 0.9.17334 (Neuron SDK 2.29) is installed",
        "nkilib",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("nxdi", "platform_warning"),
    [("0.8.16251", False), ("0.9.17334", True), ("0.10.18399", False)],
    indirect=["nxdi"],
)
def test_validate_local_says_whether_aws_supports_the_release_here(
    tmp_path, nxdi, pair, capsys, platform_warning
):
    """The config is for a trn1.32xlarge: AWS supports 0.8 and 0.10 there, 0.9 on Trn2 only.
    The transformers pin is known for 0.8 and 0.9 (4.57.*), not for 0.10 (no source)."""
    import transformers

    assert main(["validate", str(config(tmp_path, pair)), "--local", "--json"]) == 0
    found = {f["code"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    assert ("nxdi-release" in found) is platform_warning
    if platform_warning:
        assert "on Trn2 only" in found["nxdi-release"]["message"]
        assert "Neuron SDK 2.31 Deep Learning AMI" in found["nxdi-release"]["fix"]
    off_pin = not transformers.__version__.startswith("4.57.")
    assert ("nxdi-transformers-pin" in found) is (off_pin and nxdi != "0.10.18399")
