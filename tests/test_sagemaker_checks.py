"""The rules SageMaker applies that moto does not, checked before anything is created, and the
defaults SageMaker applies that we pin: the execution role (IAM GetRole, through moto's IAM and
a proxy that answers AWS's own query-protocol errors), instance families without a Triton
image, the pinned image version, and the endpoint's CloudWatch log group on teardown. Driven
through the real CLI; every refusal is one line, exit 2, with nothing created."""

from __future__ import annotations

import json

import pytest

from deployer.api import Deployer

from aws_faults import proxy  # noqa: F401 - a fixture
from conftest import REPOS, one_line_error
from sagemaker_support import ROLE, SAGEMAKER_TRUST, aws_environment, leftovers, make_role
from sagemaker_support import moto_url  # noqa: F401 - a fixture

pytest.importorskip("moto.server", reason="moto[server] is needed for the SageMaker tests")

ADD_SUB = REPOS / "add_sub"
ACCOUNT = "123456789012"
CALLER = f"arn:aws:sts::{ACCOUNT}:assumed-role/Deployer/ci"
EC2_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}


@pytest.fixture
def aws(proxy):
    with aws_environment(proxy.url) as env:
        proxy.clear()  # the role and bucket made for the test are not its requests
        yield env
        proxy.clear()
        make_role(ROLE.rsplit("/", 1)[1], SAGEMAKER_TRUST)  # as a test may have left it
    assert proxy.errors == []


def deploy(cli, aws, name: str, *extra: str, role: str | None = None, update=False):
    options = [f"role={role or aws['role']}", f"bucket={aws['bucket']}", *extra]
    return cli("deploy", ADD_SUB, "--target", "sagemaker", "--name", name,
               *(["--update"] if update else []),
               *[arg for item in options for arg in ("-o", item)])


def ours(bucket: str) -> dict[str, list[str]]:
    return {key: values for key, values in leftovers(bucket).items() if values}


def assert_nothing_created(cli, aws, proxy, name: str) -> None:
    assert proxy.seen["SageMaker.CreateModel"] == 0, proxy.seen
    assert cli("status", name).code == 2, "no record: nothing was created"
    assert ours(aws["bucket"]) == {}


# -- the execution role: iam:GetRole before any create ------------------------------------------

def test_a_missing_role_is_refused_before_anything_is_created(cli, aws, proxy):
    role = f"arn:aws:iam::{ACCOUNT}:role/service-role/NobodyMadeThis"
    result = deploy(cli, aws, "sm-role", role=role)
    assert result.code == 2, result
    line = one_line_error(result)
    assert f"execution role NobodyMadeThis does not exist in account {ACCOUNT} ({role})" in line
    assert "aws iam create-role --role-name NobodyMadeThis" in line
    assert "sagemaker.amazonaws.com" in line
    assert proxy.seen["iam.GetRole"] == 1, proxy.seen  # asked by its bare name
    assert_nothing_created(cli, aws, proxy, "sm-role")


def test_a_role_with_a_path_is_found_by_its_name_and_its_arn_must_match(cli, aws, proxy):
    arn = make_role("SMPathRole", SAGEMAKER_TRUST, path="/service-role/")
    assert arn == f"arn:aws:iam::{ACCOUNT}:role/service-role/SMPathRole"
    # the ARN without the path names no role SageMaker could assume
    wrong = f"arn:aws:iam::{ACCOUNT}:role/SMPathRole"
    result = deploy(cli, aws, "sm-path", role=wrong)
    assert result.code == 2, result
    line = one_line_error(result)
    assert f"execution role {wrong} does not exist: the role named SMPathRole is {arn}" in line
    assert f"pass -o role={arn}" in line
    assert_nothing_created(cli, aws, proxy, "sm-path")
    # the right ARN deploys
    result = deploy(cli, aws, "sm-path", role=arn)
    assert result.code == 0, result
    assert cli("teardown", "sm-path").code == 0
    assert ours(aws["bucket"]) == {}


def test_a_role_that_does_not_trust_sagemaker_is_refused_with_the_fix(cli, aws, proxy):
    make_role("SageMakerRole", EC2_TRUST)
    result = deploy(cli, aws, "sm-trust")
    assert result.code == 2, result
    line = one_line_error(result)
    assert "execution role SageMakerRole does not trust sagemaker.amazonaws.com" in line
    assert "aws iam update-assume-role-policy --role-name SageMakerRole" in line
    assert_nothing_created(cli, aws, proxy, "sm-trust")


def test_a_role_we_may_not_read_is_a_warning_and_the_deploy_goes_on(cli, aws, proxy):
    proxy.query_error("iam.GetRole", "AccessDenied",
                      f"User: {CALLER} is not authorized to perform: iam:GetRole on resource: "
                      "role SageMakerRole because no identity-based policy allows the "
                      "iam:GetRole action", status=403)
    result = deploy(cli, aws, "sm-denied")
    assert result.code == 0, result
    warnings = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: cannot check execution role SageMakerRole (GetRole: "
                        "AccessDenied); SageMaker refuses it at CreateModel if it is missing "
                        "or does not trust sagemaker.amazonaws.com"], result.err
    assert proxy.seen["iam.GetRole"] == 1 and proxy.seen["SageMaker.CreateEndpoint"] == 1
    assert cli("teardown", "sm-denied").code == 0
    assert ours(aws["bucket"]) == {}


def test_an_update_checks_the_role_before_creating_anything(cli, aws, proxy):
    assert deploy(cli, aws, "sm-upd-role").code == 0
    before = ours(aws["bucket"])
    make_role("SageMakerRole", EC2_TRUST)
    proxy.clear()
    result = deploy(cli, aws, "sm-upd-role", "env=SAGEMAKER_TRITON_LOG_VERBOSE=true", update=True)
    assert result.code == 2, result
    assert "does not trust sagemaker.amazonaws.com" in one_line_error(result)
    assert proxy.seen["SageMaker.CreateModel"] == 0 and proxy.seen["iam.GetRole"] == 1
    assert ours(aws["bucket"]) == before
    stored = Deployer().store.load("sm-upd-role")
    assert stored.status == "ready" and stored.error.startswith("update failed:")
    assert cli("teardown", "sm-upd-role").code == 0
    assert ours(aws["bucket"]) == {}


@pytest.mark.parametrize("document, trusted", [
    (SAGEMAKER_TRUST, True),
    # as IAM sends it on the wire: URL-encoded JSON
    ("%7B%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22Service"
     "%22%3A%5B%22ec2.amazonaws.com%22%2C%22sagemaker.amazonaws.com%22%5D%7D%2C%22Action%22%3A"
     "%22sts%3AAssumeRole%22%7D%5D%7D", True),
    ({"Statement": {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                    "Action": ["sts:TagSession", "sts:*"]}}, True),
    (EC2_TRUST, False),
    ({"Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                     "Action": "sts:TagSession"}]}, False),
    ({"Statement": [SAGEMAKER_TRUST["Statement"][0],
                    {**SAGEMAKER_TRUST["Statement"][0], "Effect": "Deny"}]}, False),
    ("not json", False),
    (None, False),
], ids=["dict", "url-encoded", "wildcard-action", "ec2", "other-action", "denied", "garbage",
        "none"])
def test_trust_policy_reading(document, trusted):
    from deployer_plugins.sagemaker import aws

    assert aws.trusts(document, "sagemaker.amazonaws.com") is trusted


# -- instance families without a Triton image: refused offline ------------------------------------

@pytest.mark.parametrize("target", ["sagemaker", "sagemaker-twin"])
@pytest.mark.parametrize("instance_type", ["ml.inf2.xlarge", "ml.inf1.xlarge",
                                           "ml.trn1.2xlarge"])
def test_inferentia_and_trainium_are_refused_in_validate(cli, monkeypatch, target,
                                                         instance_type):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    result = cli("validate", ADD_SUB, "--target", target, "-o", f"role={ROLE}", "-o",
                 "bucket=b", "-o", "region=us-east-1", "-o", f"instance_type={instance_type}")
    assert result.code == 2, result
    line = one_line_error(result)
    assert f"{instance_type} is an AWS Inferentia/Trainium instance: SageMaker has no Triton " \
           "image for it" in line
    assert "ml.g5.xlarge" in line and "ml.m5.xlarge" in line


# -- the image: a pinned default version --------------------------------------------------------

@pytest.fixture
def fake_credentials(monkeypatch):
    """``plan`` reads no AWS, but wants credentials to exist (as a deploy would)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def plan(cli, *extra: str):
    options = [f"role={ROLE}", "bucket=b", *extra]
    return cli("plan", ADD_SUB, "--target", "sagemaker", "--json",
               *[arg for item in options for arg in ("-o", item)])


def planned_image(result) -> str:
    assert result.code == 0, result
    return next(r for r in result.json()["resources"] if r["kind"] == "model")[
        "details"]["image"]


def test_the_default_image_is_the_pinned_version_and_image_version_overrides_it(
        cli, fake_credentials):
    from deployer_plugins.sagemaker import images

    assert images.DEFAULT_VERSION == "24.09"
    image = planned_image(plan(cli, "region=us-east-1"))
    assert image == "763104351884.dkr.ecr.us-east-1.amazonaws.com/sagemaker-tritonserver:24.09-py3"
    assert planned_image(plan(cli, "region=eu-west-1", "instance_type=ml.m5.xlarge")).endswith(
        "sagemaker-tritonserver:24.09-py3-cpu")
    newest = images.ordered(images.triton_config()["versions"])[-1]
    assert planned_image(plan(cli, "region=us-east-1", f"image_version={newest}")).endswith(
        f"sagemaker-tritonserver:{newest}-py3")
    # the help says which version is the default
    shown = cli("targets", "sagemaker")
    assert shown.code == 0 and "default: 24.09" in shown.out, shown


def test_a_region_without_the_pinned_version_names_the_versions_it_has(cli, fake_credentials):
    from deployer_plugins.sagemaker import images

    known = images.triton_config()["versions"]
    region = next((r for v in known for r in known[v]["registries"]
                   if r not in known[images.DEFAULT_VERSION]["registries"]), None)
    if region is None:
        pytest.skip("every region of the installed image map has the pinned version")
    there = [v for v in images.ordered(known) if region in known[v]["registries"]]
    result = plan(cli, f"region={region}")
    assert result.code == 2, result
    line = one_line_error(result)
    assert (f"SageMaker has no Triton image 24.09 (the default) in {region}; it has "
            f"{', '.join(there)} there") in line
    assert f"pass -o image_version={there[0]}" in line
    # the version it suggests works there
    assert planned_image(plan(cli, f"region={region}", f"image_version={there[0]}")).endswith(
        f":{there[0]}-py3")


def test_an_unknown_image_version_is_one_line(cli, fake_credentials):
    result = plan(cli, "region=us-east-1", "image_version=21.01")
    assert result.code == 2, result
    line = one_line_error(result)
    assert "no SageMaker Triton image version '21.01' in the SDK's image map; known: " in line
    assert "24.09" in line


def test_the_image_python_versions_cover_the_default():
    from deployer_plugins.sagemaker import images

    known = images.triton_config()["versions"]
    assert images.IMAGE_PYTHON[images.DEFAULT_VERSION] == "3.10"
    assert set(images.IMAGE_PYTHON) <= set(known)


# -- the endpoint's CloudWatch log group on teardown ---------------------------------------------

def _sagemaker_writes_logs(endpoint: str) -> str:
    """What the endpoint's container does once it runs: SageMaker creates the log group."""
    import boto3

    group = f"/aws/sagemaker/Endpoints/{endpoint}"
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="AllTraffic/i-1")
    return group


def _group_exists(group: str) -> bool:
    import boto3

    found = boto3.client("logs").describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    return any(g["logGroupName"] == group for g in found)


def test_the_log_group_stays_after_teardown_by_default_and_teardown_names_it(cli, aws):
    import boto3

    assert deploy(cli, aws, "sm-logs-kept").code == 0
    kinds = [r.kind for r in Deployer().store.load("sm-logs-kept").resources]
    assert "log-group" not in kinds
    group = _sagemaker_writes_logs("sm-logs-kept")
    result = cli("teardown", "sm-logs-kept")
    assert result.code == 0, result
    assert (f"CloudWatch log group {group} stays (deployed without -o delete_logs=true); to "
            f"remove it: aws logs delete-log-group --log-group-name {group} --region us-east-1"
            ) in result.err
    assert _group_exists(group)
    assert ours(aws["bucket"]) == {}
    boto3.client("logs").delete_log_group(logGroupName=group)


@pytest.mark.parametrize("written", [True, False], ids=["logged", "never-logged"])
def test_delete_logs_records_the_log_group_before_the_endpoint_and_teardown_removes_it(
        cli, aws, written):
    result = deploy(cli, aws, "sm-logs-gone", "delete_logs=true")
    assert result.code == 0, result
    group = "/aws/sagemaker/Endpoints/sm-logs-gone"
    resources = [(r.kind, r.id, r.status)
                 for r in Deployer().store.load("sm-logs-gone").resources]
    kinds = [kind for kind, _, _ in resources]
    assert kinds.index("log-group") == kinds.index("endpoint") - 1, resources
    assert ("log-group", group, "created") in resources
    if written:
        _sagemaker_writes_logs("sm-logs-gone")
    result = cli("teardown", "sm-logs-gone")
    assert result.code == 0, result
    assert f"CloudWatch log group {group} goes too (-o delete_logs=true)" in result.err
    assert (f"removed: log-group {group}" if written else f"already gone: log-group {group}") \
        in result.err
    assert not _group_exists(group)
    assert ours(aws["bucket"]) == {}


def test_plan_says_what_becomes_of_the_log_group(cli, fake_credentials):
    for extra, kept in (((), True), (("delete_logs=true",), False)):
        result = plan(cli, "region=us-east-1", *extra)
        assert result.code == 0, result
        endpoint = next(r for r in result.json()["resources"] if r["kind"] == "endpoint")
        details = endpoint["details"]
        assert details["log_group"] == f"/aws/sagemaker/Endpoints/{endpoint['name']}"
        assert details["log_group_kept_on_teardown"] is kept
    assert json.loads(result.out)


# -- waiting for InService: which states end the wait ------------------------------------------

@pytest.mark.parametrize("states, ends", [
    (["Updating", "SystemUpdating", "RollingBack", "InService"], None),
    (["Updating", "UpdateRollbackFailed"], "UpdateRollbackFailed"),
    (["Deleting"], "Deleting"),
    (["Creating", "Failed"], "Failed"),
], ids=["waited-out", "rollback-failed", "deleting", "failed"])
def test_the_in_service_wait_stops_at_terminal_states_only(states, ends):
    """botocore's endpoint_in_service waiter ends on InService and Failed only (its
    waiters-2.json); ours also stops at UpdateRollbackFailed and Deleting, at the first poll
    that sees them, and waits out the states that end InService."""
    import boto3
    from botocore.exceptions import WaiterError
    from botocore.stub import Stubber

    from deployer_plugins.sagemaker import aws

    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    with Stubber(sm) as stub:
        for state in states:
            stub.add_response("describe_endpoint", {
                "EndpointName": "e", "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/e",
                "EndpointStatus": state, "CreationTime": "2024-01-01",
                "LastModifiedTime": "2024-01-01"}, {"EndpointName": "e"})
        if ends is None:
            aws.wait_in_service(sm, "e", 0, 10)
        else:
            with pytest.raises(WaiterError) as caught:
                aws.wait_in_service(sm, "e", 0, 10)
            assert caught.value.last_response["EndpointStatus"] == ends
            assert "terminal failure state" in str(caught.value)
        stub.assert_no_pending_responses()
