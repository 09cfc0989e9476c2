"""The Vertex seam's contract over the fake control plane (tests/vertex_support.py): Google's
real exceptions come out as one-line SeamErrors with the right class and hint, teardown calls
are idempotent, lists filter by labels, Vertex's traffic rules hold, a failed or stuck deploy
operation reports its cause; and the real seam (AiplatformSeam) builds without a network call.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from gcs_support import gcs  # noqa: F401 (fixture)
from vertex_support import fake  # noqa: F401 (fixture)
from deployer_plugins.vertex import seam

REPOS = Path(__file__).parent / "repos"
IMAGE = "us-central1-docker.pkg.dev/rehearsal/triton/tritonserver:24.09-py3"
CONTAINER = {"image_uri": IMAGE, "args": ["--model-repository=$(AIP_STORAGE_URI)"],
             "env": {}, "ports": [8080]}
LABELS = {"deployer-id": "d-1", "deployer-name": "demo"}
T4 = {"machine_type": "n1-standard-4", "accelerator_type": "NVIDIA_TESLA_T4",
      "accelerator_count": 1, "min_replica_count": 1, "max_replica_count": 1}


def _connect():
    return seam.connect(_Settings(), lambda _: None)


class _Settings:
    project, region, startup_timeout = "fake-project", "us-central1", 1800.0


def _errors():
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError

    return [
        (exceptions.PermissionDenied("Permission 'aiplatform.models.upload' denied on resource "
                                     "'//aiplatform.googleapis.com/projects/fake-project/"
                                     "locations/us-central1' (or it may not exist)."),
         seam.AuthError, "PERMISSION_DENIED (403)", "roles/aiplatform.user on project "
                                                    "fake-project"),
        (exceptions.PermissionDenied("Vertex AI API has not been used in project 123 before "
                                     "or it is disabled."),
         seam.AuthError, "PERMISSION_DENIED", "gcloud services enable aiplatform.googleapis.com"
                                              " --project fake-project"),
        (exceptions.Unauthenticated("Request had invalid authentication credentials.\n"
                                    "Expected OAuth 2 access token."),
         seam.AuthError, "UNAUTHENTICATED (401)", "gcloud auth application-default login"),
        (DefaultCredentialsError("Your default credentials were not found. To set up "
                                 "Application Default Credentials, see\nhttps://cloud.google"
                                 ".com/docs/authentication/external/set-up-adc"),
         seam.AuthError, "no usable Google credentials", "GOOGLE_APPLICATION_CREDENTIALS"),
        (exceptions.ResourceExhausted("Quota exceeded for aiplatform.googleapis.com/"
                                      "online_prediction_requests_per_base_model."),
         seam.QuotaError, "RESOURCE_EXHAUSTED (429)", "IAM & Admin > Quotas"),
        (exceptions.InvalidArgument("Invalid labels."),
         seam.SeamError, "INVALID_ARGUMENT (400): Invalid labels.", None),
    ]


@pytest.mark.parametrize("case", range(len(_errors())))
def test_google_errors_are_one_line_with_status_and_hint(fake, case):
    error, kind, status, hint = _errors()[case]
    fake.fail("upload_model", error)
    backend = _connect()
    with pytest.raises(seam.SeamError) as raised:
        backend.upload_model("demo", "gs://b/p/", CONTAINER, LABELS)
    exc = raised.value
    assert type(exc) is kind
    assert "\n" not in str(exc) and str(exc).startswith("uploading model demo: ")
    assert status in str(exc)
    assert (hint in exc.hint) if hint else exc.hint is None
    # the fault was one call: the next upload goes through
    assert backend.upload_model("demo", "gs://b/p/", CONTAINER, LABELS).display_name == "demo"


def test_check_fails_before_anything_is_created(fake):
    from google.api_core import exceptions

    fake.fail("check", exceptions.PermissionDenied("Permission 'aiplatform.endpoints.list' "
                                                   "denied"))
    with pytest.raises(seam.AuthError, match=r"^reading Vertex AI in project fake-project"):
        _connect().check()
    assert [c[0] for c in fake.calls] == ["check"]
    _connect().check()


def test_models_found_by_labels_and_deleted_idempotently(fake):
    backend = _connect()
    one = backend.upload_model("one", "gs://b/p/1/", CONTAINER, LABELS)
    backend.upload_model("two", "gs://b/p/2/", CONTAINER, {**LABELS, "deployer-id": "d-2"})
    assert one.name.startswith("projects/fake-project/locations/us-central1/models/")
    assert one.name.rsplit("/", 1)[1].isdigit()
    assert one.labels == LABELS and one.artifact_uri == "gs://b/p/1/"
    assert [m.display_name for m in backend.find_models({"deployer-id": "d-1"})] == ["one"]
    assert len(backend.find_models({"deployer-name": "demo"})) == 2
    assert backend.find_models({"deployer-id": "other"}) == []
    assert backend.get_model(one.name.rsplit("/", 1)[1]) == one  # a bare id: this project
    assert backend.delete_model(one.name) is True
    assert backend.delete_model(one.name) is False
    assert backend.get_model(one.name) is None


def test_bad_labels_are_refused_as_vertex_does(fake):
    with pytest.raises(seam.SeamError, match="INVALID_ARGUMENT") as raised:
        _connect().upload_model("demo", "gs://b/p/", CONTAINER, {"Deployer": "X"})
    assert "\n" not in str(raised.value)


def test_traffic_arithmetic_is_the_sdks():
    assert seam.allocate({}, 0) == {"0": 100}
    assert seam.allocate({"1": 100}, 0) == {"1": 100, "0": 0}
    assert seam.allocate({"1": 100}, 100) == {"1": 0, "0": 100}
    split = seam.allocate({"1": 50, "2": 50}, 33)
    assert split["0"] == 33 and sum(split.values()) == 100
    assert seam.unallocate({"1": 67, "2": 33}, "2") == {"1": 100}
    assert seam.unallocate({"1": 100, "2": 0}, "1") == {"2": 0}
    assert seam.unallocate({"1": 100}, "1") == {}
    assert seam.label_filter({"b": "2", "a": "1"}) == 'labels.a="1" AND labels.b="2"'


def test_real_seam_builds_without_a_network_call(monkeypatch):
    from google.auth.credentials import AnonymousCredentials

    def refuse(*args, **kwargs):
        raise AssertionError(f"network call {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(seam, "factory", lambda s, p: seam.AiplatformSeam(
        s.project, s.region, credentials=AnonymousCredentials()))
    backend = _connect()
    assert isinstance(backend, seam.AiplatformSeam)
    assert backend.deadline == 1800.0
    assert backend.predict_url("42") == ("https://us-central1-aiplatform.googleapis.com/v1/"
                                         "projects/fake-project/locations/us-central1/"
                                         "endpoints/42:rawPredict")


def test_real_seam_without_credentials_says_how_to_get_them(monkeypatch, tmp_path):
    """google.auth.default with nothing set up (no key file, no gcloud, not on GCE): one
    AuthError line, before any call to Vertex."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setattr(seam, "factory", seam._default_factory)
    with pytest.raises(seam.AuthError) as raised:
        _connect().credential()
    assert "\n" not in str(raised.value)
    assert "no usable Google credentials" in str(raised.value)
    assert raised.value.hint == seam.AUTH_HINT


# -- endpoints: real gateways over real tritonserver -------------------------------------------
@pytest.fixture
def artefact(gcs):  # noqa: F811 (fixture)
    """add_sub uploaded to the emulator; its gs:// uri."""
    from deployer.repository import Repository
    from deployer_plugins.vertex import storage

    layout = storage.layout(Repository.load(REPOS / "add_sub"))
    uri = storage.artefact_uri(gcs.bucket, "triton-deployer", layout.digest)
    storage.Storage(gcs.project).upload(layout, uri, lambda _: None)
    return uri


def _raw_predict(url: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


ADD_SUB = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                       "data": [1, 2, 3, 4]},
                      {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32",
                       "data": [1, 1, 1, 1]}]}


def test_deployed_model_answers_raw_predict_through_the_gateway(fake, artefact):
    backend = _connect()
    model = backend.upload_model("demo", artefact, CONTAINER, LABELS)
    endpoint = backend.create_endpoint("demo", LABELS)
    deployed = backend.deploy_model(endpoint.name, model.name, "demo", T4, 100, 300.0)
    info = backend.get_endpoint(endpoint.name)
    assert info.traffic == {deployed: 100}
    assert [(d.id, d.model) for d in info.deployed] == [(deployed, model.name)]
    answer = _raw_predict(info.predict_url, backend.credential().secret, ADD_SUB)
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    assert outputs["OUTPUT0"] == [2, 3, 4, 5] and outputs["OUTPUT1"] == [0, 1, 2, 3]

    # a second model beside it: no traffic until moved; the old one is then undeployed
    second = backend.deploy_model(endpoint.name, model.name, "demo-r1", T4, 0, 300.0)
    assert backend.get_endpoint(endpoint.name).traffic == {deployed: 100, second: 0}
    with pytest.raises(seam.SeamError, match="INVALID_ARGUMENT.*sum to 90"):
        backend.set_traffic(endpoint.name, {deployed: 40, second: 50})
    backend.set_traffic(endpoint.name, {deployed: 0, second: 100})
    assert backend.undeploy_model(endpoint.name, deployed) is True
    assert backend.undeploy_model(endpoint.name, deployed) is False
    assert backend.get_endpoint(endpoint.name).traffic == {second: 100}
    assert _raw_predict(info.predict_url, backend.credential().secret, ADD_SUB)["outputs"]

    # a model that serves cannot be deleted; the endpoint goes with what it serves
    with pytest.raises(seam.SeamError, match="FAILED_PRECONDITION"):
        backend.delete_model(model.name)
    assert backend.find_endpoints({"deployer-id": "d-1"})[0].name == endpoint.name
    assert backend.delete_endpoint(endpoint.name) is True
    assert backend.delete_endpoint(endpoint.name) is False
    assert backend.get_endpoint(endpoint.name) is None
    assert backend.delete_model(model.name) is True


def test_undeploying_a_model_with_traffic_needs_the_split(fake, artefact):
    """Vertex refuses it without a split; the seam gives the split without it."""
    from google.api_core import exceptions

    backend = _connect()
    model = backend.upload_model("demo", artefact, CONTAINER, LABELS)
    endpoint = backend.create_endpoint("demo", LABELS)
    first = backend.deploy_model(endpoint.name, model.name, "a", T4, 100, 300.0)
    second = backend.deploy_model(endpoint.name, model.name, "b", T4, 50, 300.0)
    assert backend.get_endpoint(endpoint.name).traffic == {first: 50, second: 50}
    with pytest.raises(exceptions.FailedPrecondition):
        fake._undeploy(endpoint.name, first, None)
    assert backend.undeploy_model(endpoint.name, first) is True
    assert backend.get_endpoint(endpoint.name).traffic == {second: 100}


def test_failed_deploy_operation_reports_its_error(fake, artefact):
    from google.api_core import exceptions

    backend = _connect()
    model = backend.upload_model("demo", artefact, CONTAINER, LABELS)
    endpoint = backend.create_endpoint("demo", LABELS)
    fake.fail("deploy_operation", exceptions.ResourceExhausted(
        "The following quota metrics exceed quota limits: aiplatform.googleapis.com/"
        "custom_model_serving_nvidia_t4_gpus"))
    with pytest.raises(seam.OperationFailed) as raised:
        backend.deploy_model(endpoint.name, model.name, "demo", T4, 100, 300.0)
    assert "\n" not in str(raised.value)
    assert "the operation failed: RESOURCE_EXHAUSTED: The following quota" in str(raised.value)
    assert "NVIDIA_TESLA_T4 GPUs per region' in us-central1" in raised.value.hint

    # a container that does not start: the operation's error, its log from _logs
    several = backend.upload_model("several", artefact, {
        **CONTAINER, "args": ["--model-repository=$(AIP_STORAGE_URI)",
                              "--vertex-ai-default-model=missing"]}, LABELS)
    with pytest.raises(seam.OperationFailed, match="never became ready") as raised:
        backend.deploy_model(endpoint.name, several.name, "demo", T4, 100, 300.0)
    assert raised.value.hint == seam.LOG_HINT
    assert "missing" in backend.logs(endpoint.name, 30)
    assert backend.get_endpoint(endpoint.name).deployed == []


def test_stuck_deploy_stops_at_its_deadline(fake, artefact):
    backend = _connect()
    model = backend.upload_model("demo", artefact, CONTAINER, LABELS)
    endpoint = backend.create_endpoint("demo", LABELS)
    fake.stuck = True
    with pytest.raises(seam.DeadlineExceeded, match="past its deadline") as raised:
        backend.deploy_model(endpoint.name, model.name, "demo", T4, 100, 0.5)
    assert "startup_timeout" in raised.value.hint
