"""Application Auto Scaling for a SageMaker endpoint's variant: the scalable target (the
variant's ``DesiredInstanceCount`` between a min and a max) and its target tracking policy on
``SageMakerVariantInvocationsPerInstance`` (invocations per instance per minute).

Two recorded resources, created after the endpoint is InService and removed before it
(teardown walks newest first): ``scalable-target`` (id ``endpoint/NAME/variant/VARIANT``) and
``scaling-policy`` (id the policy name, ``data["resource_id"]`` its target). Both record the
values they were created with, so a failed update can put them back. boto3 errors are left to
:func:`aws.failures`; "already gone" is False, never an error.
"""

from __future__ import annotations

from deployer.target import Scaling

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
KINDS = ("scalable-target", "scaling-policy")


def recorded(target, policy) -> Scaling:
    """The scaling a recorded scalable target and (or None) its scaling policy were created
    with, to register again (the initial count is of no use there: the minimum)."""
    data = policy.data if policy is not None else {}
    low = target.data["min_capacity"]
    return Scaling(low, target.data["max_capacity"], low, data.get("target_value"),
                   data.get("scale_in_cooldown"), data.get("scale_out_cooldown"))


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def policy_name(endpoint: str) -> str:
    """1-256 printable characters (PutScalingPolicy); unique per scalable target."""
    return f"{endpoint}-invocations-target-tracking"


def rule(target: int | float, metric: str = METRIC) -> str:
    return f"target tracking {target:g} {metric}"


def register(aas, rid: str, settings: Scaling, tags: dict[str, str]) -> str:
    """RegisterScalableTarget (it also moves the current count into the range); its ARN."""
    answer = aas.register_scalable_target(
        ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION,
        MinCapacity=settings.minimum, MaxCapacity=settings.maximum, Tags=tags)
    return answer.get("ScalableTargetARN", "")


def configuration(settings: Scaling) -> dict:
    """The TargetTrackingScalingPolicyConfiguration: cooldowns only when given (AWS's
    default for SageMaker variants otherwise)."""
    config = {"TargetValue": float(settings.target_requests_per_minute),
              "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC}}
    if settings.scale_in_cooldown is not None:
        config["ScaleInCooldown"] = settings.scale_in_cooldown
    if settings.scale_out_cooldown is not None:
        config["ScaleOutCooldown"] = settings.scale_out_cooldown
    return config


def put_policy(aas, rid: str, name: str, settings: Scaling) -> str:
    """PutScalingPolicy (TargetTrackingScaling); its ARN."""
    answer = aas.put_scaling_policy(
        PolicyName=name, ServiceNamespace=NAMESPACE, ResourceId=rid,
        ScalableDimension=DIMENSION, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration=configuration(settings))
    return answer.get("PolicyARN", "")


def delete(aas, resource) -> bool:
    """Delete the policy or deregister the target; False when it was already gone."""
    from . import aws

    if resource.kind == "scaling-policy":
        return aws.unless_gone(lambda: aas.delete_scaling_policy(
            PolicyName=resource.id, ServiceNamespace=NAMESPACE,
            ResourceId=resource.data["resource_id"], ScalableDimension=DIMENSION) or True)
    return aws.unless_gone(lambda: aas.deregister_scalable_target(
        ServiceNamespace=NAMESPACE, ResourceId=resource.id, ScalableDimension=DIMENSION)
        or True)


def exists(aas, resource) -> bool:
    if resource.kind == "scaling-policy":
        return policy(aas, resource.data["resource_id"], resource.id) is not None
    return target(aas, resource.id) is not None


def target(aas, rid: str) -> dict | None:
    """The registered scalable target (MinCapacity, MaxCapacity...), or None."""
    found = aas.describe_scalable_targets(ServiceNamespace=NAMESPACE, ResourceIds=[rid],
                                          ScalableDimension=DIMENSION)["ScalableTargets"]
    return next((t for t in found if t["ResourceId"] == rid), None)


def policy(aas, rid: str, name: str) -> dict | None:
    """The scaling policy ``name`` of ``rid``, or None."""
    found = aas.describe_scaling_policies(ServiceNamespace=NAMESPACE, ResourceId=rid,
                                          ScalableDimension=DIMENSION,
                                          PolicyNames=[name])["ScalingPolicies"]
    return next((p for p in found if p["PolicyName"] == name and p["ResourceId"] == rid),
                None)


def described_rule(found: dict | None) -> str:
    """A policy's rule in AWS's words ('' when there is none)."""
    if not found:
        return ""
    config = found.get("TargetTrackingScalingPolicyConfiguration") or {}
    metric = (config.get("PredefinedMetricSpecification") or {}).get(
        "PredefinedMetricType", "a customized metric")
    if "TargetValue" not in config:
        return f"{found.get('PolicyType', 'scaling policy')} {found.get('PolicyName')}"
    cooldowns = [f"{word} cooldown {config[key]}s" for word, key in (
        ("scale-in", "ScaleInCooldown"), ("scale-out", "ScaleOutCooldown")) if key in config]
    return rule(config["TargetValue"], metric) + (f" ({', '.join(cooldowns)})"
                                                  if cooldowns else "")
