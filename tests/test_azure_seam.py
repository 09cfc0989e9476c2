"""The real seam (MLSeam) over a real ``MLClient`` built with a spec'd fake credential, its
operation groups replaced by recorders that serialise what they get with the SDK itself and
answer with real ``LROPoller``s and azure-core's real exceptions (tests/azure_support.py)."""

from __future__ import annotations

import threading
import types
from pathlib import Path
from unittest import mock

import pytest

from azure_support import OperationFailure, azure_error, credential_error
from deployer_plugins.azure import seam, spec

ADD_SUB = Path(__file__).parent / "repos" / "add_sub"
#: a wait on a synchronisation point; one that times out fails the test
WAIT = 30.0


def _poller(result=None, error=None, release: threading.Event | None = None):
    """A real LROPoller whose poll thread prints the SDK's dot on stdout (as AzureMLPolling
    does), then returns ``result`` or raises ``error``; with ``release`` it polls until set."""
    from azure.core.polling import LROPoller, PollingMethod

    class Polling(PollingMethod):
        def initialize(self, client, initial_response, deserialization_callback):
            self.over = False

        def update_status(self):
            print(".", end="", flush=True)

        def run(self):
            self.update_status()
            while release is not None and not release.wait(0.01):
                self.update_status()
            self.over = True
            if error is not None:
                raise error

        def status(self):
            return "Succeeded" if self.over else "InProgress"

        def finished(self):
            return self.over

        def resource(self):
            return result

        def get_continuation_token(self):
            return ""

    return LROPoller(None, None, lambda r: r, Polling())


class Recorder:
    """One operation group; ``sent`` holds (method, REST body as the SDK serialised it);
    ``fail`` is raised by the next call."""

    def __init__(self, sent):
        self.sent, self.fail, self.store = sent, None, {}

    def _maybe_fail(self):
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error


class Workspaces(Recorder):
    def get(self, name):
        self._maybe_fail()
        return types.SimpleNamespace(name=name, location="swedencentral")


class Endpoints(Recorder):
    answer = None  # what get_keys hands out besides keys (a token)

    def begin_create_or_update(self, endpoint):
        self._maybe_fail()
        self.sent.append(("endpoint", endpoint._to_rest_online_endpoint("westeurope").as_dict()))
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        self.store[endpoint.name] = ManagedOnlineEndpoint(
            name=endpoint.name, auth_mode=endpoint.auth_mode, tags=endpoint.tags,
            traffic=endpoint.traffic, provisioning_state="Succeeded",
            scoring_uri=f"https://{endpoint.name}.westeurope.inference.ml.azure.com/score")
        return _poller(self.store[endpoint.name])

    def get(self, name):
        self._maybe_fail()
        if name not in self.store:
            raise azure_error(404, "UserError", f"Resource {name} not found")
        return self.store[name]

    def list(self):
        return list(self.store.values())

    def get_keys(self, name):
        from azure.ai.ml.entities import EndpointAuthKeys

        self._maybe_fail()
        return self.answer or EndpointAuthKeys(primary_key="pk-secret", secondary_key="sk")

    def begin_delete(self, name):
        self._maybe_fail()
        if self.store.pop(name, None) is None:
            raise azure_error(404, "UserError", f"Resource {name} not found", "DELETE")
        return _poller()


class Deployments(Recorder):
    state = "Succeeded"
    #: the next create's operation: a poller
    operation = None

    def begin_create_or_update(self, deployment):
        self._maybe_fail()
        self.sent.append(("deployment", deployment._to_rest_object(location="westeurope")
                          .as_dict()))
        self.store[deployment.name] = deployment
        operation, self.operation = self.operation, None
        return operation or _poller(types.SimpleNamespace(provisioning_state=self.state))

    def get(self, name, endpoint_name):
        self._maybe_fail()
        if name not in self.store:
            raise azure_error(404, "UserError", f"Deployment {name} not found")
        return types.SimpleNamespace(provisioning_state=self.state)

    def get_logs(self, name, endpoint_name, lines, container_type=None):
        self.sent.append(("logs", container_type))
        return f"{container_type} line\n"


class Models(Recorder):
    def create_or_update(self, model):
        self._maybe_fail()
        self.sent.append(("model", model._to_rest_object().as_dict()))
        return types.SimpleNamespace(name=model.name, version=model.version or "7")


@pytest.fixture
def ml():
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential

    credential = mock.Mock(spec=TokenCredential)
    client = MLClient(credential, "00000000-0000-0000-0000-000000000000", "rg", "ws")
    sent = []
    client._workspaces = Workspaces(sent)
    client._online_endpoints = Endpoints(sent)
    client._online_deployments = Deployments(sent)
    client._models = Models(sent)
    client.sent = sent
    assert credential.get_token.call_count == 0  # construction made no call
    return client


def _entities(model_version=None, instance_type="Standard_DS3_v2"):
    tags = {spec.NAME_TAG: "x", spec.ID_TAG: "abc"}
    model = {"name": "addsub", "path": str(ADD_SUB), "type": "triton_model"}
    if model_version:
        model["version"] = model_version
    request = {"request_timeout_ms": 60000, "max_concurrent_requests_per_instance": 16}
    probes = {"liveness_probe": {"initial_delay": 600, "period": 10, "timeout": 2,
                                 "failure_threshold": 30, "success_threshold": 1}}
    return spec.entities(spec.endpoint_yaml("ep-seam", "key", tags),
                         spec.deployment_yaml("blue", "ep-seam", model, instance_type, 2, tags,
                                              request, probes))


def test_the_sdk_serialises_our_entities(ml, capsys):
    endpoint, model, deployment = _entities()
    real = seam.MLSeam(ml)
    assert real.check_workspace() == "swedencentral"
    info = real.create_or_update_endpoint(endpoint)
    assert info.scoring_uri.startswith("https://ep-seam.") and info.provisioning_state == \
        "Succeeded"
    assert real.register_model(model) == ("addsub", "7")
    deployment.model = "azureml:addsub:7"
    assert real.create_or_update_deployment(deployment) == "Succeeded"
    assert real.credential("ep-seam", "key") == seam.Credential("pk-secret")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count(".") >= 2  # the poll dots went to stderr
    sent = dict((kind, body) for kind, body in ml.sent)
    assert sent["endpoint"]["properties"]["authMode"] == "Key"
    assert sent["endpoint"]["tags"][spec.ID_TAG] == "abc"
    assert sent["deployment"]["properties"]["model"] == "azureml:addsub:7"
    assert sent["deployment"]["properties"]["instanceType"] == "Standard_DS3_v2"
    assert sent["deployment"]["sku"]["capacity"] == 2
    # request settings and probes reach the service in its own (ISO 8601) form
    properties = sent["deployment"]["properties"]
    assert properties["requestSettings"] == {"maxConcurrentRequestsPerInstance": 16,
                                             "requestTimeout": "PT1M"}
    assert properties["livenessProbe"]["initialDelay"] == "PT10M"
    assert sent["model"]["properties"]["modelType"] == "triton_model"
    assert real.get_endpoint("missing") is None
    assert [e.name for e in real.find_endpoints({spec.ID_TAG: "abc"})] == ["ep-seam"]
    assert real.find_endpoints({spec.ID_TAG: "other"}) == []
    assert real.delete_endpoint("ep-seam") is True and real.delete_endpoint("ep-seam") is False


def test_failed_deployment_and_logs(ml):
    _, _, deployment = _entities()
    ml._online_deployments.state = "Failed"
    real = seam.MLSeam(ml)
    with pytest.raises(seam.ProvisioningFailed) as caught:
        real.create_or_update_deployment(deployment)
    assert caught.value.state == "Failed"
    assert real.logs("ep-seam", "blue", 10, "storage-initializer") == "storage-initializer line\n"


def test_out_of_quota_from_the_operation(ml):
    """The operation fails as ARM polling raises it (HttpResponseError on the failed status
    body, HTTP 200): ProvisioningFailed with Azure's code and the family's quota to raise."""
    _, _, deployment = _entities(instance_type="Standard_NC4as_T4_v3")
    deployment.model = "azureml:addsub:7"
    ml._online_deployments.operation = _poller(error=OperationFailure(
        "OutOfQuota", "Not enough quota available for Standard_NC4as_T4_v3").error())
    ml._online_deployments.state = "Failed"
    real = seam.MLSeam(ml)
    real.check_workspace()
    with pytest.raises(seam.ProvisioningFailed) as caught:
        real.create_or_update_deployment(deployment)
    assert (caught.value.state, caught.value.code) == ("Failed", "OutOfQuota")
    assert "OutOfQuota: Not enough quota available" in str(caught.value)
    assert "'Standard NCASv3_T4 Family vCPUs' quota" in caught.value.hint
    assert "in swedencentral" in caught.value.hint


def test_a_deadline_ends_the_wait_and_the_polling(ml, monkeypatch):
    """A real poller that never finishes: the seam stops at its deadline with the current
    provisioning state, and stops the poll thread (which would print on stdout)."""
    _, _, deployment = _entities()
    deployment.model = "azureml:addsub:7"
    release = threading.Event()
    operation = _poller(types.SimpleNamespace(provisioning_state="Succeeded"), release=release)
    ml._online_deployments.operation = operation
    ml._online_deployments.state = "Creating"
    lines: list[str] = []
    real = seam.MLSeam(ml, lines.append)
    real.deadline = 0.05
    monkeypatch.setattr(seam, "STATE_EVERY", 0.01)
    try:
        with pytest.raises(seam.DeadlineExceeded) as caught:
            real.create_or_update_deployment(deployment)
        assert caught.value.state == "Creating" and "startup_timeout=0.05s" in str(caught.value)
        assert lines == ["  creating deployment ep-seam/blue",
                         "  creating deployment ep-seam/blue: Creating"]
        with pytest.raises(seam._Abandoned):  # the poll thread ends at its next poll
            operation.wait(WAIT)
    finally:
        release.set()


@pytest.mark.parametrize("make, expected, words", [
    (lambda: azure_error(401, "InvalidAuthenticationToken", "The access token is invalid."),
     seam.AuthError, ["InvalidAuthenticationToken", "az login"]),
    (lambda: azure_error(403, "AuthorizationFailed", "The client 'x' with object id 'y' does "
                         "not have authorization to perform action 'Microsoft.Machine"
                         "LearningServices/workspaces/onlineEndpoints/write' over scope "
                         "'/subscriptions/s/resourceGroups/rg/providers/Microsoft.Machine"
                         "LearningServices/workspaces/ws/onlineEndpoints/ep-seam' or the "
                         "scope is invalid."),
     seam.ForbiddenError, ["AuthorizationFailed", "'AzureML Data Scientist' role",
                           "workspace /subscriptions/s/resourceGroups/rg/providers/"
                           "Microsoft.MachineLearningServices/workspaces/ws "]),
    (lambda: azure_error(404, "ParentResourceNotFound", "Parent resource 'ws' not found."),
     seam.WorkspaceMissing, ["ParentResourceNotFound", "-o workspace"]),
    (lambda: azure_error(409, "Conflict", "An endpoint with this name exists."),
     seam.ConflictError, ["Conflict"]),
    (lambda: azure_error(429, "TooManyRequests", "The request is being throttled."),
     seam.ThrottledError, ["TooManyRequests", "wait a few minutes"]),
    (lambda: azure_error(500, "InternalServerError", "Something went wrong."),
     seam.SeamError, ["InternalServerError: Something went wrong."]),
    (credential_error, seam.AuthError, ["no Azure credential is set up", "az login"]),
], ids=["401", "403", "parent-404", "409", "429", "500", "no-credential"])
def test_sdk_errors_become_one_line_seam_errors(ml, make, expected, words):
    endpoint, _, _ = _entities()
    ml._online_endpoints.fail = make()
    with pytest.raises(expected) as caught:
        seam.MLSeam(ml).create_or_update_endpoint(endpoint)
    text = f"{caught.value} {caught.value.hint or ''}"
    assert "\n" not in text and all(word in text for word in words), text
    assert str(caught.value).startswith("creating endpoint ep-seam: ")


def test_a_missing_workspace_is_found_by_the_first_read(ml):
    ml._workspaces.fail = azure_error(404, "ResourceNotFound", "The Resource 'Microsoft."
                                      "MachineLearningServices/workspaces/ws' under resource "
                                      "group 'rg' was not found.")
    with pytest.raises(seam.WorkspaceMissing) as caught:
        seam.MLSeam(ml).check_workspace()
    assert "ResourceNotFound" in str(caught.value) and "-o resource_group" in caught.value.hint


def test_sdk_refuses_a_bad_entity():
    from deployer.errors import ValidationError

    with pytest.raises(ValidationError, match="azure-ai-ml refused"):
        spec.entities(spec.endpoint_yaml("ep-seam", "not-a-mode", {}),
                      spec.deployment_yaml("blue", "ep-seam", "azureml:m:1", "Standard_DS3_v2",
                                           1, {}))


def test_credentials_keys_and_tokens_with_expiry(ml):
    """azure-ai-ml 1.35's get_keys: EndpointAuthKeys (key), EndpointAuthToken (aml_token:
    access_token, expiry_time_utc), EndpointAadToken (aad_token: the credential's AccessToken)."""
    from azure.ai.ml.entities import EndpointAadToken, EndpointAuthToken
    from azure.core.credentials import AccessToken

    real = seam.MLSeam(ml)
    key = real.credential("ep-seam", "key")
    assert (key.secret, key.expires_on, key.is_token) == ("pk-secret", None, False)
    ml.online_endpoints.answer = EndpointAuthToken(access_token="aml-secret",
                                                   expiry_time_utc=1900000000,
                                                   refresh_after_time_utc=1899999000)
    aml = real.credential("ep-seam", "aml_token")
    assert (aml.secret, aml.expires_on, aml.is_token) == ("aml-secret", 1900000000.0, True)
    ml.online_endpoints.answer = EndpointAadToken(AccessToken("aad-secret", 1900000500))
    aad = real.credential("ep-seam", "aad_token")
    assert (aad.secret, aad.expires_on) == ("aad-secret", 1900000500.0)
    assert "secret" not in repr(aml) + repr(aad) + repr(key)
    ml.online_endpoints.answer = EndpointAuthToken(access_token="")
    with pytest.raises(seam.AuthError):
        real.credential("ep-seam", "aml_token")


def test_stdout_shield_is_safe_across_threads(capsys):
    """Thread A enters, B enters, A leaves, B leaves: stdout must come back, not stay on
    stderr (as two overlapping contextlib.redirect_stdout would leave it). The threads hand
    their failures to the test; every wait that times out fails it."""
    import sys

    from deployer_plugins.azure.seam import stdout_to_stderr

    original = sys.stdout
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    failures: list[BaseException] = []
    seen: dict[str, bool] = {}

    def wait(event: threading.Event, what: str) -> None:
        if not event.wait(WAIT):
            raise AssertionError(f"timed out waiting for {what}")

    def a():
        with stdout_to_stderr():
            a_in.set()
            wait(b_in, "B to enter")
        a_out.set()

    def b():
        wait(a_in, "A to enter")
        with stdout_to_stderr():
            b_in.set()
            wait(a_out, "A to leave")
            seen["shielded after A left"] = sys.stdout is sys.stderr

    def guarded(body):
        def run():
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                failures.append(exc)
                a_in.set(), b_in.set(), a_out.set()  # let the other thread finish
        return run

    threads = [threading.Thread(target=guarded(a)), threading.Thread(target=guarded(b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a thread hung"
    if failures:
        raise failures[0]
    assert seen == {"shielded after A left": True}
    assert sys.stdout is original
