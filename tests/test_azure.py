"""The azure target on a fake control plane (tests/azure_support.py) over a real Triton, and
its twin azure-twin. No test talks to the internet."""

from __future__ import annotations

import itertools
import json
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from azure_support import FakeAzure, fake, run_cli  # noqa: F401 (fixtures)
from conftest import measured_at
from deployer.api import Deployer
from deployer.errors import ValidationError
from deployer.testing import TargetContract
from deployer_plugins.azure import spec

pytestmark = pytest.mark.server
HERE = Path(__file__).parent
ADD_SUB = HERE / "repos" / "add_sub"
MULTI = HERE / "repos" / "multi"


class TestAzureContract(TargetContract):
    @pytest.fixture(autouse=True)
    def _fake(self, fake):
        return fake

    @pytest.fixture
    def target_name(self):
        return "azure"

    @pytest.fixture
    def target_options(self):
        return {"instance_type": "Standard_DS3_v2"}

    @pytest.fixture
    def repository(self):
        return str(ADD_SUB)


class TestAzureTwinContract(TargetContract):
    @pytest.fixture
    def target_name(self):
        return "azure-twin"

    @pytest.fixture
    def target_options(self):
        return {"deployment": "green"}

    @pytest.fixture
    def repository(self):
        return str(ADD_SUB)


def _secret_free(fake: FakeAzure, tmp_path: Path, outputs: list[str], keys: list[str]) -> None:
    """No key in any output, log or state file (the twin's 0600 key file itself excepted)."""
    assert keys and all(keys)
    texts = list(outputs)
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file() and path.name != "endpoint.key":
            texts.append(path.read_text(errors="replace"))
    for path in fake.root.rglob("*.log"):
        texts.append(path.read_text(errors="replace"))
    for key in keys:
        assert not any(key in text for text in texts), "a key leaked"


def test_cli_deploy_test_teardown(fake, run_cli, tmp_path):
    code, out, err = run_cli("deploy", str(MULTI), "-t", "azure", "--name", "workshop",
                             "-o", "endpoint=ep-dl-workshop", "-o", "deployment=triton-deploy",
                             "-o", "tags=team=ml", "--json")
    assert code == 0, err
    record = json.loads(out)  # stdout is pure JSON: the SDK's poll dots went elsewhere
    assert [(r["kind"], r["id"], r["status"]) for r in record["resources"]] == [
        ("endpoint", "ep-dl-workshop", "created"), ("model", "workshop:1", "created"),
        ("deployment", "ep-dl-workshop/triton-deploy", "created"),
        ("traffic", "ep-dl-workshop/triton-deploy", "created")]
    assert record["endpoint"]["url"].endswith("/score")
    endpoint = fake.endpoints["ep-dl-workshop"]
    assert endpoint.tags == {"team": "ml", spec.NAME_TAG: "workshop", spec.ID_TAG: record["id"]}
    assert fake.models[("workshop", "1")]["tags"][spec.ID_TAG] == record["id"]
    assert [c for c, _ in fake.calls if not c.startswith(("get", "model_active"))] == [
        "create_or_update_endpoint", "register_model", "create_or_update_deployment",
        "set_traffic"]

    code, out, err = run_cli("test", "workshop", "--requests", "20", "--json")
    assert code == 0, out + err
    assert json.loads(out)["passed"]
    code, out, _ = run_cli("logs", "workshop")
    assert code == 0 and "--- inference-server ---" in out and "storage-initializer" in out

    code, out, err = run_cli("teardown", "workshop", "--json")
    assert code == 0, err
    removed = [(r["kind"], r["id"]) for r in json.loads(out)["removed"]]
    assert removed == [("traffic", "ep-dl-workshop/triton-deploy"),
                       ("deployment", "ep-dl-workshop/triton-deploy"),
                       ("model", "workshop:1"), ("endpoint", "ep-dl-workshop")]
    assert fake.endpoints == {} and fake.models[("workshop", "1")]["archived"]
    code, out, _ = run_cli("teardown", "workshop", "--json")
    assert code == 0 and json.loads(out)["found"] is False


def test_no_key_anywhere(fake, run_cli, tmp_path):
    """Deploy, test, logs, status on azure and on the twin: the keys are nowhere."""
    keys = []
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "sec")[0] == 0
    keys.append((fake.endpoints["add-sub-sec"] if "add-sub-sec" in fake.endpoints else
                 next(iter(fake.endpoints.values()))).key_file.read_text())
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure-twin", "--name", "sec-twin")[0] == 0
    state = json.loads((tmp_path / "state" / "deployments" / "sec-twin.json").read_text())
    key_file = Path(state["endpoint"]["key_file"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keys.append(key_file.read_text())
    for name in ("sec", "sec-twin"):
        for args in (("test", name, "--requests", "5"), ("status", name), ("logs", name),
                     ("list", "--json"), ("status", name, "--json")):
            code, _, err = run_cli(*args)
            assert code == 0, err
    _secret_free(fake, tmp_path, run_cli.outputs, keys)
    for name in ("sec", "sec-twin"):
        assert run_cli("teardown", name)[0] == 0
    assert not key_file.exists()
    _secret_free(fake, tmp_path, run_cli.outputs, keys)


def test_failed_deployment_carries_state_and_logs(fake, run_cli, tmp_path):
    broken = tmp_path / "broken"
    (broken / "add_sub" / "1").mkdir(parents=True)
    (broken / "add_sub" / "config.pbtxt").write_text(
        (ADD_SUB / "add_sub" / "config.pbtxt").read_text())
    (broken / "add_sub" / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n"
        "        raise RuntimeError('weights file missing: crash-marker-42')\n")
    code, out, err = run_cli("deploy", str(broken), "-t", "azure", "--name", "broken")
    assert code == 3, err
    assert "provisioning state Failed" in err and "ResourceNotReady" in err
    assert "--- inference-server" in err and "crash-marker-42" in err
    assert "--- storage-initializer" in err and "Model download complete" in err
    assert "Traceback (most recent call last)" not in err.split("--- inference-server")[0]
    code, out, err = run_cli("teardown", "broken", "--json")
    assert code == 0, err
    kinds = [r["kind"] for r in json.loads(out)["removed"]]
    assert kinds == ["deployment", "model", "endpoint"]  # traffic was never recorded
    assert fake.endpoints == {}


def test_wrong_key_is_a_clear_401(fake, run_cli):
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "k401")[0] == 0
    fake.stale_key = True
    code, out, err = run_cli("test", "k401")
    assert code == 5, out + err
    assert "refused the credentials (HTTP 401)" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    fake.stale_key = False
    assert run_cli("teardown", "k401")[0] == 0


def _load(run_cli, name: str, requests: int) -> dict:
    code, out, err = run_cli("test", name, "--requests", str(requests), "--concurrency", "4",
                             "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["passed"] and report["load"][0]["errors"] == {}, report["load"]
    return report


def _tokens(fake, name: str) -> list[str]:
    return [line.split()[0] for line in fake.endpoints[name].key_file.read_text().splitlines()]


class _Ticking:
    """A wall clock that moves ``step`` each time it is read (the client reads it once per
    request), so a token's life is counted in requests, not seconds. ``at`` maps a reading's
    number to a callback run there: a synchronisation point inside a load."""

    def __init__(self, step: float, at: dict | None = None):
        self._readings = itertools.count()
        self.step, self.at = step, dict(at or {})

    def __call__(self) -> float:
        reading = next(self._readings)  # atomic: the load's threads share it
        callback = self.at.pop(reading, None)
        if callback:
            callback()
        return 1.9e9 + reading * self.step


def test_tokens_refreshed_before_expiry_under_load(fake, run_cli, tmp_path, monkeypatch):
    """aml_token: a token lives 100 s on a clock that moves 10 s each time it is read; the
    load's workers get the headers read again every few milliseconds here (every
    LOAD_REFRESH s), so a load of at least 2000 requests sees many readings: the client
    fetches a new token before each expires, and the load passes. Counted on the clock the
    client and the fake share."""
    import deployer_plugins.azure.client as azure_client

    clock = _Ticking(10.0)
    fake.wall, fake.token_lifetime = clock, 100.0
    monkeypatch.setattr(azure_client, "CLOCK", clock)
    monkeypatch.setattr(azure_client, "LOAD_REFRESH", 0.002)
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "tok", "-o",
                   "auth_mode=aml_token", "-o", "endpoint=ep-tok")[0] == 0
    first = len(fake.tokens_issued)
    _load(run_cli, "tok", 2000)
    issued = fake.tokens_issued[first:]
    assert len(issued) >= 3, issued  # refreshed all along, not fetched once
    # each token came while the one before it was still valid
    assert all(now < expiry for (now, _), (_, expiry) in zip(issued[1:], issued)), issued
    _secret_free(fake, tmp_path, run_cli.outputs, _tokens(fake, "ep-tok"))
    assert run_cli("teardown", "tok")[0] == 0


def test_a_401_fetches_a_token_and_retries_once(fake, run_cli, monkeypatch):
    """aad_token with no refresh ahead of expiry: at a set point inside the load the endpoint
    stops accepting the token (as once it expired); the requests meeting the 401 make the
    client fetch exactly one new token and send them again; nothing fails. A key is never
    fetched again."""
    import deployer_plugins.azure.client as azure_client

    revoked = []
    # the load's headers are read every 2 ms here: the 100th reading falls inside the load
    clock = _Ticking(1.0, at={100: lambda: revoked.append(fake.revoke_tokens("ep-aad"))})
    monkeypatch.setattr(azure_client, "REFRESH_MARGIN", -3600.0)  # never ahead
    monkeypatch.setattr(azure_client, "CLOCK", clock)
    monkeypatch.setattr(azure_client, "LOAD_REFRESH", 0.002)
    # a life no load reaches (the load generator may run up to 10 windows when the machine is
    # busy): only the revocation makes the client fetch again
    fake.wall, fake.token_lifetime = clock, 1e9
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "aad", "-o",
                   "auth_mode=aad_token", "-o", "endpoint=ep-aad")[0] == 0
    fetched = fake.token_fetches
    _load(run_cli, "aad", 2000)
    assert revoked, "the load never reached the revocation point"
    assert fake.token_fetches - fetched == 2  # the client's first token, and one after the 401
    log = (fake.endpoints["ep-aad"].folder / "gateway.log").read_text()
    assert '" 401 ' in log  # the revoked token was refused, and the retry went through
    fake.stale_key = True  # a token the endpoint refuses even when new: one retry, then 401
    code, out, err = run_cli("test", "aad")
    assert code == 5 and "refused the credentials (HTTP 401)" in err, out + err
    fake.stale_key = False
    assert run_cli("teardown", "aad")[0] == 0

    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "kk")[0] == 0
    calls = len([c for c, _ in fake.calls if c == "credential"])
    _load(run_cli, "kk", 300)
    assert len([c for c, _ in fake.calls if c == "credential"]) == calls + 1
    assert run_cli("teardown", "kk")[0] == 0


@pytest.mark.parametrize("auth_mode", ["key", "aml_token"])
def test_cli_test_at_concurrency_512(fake, run_cli, auth_mode):
    """Issue 20: ``test --concurrency 512`` through the endpoint's gateway, with a key and with
    a token: 512 requests in flight from the load engine's processes (the deployment admits
    them: max_concurrent_requests_per_instance 512), every one answered 200; teardown removes
    the endpoint and archives the model."""
    fake.token_lifetime = 3600.0   # a token's life as Azure gives it, longer than the load
    name, endpoint = f"c512-{auth_mode[:3]}", f"ep-c512-{auth_mode[:3]}"
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", name,
                             "-o", f"endpoint={endpoint}", "-o", f"auth_mode={auth_mode}",
                             "-o", "max_concurrent_requests_per_instance=512")
    assert code == 0, out + err
    try:
        measured_at(run_cli, name)
        answered = [r["status"] for r in fake.gateway_requests(endpoint) if r["method"] == "POST"]
        assert len(answered) >= 1024 and set(answered) == {200}, set(answered)
    finally:
        code, out, err = run_cli("teardown", name)
    assert code == 0, out + err
    assert fake.endpoints == {} and fake.models[(name, "1")]["archived"]


def test_static_headers_keep_the_request_prebuilt():
    import numpy as np

    from deployer.client import KServeClient

    inputs = {"INPUT0": np.zeros((1, 4), np.float32)}
    static = KServeClient("http://127.0.0.1:9", {"Authorization": "Bearer k"})
    assert b"Authorization: Bearer k\r\n" in static.sender("m", inputs).request
    tokens = iter(["t1", "t2"])
    dynamic = KServeClient("http://127.0.0.1:9", lambda: {"Authorization": next(tokens)})
    send = dynamic.sender("m", inputs)
    assert send.request is None
    assert b"Authorization: t1\r\n" in send._encode(send.headers())
    assert b"Authorization: t2\r\n" in send._encode(send.headers())


def _post(request, headers: dict) -> tuple[int, bytes, dict]:
    """Send a load engine's request as it is, with ``headers`` from its fresh()."""
    sent = urllib.request.Request(request.url, data=request.body, method="POST",
                                  headers={**request.headers, **headers})
    try:
        with urllib.request.urlopen(sent, timeout=60) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_load_request_as_is_and_a_new_token_after_a_401(fake, tmp_path):
    """The load engine's request, sent as it is with fresh()'s headers, reaches the deployment
    (200, the outputs infer gives). Once the endpoint refuses the token, refused() (however
    many requests met the 401) makes the next fresh() fetch one new token, which works."""
    import numpy as np
    import tritonclient.http as httpclient

    inputs = {"INPUT0": np.arange(4, dtype=np.float32).reshape(1, 4),
              "INPUT1": np.ones((1, 4), np.float32)}
    fake.token_lifetime = 3600.0  # only the revocation makes the client fetch again
    deployer = Deployer(state_dir=tmp_path / "state", progress=lambda _: None)
    record = deployer.deploy(str(ADD_SUB), "azure", "lr", {"auth_mode": "aad_token",
                                                           "endpoint": "ep-lr"})
    try:
        client = deployer.registry.create("azure", record.options, lambda _: None).client(record)
        expected = client.infer("add_sub", inputs)
        request = client.load_request("add_sub", inputs)
        assert request.refresh <= 60
        headers = request.fresh()
        assert set(headers) == {"Authorization", spec.DEPLOYMENT_HEADER}
        status, payload, answer = _post(request, headers)
        assert status == 200, payload
        size = answer.get("Inference-Header-Content-Length")
        result = httpclient.InferenceServerClient.parse_response_body(
            payload, header_length=int(size) if size else None)
        for name, value in expected.items():
            np.testing.assert_array_equal(result.as_numpy(name), value)

        fetched = fake.token_fetches
        fake.revoke_tokens("ep-lr")
        assert request.fresh() == headers and _post(request, headers)[0] == 401
        request.refused()
        request.refused()
        renewed = request.fresh()
        assert renewed["Authorization"] != headers["Authorization"]
        assert fake.token_fetches == fetched + 1
        assert _post(request, renewed)[0] == 200
        assert request.fresh() == renewed and fake.token_fetches == fetched + 1
    finally:
        deployer.teardown("lr")


def test_load_request_with_a_key_fetches_nothing_again():
    import numpy as np

    from deployer.client import Credential
    from deployer_plugins.azure.client import AzureClient

    calls = []
    client = AzureClient("http://127.0.0.1:9", lambda: calls.append(1) or Credential("k"),
                         "blue", "ep")
    request = client.load_request("add_sub", {"INPUT0": np.zeros((1, 4), np.float32)},
                                  version="1")
    assert request.url == "http://127.0.0.1:9/v2/models/add_sub/versions/1/infer"
    request.refused()
    assert request.fresh() == {"Authorization": "Bearer k", spec.DEPLOYMENT_HEADER: "blue"}
    assert len(calls) == 1


def test_endpoint_name_taken_elsewhere(fake, run_cli):
    fake.taken.add("ep-taken")
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "taken",
                           "-o", "endpoint=ep-taken")
    assert code == 3 and "EndpointNameNotAvailable" in err
    assert run_cli("teardown", "taken")[0] == 0


def test_run_and_rehearse(fake, run_cli):
    code, out, err = run_cli("run", str(ADD_SUB), "-t", "azure", "--json")
    assert code == 0, out + err
    assert json.loads(out)["passed"] and fake.endpoints == {}
    code, out, err = run_cli("rehearse", str(MULTI), "-t", "azure", "-o", "traffic=100",
                             "--json")
    assert code == 0, out + err
    data = json.loads(out)
    assert data["target"] == "azure-twin" and data["passed"]
    assert len(data["models"]) == 4


@pytest.mark.parametrize("option, message", [
    ("endpoint=ab", "3-32 allowed"), ("endpoint=1abc", "must start with a letter"),
    ("endpoint=ab--cd", "two dashes"), ("endpoint=" + "a" * 33, "3-32 allowed"),
    ("deployment=blue-", "must start with a letter"), ("instance_type=NC4as T4", "is not a VM "
                                                       "size name (Standard_<size>)"),
    ("traffic=150", "these (blue 150%) sum to 150"), ("model_name=bad name", "asset name"),
    ("traffic=50", "an endpoint's traffic shares must sum to 100 or 0, and these (blue 50%) "
                   "sum to 50"),
    ("request_timeout_ms=180001", "above Azure's maximum of 180000"),
    ("request_timeout_ms=0", "request_timeout_ms must be at least 1"),
    ("max_concurrent_requests_per_instance=0", "must be at least 1"),
    ("max_queue_wait_ms=-5", "max_queue_wait_ms must be at least 1"),
    ("liveness_probe=initial_delay=0", "liveness_probe initial_delay must be a whole number"),
    ("readiness_probe=period=ten", "readiness_probe period must be a whole number"),
    ("readiness_probe=delay=5", "item 'delay=5' is not KEY=SECONDS with KEY one of"),
    ("liveness_probe=success_threshold=2", "success_threshold must be 1")])
def test_validation_before_any_call(fake, run_cli, option, message):
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "val", "-o", option)
    assert code == 2 and message in err, err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, err
    assert fake.calls == [] and fake.endpoints == {}


def test_an_empty_version_folder_is_refused_before_any_call(fake, run_cli, tmp_path):
    """azure-ai-ml uploads the files it walks: an ensemble's empty 1/ would never arrive."""
    import shutil

    repo = tmp_path / "multi"
    shutil.copytree(MULTI, repo)
    (repo / "pipeline" / "1" / ".gitkeep").unlink()
    for command in (("deploy", str(repo), "-t", "azure", "--name", "empty"),
                    ("rehearse", str(repo), "-t", "azure")):
        code, _, err = run_cli(*command)
        assert code == 2 and "version folder pipeline/1 has no file" in err, err
    assert fake.calls == []


def test_names_and_instance_types():
    assert spec.endpoint_name_from("9lives--model") == "ep-9lives-model"
    assert spec.endpoint_name_from("x" * 60) == "x" * 32
    assert spec.instance_type("STANDARD_NC4AS_T4_V3") == "Standard_NC4as_T4_v3"
    # the A10 and H100 families of Microsoft's managed online endpoints SKU list
    assert spec.instance_type("standard_nv36ads_a10_v5") == "Standard_NV36ads_A10_v5"
    assert spec.instance_type("STANDARD_ND96ISR_H100_V5") == "Standard_ND96isr_H100_v5"
    # a well-formed size we do not list is Azure's to judge: sent as given, with a warning
    assert spec.instance_type("Standard_NC999") == "Standard_NC999"
    lines: list[str] = []
    spec.warn_instance_type("Standard_NC999", lines.append)
    spec.warn_instance_type("Standard_NC4as_T4_v3", lines.append)
    assert len(lines) == 1 and lines[0].startswith("warning: instance type Standard_NC999 is "
                                                   "not in our list")
    with pytest.raises(ValidationError, match="Standard_NC"):
        spec.instance_type("NC999")


def test_an_unlisted_instance_type_warns_and_deploys(fake, run_cli):
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "newsize",
                             "-o", "instance_type=Standard_NC8ads_A10_v9", "--json")
    assert code == 0, err
    assert "warning: instance type Standard_NC8ads_A10_v9 is not in our list" in err
    (endpoint,) = fake.endpoints.values()
    (deployment,) = endpoint.deployments.values()
    assert deployment.instance_type == "Standard_NC8ads_A10_v9"
    assert run_cli("teardown", "newsize")[0] == 0


def test_plan_yaml_loads_with_the_sdk(tmp_path, run_cli):
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    yaml_dir = tmp_path / "yaml"
    planned = ("plan", str(ADD_SUB), "-t", "azure", "--name", "planned",
               "-o", "auth_mode=aml_token", "-o", "model_version=3", "--json")
    # the deprecated option: a warning, and plan writes nothing
    code, out, err = run_cli(*planned, "-o", "yaml_dir=" + str(yaml_dir))
    assert code == 0 and "use 'deployer plan ... --export" in err and not yaml_dir.exists()
    code, out, err = run_cli(*planned, "--export", str(yaml_dir))
    assert code == 0, err
    assert json.loads(out)["exported"] == [str(yaml_dir / "endpoint.yml"),
                                           str(yaml_dir / "deployment.yml")]
    resources = {r["kind"]: r["details"] for r in json.loads(out)["resources"]}
    assert json.loads((yaml_dir / "endpoint.yml").read_text()) == resources["endpoint"]
    assert json.loads((yaml_dir / "deployment.yml").read_text()) == resources["deployment"]
    endpoint = load_online_endpoint(yaml_dir / "endpoint.yml")
    deployment = load_online_deployment(yaml_dir / "deployment.yml")
    assert (endpoint.name, endpoint.auth_mode) == ("planned", "aml_token")
    assert deployment.endpoint_name == "planned" and deployment.instance_count == 1
    assert deployment.instance_type == "Standard_NC4as_T4_v3"
    # the Triton defaults, in the document and as the SDK reads them
    assert resources["deployment"]["request_settings"] == {
        "request_timeout_ms": 60000, "max_concurrent_requests_per_instance": 16}
    assert resources["deployment"]["liveness_probe"] == {
        "initial_delay": 600, "period": 10, "timeout": 2, "failure_threshold": 30,
        "success_threshold": 1}
    assert (deployment.request_settings.request_timeout_ms,
            deployment.request_settings.max_concurrent_requests_per_instance,
            deployment.request_settings.max_queue_wait_ms) == (60000, 16, None)
    assert (deployment.liveness_probe.initial_delay, deployment.readiness_probe.initial_delay,
            deployment.readiness_probe.failure_threshold) == (600, 10, 30)
    assert deployment.model.type == "triton_model" and deployment.model.version == "3"
    assert Path(deployment.model.path) == ADD_SUB.resolve()
    assert resources["traffic"] == {"blue": 100}
    assert not (tmp_path / "state" / "deployments").exists() or \
        not list((tmp_path / "state" / "deployments").iterdir())


def test_twin_gateway_auth_and_routing(tmp_path):
    deployer = Deployer(state_dir=tmp_path / "state", progress=lambda _: None)
    record = deployer.deploy(str(ADD_SUB), "azure-twin", "gw", {"deployment": "green"})
    try:
        base = record.endpoint["url"].rsplit("/score", 1)[0]
        key = Path(record.endpoint["key_file"]).read_text()

        def status(headers):
            request = urllib.request.Request(base + "/v2/health/ready", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status, answer.headers.get("azureml-model-deployment")
            except urllib.error.HTTPError as exc:
                return exc.code, None

        auth = {"Authorization": f"Bearer {key}"}
        assert status({}) == (401, None)
        assert status({"Authorization": "Bearer nope"}) == (401, None)
        assert status({**auth, "azureml-model-deployment": "green"}) == (200, "green")
        assert status({**auth, "azureml-model-deployment": "blue"}) == (404, None)
        assert status(auth) == (200, "green")  # no header: the deployment holding traffic
        routes = Path(record.resources[-1].data["routes"])
        data = json.loads(routes.read_text())
        data["traffic"] = {"green": 0}
        routes.write_text(json.dumps(data))
        assert status(auth) == (404, None)  # nobody holds traffic
        assert status({**auth, "azureml-model-deployment": "green"}) == (200, "green")
    finally:
        deployer.teardown("gw")
    assert not os.path.exists(record.endpoint["key_file"])


# -- deploy --update -----------------------------------------------------------------------
def _variant(tmp_path: Path, name: str, model_py: str) -> Path:
    """add_sub with another model.py (a model that crashes at load, or at inference)."""
    repo = tmp_path / name
    (repo / "add_sub" / "1").mkdir(parents=True)
    (repo / "add_sub" / "config.pbtxt").write_text(
        (ADD_SUB / "add_sub" / "config.pbtxt").read_text())
    (repo / "add_sub" / "1" / "model.py").write_text(model_py)
    return repo


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _statuses(record: dict) -> list[tuple[str, str, str]]:
    return [(r["kind"], r["id"], r["status"]) for r in record["resources"]]


def test_update_in_place_then_blue_green(fake, run_cli, tmp_path):
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "upd",
                   "-o", "endpoint=ep-upd")[0] == 0
    endpoint = fake.endpoints["ep-upd"]
    key = endpoint.key_file.read_text()
    first = len(fake.calls)

    # in place: model version 2, the same deployment updated, version 1 archived
    code, out, err = run_cli("deploy", str(MULTI), "-t", "azure", "--name", "upd", "--update",
                             "--json")  # the recorded endpoint is used
    assert code == 0, err
    record = json.loads(out)
    assert _statuses(record) == [
        ("endpoint", "ep-upd", "created"), ("model", "upd:1", "deleted"),
        ("deployment", "ep-upd/blue", "created"), ("traffic", "ep-upd/blue", "created"),
        ("model", "upd:2", "created")]
    assert [c for c in fake.calls[first:] if not c[0].startswith(("get", "model_active"))] == [
        ("register_model", "upd"), ("create_or_update_deployment", "ep-upd/blue"),
        ("archive_model", "upd:1")]
    assert fake.models[("upd", "1")]["archived"] and not fake.models[("upd", "2")]["archived"]
    assert record["endpoint"]["deployment"] == "blue" and record["error"] is None
    code, out, err = run_cli("test", "upd", "--json")
    assert code == 0 and len(json.loads(out)["models"]) == 4, out + err

    # blue/green: green beside blue with 0 %, smoke-tested, traffic moved, blue removed
    first = len(fake.calls)
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "upd", "--update",
                             "-o", "blue_green=true", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert _statuses(record)[2:] == [
        ("deployment", "ep-upd/blue", "deleted"), ("traffic", "ep-upd/blue", "deleted"),
        ("model", "upd:2", "deleted"), ("model", "upd:3", "created"),
        ("deployment", "ep-upd/green", "created"), ("traffic", "ep-upd/green", "created")]
    assert "smoke test of ep-upd/green" in err
    assert [c for c in fake.calls[first:] if not c[0].startswith(("get", "model_active"))] == [
        ("register_model", "upd"), ("create_or_update_deployment", "ep-upd/green"),
        ("credential", "ep-upd"), ("set_traffic", "ep-upd"),
        ("delete_deployment", "ep-upd/blue"), ("archive_model", "upd:2")]
    assert fake.endpoints["ep-upd"] is endpoint  # the endpoint was kept ...
    assert endpoint.key_file.read_text() == key  # ... and so was its key
    assert list(endpoint.deployments) == ["green"]
    assert fake.get_endpoint("ep-upd").traffic == {"green": 100}
    assert record["endpoint"]["deployment"] == "green"
    code, out, err = run_cli("test", "upd", "--json")
    assert code == 0 and json.loads(out)["passed"], out + err

    code, out, err = run_cli("teardown", "upd", "--json")
    assert code == 0, err
    assert [(r["kind"], r["id"]) for r in json.loads(out)["removed"]] == [
        ("traffic", "ep-upd/green"), ("deployment", "ep-upd/green"), ("model", "upd:3"),
        ("endpoint", "ep-upd")]
    assert fake.endpoints == {} and all(m["archived"] for m in fake.models.values())
    _secret_free(fake, tmp_path, run_cli.outputs, [key])


def test_failed_update_keeps_the_old_version_serving(fake, run_cli, tmp_path):
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "keep")[0] == 0
    endpoint = next(iter(fake.endpoints.values()))

    # in place, the new version crashes at start: the rolling update stops, blue still serves
    crashing = _variant(tmp_path, "crashing", "class TritonPythonModel:\n"
                        "    def initialize(self, args):\n"
                        "        raise RuntimeError('weights file missing: crash-marker-7')\n")
    code, _, err = run_cli("deploy", str(crashing), "-t", "azure", "--name", "keep", "--update")
    assert code == 3, err
    line = _error_line(err)
    assert "provisioning state Failed" in line and "still serves the previous version" in line
    assert "crash-marker-7" in err and "Model download complete" in err  # the logs, after it
    status = json.loads(run_cli("status", "keep", "--json")[1])
    assert status["status"] == "ready" and status["live"] is True
    assert status["error"].startswith("update failed:")
    assert fake.models[("keep", "2")]["archived"] and not fake.models[("keep", "1")]["archived"]
    assert run_cli("test", "keep")[0] == 0

    # blue/green, the new version loads but cannot infer: the smoke test stops it
    failing = _variant(tmp_path, "failing", "class TritonPythonModel:\n"
                       "    def execute(self, requests):\n"
                       "        raise RuntimeError('inference-marker-9')\n")
    code, _, err = run_cli("deploy", str(failing), "-t", "azure", "--name", "keep", "--update",
                           "-o", "blue_green=true", "-o", "new_deployment=canary")
    assert code == 3, err
    line = _error_line(err)
    assert "canary failed its smoke test" in line and "inference-marker-9" in line
    assert list(endpoint.deployments) == ["blue"]  # canary removed, blue untouched
    assert fake.get_endpoint(endpoint.name).traffic == {"blue": 100}
    status = json.loads(run_cli("status", "keep", "--json")[1])
    assert status["status"] == "ready" and status["live"] is True
    assert status["endpoint"]["deployment"] == "blue"
    assert [(r["kind"], r["id"]) for r in status["resources"] if r["status"] != "deleted"] == [
        ("endpoint", endpoint.name), ("model", "keep:1"), ("deployment", f"{endpoint.name}/blue"),
        ("traffic", f"{endpoint.name}/blue")]
    assert run_cli("test", "keep")[0] == 0

    code, _, err = run_cli("teardown", "keep")
    assert code == 0, err
    assert fake.endpoints == {} and all(m["archived"] for m in fake.models.values())


def test_twin_update_in_place_then_blue_green(run_cli, tmp_path):
    from deployer import triton

    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure-twin", "--name", "tw",
                             "--json")
    assert code == 0, err
    record = json.loads(out)
    key_file = Path(record["endpoint"]["key_file"])
    key, url = key_file.read_text(), record["endpoint"]["url"]
    routes = Path(record["resources"][-1]["data"]["routes"])
    tags = [record["resources"][2]["data"]["tag"]]
    ep = record["endpoint"]["endpoint"]
    try:
        _twin_updates(run_cli, tmp_path, ep, routes, tags, key_file, key, url)
    finally:
        assert run_cli("teardown", "tw")[0] == 0
    assert not key_file.exists() and all(not triton.tagged(tag) for tag in tags)
    assert all(key not in text for text in run_cli.outputs)


def _twin_updates(run_cli, tmp_path, ep, routes, tags, key_file, key, url):
    from deployer import triton

    # in place: a new server takes over the route of 'blue', the old one stops
    code, out, err = run_cli("deploy", str(MULTI), "-t", "azure-twin", "--name", "tw",
                             "--update", "--json")
    assert code == 0, err
    record = json.loads(out)
    new = record["resources"][-1]
    assert (new["kind"], new["id"], new["status"]) == ("deployment", f"{ep}/blue", "created")
    limits = {"concurrency": 16, "timeout_ms": 60000, "queue_ms": None}  # Triton defaults
    assert json.loads(routes.read_text()) == {"deployments": {"blue": new["data"]["url"]},
                                              "traffic": {"blue": 100},
                                              "limits": {"blue": limits}}
    assert triton.tagged(tags[0]) == [] and triton.tagged(new["data"]["tag"])
    tags.append(new["data"]["tag"])
    code, out, err = run_cli("test", "tw", "--json")
    assert code == 0 and len(json.loads(out)["models"]) == 4, out + err

    # in place, a version that crashes at start: the route of 'blue' is left alone
    before = routes.read_text()
    crashing = _variant(tmp_path, "crashing", "class TritonPythonModel:\n"
                        "    def initialize(self, args):\n        raise RuntimeError('boom')\n")
    code, _, err = run_cli("deploy", str(crashing), "-t", "azure-twin", "--name", "tw",
                           "--update")
    assert code == 3 and "provisioning state Failed" in _error_line(err), err
    assert routes.read_text() == before and triton.tagged(tags[1])
    assert run_cli("test", "tw")[0] == 0

    # blue/green: 'canary' beside 'blue', smoke-tested through the gateway, traffic, blue gone
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure-twin", "--name", "tw",
                             "--update", "-o", "blue_green=true", "-o", "new_deployment=canary",
                             "--json")
    assert code == 0, err
    record = json.loads(out)
    canary = [r for r in record["resources"] if r["kind"] == "deployment" and
              r["status"] == "created"]
    assert [r["id"] for r in canary] == [f"{ep}/canary"]
    assert json.loads(routes.read_text()) == {
        "deployments": {"canary": canary[0]["data"]["url"]}, "traffic": {"canary": 100},
        "limits": {"canary": limits}}
    assert triton.tagged(tags[1]) == []
    assert record["endpoint"]["url"] == url and record["endpoint"]["deployment"] == "canary"
    assert key_file.read_text() == key
    code, out, err = run_cli("test", "tw", "--json")
    assert code == 0 and json.loads(out)["passed"], out + err
    tags.append(canary[0]["data"]["tag"])


def test_compare_azure_against_the_twin(fake, run_cli, tmp_path):
    """Issue 6 on the Azure test set-up: the cloud target (fake control plane, real Triton)
    against its rehearsal; cost from the price table (looked up case-blind)."""
    code, out, err = run_cli(
        "compare", str(ADD_SUB), "--target", "azure", "--target", "azure-twin",
        "-o", "azure.instance_type=Standard_DS3_v2", "-o", "azure.endpoint=ep-cmp",
        "--requests", "60", "--concurrency", "1", "--json", "--report",
        str(tmp_path / "r.html"))
    assert code == 0, out + err
    data = json.loads(out)  # stdout holds the JSON: the SDK's shielding is thread-safe
    assert data["parallel"] == ["azure"] and data["sequential"] == ["azure-twin"]
    results = {t["target"]: t for t in data["targets"]}
    cloud = results["azure"]
    assert cloud["passed"] and cloud["torn_down"] and cloud["errors"] == 0, cloud
    assert cloud["cost_per_hour"] == 0.293  # Standard_DS3_v2 in deployer/prices.json
    assert results["azure-twin"]["passed"] and results["azure-twin"]["cost_per_hour"] == 0.0
    assert fake.endpoints == {}, "the cloud endpoint must be torn down"
    assert (tmp_path / "r.html").read_text().count('class="ok">passed') >= 3


def test_twin_tears_down_a_corrupt_record_by_its_tags(run_cli, tmp_path):
    """The twin's record cut short: teardown finds its gateway and server by the id's tags
    and stops them."""
    from deployer import triton

    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure-twin", "--name", "lostw",
                             "--json")
    assert code == 0, err
    record = json.loads(out)
    tags = [r["data"]["tag"] for r in record["resources"] if "tag" in r["data"]]
    assert len(tags) == 2 and all(triton.tagged(tag) for tag in tags)
    path = tmp_path / "state" / "deployments" / "lostw.json"
    path.write_text(path.read_text()[:-40])  # not JSON any more; the id is still readable
    code, out, err = run_cli("teardown", "lostw", "--json")
    assert code == 0, err
    removed = json.loads(out)["removed"]
    assert [r["kind"] for r in removed] == ["process", "process"], removed
    assert all(triton.tagged(tag) == [] for tag in tags)
