"""The errors a real AWS account returns first, which moto never raises, injected as AWS's own
wire errors by a proxy in front of moto (tests/aws_faults.py), driven through the real CLI.

Each ends in one line with AWS's code and what to do, the documented exit code (2: caught
before anything is created; 3: a failed deploy, whose record keeps what was created; 4: an
incomplete teardown, whose record stays), and ``deployer teardown NAME`` leaves nothing of
ours in moto. botocore retries as configured by the standard ``AWS_MAX_ATTEMPTS`` and
``AWS_RETRY_MODE`` variables: two attempts here, counted at the proxy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployer.api import Deployer
from deployer.plugins import load, parse_options

from aws_faults import proxy  # noqa: F401 - a fixture
from conftest import REPOS, one_line_error
from sagemaker_support import ROLE, aws_environment, leftovers
from sagemaker_support import moto_url  # noqa: F401 - a fixture

pytest.importorskip("moto.server", reason="moto[server] is needed for the SageMaker tests")

ADD_SUB = REPOS / "add_sub"
ATTEMPTS = 2
QUOTA = ("The account-level service limit 'ml.g4dn.xlarge for endpoint usage' is 0 Instances, "
         "with current utilization of 0 Instances and a request delta of 1 Instances. Please "
         "use AWS Service Quotas to request an increase for this quota. If AWS Service Quotas "
         "is not available, contact AWS support to request an increase for this quota.")
CALLER = "arn:aws:sts::123456789012:assumed-role/Deployer/ci"
PASS_ROLE = (f"User: {CALLER} is not authorized to perform: iam:PassRole on resource: {ROLE} "
             "because no identity-based policy allows the iam:PassRole action")
REDIRECT = ("The bucket you are attempting to access must be addressed using the specified "
            "endpoint. Please send all future requests to this endpoint.")


@pytest.fixture
def aws(proxy):
    """Every AWS endpoint at the proxy, two attempts per call, a fresh bucket; afterwards the
    proxy must have answered every request it forwarded."""
    proxy.clear()
    with aws_environment(proxy.url, AWS_MAX_ATTEMPTS=str(ATTEMPTS),
                         AWS_RETRY_MODE="standard") as env:
        yield env
        proxy.clear()
    assert proxy.errors == []


def deploy(cli, aws, name: str, *extra: str):
    options = [f"role={aws['role']}", f"bucket={aws['bucket']}", *extra]
    return cli("deploy", ADD_SUB, "--target", "sagemaker", "--name", name,
               *[arg for item in options for arg in ("-o", item)])


def ours(bucket: str) -> dict[str, list[str]]:
    """What moto holds of ours (the bucket itself is the test's)."""
    left = leftovers(bucket)
    return {key: values for key, values in left.items() if values}


def recorded(state: Path, name: str) -> dict[str, str]:
    deployment = Deployer(state_dir=state).store.load(name)
    return {f"{r.kind} {r.id}": r.status for r in deployment.resources}


# -- caught before anything is created: exit 2 ----------------------------------------------------

def _missing_bucket(proxy, aws):
    return ["bucket=tdeploy-nobody-made-this"], ["NoSuchBucket", "aws s3 mb "
            "s3://tdeploy-nobody-made-this --region us-east-1"]


def _bucket_in_another_region(proxy, aws):
    import boto3

    bucket = aws["bucket"] + "-eu"
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return [f"bucket={bucket}"], [f"S3 bucket {bucket} is in eu-west-1, not us-east-1",
                                  "-o region=eu-west-1"]


def _head_bucket_redirect(proxy, aws):
    # what S3's us-east-1 endpoint answers for a bucket of eu-west-1: 301, no body, its region
    proxy.s3_error("HEAD", rf"^/{aws['bucket']}/?(\?|$)", "PermanentRedirect", REDIRECT,
                   status=301, headers={"x-amz-bucket-region": "eu-west-1"})
    return [], ["PermanentRedirect", "is in eu-west-1, not us-east-1", "-o region=eu-west-1"]


@pytest.mark.parametrize("fault", [_missing_bucket, _bucket_in_another_region,
                                   _head_bucket_redirect],
                         ids=["NoSuchBucket", "bucket-in-eu-west-1", "HeadBucket-301"])
def test_bucket_faults_are_caught_before_anything_is_created(cli, aws, proxy, fault):
    extra, wanted = fault(proxy, aws)
    result = deploy(cli, aws, "sm-pre", *extra)
    assert result.code == 2, result
    line = one_line_error(result)
    assert all(text in line for text in wanted), line
    assert proxy.seen["SageMaker.CreateModel"] == 0
    assert cli("status", "sm-pre").code == 2, "no record: nothing was created"
    assert ours(aws["bucket"]) == {}
    if fault is _bucket_in_another_region:
        import boto3

        boto3.client("s3", region_name="eu-west-1").delete_bucket(Bucket=aws["bucket"] + "-eu")


# -- a failed deploy: exit 3, the record keeps what was created, teardown removes it ----------

FAULTS = {
    "ResourceLimitExceeded": (
        lambda p, a: p.json_error("SageMaker.CreateEndpoint", "ResourceLimitExceeded", QUOTA),
        ["CreateEndpoint failed: ResourceLimitExceeded: The account-level service limit",
         "raise the quota 'ml.g4dn.xlarge for endpoint usage' in the Service Quotas console",
         "region us-east-1"],
        {"model", "endpoint-config"}),
    "AccessDenied-PassRole": (
        lambda p, a: p.json_error("SageMaker.CreateModel", "AccessDeniedException", PASS_ROLE),
        ["CreateModel failed: AccessDeniedException: User:",
         f"the caller {CALLER} needs iam:PassRole on {ROLE}"],
        set()),
    "Throttling": (
        lambda p, a: p.json_error("SageMaker.CreateEndpointConfig", "ThrottlingException",
                                  "Rate exceeded"),
        ["CreateEndpointConfig failed: ThrottlingException: Rate exceeded",
         f"AWS still throttled after {ATTEMPTS} attempt(s)", "AWS_MAX_ATTEMPTS"],
        {"model"}),
    "model-data": (
        lambda p, a: p.json_error(
            "SageMaker.CreateModel", "ValidationException",
            f"Could not find model data at s3://{a['bucket']}/triton-deployer/model.tar.gz."),
        ["CreateModel failed: ValidationException: Could not find model data at s3://",
         f"the execution role {ROLE}", "s3:GetObject", "in a bucket in us-east-1"],
        set()),
    "NoSuchBucket-upload": (
        lambda p, a: p.s3_error("PUT", rf"^/{a['bucket']}/.+", "NoSuchBucket",
                                "The specified bucket does not exist", status=404,
                                BucketName=a["bucket"]),
        ["PutObject failed: NoSuchBucket: The specified bucket does not exist",
         "create it: aws s3 mb s3://", "--region us-east-1"],
        set()),
    "wrong-signing-region": (
        lambda p, a: p.s3_error(
            "GET", rf"^/{a['bucket']}\?list-type=2", "AuthorizationHeaderMalformed",
            "The authorization header is malformed; the region 'us-east-1' is wrong; "
            "expecting 'eu-west-1'", status=400, Region="eu-west-1"),
        ["ListObjectsV2 failed: AuthorizationHeaderMalformed",
         "is in eu-west-1: pass -o region=eu-west-1"],
        set()),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_cloud_errors_during_deploy_are_one_line_and_torn_down(cli, aws, proxy, fault):
    inject, wanted, created = FAULTS[fault]
    inject(proxy, aws)
    state = Path(Deployer().store.root)
    result = deploy(cli, aws, "sm-fault")
    assert result.code == 3, result
    line = one_line_error(result)
    assert all(text in line for text in wanted), line
    # only the listing comes before the first resource is recorded
    assert ("nothing was created" if fault == "wrong-signing-region"
            else "'deployer teardown sm-fault' removes what was created") in line
    if fault == "Throttling":
        assert proxy.seen["SageMaker.CreateEndpointConfig"] == ATTEMPTS, proxy.seen

    # the record keeps exactly what exists in moto
    if cli("status", "sm-fault").code == 0:
        kinds = {key.split()[0] for key, status in recorded(state, "sm-fault").items()
                 if status == "created"}
        assert kinds - {"s3-artifacts"} == created
        left = ours(aws["bucket"])
        assert len(left.get("models", [])) == ("model" in created)
        assert len(left.get("configs", [])) == ("endpoint-config" in created)
    else:  # nothing was recorded, so nothing may exist
        assert not created
    proxy.clear()
    result = cli("teardown", "sm-fault")
    assert result.code == 0, result
    assert ours(aws["bucket"]) == {}
    assert cli("status", "sm-fault").code == 2


# -- teardown: a failing resource never stops the rest; a second run finishes ----------------

@pytest.mark.parametrize("code, message, hint", [
    ("ThrottlingException", "Rate exceeded", f"after {ATTEMPTS} attempt(s)"),
    ("ValidationException", "Cannot delete in-progress endpoint \"sm-td\".",
     "still being created or updated"),
], ids=["Throttling", "in-progress"])
def test_a_failing_delete_is_reported_per_resource_and_a_second_teardown_finishes(
        cli, aws, proxy, code, message, hint):
    assert deploy(cli, aws, "sm-td").code == 0
    proxy.json_error("SageMaker.DeleteEndpoint", code, message)
    result = cli("teardown", "sm-td")
    assert result.code == 4, result
    line = one_line_error(result)
    assert "teardown of sm-td incomplete: 1 of 4 resource(s) not removed" in line
    failed = [row for row in result.err.splitlines() if row.startswith("  | ")]
    assert len(failed) == 1 and f"endpoint sm-td: DeleteEndpoint failed: {code}" in failed[0]
    assert hint in failed[0]
    # the rest went; the record stays with the endpoint still to remove
    left = ours(aws["bucket"])
    assert left == {"endpoints": ["sm-td"]}, left
    status = json.loads(cli("status", "sm-td", "--json").out)
    assert status["status"] == "teardown-incomplete"
    proxy.clear()
    result = cli("teardown", "sm-td")
    assert result.code == 0, result
    assert ours(aws["bucket"]) == {}
    assert cli("status", "sm-td").code == 2


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_aws_out_of_reach_is_one_line(cli, aws, monkeypatch):
    """botocore's transport errors (no HTTP answer at all): before anything is created exit 5
    with no record; in teardown every resource fails with the line and the record stays, and
    a teardown once AWS answers again finishes."""
    assert deploy(cli, aws, "sm-net").code == 0
    with monkeypatch.context() as patch:
        closed = _closed_port_url()
        for service in ("SAGEMAKER", "S3"):
            patch.setenv(f"AWS_ENDPOINT_URL_{service}", closed)
        result = deploy(cli, aws, "sm-net-2")
        assert result.code == 5, result
        line = one_line_error(result)
        assert "cannot reach AWS: Could not connect to the endpoint URL" in line
        assert "check the network" in line
        assert cli("status", "sm-net-2").code == 2
        result = cli("teardown", "sm-net")
        assert result.code == 4, result
        one_line_error(result)
        failed = [row for row in result.err.splitlines() if row.startswith("  | ")]
        assert len(failed) == 4 and all("cannot reach AWS" in row for row in failed), failed
    assert set(ours(aws["bucket"])) == {"endpoints", "configs", "models", "objects"}
    assert cli("teardown", "sm-net").code == 0
    assert ours(aws["bucket"]) == {}


# -- recover: what a deployment created, found by its tags --------------------------------------

def _target(aws):
    registry = load()
    cls = registry.get("sagemaker")
    return cls(parse_options(cls, {"role": aws["role"], "bucket": aws["bucket"]}),
               lambda _: None)


def test_recover_finds_the_tagged_resources_oldest_first(aws):
    deployer = Deployer(progress=lambda _: None)
    opts = {"role": aws["role"], "bucket": aws["bucket"]}
    mine = deployer.deploy(ADD_SUB, "sagemaker", "sm-rec", opts)
    other = deployer.deploy(ADD_SUB, "sagemaker", "sm-rec-other", opts)
    target = _target(aws)
    try:
        expected = [(r.kind, r.id) for r in mine.resources if r.kind != "s3-artifacts"]
        assert [k for k, _ in expected] == ["model", "endpoint-config", "endpoint"]
        for deployment_id in (mine.id, None):
            found = target.recover("sm-rec", deployment_id)
            assert [(r.kind, r.id) for r in found] == expected, found
            assert all(r.status == "created" and r.data["region"] == "us-east-1"
                       for r in found)
        for resource in reversed(target.recover("sm-rec", mine.id)):
            assert target.delete(resource, mine) is True
            assert target.exists(resource, mine) is False
        left = ours(aws["bucket"])
        assert left["endpoints"] == ["sm-rec-other"], "the other deployment is untouched"
        assert target.recover("sm-rec", mine.id) == []
        assert [r.id for r in target.recover("sm-rec-other", other.id)][-1] == "sm-rec-other"
    finally:
        deployer.teardown("sm-rec")
        deployer.teardown("sm-rec-other")
    assert ours(aws["bucket"]) == {}


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_record_is_torn_down_by_its_tags(cli, aws, damage):
    """``truncated`` keeps a trace of the id; ``garbage`` (and no identity file) leaves the name
    alone. The artefacts carry no tag (they may serve other deployments): they stay."""
    import boto3

    assert deploy(cli, aws, "sm-corrupt").code == 0
    root = Path(Deployer().store.root)
    record = root / "deployments" / "sm-corrupt.json"
    text = record.read_text()
    if damage == "truncated":
        record.write_text(text[:len(text) // 2])
    else:
        record.write_text("{not json")
        for identity in (root / "work" / "sm-corrupt").iterdir():
            identity.unlink()
    result = cli("teardown", "sm-corrupt")
    assert result.code == 0, result.err
    left = ours(aws["bucket"])
    assert set(left) == {"objects"}, left
    boto3.client("s3").delete_objects(Bucket=aws["bucket"], Delete={
        "Objects": [{"Key": key} for key in left["objects"]]})
    assert cli("status", "sm-corrupt").code == 2
