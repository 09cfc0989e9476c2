"""What the sagemaker target reports while it works (deployer.progress): the packing and upload
of the artefact as a transfer in bytes that follows the upload to its total, and the waits on
the endpoint with the EndpointStatus of each poll. moto behind the fault proxy (which answers
one DescribeEndpoint with ``Creating``, as SageMaker does for minutes); a recording sink
(tests/progress_support.py) stands in for the terminal's live view."""

from __future__ import annotations

import time

import pytest

from deployer.api import Deployer

from aws_faults import proxy  # noqa: F401 - a fixture
from progress_support import RecordingSink, heavy_repository, rises_to
from sagemaker_support import aws_environment, leftovers
from sagemaker_support import moto_url  # noqa: F401 - a fixture

pytest.importorskip("moto.server", reason="moto[server] is needed for the SageMaker tests")

#: over the 16 MiB multipart threshold: several parts, packed while they upload
WEIGHTS = 20 << 20


@pytest.fixture
def aws(proxy):
    proxy.clear()
    with aws_environment(proxy.url) as env:
        yield env
        proxy.clear()
    assert proxy.errors == []


@pytest.fixture
def heavy(tmp_path):
    return heavy_repository(tmp_path, WEIGHTS)


def _content(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _creating_once(proxy) -> None:
    """The first DescribeEndpoint after CreateEndpoint answers ``Creating`` (moto's endpoints
    are InService at once); the waiter's next poll, 15 s later, reaches moto."""
    now = time.time()

    def add():
        proxy.json_answer("SageMaker.DescribeEndpoint", {
            "EndpointName": "prog", "EndpointConfigName": "prog-c",
            "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/prog",
            "EndpointStatus": "Creating", "CreationTime": now, "LastModifiedTime": now},
            times=1)

    proxy.before("SageMaker.CreateEndpoint", add)


def test_packing_and_upload_is_a_transfer_and_the_wait_sees_each_state(
        aws, proxy, heavy, tmp_path):
    _creating_once(proxy)
    sink = RecordingSink()
    deployer = Deployer(state_dir=tmp_path / "state", progress=sink)
    deployment = deployer.deploy(heavy, "sagemaker", "prog", {
        "role": aws["role"], "bucket": aws["bucket"]})
    try:
        [upload] = sink.transfers()
        assert upload.unit == "bytes" and "packing and uploading" in upload.what
        assert upload.what.endswith("/model.tar.gz"), upload.what
        # the bytes packed (the repository's content), reached as the upload goes on
        assert upload.total == _content(heavy) > WEIGHTS
        assert rises_to(upload, upload.total), upload.history[:20]
        assert upload.exited and upload.error is None
        assert deployment.endpoint["uploaded_bytes"] > WEIGHTS  # random bytes do not shrink
        [wait] = sink.waits("InService")
        assert wait.changes() == ["Creating", "InService"], wait.states
        assert wait.exited and wait.error is None
        assert proxy.seen["SageMaker.DescribeEndpoint"] >= 3  # the preflight, then two polls
    finally:
        deployer.teardown("prog")
    [gone] = sink.waits("to be deleted")
    assert gone.changes() == ["gone"] and gone.exited and gone.error is None
    assert not any("packing" in line or "waiting" in line for line in sink.lines), sink.lines
    assert leftovers(aws["bucket"]) == {"endpoints": [], "configs": [], "models": [],
                                        "objects": []}


def test_uncompressed_upload_counts_every_file(aws, heavy, tmp_path):
    sink = RecordingSink()
    deployer = Deployer(state_dir=tmp_path / "state", progress=sink)
    deployment = deployer.deploy(heavy, "sagemaker", "prog-u", {
        "role": aws["role"], "bucket": aws["bucket"], "uncompressed": "true"})
    try:
        [upload] = sink.transfers()
        files = [p for p in heavy.rglob("*") if p.is_file()]
        assert upload.what.startswith(f"  uploading {len(files)} file(s) to s3://")
        assert upload.total == _content(heavy) == deployment.endpoint["uploaded_bytes"]
        assert rises_to(upload, upload.total), upload.history[:20]
        [wait] = sink.waits("InService")
        assert wait.changes() == ["InService"] and wait.error is None
    finally:
        deployer.teardown("prog-u")
    # an unchanged repository uploads nothing: no transfer at all
    again = RecordingSink()
    Deployer(state_dir=tmp_path / "state", progress=again).deploy(heavy, "sagemaker", "prog-k", {
        "role": aws["role"], "bucket": aws["bucket"], "keep_artifacts": "true"})
    Deployer(state_dir=tmp_path / "state", progress=again).teardown("prog-k")
    assert len(again.transfers()) == 1
    third = RecordingSink()
    redeployed = Deployer(state_dir=tmp_path / "state", progress=third).deploy(
        heavy, "sagemaker", "prog-z", {"role": aws["role"], "bucket": aws["bucket"]})
    assert redeployed.endpoint["uploaded_bytes"] == 0 and third.transfers() == []
    Deployer(state_dir=tmp_path / "state", progress=third).teardown("prog-z")


def test_plain_lines_without_a_live_view(aws, heavy, tmp_path):
    """A sink without ``live`` (a log): the transfer and the wait are a few plain lines."""
    lines: list[str] = []
    deployer = Deployer(state_dir=tmp_path / "state", progress=lines.append)
    deployer.deploy(heavy, "sagemaker", "prog-p", {"role": aws["role"], "bucket": aws["bucket"]})
    deployer.teardown("prog-p")
    packing = [line for line in lines if "packing and uploading" in line]
    assert len(packing) == 2 and packing[1].split(": ", 1)[1].startswith("done, 21.0 MB in ")
    waits = [line for line in lines if "to be InService" in line]
    assert len(waits) == 3 and waits[1].endswith(": InService"), waits
    assert waits[2].split(": ", 1)[1].startswith("InService after "), waits
