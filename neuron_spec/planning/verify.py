"""`neuron-spec verify`: prove a deployment on the host it will run on, in one run.

The checks, in order, each stopping the run when it fails:
1. doctor (Neuron backends): this host's Neuron components, cores, RAM and disk (the same rules
   as `neuron-spec doctor`);
2. preflight: every rule of `validate`, this machine's directories included;
3. load: the pair compiled or loaded from the artifact cache, timed (hit or miss, per model);
4. generate: the shipped prompts (verify_prompts.py), each decoded greedily with the configured
   speculation and with the target alone, after one short warm-up of each (a graph the target
   alone needs is compiled there, and timed apart);
5. agreement: greedy speculative output equals the target alone's, token for token.
Then the figures (bench's, so that `plan --from-bench` reads the report), the planner's
prediction beside each, host and device memory peaks and the exact versions.

Library code: nothing is printed; a Watcher hears of each stage; errors of the work become a
failed check with the exit code the CLI would give them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import NeuronSpecError
from .agreement import agreement
from .bench import TARGET, Setting, bench_row, speculative_row
from .perfplan import VERIFY_KIND
from .verify_figures import measured, pooled_alpha, predicted, proposing_steps, side_by_side
from .verify_prompts import PROMPT_SET, PROMPTS

if TYPE_CHECKING:
    from ..backends.base import Generator
    from ..config.spec import ConfigFile
    from ..engine.generation import Generation
    from ..host.facts import HostFacts

FORMAT = 1  # of the JSON report; a reader checks "kind" and this
DEFAULT_NEW_TOKENS = 64
WARMUP_TOKENS = 4
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class Check:
    name: str
    status: str  # passed | failed | skipped
    seconds: float
    summary: str
    data: Any = None
    exit_code: int = 0  # of a failed check: 1 the check found errors, 2 the run cannot go on

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "summary": self.summary,
            "exit_code": self.exit_code,
            "data": self.data,
        }


class Watcher:
    """What the run tells as it goes (the CLI's progress display); every method may be left
    as it is."""

    def begin(self, stage: str, text: str) -> None:
        """A stage starts."""

    def say(self, text: str) -> None:
        """A detail of the running stage (the backend's loading messages)."""

    def end(self, check: Check) -> None:
        """A stage ended."""

    def advance(self, label: str, done: int, total: int) -> None:
        """One of the generations is done."""


@dataclass
class Verification:
    checks: list[Check] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.status != FAILED for c in self.checks)

    @property
    def exit_code(self) -> int:
        return next((c.exit_code for c in self.checks if c.status == FAILED), 0)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.status == FAILED]


def greedy(cfg: ConfigFile) -> ConfigFile:
    """The config decoding greedily (temperature 0, everything else as written): only greedy
    output can be compared with the target alone's token for token."""
    import dataclasses

    spec = cfg.spec
    if spec.sampling.temperature == 0:
        return cfg
    spec = spec.replace(sampling=spec.sampling.replace(temperature=0.0))
    return dataclasses.replace(cfg, spec=spec)


def new_tokens_for(cfg: ConfigFile, given: int | None) -> int:
    """--max-new-tokens, else 64 or the config's generation.max_new_tokens if fewer."""
    return given or min(DEFAULT_NEW_TOKENS, cfg.spec.generation.max_new_tokens)


def run_verify(
    cfg: ConfigFile, host: HostFacts, max_new: int, watcher: Watcher | None = None,
    prompts: Sequence[str] = PROMPTS,
) -> Verification:  # fmt: skip
    """Every check in order (see the module's docstring), stopping at the first that fails;
    the report holds whatever was measured up to there."""
    w = watcher or Watcher()
    cfg = greedy(cfg)
    v = Verification()
    v.report = _header(cfg, host, max_new, prompts)
    for name, stage in (("doctor", _doctor), ("preflight", _preflight)):
        v.checks.append(_timed(w, name, partial(stage, cfg, host)))
        if not v.ok:
            return _finish(v, None)
    loaded: dict[str, Generator] = {}
    v.checks.append(_timed(w, "load", partial(_load, cfg, w, loaded)))
    gen = loaded.get("gen")
    if gen is None:
        return _finish(v, None)
    runs: dict[str, list[Generation]] = {}
    v.checks.append(_timed(w, "generate", partial(_generate, gen, prompts, max_new, w, runs)))
    if v.ok:
        v.checks.append(_timed(w, "agreement", partial(_agreement, runs)))
        v.report.update(_figures(gen, cfg, host, runs, prompts, max_new))
    return _finish(v, gen)


def _header(
    cfg: ConfigFile, host: HostFacts, max_new: int, prompts: Sequence[str]
) -> dict[str, Any]:
    from ..host.versions import versions

    spec = cfg.spec
    sp = spec.speculation
    return {
        "kind": VERIFY_KIND,
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": str(cfg.path),
        "backend": spec.backend,
        "instance": host.instance or spec.instance,
        "speculation": {
            "method": sp.method,
            "draft_tokens": sp.draft_tokens,
            "adaptive": sp.adaptive,
            "acceptor": sp.acceptor,
            "mode": spec.nxdi.speculation_mode if spec.backend == "nxdi" else sp.loop,
        },
        "decoding": "greedy (temperature 0), so that the two outputs must be equal",
        "prompt_set": PROMPT_SET,
        "prompts": len(prompts),
        "max_new_tokens": max_new,
        "temperature": 0.0,
        "versions": versions(),
    }


def _timed(w: Watcher, name: str, work: Callable[[], Check]) -> Check:
    w.begin(name, f"{name}...")
    start = time.perf_counter()
    check = work()
    check.seconds = time.perf_counter() - start
    w.end(check)
    return check


def _doctor(cfg: ConfigFile, host: HostFacts) -> Check:
    from ..backends.neuron_plan import artifact_root
    from ..host import probe
    from ..preflight.doctor import check_host

    if not cfg.spec.neuron:
        return Check("doctor", SKIPPED, 0.0, "the reference backend needs no Neuron host")
    disk_dir = artifact_root(cfg)
    raw = probe.live_outputs(disk_dir)
    snap = probe.parse(raw, "this host", str(probe.existing_ancestor(disk_dir)))
    report = check_host(snap, cfg)
    errors = [f for f in report.findings if f.severity == "error"]
    status = PASSED if report.ok else FAILED
    summary = _findings_text(report.findings) if errors or report.findings else "no findings"
    return Check("doctor", status, 0.0, summary, report.to_dict(), 0 if report.ok else 1)


def _preflight(cfg: ConfigFile, host: HostFacts) -> Check:
    from ..preflight.base import USAGE_CODES
    from ..preflight.check import preflight

    report = preflight(cfg.spec, host, cfg.base_dir, local=True)
    data = [{**f.to_dict(), "location": cfg.where(f.path)} for f in report.findings]
    if report.ok:
        return Check("preflight", PASSED, 0.0, _findings_text(report.findings), data)
    code = 2 if any(f.code in USAGE_CODES for f in report.errors) else 1
    return Check("preflight", FAILED, 0.0, _findings_text(report.findings), data, code)


def _findings_text(findings: Sequence[Any]) -> str:
    errors = [f.code for f in findings if f.severity == "error"]
    warnings = [f.code for f in findings if f.severity == "warning"]
    parts = [f"{len(errors)} error(s)" + (f" ({', '.join(errors)})" if errors else "")]
    parts.append(f"{len(warnings)} warning(s)" + (f" ({', '.join(warnings)})" if warnings else ""))
    return ", ".join(parts)


def _failed(name: str, exc: Exception, code: int) -> Check:
    return Check(name, FAILED, 0.0, f"{type(exc).__name__}: {exc}", {"error": str(exc)}, code)


def _load(cfg: ConfigFile, w: Watcher, out: dict[str, Any]) -> Check:
    from ..backends import load_generator

    try:
        gen = load_generator(cfg, progress=w.say)
    except NeuronSpecError as exc:
        return _failed("load", exc, exc.exit_code)
    out["gen"] = gen
    events = list(gen.backend.events)
    data = {"device": gen.device, "models": _events(events), "cache": cache_outcome(events)}
    data["warnings"] = gen.warnings()
    return Check("load", PASSED, 0.0, f"on {gen.device}; artifact cache: {data['cache']}", data)


def _events(events: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "how": how} for role, how in events]


def cache_outcome(events: Sequence[tuple[str, str]]) -> str:
    """'hit' (every model loaded from the cache), 'miss' (every one compiled), 'partial', or
    'not applicable' (nothing is compiled: the reference backend)."""
    hows = {how for _role, how in events}
    if not hows:
        return "not applicable"
    if hows == {"loaded"}:
        return "hit"
    return "miss" if hows == {"compiled"} else "partial"


def _generate(
    gen: Generator, prompts: Sequence[str], max_new: int, w: Watcher,
    runs: dict[str, list[Generation]],
) -> Check:  # fmt: skip
    """A warm-up of each way, then every prompt with speculation and with the target alone,
    interleaved so that a machine slowing down touches both alike."""
    runs["speculative"], runs["target"] = [], []
    try:
        warmup = _warm_up(gen, prompts[0])
        for i, p in enumerate(prompts):
            runs["speculative"].append(gen.generate(p, max_new_tokens=max_new))
            w.advance(f"prompt {i + 1}: speculative", 2 * i + 1, 2 * len(prompts))
            runs["target"].append(gen.generate(p, max_new_tokens=max_new, draft_tokens=0))
            w.advance(f"prompt {i + 1}: target alone", 2 * i + 2, 2 * len(prompts))
    except NeuronSpecError as exc:
        return _failed("generate", exc, exc.exit_code)
    except ValueError as exc:  # a prompt the config's lengths cannot hold
        return _failed("generate", exc, 2)
    new = sum(r.metrics.new_tokens for rs in runs.values() for r in rs)
    summary = f"{len(prompts)} prompt(s) x 2, {new} tokens"
    return Check("generate", PASSED, 0.0, summary, {"warm_up": warmup})


def _warm_up(gen: Generator, prompt: str) -> dict[str, Any]:
    """One short generation each way: one-off costs (a first call's graph loading, the target
    alone's own graphs where the backend compiles them on first use) are timed here, apart."""
    before = len(gen.backend.events)
    start = time.perf_counter()
    gen.generate(prompt, max_new_tokens=WARMUP_TOKENS)
    gen.generate(prompt, max_new_tokens=WARMUP_TOKENS, draft_tokens=0)
    events = gen.backend.events[before:]
    return {
        "seconds": round(time.perf_counter() - start, 3),
        "models": _events(events),
        "cache": cache_outcome(events) if events else "nothing more to load",
    }


def _agreement(runs: dict[str, list[Generation]]) -> Check:
    spec = [r.token_ids[0] for r in runs["speculative"]]
    target = [r.token_ids[0] for r in runs["target"]]
    result = agreement(spec, target)
    if result["equal"]:
        summary = f"equal on {result['prompts']} prompt(s), {result['tokens_compared']} tokens"
        return Check("agreement", PASSED, 0.0, summary, result)
    at = result["first_divergence"]
    summary = (
        f"speculative output differs from the target alone's on "
        f"{result['prompts'] - result['prompts_equal']} of {result['prompts']} prompt(s); first "
        f"at prompt {at['prompt'] + 1}, token {at['token']}"
    )
    return Check("agreement", FAILED, 0.0, summary, result, 1)


def _figures(
    gen: Generator, cfg: ConfigFile, host: HostFacts, runs: dict[str, list[Generation]],
    prompts: Sequence[str], max_new: int,
) -> dict[str, Any]:  # fmt: skip
    """The measured figures, bench's rows (what `plan --from-bench` reads) and the planner's
    prediction beside each figure."""
    sp = cfg.spec.speculation
    setting = Setting(sp.method, sp.draft_tokens, sp.adaptive)
    base = bench_row(TARGET, runs["target"])
    alpha = pooled_alpha(runs["speculative"])
    row = speculative_row(gen, bench_row(setting, runs["speculative"]), base, alpha)
    spec_m, target_m = measured(runs["speculative"]), measured(runs["target"])
    spec_m["alpha"], spec_m["speedup"] = row["alpha"], row["speedup"]
    spec_m["alpha_steps"] = proposing_steps(runs["speculative"])  # its sample
    prompt_tokens = round(sum(r.metrics.prompt_tokens for r in runs["target"]) / len(prompts))
    pred, why = predicted(cfg.spec, host, cfg.base_dir, max(prompt_tokens, 1), max_new)
    return {
        "measured": {"speculative": spec_m, "target_only": target_m},
        "predicted": pred,
        "prediction_note": why,
        "comparison": side_by_side(spec_m, target_m, row, pred),
        "baseline": {**base.to_dict(), "target_step_ms": round(base.target_step_ms or 0, 3)},
        "speculative": [row],
        "best_draft_tokens": row["draft_tokens"],
        "best_speedup": row["speedup"],
    }


def _memory(gen: Generator | None, pred: dict[str, Any] | None) -> dict[str, Any]:
    from ..host.usage import peak_rss_bytes

    device = gen.backend.device_memory_peak() if gen is not None else None
    if device is not None:
        note = "the device's own peak allocation"
    elif gen is None:
        note = "unknown: nothing was loaded"
    elif gen.device == "cpu":
        note = "none: the models run in host memory (above)"
    else:
        note = (
            "unknown: the library does not report what the NeuronCores hold; `neuron-top` "
            "shows it while the run lasts"
        )
    return {
        "host_peak_bytes": peak_rss_bytes(),
        "host_peak_source": "this process's peak resident set (getrusage), loading included",
        "device_peak_bytes": device,
        "device_note": note,
        "device_predicted_bytes": (pred or {}).get("device_memory_bytes"),
        "device_predicted_per_core_bytes": (pred or {}).get("device_memory_per_core_bytes"),
    }


def _finish(v: Verification, gen: Generator | None) -> Verification:
    v.report["memory"] = _memory(gen, v.report.get("predicted"))
    v.report["checks"] = {c.name: c.to_dict() for c in v.checks}
    v.report["ok"] = v.ok
    v.report["failed"] = v.failed
    v.report["exit_code"] = v.exit_code
    return v
