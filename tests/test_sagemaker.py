"""The sagemaker target on moto (control plane) + a runtime emulator serving the uploaded bytes
with the real tritonserver (data plane). No test-only code path in the target: boto3 reaches the
local servers through AWS_ENDPOINT_URL_* variables."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from deployer import cli
from deployer.api import Deployer
from deployer.triton import EndpointError
from deployer.repository import Repository
from deployer.testing import TargetContract

from sagemaker_support import ROLE, RuntimeEmulator, aws_environment, leftovers
from sagemaker_support import moto_url  # noqa: F401 - a fixture

pytest.importorskip("moto.server", reason="moto[server] is needed for the SageMaker tests")

ROOT = Path(__file__).parent
ADD_SUB = ROOT / "repos" / "add_sub"
MULTI = ROOT / "repos" / "multi"
NO_METADATA = ("SageMaker has no metadata route (InvokeEndpoint only): checked through the "
               "inference's outputs instead")


@pytest.fixture(scope="session")
def emulator(moto_url, tritonserver):
    emulator = RuntimeEmulator()
    yield emulator
    emulator.close()


@pytest.fixture
def aws(moto_url, emulator):
    """Fake credentials and region, every AWS endpoint local, and a fresh bucket."""
    emulator.faults.clear()
    with aws_environment(moto_url, emulator.url) as env:
        yield env
    assert emulator.faults == [], "the runtime emulator failed during this test"


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


# -- the load engine's request -------------------------------------------------------------------

LOAD_INPUTS = {"INPUT0": np.arange(4, dtype=np.float32).reshape(1, 4),
               "INPUT1": np.ones((1, 4), dtype=np.float32)}


@pytest.mark.parametrize("multi, runtime, token", [
    (False, None, "session-token"), (True, "http://127.0.0.1:9", None)],
    ids=["single-on-aws", "multi-at-AWS_ENDPOINT_URL"])
def test_load_request_is_what_boto3_signs(monkeypatch, multi, runtime, token):
    """At the same signing time, the load engine's request (URL, body, headers and SigV4
    signature) is what boto3's own invoke_endpoint sends, captured at botocore's before-send
    and never sent; boto3 adds only headers it does not sign."""
    import datetime

    import boto3
    import botocore.auth

    from deployer_plugins.sagemaker.invoke import SageMakerClient

    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    if runtime:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", runtime)
    # a second before midnight: the date of the credential scope is the signing time's
    at = datetime.datetime(2026, 3, 1, 23, 59, 59)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: at)
    session = boto3.Session(aws_access_key_id="AKIDLOADTEST", aws_secret_access_key="secret",
                            aws_session_token=token, region_name="eu-west-1")
    client = SageMakerClient(session, "ep-load", Repository.load(MULTI if multi else ADD_SUB),
                             multi)
    request = client.load_request("add_sub", LOAD_INPUTS)
    ours = {**request.headers, **request.fresh()}

    class Captured(Exception):
        pass

    def capture(request, **_):
        sent.append(request)
        raise Captured

    sent: list = []
    client._runtime.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint",
                                         capture)
    with pytest.raises(Captured):
        client.infer("add_sub", LOAD_INPUTS)
    boto = sent[0]
    theirs = {k: v.decode() if isinstance(v, bytes) else v for k, v in boto.headers.items()}
    assert request.url == boto.url == (
        f"{runtime or 'https://runtime.sagemaker.eu-west-1.amazonaws.com'}"
        "/endpoints/ep-load/invocations")
    assert request.body == boto.body
    assert ours == {k: theirs[k] for k in ours}  # the same Authorization: the same signature
    assert "20260301/eu-west-1/sagemaker/aws4_request" in ours["Authorization"]
    assert ("X-Amz-Security-Token" in ours) == bool(token)
    assert ("X-Amzn-SageMaker-Target-Model" in ours) == multi
    signed = theirs["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert set(signed) == {k.lower() for k in ours if k != "Authorization"} | {"host"}
    assert set(theirs) - set(ours) <= {"User-Agent", "Content-Length", "amz-sdk-invocation-id",
                                       "amz-sdk-request"}
    assert request.refresh <= 60 and request.refused is None


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
    assert f"add_sub   metadata  skipped  {NO_METADATA}" in out
    assert "add_sub   outputs   ok" in out
    assert_clean(aws["bucket"])


def test_compare_sagemaker_against_local(aws, state, capsys, tritonserver):
    """Issue 6 on the SageMaker test set-up: the cloud target deploys in parallel, the local
    one alone; cost comes from the price table (and --price); nothing is left in moto."""
    import json

    code, out, err = run_cli(
        capsys, "compare", str(ADD_SUB), "--target", "sagemaker", "--target", "local",
        "-o", f"sagemaker.role={aws['role']}", "-o", f"sagemaker.bucket={aws['bucket']}",
        "--requests", "60", "--concurrency", "1", "--concurrency", "2",
        "--price", "ml.g4dn.xlarge=1.0", "--json")
    assert code == 0, out + err
    data = json.loads(out)
    assert data["parallel"] == ["sagemaker"] and data["sequential"] == ["local"]
    results = {t["target"]: t for t in data["targets"]}
    sm = results["sagemaker"]
    assert sm["passed"] and sm["torn_down"] and sm["errors"] == 0, sm
    assert sm["instances"][0]["instance_type"] == "ml.g4dn.xlarge"
    assert sm["cost_per_hour"] == 1.0
    assert sm["cost_per_million"] == round(1.0 / (sm["throughput_rps"] * 3600) * 1e6, 4)
    assert results["local"]["passed"] and results["local"]["cost_per_hour"] == 0.0
    assert_clean(aws["bucket"])


def test_gpu_picks_the_instance_and_compare_groups_by_accelerator(aws, state, capsys):
    """-o gpu through plan (the endpoint config's type, the image for it) and compare --gpu
    at two accelerators: one endpoint each, in parallel, priced per type, grouped in order,
    nothing left in moto."""
    import json

    code, out, err = run_cli(capsys, "plan", str(ADD_SUB), "-t", "sagemaker", "--json",
                             *options(aws, "gpu=cpu"))
    assert code == 0, err
    plan = json.loads(out)["resources"]
    assert plan[2]["details"]["instance_type"] == "ml.m5.xlarge"
    assert plan[1]["details"]["image"].endswith("-py3-cpu")

    code, out, err = run_cli(
        capsys, "compare", str(ADD_SUB), "--target", "sagemaker", "--target", "local",
        "-o", f"sagemaker.role={aws['role']}", "-o", f"sagemaker.bucket={aws['bucket']}",
        "--gpu", "t4", "--gpu", "cpu", "--requests", "40", "--concurrency", "1",
        "--price", "ml.g4dn.xlarge=1.0", "--price", "ml.m5.xlarge=0.5", "--json")
    assert code == 0, out + err
    data = json.loads(out)
    assert [(t["target"], t["accelerator"], t["hardware"]) for t in data["targets"]] == [
        ("local", None, None), ("sagemaker@cpu", "cpu", "ml.m5.xlarge"),
        ("sagemaker@T4", "T4", "ml.g4dn.xlarge")]   # grouped: none, cpu, T4 (moto lacks g5)
    assert sorted(data["parallel"]) == ["sagemaker@T4", "sagemaker@cpu"]
    for t in data["targets"][1:]:
        assert t["passed"] and t["torn_down"], t
        assert [i["instance_type"] for i in t["instances"]] == [t["hardware"]]
    assert [t["cost_per_hour"] for t in data["targets"]] == [0.0, 0.5, 1.0]
    assert_clean(aws["bucket"])

    code, out, err = run_cli(capsys, "compare", str(ADD_SUB), "--target", "local",
                             "--gpu", "T4")
    assert code == 2 and "--gpu is for the cloud targets" in err


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


def test_load_request_reaches_the_endpoint(aws, state, emulator):
    """The load engine's request, sent as it is (with fresh()'s signature) on one keep-alive
    connection to the runtime at AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME, is answered 200 by the
    multi-model endpoint's TargetModel, with the outputs infer gives."""
    import http.client
    import urllib.parse

    from deployer_plugins.sagemaker.invoke import decode

    deployer = Deployer(state_dir=state, progress=lambda _: None)
    record = deployer.deploy(MULTI, "sagemaker", "sm-load", {
        "role": aws["role"], "bucket": aws["bucket"], "mode": "multi"})
    try:
        client = deployer.registry.create("sagemaker", record.options,
                                          lambda _: None).client(record)
        expected = client.infer("add_sub", LOAD_INPUTS)  # the cold TargetModel loads
        request = client.load_request("add_sub", LOAD_INPUTS)
        url = urllib.parse.urlsplit(request.url)
        assert f"{url.scheme}://{url.netloc}" == emulator.url
        before = emulator.invocations
        conn = http.client.HTTPConnection(url.netloc, timeout=60)
        for _ in range(2):
            conn.request("POST", url.path, request.body, {**request.headers, **request.fresh()})
            answer = conn.getresponse()
            payload = answer.read()
            assert answer.status == 200, payload
            got = decode(payload, answer.getheader("Content-Type"))
            assert sorted(got) == sorted(expected) == ["OUTPUT0", "OUTPUT1"]
            for name, value in expected.items():
                np.testing.assert_array_equal(got[name], value)
        conn.close()
        assert emulator.invocations == before + 2
    finally:
        deployer.teardown("sm-load")
    assert_clean(aws["bucket"])


def assert_load_at(report: dict, concurrency: int, requests: int) -> None:
    """A passed test whose load ran by the engine at ``concurrency`` without one failure."""
    assert report["passed"], report
    load = report["load"][0]
    assert load["errors"] == {}, load["errors"]
    assert load["concurrency"] == concurrency and load["requests"] >= requests, load
    assert load["processes"] >= 1, load
    assert set(load["window_cv"]) == {"throughput", "p50"}, load


def test_cli_test_at_concurrency_512(aws, state, capsys, emulator):
    """Issue 20: ``test --concurrency 512`` on a SageMaker endpoint: 512 signed
    InvokeEndpoint requests in flight from the load engine's processes, every one answered
    200 by the runtime; teardown leaves nothing."""
    code, out, err = run_cli(capsys, "deploy", str(ADD_SUB), "--target", "sagemaker",
                             "--name", "sm512", *options(aws))
    assert code == 0, out + err
    before = len(emulator.records)   # one per invocation that reached the container
    try:
        code, out, err = run_cli(capsys, "test", "sm512", "--requests", "1024",
                                 "--concurrency", "512", "--json")
        assert code == 0, out + err
        assert_load_at(json.loads(out), 512, 1024)
        assert len(emulator.records) - before >= 1024   # they went to InvokeEndpoint
    finally:
        code, out, err = run_cli(capsys, "teardown", "sm512")
    assert code == 0, out + err
    assert_clean(aws["bucket"])


def test_run_ensemble_repository_multi_model(aws, state, capsys, tmp_path):
    """No metadata route: that check is skipped with its reason (not passed, not failed) in
    --json and JUnit, and every model's outputs (an ensemble's, BYTES) are checked instead."""
    import xml.etree.ElementTree as ET

    junit = tmp_path / "junit.xml"
    code, out, err = run_cli(capsys, "run", str(MULTI), "--target", "sagemaker", "--json",
                             "--junit-xml", str(junit), *options(aws, "mode=multi"))
    assert code == 0, out + err
    report = json.loads(out)
    assert report["passed"]
    models = {m["model"]: m for m in report["models"]}
    assert set(models) == {"add_sub", "pipeline", "text_len"}   # the top-level models
    for model in models.values():
        assert model["passed"] is True
        assert [(c["name"], c["status"], c["passed"]) for c in model["checks"]] == [
            ("metadata", "skipped", False), ("infer", "passed", True),
            ("outputs", "passed", True)], model
        assert model["checks"][0]["reason"] == NO_METADATA
    suite = ET.parse(junit).getroot()
    skipped = {case.get("classname"): case.find("skipped").get("message")
               for case in suite.iter("testcase") if case.find("skipped") is not None}
    assert skipped == {name: NO_METADATA for name in models}
    assert (suite.get("failures"), suite.get("skipped")) == ("0", "3")
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


def test_the_twin_serves_the_very_objects_the_cloud_uploads(aws, state):
    """One builder: the twin's local 'bucket' holds, byte for byte, what the cloud put in S3,
    under the same content address, and the container sees the same environment."""
    import boto3

    deployer = Deployer(state_dir=state, progress=lambda _: None)
    opts = {"role": aws["role"], "bucket": aws["bucket"], "mode": "multi",
            "env": "SAGEMAKER_TRITON_LOG_VERBOSE=false"}
    cloud = deployer.deploy(MULTI, "sagemaker", "cloud", opts)
    twin = deployer.deploy(MULTI, "sagemaker-twin", "twin", opts)
    try:
        s3 = boto3.client("s3")
        prefix = cloud.endpoint["artifacts"].removeprefix(f"s3://{aws['bucket']}/")
        uploaded = {o["Key"].removeprefix(prefix): s3.get_object(
                        Bucket=aws["bucket"], Key=o["Key"])["Body"].read()
                    for o in s3.list_objects_v2(Bucket=aws["bucket"], Prefix=prefix)["Contents"]}
        folder = Path(next(r.id for r in twin.resources if r.kind == "artefacts"))
        store = folder / "s3" / prefix.rstrip("/").rsplit("/", 1)[-1]
        served = {p.name: p.read_bytes() for p in store.iterdir()}
        assert sorted(uploaded) == ["add_sub.tar.gz", "pipeline.tar.gz", "text_len.tar.gz"]
        assert served == uploaded
        sm = boto3.client("sagemaker")
        model = next(r for r in cloud.resources if r.kind == "model")
        env = sm.describe_model(ModelName=model.id)["PrimaryContainer"]["Environment"]
        assert env == {"SAGEMAKER_TRITON_LOG_VERBOSE": "false"}
        pid = next(r for r in twin.resources if r.kind == "process").data["pid"]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"SAGEMAKER_TRITON_LOG_VERBOSE=false" in environ
        assert b"--log-verbose=false" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    finally:
        deployer.teardown("twin")
        deployer.teardown("cloud")
    assert_clean(aws["bucket"])


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


# -- update: blue/green through update_endpoint (moto has none: botocore's Stubber) ---------------

class _StubbedSession:
    """Stands in for ``aws.session``: the one stubbed SageMaker client; real boto3 (so moto) for
    S3 and CloudWatch Logs. The target runs unchanged: it gets its clients from the session."""

    def __init__(self, sm, region=None):
        import boto3

        self._real = boto3.Session(region_name=region) if region else boto3.Session()
        self._sm = sm

    def client(self, service, *args, **kwargs):
        return self._sm if service == "sagemaker" else self._real.client(service, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def stubbed(aws, monkeypatch):
    """``(stub, calls, patch)``: ``patch()`` routes the target's SageMaker calls to the stubbed
    client; ``calls`` lists every operation the target called, in order (an unexpected call
    also fails in the Stubber, but the target may swallow that error: the list cannot)."""
    import boto3
    from botocore.stub import Stubber

    from deployer_plugins.sagemaker import aws as calls_module

    sm = boto3.client("sagemaker")
    calls: list[str] = []
    sm.meta.events.register("before-parameter-build.sagemaker",
                            lambda model, **_: calls.append(model.name))
    stub = Stubber(sm)

    def patch():
        monkeypatch.setattr(calls_module, "session",
                            lambda region=None: _StubbedSession(sm, region))
        stub.activate()

    yield stub, calls, patch
    stub.deactivate()


def _described(name: str, config: str, status: str = "InService", **extra) -> dict:
    return {"EndpointName": name, "EndpointArn": f"arn:aws:sagemaker:us-east-1:1:endpoint/{name}",
            "EndpointConfigName": config, "EndpointStatus": status,
            "CreationTime": "2024-01-01", "LastModifiedTime": "2024-01-01", **extra}


def _stub_until_update(stub, deployment, aws, repo, mode: str) -> dict[str, str]:
    """describe_endpoint → create_model → create_endpoint_config, with the exact parameters
    of an update to ``repo`` in ``mode`` (default options otherwise). Returns the names."""
    from deployer_plugins.sagemaker import artefacts

    name, short = deployment.name, deployment.id[:8]
    names = {"old_config": f"{name}-c-{short}", "old_model": f"{name}-m-{short}",
             "config": f"{name}-c-{short}-r1", "model": f"{name}-m-{short}-r1"}
    repository = Repository.load(repo)
    if mode == "multi":
        layout, items = "multi", artefacts.multi(repository)
    else:
        layout, items = "single", [artefacts.single(repository)]
    uri = (f"s3://{aws['bucket']}/triton-deployer/"
           f"{artefacts.listing_digest(items, layout)}/")
    names["artifacts"] = uri
    container = {"Image": deployment.endpoint["image"], "Environment": {},
                 "Mode": "MultiModel", "ModelDataUrl": uri} if mode == "multi" else {
        "Image": deployment.endpoint["image"],
        "Environment": {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "add_sub"},
        "Mode": "SingleModel", "ModelDataUrl": f"{uri}model.tar.gz"}
    tags = [{"Key": "triton-deployer:deployment-id", "Value": deployment.id},
            {"Key": "triton-deployer:name", "Value": name}]
    arn = "arn:aws:sagemaker:us-east-1:123456789012"
    stub.add_response("describe_endpoint", _described(name, names["old_config"]),
                      {"EndpointName": name})
    stub.add_response("create_model", {"ModelArn": f"{arn}:model/{names['model']}"}, {
        "ModelName": names["model"], "ExecutionRoleArn": ROLE, "PrimaryContainer": container,
        "Tags": tags})
    stub.add_response("create_endpoint_config", {
        "EndpointConfigArn": f"{arn}:endpoint-config/{names['config']}"}, {
        "EndpointConfigName": names["config"], "Tags": tags, "ProductionVariants": [{
            "VariantName": "AllTraffic", "ModelName": names["model"],
            "InstanceType": "ml.g4dn.xlarge", "InitialInstanceCount": 1,
            "ContainerStartupHealthCheckTimeoutInSeconds": 600}]})
    return names


def _clean_after_stub(aws, state, capsys, names: dict[str, str], name: str) -> None:
    """Teardown on moto (the stub removed nothing there), then what the stub 'deleted'."""
    code, _, err = run_cli(capsys, "teardown", name)
    assert code == 0, err
    remove_old_version(names)
    assert_clean(aws["bucket"])


@pytest.mark.parametrize("change", ["to-multi", "unchanged"])
def test_update_is_blue_green_exact_calls(aws, state, capsys, stubbed, change):
    """create_model → create_endpoint_config → update_endpoint → InService on the new config →
    the previous config and model deleted; the previous artefacts only when unreferenced."""
    stub, calls, patch = stubbed
    code, out, err = run_cli(capsys, "deploy", str(ADD_SUB), "--target", "sagemaker",
                             "--name", "sm-bg", "--json", *options(aws))
    assert code == 0, err
    deployment = Deployer(state_dir=state).store.load("sm-bg")
    first_objects = leftovers(aws["bucket"])["objects"]
    repo, extra = (MULTI, ["mode=multi"]) if change == "to-multi" else (ADD_SUB, [])

    names = _stub_until_update(stub, deployment, aws, repo, "multi" if extra else "single")
    stub.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/e"},
                      {"EndpointName": "sm-bg", "EndpointConfigName": names["config"]})
    for _ in range(2):  # the waiter's poll, then the check that the new config serves
        stub.add_response("describe_endpoint", _described("sm-bg", names["config"]),
                          {"EndpointName": "sm-bg"})
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": names["old_config"]})
    stub.add_response("delete_model", {}, {"ModelName": names["old_model"]})
    patch()
    code, out, err = run_cli(capsys, "deploy", str(repo), "--target", "sagemaker", "--name",
                             "sm-bg", "--update", "--json", *options(aws, *extra))
    assert code == 0, err
    stub.assert_no_pending_responses()
    assert calls == ["DescribeEndpoint", "CreateModel", "CreateEndpointConfig",
                     "UpdateEndpoint", "DescribeEndpoint", "DescribeEndpoint",
                     "DeleteEndpointConfig", "DeleteModel"]
    stub.deactivate()

    updated = json.loads(out)
    assert updated["status"] == "ready" and updated["error"] is None
    assert updated["endpoint"]["artifacts"] == names["artifacts"]
    states = [(r["kind"], r["id"], r["status"]) for r in updated["resources"]]
    objects = leftovers(aws["bucket"])["objects"]
    if change == "to-multi":
        assert updated["endpoint"]["mode"] == "multi" and updated["models"] == [
            "add_sub", "pipeline", "text_len"]
        assert updated["endpoint"]["uploaded_bytes"] > 0
        assert states[0][2] == "deleted" and states[4][0] == "s3-artifacts", states
        assert not set(first_objects) & set(objects), "the old model.tar.gz must be gone"
        assert sorted(o.rsplit("/", 1)[1] for o in objects) == [
            "add_sub.tar.gz", "pipeline.tar.gz", "text_len.tar.gz"]
    else:
        assert updated["endpoint"]["uploaded_bytes"] == 0
        assert states[0][2] == "created", "the artefacts the new model reads must stay"
        assert objects == first_objects
    assert [s for s in states if s[0] != "s3-artifacts"] == [
        ("model", names["old_model"], "deleted"),
        ("endpoint-config", names["old_config"], "deleted"),
        ("endpoint", "sm-bg", "created"),
        ("model", names["model"], "created"),
        ("endpoint-config", names["config"], "created")]
    _clean_after_stub(aws, state, capsys, names, "sm-bg")


@pytest.mark.parametrize("how", ["refused", "failed", "rollback-failed"])
def test_update_that_fails_leaves_the_old_version(aws, state, capsys, stubbed, how):
    """update_endpoint refused, or the waiter sees Failed, or UpdateRollbackFailed (the
    rollback failed too: the waiter stops at its first sight of it, not after 40 minutes):
    exit 3, one line with the state and reason, the deployment still ready with ``error`` set,
    nothing of the old version touched."""
    import time

    import boto3

    stub, calls, patch = stubbed
    code, _, err = run_cli(capsys, "deploy", str(ADD_SUB), "--target", "sagemaker",
                           "--name", "sm-keep", *options(aws))
    assert code == 0, err
    deployment = Deployer(state_dir=state).store.load("sm-keep")
    changed = state.parent / "changed"
    shutil.copytree(ADD_SUB, changed, ignore=shutil.ignore_patterns("__pycache__"))
    (changed / "add_sub" / "1" / "notes.txt").write_text("v2\n")
    names = _stub_until_update(stub, deployment, aws, changed, "single")
    update_params = {"EndpointName": "sm-keep", "EndpointConfigName": names["config"]}
    expected = ["DescribeEndpoint", "CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    if how == "refused":
        stub.add_client_error("update_endpoint", "ValidationException",
                              "Cannot update in-progress endpoint", 400,
                              expected_params=update_params)
        wanted = "ValidationException: Cannot update in-progress endpoint"
    else:
        reason = ("The primary container for production variant AllTraffic did not pass the "
                  "ping health check.")
        status = "Failed" if how == "failed" else "UpdateRollbackFailed"
        stub.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/e"},
                          update_params)
        for _ in range(2):  # the waiter's one poll sees the state; then the failure report
            stub.add_response("describe_endpoint", _described(
                "sm-keep", names["old_config"], status, FailureReason=reason),
                {"EndpointName": "sm-keep"})
        expected += ["DescribeEndpoint", "DescribeEndpoint"]
        wanted = f"status {status}: {reason}"
        if how == "rollback-failed":
            wanted = (f"update of endpoint sm-keep to {names['config']} failed and so did "
                      f"SageMaker's rollback (status UpdateRollbackFailed: {reason}); it serves "
                      f"a mix of {names['old_config']} and {names['config']}")
        logs = boto3.client("logs")
        group = "/aws/sagemaker/Endpoints/sm-keep"
        logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName="AllTraffic/i-2")
        logs.put_log_events(logGroupName=group, logStreamName="AllTraffic/i-2", logEvents=[
            {"timestamp": int(time.time() * 1000), "message": "model add_sub: bad config"}])
    patch()
    code, out, err = run_cli(capsys, "deploy", str(changed), "--target", "sagemaker",
                             "--name", "sm-keep", "--update", *options(aws))
    stub.assert_no_pending_responses()
    assert calls == expected
    stub.deactivate()
    assert code == 3, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and wanted in lines[0], err
    assert names["old_config"] in lines[0], "the line names what still serves"
    if how != "refused":
        assert "model add_sub: bad config" in err  # the CloudWatch lines, after the error line
        boto3.client("logs").delete_log_group(logGroupName="/aws/sagemaker/Endpoints/sm-keep")

    stored = Deployer(state_dir=state).store.load("sm-keep")
    assert stored.status == "ready" and stored.error.startswith("update failed:")
    assert stored.endpoint == deployment.endpoint, "the endpoint record is the old version's"
    before = {(r.kind, r.id): r.status for r in deployment.resources}
    after = {(r.kind, r.id): r.status for r in stored.resources}
    assert all(after[key] == status for key, status in before.items()), after
    assert after[("model", names["model"])] == "created"
    assert after[("endpoint-config", names["config"])] == "created"
    assert sorted(leftovers(aws["bucket"])["models"]) == [names["old_model"]]
    code, out, _ = run_cli(capsys, "status", "sm-keep", "--json")
    assert code == 0 and json.loads(out)["live"] is True
    _clean_after_stub(aws, state, capsys, names, "sm-keep")


def remove_old_version(names):
    """Delete the model and config an update replaced (kept by design) so moto is clean."""
    import boto3

    sm = boto3.client("sagemaker")
    for call, key, value in ((sm.delete_endpoint_config, "EndpointConfigName",
                              names["old_config"]),
                             (sm.delete_model, "ModelName", names["old_model"])):
        try:
            call(**{key: value})
        except sm.exceptions.ClientError:
            pass
