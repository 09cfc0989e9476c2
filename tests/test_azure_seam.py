"""The real seam (MLSeam) over a real ``MLClient`` built with a spec'd fake credential, its
operation groups replaced by recorders that serialise what they get with the SDK itself."""

from __future__ import annotations

import types
from pathlib import Path
from unittest import mock

import pytest

from deployer_plugins.azure import seam, spec

ADD_SUB = Path(__file__).parent / "repos" / "add_sub"


class _Poller:
    def __init__(self, value):
        self.value = value

    def result(self):
        print(".", end="", flush=True)  # as the SDK's poller does on stdout
        return self.value


class Recorder:
    """One operation group; ``sent`` holds (method, REST body as the SDK serialised it)."""

    def __init__(self, sent, fail=None):
        self.sent, self.fail, self.store = sent, fail, {}

    def _maybe_fail(self):
        if self.fail:
            raise self.fail


class Endpoints(Recorder):
    def begin_create_or_update(self, endpoint):
        self._maybe_fail()
        self.sent.append(("endpoint", endpoint._to_rest_online_endpoint("westeurope").as_dict()))
        self.store[endpoint.name] = types.SimpleNamespace(
            name=endpoint.name, provisioning_state="Succeeded", tags=endpoint.tags,
            scoring_uri=f"https://{endpoint.name}.westeurope.inference.ml.azure.com/score",
            traffic=dict(endpoint.traffic or {}))
        return _Poller(self.store[endpoint.name])

    def get(self, name):
        self._maybe_fail()
        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.store:
            raise ResourceNotFoundError(f"endpoint {name} not found")
        return self.store[name]

    answer = None  # what get_keys hands out besides keys (a token)

    def get_keys(self, name):
        from azure.ai.ml.entities import EndpointAuthKeys

        return self.answer or EndpointAuthKeys(primary_key="pk-secret", secondary_key="sk")

    def begin_delete(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        if self.store.pop(name, None) is None:
            raise ResourceNotFoundError(f"endpoint {name} not found")
        return _Poller(None)


class Deployments(Recorder):
    state = "Succeeded"

    def begin_create_or_update(self, deployment):
        self.sent.append(("deployment", deployment._to_rest_object(location="westeurope")
                          .as_dict()))
        return _Poller(types.SimpleNamespace(provisioning_state=self.state))

    def get(self, name, endpoint_name):
        return types.SimpleNamespace(provisioning_state=self.state)

    def get_logs(self, name, endpoint_name, lines, container_type=None):
        self.sent.append(("logs", container_type))
        return f"{container_type} line\n"


class Models(Recorder):
    def create_or_update(self, model):
        self.sent.append(("model", model._to_rest_object().as_dict()))
        return types.SimpleNamespace(name=model.name, version=model.version or "7")


@pytest.fixture
def ml():
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential

    credential = mock.Mock(spec=TokenCredential)
    client = MLClient(credential, "00000000-0000-0000-0000-000000000000", "rg", "ws")
    sent = []
    client._online_endpoints = Endpoints(sent)
    client._online_deployments = Deployments(sent)
    client._models = Models(sent)
    client.sent = sent
    assert credential.get_token.call_count == 0  # construction made no call
    return client


def _entities(model_version=None):
    tags = {spec.NAME_TAG: "x", spec.ID_TAG: "abc"}
    model = {"name": "addsub", "path": str(ADD_SUB), "type": "triton_model"}
    if model_version:
        model["version"] = model_version
    return spec.entities(spec.endpoint_yaml("ep-seam", "key", tags),
                         spec.deployment_yaml("blue", "ep-seam", model, "Standard_DS3_v2", 2,
                                              tags))


def test_the_sdk_serialises_our_entities(ml, capsys):
    endpoint, model, deployment = _entities()
    real = seam.MLSeam(ml)
    info = real.create_or_update_endpoint(endpoint)
    assert info.scoring_uri.startswith("https://ep-seam.") and info.provisioning_state == \
        "Succeeded"
    assert real.register_model(model) == ("addsub", "7")
    deployment.model = "azureml:addsub:7"
    assert real.create_or_update_deployment(deployment) == "Succeeded"
    assert real.credential("ep-seam", "key") == seam.Credential("pk-secret")
    assert capsys.readouterr().out == ""  # the poll dots went to stderr
    sent = dict((kind, body) for kind, body in ml.sent)
    assert sent["endpoint"]["properties"]["authMode"] == "Key"
    assert sent["endpoint"]["tags"][spec.ID_TAG] == "abc"
    assert sent["deployment"]["properties"]["model"] == "azureml:addsub:7"
    assert sent["deployment"]["properties"]["instanceType"] == "Standard_DS3_v2"
    assert sent["deployment"]["sku"]["capacity"] == 2
    assert sent["model"]["properties"]["modelType"] == "triton_model"
    assert real.get_endpoint("missing") is None
    assert real.delete_endpoint("ep-seam") is True and real.delete_endpoint("ep-seam") is False


def test_failed_deployment_and_logs(ml):
    _, _, deployment = _entities()
    ml._online_deployments.state = "Failed"
    real = seam.MLSeam(ml)
    with pytest.raises(seam.ProvisioningFailed) as caught:
        real.create_or_update_deployment(deployment)
    assert caught.value.state == "Failed"
    assert real.logs("ep-seam", "blue", 10, "storage-initializer") == "storage-initializer line\n"


@pytest.mark.parametrize("error, expected", [
    ("ClientAuthenticationError", seam.AuthError), ("ResourceExistsError", seam.ConflictError),
    ("HttpResponseError", seam.SeamError)])
def test_sdk_errors_become_seam_errors(ml, error, expected):
    from azure.core import exceptions

    endpoint, _, _ = _entities()
    ml._online_endpoints.fail = getattr(exceptions, error)("boom")
    with pytest.raises(expected):
        seam.MLSeam(ml).create_or_update_endpoint(endpoint)


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
    stderr (as two overlapping contextlib.redirect_stdout would leave it)."""
    import sys
    import threading

    from deployer_plugins.azure.seam import stdout_to_stderr

    original = sys.stdout
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with stdout_to_stderr():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with stdout_to_stderr():
            b_in.set()
            a_out.wait(5)
            assert sys.stdout is sys.stderr, "still shielded while B is inside"

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sys.stdout is original
