"""What neuron-spec needs of NxD Inference, checked when the backend loads, before any
checkpoint is prepared or any graph compiled.

neuron-spec drives NxDI through a small surface that reads the same in every release with
public source: 0.7 (`fcb5a86`), 0.8 (`cd3abf3`), 0.9 (`c63afe0` and `ef2731e`):
- `NeuronConfig(**kw)` keeps each keyword the plan passes as an attribute of that name
  (models/config.py `NeuronConfig.__init__`: `batch_size`, `seq_len`, `max_context_length`,
  `torch_dtype`, `tp_degree`, `padding_side`, `speculation_length`, `is_continuous_batching`,
  `ctx_batch_size`, `enable_fused_speculation`, `on_device_sampling_config`). It only logs a
  warning for a keyword it does not know, so each one is read back here;
- `load_pretrained_config(path)`; `LlamaInferenceConfig(neuron_config, load_config=...,
  rope_theta=...)` with `to_json_string()` (the artifact cache key);
- `NeuronLlamaForCausalLM(model_path, config)`, its `compile(path)`, `load(path)` and
  `forward(input_ids=, attention_mask=, position_ids=, seq_ids=)` (models/application_base.py,
  models/model_base.py `NeuronBaseForCausalLM.forward`);
- fused mode: `FusedSpecNeuronConfig(worker_cls, draft_config=, draft_model_path=)` and the
  application's `_model_cls`.
0.10 (SDK 2.30/2.31) was never published as source: it is driven on this surface alone, so a
missing or changed piece is refused by name, with the release, instead of failing mid-compile.
What forward() returns is checked where it is read (runner.py, fused.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from ...errors import BackendUnavailableError
from ...host.sdk_releases import driven_nxdi_text, nxdi_release
from .plan import NxdiPlan

PUBLIC_SOURCES = "0.7 fcb5a86, 0.8 cd3abf3, 0.9 c63afe0/ef2731e"
_PATH = "/checkpoint"


def release_name(version: str) -> str:
    """'NxD Inference 0.10.18399 (Neuron SDK 2.31)'."""
    row = nxdi_release(version)
    return f"NxD Inference {version}" + (f" (Neuron SDK {row.sdk})" if row else "")


def import_failure(version: str, exc: ImportError) -> BackendUnavailableError:
    """The library is installed (its metadata says `version`) but cannot be imported: name the
    module that failed. From 0.9 on, modeling_llama imports the NKI packages (nki, nkilib)."""
    missing = getattr(exc, "name", None) or str(exc)
    return BackendUnavailableError(
        f"{release_name(version)} is installed, but importing it failed: {exc}. It needs "
        f"{missing!s} in the same environment (0.9 and later import the NKI packages nki and "
        "nkilib when the Llama model module loads). Fix: run in the environment the Neuron "
        "Deep Learning AMI ships NxD Inference in (scripts/launch.sh finds it), or install the "
        "Neuron SDK packages of that release beside it."
    )


def check_surface(nxdi: dict[str, Any], version: str, plan: NxdiPlan) -> None:
    """Refuse (exit 2) an NxDI whose surface lacks what this plan drives, naming each piece."""
    problems = [*_call_problems(nxdi, plan.mode == "fused"), *_keyword_problems(nxdi, plan)]
    if not problems:
        return
    row = nxdi_release(version)
    shared = f"the surface the releases with public source share ({PUBLIC_SOURCES})"
    if row is None:
        why = f"No Neuron SDK shipped it; neuron-spec drives {shared}"
    elif not row.source:
        why = f"Its source was never published: neuron-spec drives it only through {shared}"
    else:
        why = f"neuron-spec drives {shared}"
    raise BackendUnavailableError(
        f"{release_name(version)} lacks what neuron-spec drives: "
        + "; ".join(problems)
        + f". {why}; nothing was compiled. Fix: use a release neuron-spec drives "
        f"({driven_nxdi_text()}); `neuron-spec doctor` names the one for this host."
    )


def _binds(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str | None:
    """None when fn accepts these arguments; else what its signature is."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # not introspectable (a builtin): nothing to say before calling it
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        return f"{exc} (signature {sig})"
    return None


def _call_problems(nxdi: dict[str, Any], fused: bool) -> list[str]:
    app = nxdi["NeuronLlamaForCausalLM"]
    checks: list[tuple[str, Callable[..., Any] | None, tuple[Any, ...], dict[str, Any]]] = [
        ("load_pretrained_config(path)", nxdi["load_pretrained_config"], (_PATH,), {}),
        (
            "LlamaInferenceConfig(neuron_config, load_config=, rope_theta=)",
            nxdi["LlamaInferenceConfig"],
            (object(),),
            {"load_config": None, "rope_theta": 1.0},
        ),
        ("NeuronLlamaForCausalLM(model_path, config)", app, (_PATH, object()), {}),
        ("NeuronLlamaForCausalLM.compile(path)", getattr(app, "compile", None), (None, _PATH), {}),
        ("NeuronLlamaForCausalLM.load(path)", getattr(app, "load", None), (None, _PATH), {}),
        (
            "NeuronLlamaForCausalLM.forward(input_ids=, attention_mask=, position_ids=, seq_ids=)",
            getattr(app, "forward", None),
            (None,),
            dict.fromkeys(("input_ids", "attention_mask", "position_ids", "seq_ids")),
        ),
    ]
    if fused:
        checks.append(
            (
                "FusedSpecNeuronConfig(worker_cls, draft_config=, draft_model_path=)",
                nxdi["FusedSpecNeuronConfig"],
                (object(),),
                {"draft_config": None, "draft_model_path": _PATH},
            )
        )
    problems = [
        f"{what}: {'missing' if fn is None else why}"
        for what, fn, args, kwargs in checks
        if fn is None or (why := _binds(fn, *args, **kwargs))
    ]
    if not callable(getattr(nxdi["LlamaInferenceConfig"], "to_json_string", None)):
        problems.append("LlamaInferenceConfig.to_json_string(): missing")
    if fused and getattr(app, "_model_cls", None) is None:
        problems.append("NeuronLlamaForCausalLM._model_cls (fused speculation's worker): missing")
    return problems


def _keyword_problems(nxdi: dict[str, Any], plan: NxdiPlan) -> list[str]:
    """Build each planned NeuronConfig and read every keyword back."""
    problems: list[str] = []
    seen: set[str] = set()
    for kw in _planned_keywords(plan):
        try:
            nc = nxdi["NeuronConfig"](**kw)
        except TypeError as exc:
            problems.append(f"NeuronConfig(**{kw}) raised TypeError: {exc}")
            continue
        for name, value in kw.items():
            if name not in seen and not _kept(nc, name, value):
                seen.add(name)
                got = getattr(nc, name, "<no such attribute>")
                problems.append(
                    f"NeuronConfig does not keep `{name}` (given {value!r}, reads back {got!r})"
                )
    return problems


def _planned_keywords(plan: NxdiPlan) -> Iterable[dict[str, Any]]:
    models = (plan.target, plan.draft, plan.plain_target)  # no draft: a lookup proposes
    return [m.neuron_config for m in models if m is not None]


def _kept(nc: Any, name: str, value: Any) -> bool:
    if not hasattr(nc, name):
        return False
    got = getattr(nc, name)
    if isinstance(value, dict):  # a sub-config given as a dict comes back as an object
        return got is not None and all(_kept(got, k, v) for k, v in value.items())
    if isinstance(value, str) and not isinstance(got, str):  # "bfloat16" -> torch.bfloat16
        return str(got).removeprefix("torch.") == value
    return bool(got == value)
