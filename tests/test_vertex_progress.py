"""What the vertex target reports while it works (deployer.progress): the upload of the
repository to Cloud Storage as a transfer in bytes (a file over 8 MiB in resumable chunks,
counted as they are read to be sent), and the deploy operation as a wait hearing Vertex's
deployment stage at each read of it. Cloud Storage is the emulator (tests/gcs_support.py), the
control plane the fake (tests/vertex_support.py, whose deploy operation is a real api_core
Operation); a recording sink (tests/progress_support.py) stands in for the live view."""

from __future__ import annotations


import pytest

from deployer.api import Deployer
from deployer_plugins.vertex import seam
from gcs_support import gcs  # noqa: F401 (fixture)
from progress_support import RecordingSink, heavy_repository, rises_to
from vertex_support import fake  # noqa: F401 (fixture)

pytestmark = pytest.mark.server
IMAGE = "us-central1-docker.pkg.dev/fake-project/triton/tritonserver:24.09-py3"
#: over 16 MiB (storage.CHUNK): two resumable chunks
WEIGHTS = 20 << 20
STAGES = ("STARTING_DEPLOYMENT", "PREPARING_MODEL", "STARTING_MODEL_SERVER", "FINISHING_UP")


@pytest.fixture
def heavy(tmp_path):
    return heavy_repository(tmp_path, WEIGHTS)


def test_upload_is_a_transfer_and_the_deploy_a_wait_on_its_stages(
        fake, gcs, heavy, tmp_path, monkeypatch):
    # read the operation at each of its polls (a poll is a second or more of real time)
    monkeypatch.setattr(seam, "STATE_EVERY", 0.01)
    fake.stages = STAGES
    sink = RecordingSink()
    deployer = Deployer(state_dir=tmp_path / "state", progress=sink)
    deployment = deployer.deploy(heavy, "vertex", "prog", {
        "bucket": gcs.bucket, "project": "fake-project", "image": IMAGE})
    try:
        [upload] = sink.transfers()
        files = [p for p in heavy.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        assert upload.what.startswith(f"  sending {len(files)} of {len(files)} object(s) to gs://")
        assert upload.total == size == next(
            r for r in deployment.resources if r.kind == "artefact").data["bytes_sent"]
        assert rises_to(upload, size), upload.history
        assert upload.exited and upload.error is None
        model, deploy = sink.waits("uploading model"), sink.waits("  deploying ")
        assert len(model) == 1 and model[0].states == [] and model[0].error is None
        assert len(deploy) == 1 and deploy[0].exited and deploy[0].error is None
        # the stages in order (api_core may refresh the operation twice in one poll, so a
        # stage can pass unseen); the done operation names none (the fake's, like Vertex's
        # response) and the wait says so
        seen = deploy[0].changes()
        assert seen[-1] == "done" and len(seen) >= 3, deploy[0].states
        assert seen[:-1] == [stage for stage in STAGES if stage in seen], deploy[0].states
        assert deploy[0].what.endswith("(10-30 minutes on Vertex)")
        assert not any(line.startswith(("  deploying", "  uploading model"))
                       for line in sink.lines), sink.lines
    finally:
        deployer.teardown("prog")
    assert [w.what.split(" ", 3)[2] for w in sink.waits("  undeploying")] == ["undeploying"]
    assert len(sink.waits("  deleting endpoint")) == 1
    assert all(t.exited and t.error is None for t in sink.tasks)
