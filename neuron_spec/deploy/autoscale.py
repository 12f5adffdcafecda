"""Endpoint auto scaling: `deploy sagemaker ... --autoscale MIN:MAX` registers the endpoint's
variant with Application Auto Scaling and a target-tracking policy on invocations per
instance; `deploy delete` removes both before the endpoint.

The target (invocations per instance per minute) comes from the plan: a request of
`max_new_tokens` tokens at the predicted speculative tokens/s of that instance takes
`new / rate` seconds, one at a time per instance, so an instance serves `60 x rate / new`
requests a minute; the policy aims at HEADROOM of that, leaving room for bursts while new
instances start (they take minutes to load a 70B pair). Where nothing predicts a rate (the
reference backend on a CPU instance), CPU_TOKENS_PER_S is assumed and said; `--autoscale-
target` sets it outright. AWS: https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling.html
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .requests import Request

if TYPE_CHECKING:
    from ..config.spec import ConfigFile

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
VARIANT = "AllTraffic"
POLICY = "neuron-spec-invocations"
HEADROOM = 0.7
CPU_TOKENS_PER_S = 5.0  # assumed for the reference backend: nothing predicts a CPU instance
SCALE_OUT_COOLDOWN_S = 300  # an instance takes minutes to load the pair; do not pile them on
SCALE_IN_COOLDOWN_S = 900
MAX_INSTANCES = 100
# TargetValue's range, from Application Auto Scaling's service model (botocore 1.44.18,
# botocore/data/application-autoscaling/2016-02-06/service-2.json,
# TargetTrackingScalingPolicyConfiguration.TargetValue, shape MetricScale): "Values must be
# in the range of -2^360 to 2^360."
MAX_TARGET_VALUE = 2.0**360


@dataclass(frozen=True)
class Scaling:
    low: int
    high: int
    target: float  # invocations per instance per minute
    source: str  # where the target comes from


def parse_range(text: str) -> tuple[int, int]:
    """MIN:MAX, whole numbers, 1 <= MIN <= MAX <= MAX_INSTANCES; UsageError otherwise."""
    m = re.fullmatch(r"\s*(\d{1,4})\s*:\s*(\d{1,4})\s*", text)
    if m is None:
        raise UsageError(f"--autoscale {text!r}: write MIN:MAX instance counts, e.g. 1:4")
    low, high = int(m.group(1)), int(m.group(2))
    if not 1 <= low <= high <= MAX_INSTANCES:
        raise UsageError(
            f"--autoscale {text}: need 1 <= MIN <= MAX <= {MAX_INSTANCES} (SageMaker keeps at "
            "least one instance behind an endpoint)"
        )
    return low, high


def target_from_plan(cfg: ConfigFile, instance_type: str) -> tuple[float, str]:
    """Invocations per instance per minute the policy tracks, and how it was derived."""
    new = cfg.spec.generation.max_new_tokens
    rate, how = _predicted_rate(cfg, instance_type.removeprefix("ml."))
    if rate is None:
        rate, how = CPU_TOKENS_PER_S, f"assumed {CPU_TOKENS_PER_S:g} tokens/s ({how})"
    per_minute = HEADROOM * 60.0 * rate / new
    source = (
        f"{HEADROOM:.0%} of 60 x {rate:.1f} tokens/s / {new} tokens per request ({how}); "
        "set it with --autoscale-target"
    )
    return round(max(per_minute, 0.1), 2), source


def _predicted_rate(cfg: ConfigFile, instance: str) -> tuple[float | None, str]:
    from ..config.catalog import INSTANCES

    if not cfg.spec.neuron or instance not in INSTANCES:
        return None, "no prediction for the reference backend"
    from ..host.facts import HostFacts
    from ..planning.perfplan import inputs, section
    from ..planning.plan import plan
    from ..preflight.base import build_context

    host = HostFacts.from_instance(INSTANCES[instance])
    rec = plan(cfg.spec, host, cfg.base_dir).recommendation
    ctx = build_context(cfg.spec, host, cfg.base_dir)
    archs = {role: ctx.arch(role) for role, _ in cfg.spec.models()}
    inp = inputs(cfg.spec, None, None, None, None, None, None)
    perf, _, why = section(cfg.spec, host, archs, rec.target_tp if rec else None, inp)
    if perf is None:
        return None, why or "no prediction"
    rate = max(perf["speculative_tokens_per_s"], perf["target"]["tokens_per_s"])
    return float(rate), f"plan for {instance}, alpha {inp.alpha} assumed"


def resource_id(endpoint: str) -> str:
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def requests(endpoint: str, scaling: Scaling) -> list[Request]:
    """What registering the variant takes: its target, then the policy."""

    rid = resource_id(endpoint)
    common = {"ServiceNamespace": NAMESPACE, "ResourceId": rid, "ScalableDimension": DIMENSION}
    return [
        Request(
            "application-autoscaling",
            "register_scalable_target",
            {**common, "MinCapacity": scaling.low, "MaxCapacity": scaling.high},
            "once the endpoint is InService",
        ),
        Request(
            "application-autoscaling",
            "put_scaling_policy",
            {
                **common,
                "PolicyName": POLICY,
                "PolicyType": "TargetTrackingScaling",
                "TargetTrackingScalingPolicyConfiguration": {
                    "TargetValue": scaling.target,
                    "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
                    "ScaleOutCooldown": SCALE_OUT_COOLDOWN_S,
                    "ScaleInCooldown": SCALE_IN_COOLDOWN_S,
                },
            },
            f"target {scaling.target} invocations per instance per minute: {scaling.source}",
        ),
    ]


def removal(aas: Any, endpoint: str) -> list[Request]:
    """The requests that remove what `requests` registered for `endpoint` (its policies,
    then the target), from what Application Auto Scaling holds; none when nothing is."""

    rid = resource_id(endpoint)
    common = {"ServiceNamespace": NAMESPACE, "ResourceId": rid, "ScalableDimension": DIMENSION}
    targets = aas.describe_scalable_targets(ServiceNamespace=NAMESPACE, ResourceIds=[rid])
    policies = aas.describe_scaling_policies(ServiceNamespace=NAMESPACE, ResourceId=rid)
    out = [
        Request("application-autoscaling", "delete_scaling_policy",
                {**common, "PolicyName": p["PolicyName"]})
        for p in policies.get("ScalingPolicies", [])
    ]  # fmt: skip
    if targets.get("ScalableTargets"):
        out.append(Request("application-autoscaling", "deregister_scalable_target", common))
    return out


def removal_plan(endpoint: str) -> list[Request]:
    """What `deploy delete --dry-run` shows for auto scaling (nothing is looked up)."""

    rid = resource_id(endpoint)
    common = {"ServiceNamespace": NAMESPACE, "ResourceId": rid, "ScalableDimension": DIMENSION}
    return [
        Request("application-autoscaling", "delete_scaling_policy",
                {**common, "PolicyName": "<each policy on the variant>"},
                "only if the endpoint is neuron-spec's"),
        Request("application-autoscaling", "deregister_scalable_target", common,
                "only if registered and the endpoint is neuron-spec's"),
    ]  # fmt: skip
