"""The sagemaker target on moto (control plane) + a runtime emulator serving the uploaded bytes
with the real tritonserver (data plane). No test-only code path in the target: boto3 reaches the
local servers through AWS_ENDPOINT_URL_* variables."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from deployer import cli
from deployer.api import Deployer
from deployer.client import EndpointError
from deployer.repository import Repository
from deployer.testing import TargetContract

from sagemaker_support import RuntimeEmulator, leftovers

pytest.importorskip("moto.server", reason="moto[server] is needed for the SageMaker tests")

ROOT = Path(__file__).parent
ADD_SUB = ROOT / "repos" / "add_sub"
MULTI = ROOT / "repos" / "multi"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


@pytest.fixture(scope="session")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def emulator(moto_url, tritonserver):
    emulator = RuntimeEmulator()
    yield emulator
    emulator.close()


@pytest.fixture
def aws(moto_url, emulator):
    """Fake credentials and region, every AWS endpoint local, and a fresh bucket.

    A MonkeyPatch of its own: the contract suite calls ``monkeypatch.undo()`` mid-test."""
    import boto3

    with pytest.MonkeyPatch.context() as patch:
        for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
                    "AWS_ENDPOINT_URL"):
            patch.delenv(key, raising=False)
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_ENDPOINT_URL_SAGEMAKER": moto_url, "AWS_ENDPOINT_URL_S3": moto_url,
               # CloudWatch Logs: botocore derives the name from the service id
               "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": moto_url,
               "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": emulator.url}
        for key, value in env.items():
            patch.setenv(key, value)
        bucket = f"tdeploy-{uuid.uuid4().hex[:12]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield {"bucket": bucket, "role": ROLE}


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYER_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def options(aws, *extra: str) -> list[str]:
    result = ["-o", f"role={aws['role']}", "-o", f"bucket={aws['bucket']}"]
    for item in extra:
        result += ["-o", item]
    return result


def assert_clean(bucket: str) -> None:
    left = leftovers(bucket)
    assert left == {"endpoints": [], "configs": [], "models": [], "objects": []}, left


# -- cheap import --------------------------------------------------------------------------------

def test_plugin_import_stays_cheap():
    code = ("import sys, deployer_plugins.sagemaker as m; m.deployer_register_targets(); "
            "print(sorted(x for x in sys.modules if x.split('.')[0] in "
            "('boto3', 'botocore', 'sagemaker', 'tritonclient', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- packaging -----------------------------------------------------------------------------------

def _names(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_single_archive_root_is_the_repository_and_is_reproducible(tmp_path):
    from deployer_plugins.sagemaker import artefacts

    repo = tmp_path / "repo"
    shutil.copytree(ADD_SUB, repo, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "add_sub" / "1" / "weights.bin").write_bytes(os.urandom(9 << 20))  # > 2 chunks
    (repo / "add_sub" / "1" / "link.py").symlink_to("model.py")
    artefact = artefacts.single(Repository.load(repo))
    first, second = io.BytesIO(), io.BytesIO()
    artefacts.write_tar_gz(artefact, first)
    artefacts.write_tar_gz(artefact, second)
    assert first.getvalue() == second.getvalue(), "archives must be reproducible"
    members = _names(first.getvalue())
    assert "add_sub/config.pbtxt" in members and "config.pbtxt" not in members
    assert all(m.isfile() or m.isdir() for m in members.values()), "no links in a tar"
    assert members["add_sub/1/link.py"].isfile()
    # one standard gzip member that the system tar reads too
    assert gzip.decompress(first.getvalue())[:100]
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(first.getvalue())
    listed = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert "add_sub/1/weights.bin" in listed


def test_multi_archives_hold_an_ensemble_with_its_parts():
    from deployer_plugins.sagemaker import artefacts

    items = {a.name: a for a in artefacts.multi(Repository.load(MULTI))}
    assert sorted(items) == ["add_sub.tar.gz", "pipeline.tar.gz", "text_len.tar.gz"]
    buffer = io.BytesIO()
    artefacts.write_tar_gz(items["pipeline.tar.gz"], buffer)
    names = _names(buffer.getvalue())
    assert {"pipeline/config.pbtxt", "scale/config.pbtxt", "scale/1/model.py"} <= set(names)
    assert names["pipeline/1"].isdir()
    assert not any(n.startswith(("add_sub", "text_len")) or n.endswith(".pyc") for n in names)


def test_body_over_six_megabytes_is_refused():
    from deployer_plugins.sagemaker.invoke import encode

    model = Repository.load(ADD_SUB).models["add_sub"]
    big = np.zeros((400_000, 4), dtype=np.float32)
    with pytest.raises(EndpointError, match="at most 6,291,456"):
        encode(model, {"INPUT0": big, "INPUT1": big})
    body, content_type = encode(model, {"INPUT0": big[:2], "INPUT1": big[:2]})
    assert content_type.startswith("application/vnd.sagemaker-triton.binary+json;"
                                   "json-header-size=")


# -- validation: one line, exit 2, before any cloud call ----------------------------------------

@pytest.mark.parametrize("repo, extra, expected", [
    (ADD_SUB, ["-o", "bucket=b"], "no execution role"),
    (ADD_SUB, ["-o", f"role={ROLE}"], "no S3 bucket"),
    (ADD_SUB, ["-o", "role=admin", "-o", "bucket=b"], "is not an IAM role ARN"),
    (MULTI, ["-o", f"role={ROLE}", "-o", "bucket=b"], "3 top-level models"),
    (MULTI, ["-o", f"role={ROLE}", "-o", "bucket=b", "-o", "default_model=nope"],
     "default_model 'nope' is not a model"),
    (MULTI, ["-o", f"role={ROLE}", "-o", "bucket=b", "-o", "mode=multi",
             "-o", "instance_type=ml.g4dn.12xlarge"], "has 4 GPUs"),
    (ADD_SUB, ["-o", f"role={ROLE}", "-o", "bucket=b", "-o", "region=mars-north-1"],
     "no Triton image in region 'mars-north-1'"),
    (ADD_SUB, ["-o", f"role={ROLE}", "-o", "bucket=b", "-o", "startup_timeout=30"],
     "startup_timeout must be 60-3600"),
    (ADD_SUB, ["-o", f"role={ROLE}", "-o", "bucket=b", "-o", "env=LOG=1"],
     "is not SAGEMAKER_TRITON_NAME=VALUE"),
], ids=["role", "bucket", "role-arn", "default-needed", "default-missing", "gpu-mme", "region",
        "timeout", "env"])
def test_validation_errors_are_one_line(aws, state, capsys, repo, extra, expected):
    code, out, err = run_cli(capsys, "validate", str(repo), "--target", "sagemaker", *extra)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


def test_missing_credentials_say_what_to_set(aws, state, capsys, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, _, err = run_cli(capsys, "validate", str(ADD_SUB), "--target", "sagemaker",
                           *options(aws))
    assert code == 2
    assert err.count("\n") == 1 and "no AWS credentials found" in err
    assert "AWS_ACCESS_KEY_ID" in err


def test_plan_lists_the_content_addressed_artefacts(aws, state, capsys):
    import json

    code, out, err = run_cli(capsys, "plan", str(ADD_SUB), "--target", "sagemaker", "--json",
                             *options(aws, "instance_type=ml.m5.xlarge"))
    assert code == 0, err
    plan = json.loads(out)
    kinds = [r["kind"] for r in plan["resources"]]
    assert kinds == ["s3-artifacts", "model", "endpoint-config", "endpoint"]
    assert plan["resources"][1]["details"]["image"].endswith("-py3-cpu")
    assert plan["resources"][0]["name"].startswith(f"s3://{aws['bucket']}/triton-deployer/")
    assert leftovers(aws["bucket"])["objects"] == []


# -- end to end through the CLI ------------------------------------------------------------------

def test_run_single_model(aws, state, capsys, emulator):
    code, out, err = run_cli(capsys, "run", str(ADD_SUB), "--target", "sagemaker",
                             *options(aws))
    assert code == 0, out + err
    assert "run PASSED" in out and "add_sub   infer     ok" in out
    assert_clean(aws["bucket"])


def test_run_multi_model_two_models(aws, state, capsys, tmp_path, emulator):
    repo = tmp_path / "two"
    for name in ("add_sub", "text_len"):
        shutil.copytree(MULTI / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    before = emulator.not_ready_answers
    code, out, err = run_cli(capsys, "run", str(repo), "--target", "sagemaker",
                             *options(aws, "mode=multi"))
    assert code == 0, out + err
    assert "text_len  infer     ok" in out and "add_sub   infer     ok" in out
    assert emulator.not_ready_answers >= before + 2, "cold models answer ModelNotReady first"
    assert "is loading; retrying" in err
    assert_clean(aws["bucket"])


def test_run_ensemble_repository_multi_model(aws, state, capsys):
    code, out, err = run_cli(capsys, "run", str(MULTI), "--target", "sagemaker",
                             *options(aws, "mode=multi"))
    assert code == 0, out + err
    assert "pipeline  infer     ok" in out
    assert_clean(aws["bucket"])


def test_run_uncompressed_ensemble_single_model(aws, state, capsys):
    code, out, err = run_cli(capsys, "run", str(MULTI), "--target", "sagemaker",
                             *options(aws, "default_model=pipeline", "uncompressed=true",
                                      "instance_type=ml.c5.xlarge"))
    assert code == 0, out + err
    assert "pipeline  infer     ok" in out
    assert_clean(aws["bucket"])


def test_unchanged_redeploy_uploads_zero_bytes(aws, state, capsys):
    deployer = Deployer(state_dir=state, progress=lambda _: None)
    opts = {"role": aws["role"], "bucket": aws["bucket"]}
    first = deployer.deploy(ADD_SUB, "sagemaker", "zero-a", opts)
    assert first.endpoint["uploaded_bytes"] > 0
    second = deployer.deploy(ADD_SUB, "sagemaker", "zero-b", opts)
    assert second.endpoint["uploaded_bytes"] == 0
    assert second.endpoint["artifacts"] == first.endpoint["artifacts"]
    assert [r.kind for r in second.resources] == ["model", "endpoint-config", "endpoint"]
    deployer.teardown("zero-b")
    assert leftovers(aws["bucket"])["objects"], "zero-b must not delete what zero-a uploaded"
    deployer.teardown("zero-a")
    assert_clean(aws["bucket"])
    # kept artefacts: a later deploy of the same content uploads nothing either
    kept = deployer.deploy(ADD_SUB, "sagemaker", "zero-c", {**opts, "keep_artifacts": "true"})
    deployer.teardown("zero-c")
    again = deployer.deploy(ADD_SUB, "sagemaker", "zero-d", opts)
    assert kept.endpoint["uploaded_bytes"] > 0 and again.endpoint["uploaded_bytes"] == 0
    deployer.teardown("zero-d")
    assert len(leftovers(aws["bucket"])["objects"]) == 1  # the kept model.tar.gz


def test_resources_are_tagged_with_the_deployment_id(aws, state):
    import boto3

    deployer = Deployer(state_dir=state, progress=lambda _: None)
    deployment = deployer.deploy(ADD_SUB, "sagemaker", "tagged", {
        "role": aws["role"], "bucket": aws["bucket"], "tags": "team=ml",
        "env": "SAGEMAKER_TRITON_LOG_VERBOSE=false"})
    try:
        sm = boto3.client("sagemaker")
        model = next(r for r in deployment.resources if r.kind == "model")
        described = sm.describe_model(ModelName=model.id)
        tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=model.data["arn"])["Tags"]}
        assert tags["triton-deployer:deployment-id"] == deployment.id and tags["team"] == "ml"
        env = described["PrimaryContainer"]["Environment"]
        assert env == {"SAGEMAKER_TRITON_LOG_VERBOSE": "false",
                       "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "add_sub"}
        assert described["PrimaryContainer"]["ModelDataUrl"].endswith("/model.tar.gz")
    finally:
        deployer.teardown("tagged")
    assert_clean(aws["bucket"])


def test_failure_message_has_reason_and_cloudwatch_lines(aws):
    import boto3
    from botocore.stub import Stubber

    from deployer_plugins.sagemaker import aws as calls

    import time

    logs = boto3.client("logs")
    now = int(time.time() * 1000)
    group = "/aws/sagemaker/Endpoints/broken"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="AllTraffic/i-1")
    logs.put_log_events(logGroupName=group, logStreamName="AllTraffic/i-1", logEvents=[
        {"timestamp": now - 100 + i, "message": f"line {i}"} for i in range(30)])
    sm = boto3.client("sagemaker")
    with Stubber(sm) as stub:
        stub.add_response("describe_endpoint", {
            "EndpointName": "broken", "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/b",
            "EndpointStatus": "Failed", "CreationTime": "2024-01-01",
            "LastModifiedTime": "2024-01-01",
            "FailureReason": "The primary container for production variant AllTraffic did not "
                             "pass the ping health check."}, {"EndpointName": "broken"})
        message = calls.failure(sm, logs, "broken", lines=5)
    assert "status Failed: The primary container" in message
    assert message.endswith("line 25\nline 26\nline 27\nline 28\nline 29")


# -- the contract every target passes ------------------------------------------------------------

class TestSageMakerContract(TargetContract):
    @pytest.fixture
    def target_name(self):
        return "sagemaker"

    @pytest.fixture
    def target_options(self, aws):
        return {"role": aws["role"], "bucket": aws["bucket"]}

    @pytest.fixture
    def repository(self):
        return str(ADD_SUB)
