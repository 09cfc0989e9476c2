"""The vertex target on a fake control plane (tests/vertex_support.py) with Cloud Storage in a
real emulator and endpoints that are real gateways over a real Triton, and its twin
vertex-twin. No test talks to the internet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from azure_support import run_cli  # noqa: F401 (fixture)
from conftest import measured_at
from deployer.testing import TargetContract
from gcs_support import gcs  # noqa: F401 (fixture)
from vertex_support import fake  # noqa: F401 (fixture)

pytestmark = pytest.mark.server
HERE = Path(__file__).parent
ADD_SUB = HERE / "repos" / "add_sub"
MULTI = HERE / "repos" / "multi"


IMAGE = "us-central1-docker.pkg.dev/fake-project/triton/tritonserver:24.09-py3"


def cloud(gcs, *more: str) -> tuple[str, ...]:
    return ("-o", f"bucket={gcs.bucket}", "-o", "project=fake-project", "-o", f"image={IMAGE}",
            *more)


class TestVertexContract(TargetContract):
    @pytest.fixture(autouse=True)
    def _fake(self, fake):
        return fake

    @pytest.fixture
    def target_name(self):
        return "vertex"

    @pytest.fixture
    def target_options(self, gcs):
        return {"project": "fake-project", "bucket": gcs.bucket, "image": IMAGE}

    @pytest.fixture
    def repository(self):
        return str(ADD_SUB)


class TestVertexTwinContract(TargetContract):
    @pytest.fixture
    def target_name(self):
        return "vertex-twin"

    @pytest.fixture
    def target_options(self):
        return {}

    @pytest.fixture
    def repository(self):
        return str(ADD_SUB)


def _tags(record: dict) -> list[str]:
    work = Path(record["endpoint"]["work"])
    data = json.loads((work / "vertex.json").read_text())
    tags = []
    for endpoint in data["endpoints"].values():
        tags.append(endpoint["tag"])
        tags += [d["tag"] for d in endpoint["deployed"].values()]
    return tags


def test_twin_deploy_test_teardown(run_cli, tmp_path):
    """The four resources in order, the test step through rawPredict (metadata through the
    redirect header), teardown newest first, nothing left running, no token anywhere."""
    from deployer import triton

    code, out, err = run_cli("deploy", str(MULTI), "-t", "vertex-twin", "--name", "vx",
                             "-o", "default_model=add_sub", "-o", "labels=team=ml", "--json")
    assert code == 0, err
    record = json.loads(out)
    kinds = [(r["kind"], r["status"]) for r in record["resources"]]
    assert kinds == [("artefact", "created"), ("model", "created"), ("endpoint", "created"),
                     ("deployed-model", "created")], kinds
    artefact = record["resources"][0]
    assert artefact["id"].startswith("gs://rehearsal/triton-deployer/")
    assert record["resources"][1]["data"]["args"] == [
        "--model-repository=$(AIP_STORAGE_URI)", "--vertex-ai-default-model=add_sub"]
    assert record["endpoint"]["url"].endswith(":rawPredict")
    tags = _tags(record)
    assert len(tags) == 2 and all(triton.tagged(tag) for tag in tags)
    work = Path(record["endpoint"]["work"])
    tokens = [path.read_text().split()[0] for path in work.glob("*.token")]
    assert len(tokens) == 1 and len(tokens[0]) >= 32
    assert (work.glob("*.token").__next__().stat().st_mode & 0o777) == 0o600
    labels = json.loads((work / "vertex.json").read_text())["models"]
    assert all(m["labels"] == {"team": "ml", "deployer-name": "vx", "deployer-id": record["id"]}
               for m in labels.values()), labels

    code, out, err = run_cli("test", "vx", "--requests", "20", "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["passed"] and len(report["models"]) == len(record["models"])
    for model in report["models"]:
        statuses = {c["name"]: c["status"] for c in model["checks"]}
        assert statuses["metadata"] == "passed" and statuses["outputs"] == "passed", model

    code, out, err = run_cli("teardown", "vx", "--json")
    assert code == 0, err
    removed = [r["kind"] for r in json.loads(out)["removed"]]
    assert removed == ["deployed-model", "endpoint", "model", "artefact"], removed
    assert all(triton.tagged(tag) == [] for tag in tags)
    assert list(work.glob("*.token")) == []
    texts = list(run_cli.outputs) + [p.read_text(errors="replace") for p in
                                     (tmp_path / "state").rglob("*") if p.is_file()]
    assert not any(tokens[0] in text for text in texts), "the token leaked"
    code, out, _ = run_cli("teardown", "vx", "--json")
    assert code == 0 and json.loads(out)["found"] is False


@pytest.mark.parametrize("options, words", [
    (("-o", "image=nvcr.io/nvidia/tritonserver:24.09-py3"), "nvcr.io"),
    (("-o", "image=docker.io/library/tritonserver:24.09"), "Artifact Registry"),
    (("-o", "machine_type=g2-standard-4", "-o", "accelerator_type=NVIDIA_TESLA_T4"), "L4"),
    (("-o", "min_replica_count=3", "-o", "max_replica_count=2"), "replica"),
])
def test_twin_refuses_what_vertex_refuses(run_cli, options, words):
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex-twin", "--name", "no",
                             *options)
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert words in lines[0] and "Traceback" not in err, err
    assert json.loads(run_cli("list", "--json")[1]) == []


def test_twin_several_models_need_a_default(run_cli):
    """Triton's Vertex frontend starts only with one model or a default model: refused before
    anything is created."""
    code, _, err = run_cli("deploy", str(MULTI), "-t", "vertex-twin", "--name", "many")
    assert code == 2 and "default_model" in err, err
    assert json.loads(run_cli("list", "--json")[1]) == []


def _variant(tmp_path: Path, name: str, model_py: str) -> Path:
    """add_sub with another model.py."""
    import shutil

    root = tmp_path / name
    shutil.copytree(ADD_SUB, root)
    (root / "add_sub" / "1" / "model.py").write_text(model_py)
    return root


def test_twin_update_moves_the_traffic_and_keeps_the_old_on_failure(run_cli, tmp_path):
    from deployer import triton

    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex-twin", "--name", "up",
                             "--json")
    assert code == 0, err
    first = json.loads(out)
    old_tags = _tags(first)
    try:
        # a version that crashes at start: the old model keeps all the traffic
        crashing = _variant(tmp_path, "crashing", "class TritonPythonModel:\n"
                            "    def initialize(self, args):\n"
                            "        raise RuntimeError('boom')\n")
        code, out, err = run_cli("deploy", str(crashing), "-t", "vertex-twin", "--name", "up",
                                 "--update")
        assert code == 3 and "Traceback" not in err, err
        assert all(triton.tagged(tag) for tag in old_tags)
        assert run_cli("test", "up")[0] == 0

        # the new repository beside the old one, the traffic moved, the old one undeployed
        code, out, err = run_cli("deploy", str(MULTI), "-t", "vertex-twin", "--name", "up",
                                 "--update", "-o", "default_model=add_sub", "--json")
        assert code == 0, err
        record = json.loads(out)
        live = [(r["kind"]) for r in record["resources"] if r["status"] == "created"]
        assert live.count("deployed-model") == 1 and live.count("model") == 1, live
        assert record["endpoint"]["url"] == first["endpoint"]["url"]
        assert triton.tagged(old_tags[1]) == [] and triton.tagged(old_tags[0])
        code, out, err = run_cli("test", "up", "--json")
        assert code == 0 and len(json.loads(out)["models"]) == len(record["models"]), out + err
    finally:
        assert run_cli("teardown", "up")[0] == 0
    assert all(triton.tagged(tag) == [] for tag in old_tags)


def test_twin_tears_down_a_corrupt_record_by_its_tags(run_cli, tmp_path):
    from deployer import triton

    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex-twin", "--name", "lost",
                             "--json")
    assert code == 0, err
    tags = _tags(json.loads(out))
    path = tmp_path / "state" / "deployments" / "lost.json"
    path.write_text(path.read_text()[:-40])
    code, out, err = run_cli("teardown", "lost", "--json")
    assert code == 0, err
    assert [r["kind"] for r in json.loads(out)["removed"]] == ["process", "process"]
    assert all(triton.tagged(tag) == [] for tag in tags)


def test_cloud_deploy_test_teardown(fake, gcs, run_cli, tmp_path):
    """The calls in order, labels on every resource, the artefact content addressed (a second
    deployment of the same repository uploads nothing and keeps it until the last one goes)."""
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "first",
                             *cloud(gcs, "-o", "labels=team=ml"), "--json")
    assert code == 0, err
    record = json.loads(out)
    assert [(r["kind"], r["status"]) for r in record["resources"]] == [
        ("artefact", "created"), ("model", "created"), ("endpoint", "created"),
        ("deployed-model", "created")]
    artefact, model, endpoint, deployed = record["resources"]
    assert artefact["data"]["bytes_sent"] > 0
    prefix = artefact["id"][len(f"gs://{gcs.bucket}/"):]
    objects = gcs.names(prefix)
    assert f"{prefix}add_sub/config.pbtxt" in objects, objects
    assert [c for c, _ in fake.calls if not c.startswith(("get", "check"))] == [
        "upload_model", "create_endpoint", "deploy_model"], fake.calls
    labels = {"team": "ml", "deployer-name": "first", "deployer-id": record["id"]}
    assert dict(fake.models[model["id"]].labels) == labels
    assert fake.endpoints[endpoint["id"]].labels == labels
    assert list(fake.models[model["id"]].container_spec.args) == [
        "--model-repository=$(AIP_STORAGE_URI)"]

    code, out, err = run_cli("test", "first", "--requests", "20", "--json")
    assert code == 0, out + err
    assert json.loads(out)["passed"]
    token = fake.tokens.read_text().split()[0]  # what google.auth would have handed out
    texts = list(run_cli.outputs) + [p.read_text(errors="replace") for p in
                                     (tmp_path / "state").rglob("*") if p.is_file()]
    assert len(token) >= 32 and not any(token in text for text in texts), "the token leaked"

    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "second",
                             *cloud(gcs), "--json")
    assert code == 0, err
    again = json.loads(out)["resources"][0]
    assert again["id"] == artefact["id"] and again["data"]["bytes_sent"] == 0

    code, out, err = run_cli("teardown", "first", "--json")
    assert code == 0, err
    torn = json.loads(out)
    assert [r["kind"] for r in torn["removed"]] == ["deployed-model", "endpoint", "model"]
    assert [r["kind"] for r in torn["already_gone"]] == ["artefact"]
    assert "still uses it" in err and gcs.names(prefix) == objects
    code, out, err = run_cli("teardown", "second", "--json")
    assert code == 0, err
    assert [r["kind"] for r in json.loads(out)["removed"]][-1] == "artefact"
    assert gcs.names(prefix) == {} and fake.endpoints == {} and fake.models == {}


def test_cloud_test_at_concurrency_512(fake, gcs, run_cli):
    """Issue 20: ``test --concurrency 512`` through the endpoint's gateway (rawPredict with the
    bearer token): 512 requests in flight from the load engine's processes, every one answered
    200; teardown removes the deployed model, endpoint, model and artefact."""
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "c512",
                             *cloud(gcs), "--json")
    assert code == 0, err
    prefix = json.loads(out)["resources"][0]["id"][len(f"gs://{gcs.bucket}/"):]
    try:
        measured_at(run_cli, "c512")
        endpoint = next(iter(fake.endpoints.values()))
        log = (fake.root / f"{endpoint.tag}.log").read_text()   # the gateway's, a line each
        assert log.count(':rawPredict HTTP/1.1" 200 ') >= 1024
    finally:
        code, out, err = run_cli("teardown", "c512", "--json")
    assert code == 0, err
    assert [r["kind"] for r in json.loads(out)["removed"]] == [
        "deployed-model", "endpoint", "model", "artefact"]
    assert gcs.names(prefix) == {} and fake.endpoints == {} and fake.models == {}


def test_cloud_refusals_before_any_call(fake, gcs, run_cli):
    """No image: one line pointing at plan, which shows how to copy NVIDIA's image; no call."""
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "noimg",
                           "-o", f"bucket={gcs.bucket}", "-o", "project=fake-project")
    assert code == 2 and "Artifact Registry" in err and "Traceback" not in err, err
    code, out, err = run_cli("plan", str(ADD_SUB), "-t", "vertex", "-o", f"bucket={gcs.bucket}",
                             "-o", "project=fake-project", "--json")
    assert code == 0, err
    assert "docker push us-central1-docker.pkg.dev/fake-project/" in err, err
    assert [r["kind"] for r in json.loads(out)["resources"]] == [
        "artefact", "model", "endpoint", "deployed-model"]
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "nobucket",
                           *cloud(gcs, "-o", "bucket=not-there"))
    assert code == 2 and "gcloud storage buckets create" in err, err
    assert [c for c, _ in fake.calls if c not in ("check",)] == [], fake.calls
    assert json.loads(run_cli("list", "--json")[1]) == []


def test_cloud_failures_carry_their_cause(fake, gcs, run_cli, tmp_path):
    """A permission refused before anything exists is exit 2; a quota met by the deploy
    operation is exit 3 with the quota's name, and teardown removes what was made."""
    from google.api_core import exceptions

    fake.fail("check", exceptions.PermissionDenied("Permission 'aiplatform.endpoints.list' "
                                                   "denied on resource"))
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "denied",
                           *cloud(gcs))
    assert code == 2 and "roles/aiplatform.user" in err and "nothing was created" in err, err

    fake.fail("deploy_operation", exceptions.ResourceExhausted(
        "The following quota metrics exceed quota limits: "
        "aiplatform.googleapis.com/custom_model_serving_nvidia_t4_gpus"))
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "quota",
                             *cloud(gcs))
    assert code == 3 and "Traceback" not in err, err
    assert "quota" in err.lower() and "deployer teardown quota" in err, err
    code, out, err = run_cli("teardown", "quota", "--json")
    assert code == 0, err
    assert fake.endpoints == {} and fake.models == {}

    # an image Vertex may not pull: the line says who needs which role
    fake.fail("deploy_operation", exceptions.FailedPrecondition(
        f"Failed to pull image {IMAGE}: permission denied"))
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "pull",
                           *cloud(gcs))
    assert code == 3 and "roles/artifactregistry.reader" in err, err
    assert run_cli("teardown", "pull")[0] == 0 and fake.endpoints == {}

    # a container that crashes at start: the operation's error, then its log lines
    crashing = _variant(tmp_path, "crashing", "class TritonPythonModel:\n"
                        "    def initialize(self, args):\n"
                        "        raise RuntimeError('boom at start')\n")
    code, _, err = run_cli("deploy", str(crashing), "-t", "vertex", "--name", "crash",
                           *cloud(gcs))
    assert code == 3 and "Traceback" not in err, err
    assert "never became ready" in err and "boom at start" in err, err
    assert run_cli("teardown", "crash")[0] == 0 and fake.endpoints == {}


def test_cloud_tears_down_a_corrupt_record_by_its_labels(fake, gcs, run_cli, tmp_path):
    """The record cut short: teardown finds the model and endpoint labelled with the id, and
    the endpoint's deployed model, and removes them newest first."""
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "lostc",
                             *cloud(gcs), "--json")
    assert code == 0, err
    path = tmp_path / "state" / "deployments" / "lostc.json"
    path.write_text(path.read_text()[:-40])
    code, out, err = run_cli("teardown", "lostc", "--json")
    assert code == 0, err
    assert [r["kind"] for r in json.loads(out)["removed"]] == [
        "deployed-model", "endpoint", "model"]
    assert fake.endpoints == {} and fake.models == {}


@pytest.mark.parametrize("step", ["_upload_model", "_create_endpoint"])
def test_cloud_interrupted_create_is_found_and_torn_down(fake, gcs, run_cli, step):
    """Ctrl-C while Vertex creates the model or endpoint: the record has no Vertex name yet;
    teardown finds what was created by its display name among the deployment's labels."""
    original = getattr(fake, step)

    def interrupted(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    setattr(fake, step, interrupted)
    try:
        code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "cut",
                               *cloud(gcs))
    finally:
        setattr(fake, step, original)
    assert code == 130, err
    assert (fake.models if step == "_upload_model" else fake.endpoints), fake.calls
    code, out, err = run_cli("teardown", "cut", "--json")
    assert code == 0, err
    kind = "model" if step == "_upload_model" else "endpoint"
    assert kind in [r["kind"] for r in json.loads(out)["removed"]], out
    assert fake.models == {} and fake.endpoints == {}


def test_compare_vertex_against_the_twin(fake, gcs, run_cli, tmp_path):
    """The cloud target (fake control plane, real Triton) beside its rehearsal; the cost of a
    CPU machine from the price table."""
    code, out, err = run_cli(
        "compare", str(ADD_SUB), "--target", "vertex", "--target", "vertex-twin",
        "-o", f"vertex.bucket={gcs.bucket}", "-o", "vertex.project=fake-project",
        "-o", f"vertex.image={IMAGE}", "-o", "vertex.accelerator_type=none",
        "--requests", "60", "--concurrency", "1", "--json", "--report",
        str(tmp_path / "r.html"))
    assert code == 0, out + err
    data = json.loads(out)
    assert data["parallel"] == ["vertex"] and data["sequential"] == ["vertex-twin"]
    results = {t["target"]: t for t in data["targets"]}
    assert results["vertex"]["passed"] and results["vertex"]["torn_down"], results["vertex"]
    assert results["vertex"]["cost_per_hour"] == 0.219  # n1-standard-4 in deployer/prices.json
    assert results["vertex-twin"]["passed"] and results["vertex-twin"]["cost_per_hour"] == 0.0
    assert fake.endpoints == {}, "the cloud endpoint must be torn down"


def test_plugin_import_stays_cheap():
    """The CLI loads every plugin: registering vertex imports none of Google's SDKs."""
    import subprocess
    import sys

    code = ("import sys, deployer_plugins.vertex as m; m.deployer_register_targets(); "
            "print(sorted(x for x in sys.modules if x.startswith(('google.cloud.', "
            "'google.auth', 'google.api_core', 'grpc', 'tritonclient', 'numpy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
