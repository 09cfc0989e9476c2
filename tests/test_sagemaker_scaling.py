"""Issue 14 on SageMaker: the shared scaling options become an Application Auto Scaling
scalable target and a target tracking policy on the endpoint's variant, driven through the real
CLI with real boto3 against moto. Application Auto Scaling and Service Quotas go through the
fault proxy (tests/aws_faults.py), which serves the instance quota moto lacks and injects AWS's
errors; everything else reaches moto directly."""

from __future__ import annotations

import os

import boto3
import pytest

from deployer.api import Deployer

from aws_faults import proxy  # noqa: F401 - a fixture
from conftest import REPOS, one_line_error
from sagemaker_support import aws_environment, leftovers
from sagemaker_support import moto_url  # noqa: F401 - a fixture
from test_sagemaker import _described, _stub_until_update, remove_old_version
from test_sagemaker import stubbed  # noqa: F401 - a fixture (on this module's aws)

pytest.importorskip("moto.server", reason="moto[server] is needed for the SageMaker tests")

ADD_SUB = REPOS / "add_sub"
QUOTAS = "ServiceQuotasV20190624.ListServiceQuotas"
AAS = "AnyScaleFrontendService."
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING = ["min_instances=1", "max_instances=3", "target_requests_per_minute=600",
           "scale_in_cooldown=300"]
#: the account's quota for the default instance type, as Service Quotas lists it
QUOTA = 4


@pytest.fixture
def aws(moto_url, proxy):  # noqa: F811 - fixtures
    proxy.clear()
    proxy.json_answer(QUOTAS, {"Quotas": [
        {"ServiceCode": "sagemaker", "QuotaCode": "L-1", "QuotaName":
         "ml.m5.xlarge for endpoint usage", "Value": 20.0, "Adjustable": True},
        {"ServiceCode": "sagemaker", "QuotaCode": "L-2", "QuotaName":
         "ml.g4dn.xlarge for endpoint usage", "Value": float(QUOTA), "Adjustable": True}]})
    with aws_environment(moto_url, AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING=proxy.url,
                         AWS_ENDPOINT_URL_SERVICE_QUOTAS=proxy.url) as env:
        yield env
    proxy.clear()
    assert proxy.errors == []


def options(aws, *extra: str) -> list[str]:
    items = [f"role={aws['role']}", f"bucket={aws['bucket']}", *extra]
    return [arg for item in items for arg in ("-o", item)]


def registered() -> tuple[list[dict], list[dict]]:
    """What Application Auto Scaling (moto) holds for SageMaker: targets and policies."""
    aas = boto3.client("application-autoscaling")
    return (aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"],
            aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"])


def assert_clean(bucket: str) -> None:
    left = leftovers(bucket)
    assert left == {"endpoints": [], "configs": [], "models": [], "objects": []}, left
    assert registered() == ([], []), "scaling left registered"


def states(name: str) -> list[tuple[str, str, str]]:
    deployment = Deployer().store.load(name)
    return [(r.kind, r.id, r.status) for r in deployment.resources]


# -- deploy → status → teardown --------------------------------------------------------------

def test_scaling_deploy_registers_target_and_policy_status_shows_them_teardown_removes(
        aws, cli, proxy):
    result = cli("deploy", ADD_SUB, "--target", "sagemaker", "--name", "sm-scale", "--json",
                 *options(aws, *SCALING))
    assert result.code == 0, result
    rid = "endpoint/sm-scale/variant/AllTraffic"
    policy = "sm-scale-invocations-target-tracking"
    assert [(kind, status) for kind, _, status in states("sm-scale")] == [
        ("s3-artifacts", "created"), ("model", "created"), ("endpoint-config", "created"),
        ("endpoint", "created"), ("scalable-target", "created"), ("scaling-policy", "created")]
    assert f"registering {rid} with Application Auto Scaling: 1 to 3 instances" in result.err

    targets, policies = registered()
    assert [(t["ResourceId"], t["ScalableDimension"], t["MinCapacity"], t["MaxCapacity"])
            for t in targets] == [(rid, DIMENSION, 1, 3)]
    assert [(p["PolicyName"], p["ResourceId"], p["PolicyType"]) for p in policies] == [
        (policy, rid, "TargetTrackingScaling")]
    assert policies[0]["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 600.0, "ScaleInCooldown": 300, "PredefinedMetricSpecification": {
            "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}}
    config = boto3.client("sagemaker").describe_endpoint_config(EndpointConfigName=next(
        i for k, i, _ in states("sm-scale") if k == "endpoint-config"))
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 1  # Scaling.initial

    status = cli("status", "sm-scale", "--json")
    assert status.code == 0, status
    rule = ("target tracking 600 SageMakerVariantInvocationsPerInstance "
            "(scale-in cooldown 300s)")
    assert status.json()["fleet"] == {"minimum": 1, "maximum": 3, "desired": 1, "current": 1,
                                      "rule": rule}
    text = cli("status", "sm-scale")
    assert f"instances: 1 now, 1 desired, range 1-3; {rule}" in text.out, text

    deployment = Deployer().store.load("sm-scale")
    down = cli("teardown", "sm-scale")
    assert down.code == 0, down
    assert_clean(aws["bucket"])
    # idempotent: each scaling resource again is "already gone", and verified gone
    impl = Deployer()._target("sagemaker", deployment.options)
    for resource in deployment.resources[-2:]:
        assert impl.delete(resource, deployment) is False
        assert impl.exists(resource, deployment) is False
    assert cli("teardown", "sm-scale").code == 0


# -- refusals: one line, exit 2, nothing created ---------------------------------------------

@pytest.mark.parametrize("extra, expected", [
    (["min_instances=3", "max_instances=2", "target_requests_per_minute=60"],
     "min_instances 3 is above max_instances 2"),
    (["max_instances=3", "target_requests_per_minute=0"],
     "target_requests_per_minute must be a positive number, got 0"),
    (["min_instances=0", "max_instances=2", "target_requests_per_minute=60"],
     "cannot scale to zero (only endpoints hosting inference components can)"),
    ([*SCALING, "wait=false"], "-o wait=false cannot be combined with autoscaling"),
    (["max_instances=5", "target_requests_per_minute=60"],
     f"max_instances 5 is above the account's quota 'ml.g4dn.xlarge for endpoint usage' "
     f"({QUOTA}) in us-east-1"),
], ids=["min-above-max", "target-zero", "min-zero", "no-wait", "above-quota"])
def test_refusals_are_one_line_exit_2_and_create_nothing(aws, cli, extra, expected):
    result = cli("deploy", ADD_SUB, "--target", "sagemaker", "--name", "sm-no",
                 *options(aws, *extra))
    assert result.code == 2, result
    assert expected in one_line_error(result)
    assert_clean(aws["bucket"])
    assert Deployer().list() == []


def test_the_twin_refuses_what_the_cloud_refuses(cli, monkeypatch):
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    result = cli("validate", ADD_SUB, "--target", "sagemaker-twin", "-o", "min_instances=0",
                 "-o", "max_instances=2", "-o", "target_requests_per_minute=60")
    assert result.code == 2 and "cannot scale to zero" in one_line_error(result)


def test_a_fleet_that_may_scale_out_warns_about_sequences(cli):
    """Like instance_count > 1: instances SageMaker adds may get a sequence's requests."""
    result = cli("validate", REPOS / "acc", "--target", "sagemaker-twin",
                 *[a for item in SCALING for a in ("-o", item)])
    assert result.code == 0, result
    assert ("warning: acc keep(s) state per sequence, and with max_instances 3 SageMaker may "
            "send a sequence's requests to different instances once it scales out; use "
            "max_instances=1") in result.err


def test_plan_lists_the_scalable_target_and_policy(aws, cli):
    result = cli("plan", ADD_SUB, "--target", "sagemaker", "--name", "sm-plan", "--json",
                 *options(aws, *SCALING))
    assert result.code == 0, result
    resources = result.json()["resources"]
    assert [r["kind"] for r in resources] == ["s3-artifacts", "model", "endpoint-config",
                                              "endpoint", "scalable-target", "scaling-policy"]
    target, policy = resources[-2:]
    assert target["name"] == "endpoint/sm-plan/variant/AllTraffic"
    assert (target["details"]["min_capacity"], target["details"]["max_capacity"],
            target["details"]["dimension"]) == (1, 3, DIMENSION)
    assert policy["details"]["configuration"]["TargetValue"] == 600.0
    assert policy["details"]["configuration"]["ScaleInCooldown"] == 300
    assert_clean(aws["bucket"])


# -- an interrupted deploy is torn down completely --------------------------------------------

def test_a_failed_policy_leaves_a_record_that_teardown_removes(aws, cli, proxy):
    denied = ("User: arn:aws:sts::123456789012:assumed-role/Deployer/ci is not authorized to "
              "perform: application-autoscaling:PutScalingPolicy on resource: *")
    proxy.json_error(AAS + "PutScalingPolicy", "AccessDeniedException", denied)
    result = cli("deploy", ADD_SUB, "--target", "sagemaker", "--name", "sm-cut",
                 *options(aws, *SCALING))
    assert result.code == 3, result
    line = one_line_error(result)
    assert f"PutScalingPolicy failed: AccessDeniedException: {denied}" in line
    assert "grant the caller application-autoscaling:PutScalingPolicy" in line
    assert "'deployer teardown sm-cut' removes what was created" in line
    assert states("sm-cut")[-2:] == [
        ("scalable-target", "endpoint/sm-cut/variant/AllTraffic", "created"),
        ("scaling-policy", "sm-cut-invocations-target-tracking", "creating")]
    assert len(registered()[0]) == 1
    down = cli("teardown", "sm-cut")
    assert down.code == 0, down
    assert_clean(aws["bucket"])


# -- update: scaling off before update_endpoint, back on after (or restored) ------------------

@pytest.mark.parametrize("outcome", ["updated", "refused"])
def test_update_deregisters_then_registers_scaling_again(aws, cli, proxy, stubbed, outcome):
    """SageMaker refuses to update an autoscaled variant's instance type: the policy and the
    target go just before update_endpoint and come back after it, as new records, on the new
    config; if update_endpoint is refused they come back on the version that still serves."""
    assert cli("deploy", ADD_SUB, "--target", "sagemaker", "--name", "sm-up",
               *options(aws, *SCALING)).code == 0
    before = states("sm-up")
    stub, calls, patch = stubbed
    deployment = Deployer().store.load("sm-up")
    names = _stub_until_update(stub, deployment, aws, ADD_SUB, "single")
    params = {"EndpointName": "sm-up", "EndpointConfigName": names["config"]}
    if outcome == "updated":
        stub.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:"
                                              "endpoint/sm-up"}, params)
        for _ in range(2):
            stub.add_response("describe_endpoint", _described("sm-up", names["config"]),
                              {"EndpointName": "sm-up"})
        stub.add_response("delete_endpoint_config", {},
                          {"EndpointConfigName": names["old_config"]})
        stub.add_response("delete_model", {}, {"ModelName": names["old_model"]})
    else:
        stub.add_client_error("update_endpoint", "ValidationException",
                              "Cannot update in-progress endpoint", 400, expected_params=params)
    timeline = calls  # the stubbed SageMaker calls and the proxy's, in the order made
    proxy.log = timeline
    patch()
    result = cli("deploy", ADD_SUB, "--target", "sagemaker", "--name", "sm-up", "--update",
                 *options(aws))
    stub.assert_no_pending_responses()
    stub.deactivate()
    proxy.log = []
    unscale = [AAS + "DeleteScalingPolicy", AAS + "DeregisterScalableTarget"]
    rescale = [AAS + "RegisterScalableTarget", AAS + "PutScalingPolicy"]
    start = ["DescribeEndpoint", QUOTAS, "CreateModel", "CreateEndpointConfig", *unscale,
             "UpdateEndpoint"]
    if outcome == "updated":
        assert result.code == 0, result
        assert timeline == [*start, "DescribeEndpoint", "DescribeEndpoint", *rescale,
                            "DeleteEndpointConfig", "DeleteModel"]
        assert "autoscaling registered again on " + names["config"] in result.err
    else:
        assert result.code == 3, result
        assert "Cannot update in-progress endpoint" in one_line_error(result)
        assert timeline == [*start, *rescale]
        assert f"autoscaling restored on {names['old_config']}, which still serves" \
            in result.err
    after = states("sm-up")
    old = [s for s in before if s[0] in ("scalable-target", "scaling-policy")]
    assert [(k, i, "deleted") for k, i, _ in old] == \
        [s for s in after if s[0] in ("scalable-target", "scaling-policy")][:2]
    assert [s for s in after if s[0] in ("scalable-target", "scaling-policy")][2:] == \
        [(k, i, "created") for k, i, _ in old]
    targets, policies = registered()
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(1, 3)]
    assert [p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"]
            for p in policies] == [600.0]

    assert cli("teardown", "sm-up").code == 0
    remove_old_version(names)
    assert_clean(aws["bucket"])


# -- the twin records the range and says it does not scale -----------------------------------

def test_the_twin_reports_the_recorded_range_and_runs_one_instance(cli, tritonserver,
                                                                    monkeypatch):
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    result = cli("deploy", ADD_SUB, "--target", "sagemaker-twin", "--name", "twin-scale",
                 *[a for item in SCALING for a in ("-o", item)])
    assert result.code == 0, result
    try:
        fleet = cli("status", "twin-scale", "--json").json()["fleet"]
        assert fleet == {"minimum": 1, "maximum": 3, "desired": 1, "current": 1, "rule":
                         "target tracking 600 SageMakerVariantInvocationsPerInstance "
                         "(recorded; the twin runs one instance and does not scale)"}
    finally:
        assert cli("teardown", "twin-scale").code == 0
