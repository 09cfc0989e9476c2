"""The Vertex rehearsal's pieces on real parts: the embedded tritonserver started as NVIDIA's
image starts on Vertex, with Triton's own Vertex AI frontend (serving.start_model_server),
behind the gateway process (serving.start_gateway), called through VertexClient and raw
HTTP."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPOS
from deployer import triton
from deployer.client import Credential, EndpointError
from deployer.errors import DeployFailed, Unavailable

from deployer_plugins.vertex import serving
from deployer_plugins.vertex.client import BINARY_TYPE, REDIRECT_HEADER, VertexClient, connect

IMAGE = "us-central1-docker.pkg.dev/rehearsal/triton/tritonserver:24.09-py3"
PROJECT, REGION, ENDPOINT = "proj", "us-central1", "4242"
ADD_SUB = {"INPUT0": np.arange(4, dtype=np.float32).reshape(1, 4),
           "INPUT1": np.ones((1, 4), dtype=np.float32)}
ADD_SUB_JSON = {"inputs": [
    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]},
    {"name": "INPUT1", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}


def container(*extra: str, image: str = IMAGE) -> dict:
    return {"image_uri": image, "args": ["--model-repository=$(AIP_STORAGE_URI)", *extra],
            "env": {}, "ports": [8080]}


def read_token(path: Path) -> Credential:
    secret, expiry = path.read_text().split()
    return Credential(secret, float(expiry))


class Endpoint:
    """Two deployed models behind one gateway: "1" serves add_sub alone (no default model
    named: Triton's single model), "2" the multi repository with --vertex-ai-default-model=
    pipeline; "2" holds the traffic."""

    def __init__(self, work: Path):
        self.work, self.tags = work, []
        self.tokens, self.routes = work / "endpoint.token", work / "routes.json"

    def start(self) -> Endpoint:
        alone = self.serve("alone", REPOS / "add_sub", container())
        several = self.serve("several", REPOS / "multi",
                             container("--vertex-ai-default-model", "pipeline"))
        self.served = {"1": alone, "2": several}
        serving.write_token(self.tokens, 3600)
        for number, served in self.served.items():
            serving.update_routes(self.routes, ENDPOINT, deployed_id=number, url=served.url,
                                  default_model=served.default_model)
        serving.update_routes(self.routes, ENDPOINT, traffic={"1": 0, "2": 100})
        self.tags.append("vgw-test-gateway")
        _, self.base = serving.start_gateway(self.work, "vgw-test-gateway", self.tokens,
                                             self.routes, print, PROJECT, REGION)
        self.url = serving.predict_url(self.base, PROJECT, REGION, ENDPOINT)
        return self

    def serve(self, name: str, folder: Path, spec: dict) -> serving.Served:
        tag = f"vgw-test-endpoint-{name}"
        self.tags.append(tag)
        return serving.start_model_server(folder, spec, self.work, tag, print,
                                          log_name=f"{name}.log")

    def stop(self) -> None:
        for tag in self.tags:
            triton.stop(tag)

    def client(self) -> VertexClient:
        return VertexClient(self.url, lambda: read_token(self.tokens), ENDPOINT)

    def post(self, body: bytes = b"", headers: dict | None = None, method: str = "POST",
             url: str | None = None, token: str | None = "current") -> tuple[int, bytes, dict]:
        headers = dict(headers or {})
        if token == "current":
            token = read_token(self.tokens).secret
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url or self.url, data=body if method == "POST" else
                                         None, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture(scope="module")
def endpoint(tritonserver, tmp_path_factory):
    made = Endpoint(tmp_path_factory.mktemp("vertex-gateway"))
    try:
        yield made.start()
    finally:
        made.stop()
        assert not any(triton.tagged(tag) for tag in made.tags)


def test_the_single_model_and_the_named_default(endpoint):
    assert endpoint.served["1"].default_model == "add_sub"   # Triton's only model
    assert endpoint.served["2"].default_model == "pipeline"  # --vertex-ai-default-model


def test_raw_predict_without_the_header_reaches_the_default_model(endpoint):
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 1, 3],
                                   "data": [1, 2, 3]}]}).encode()
    status, payload, _ = endpoint.post(body, {"Content-Type": "application/json"})
    assert status == 200, payload
    answer = json.loads(payload)
    assert answer["model_name"] == "pipeline" and answer["outputs"][0]["data"] == [4, 8, 12]


def test_traffic_split_picks_the_deployed_model(endpoint):
    body = json.dumps(ADD_SUB_JSON).encode()
    serving.update_routes(endpoint.routes, ENDPOINT, traffic={"1": 100, "2": 0})
    try:
        status, payload, _ = endpoint.post(body, {"Content-Type": "application/json"})
        assert status == 200 and json.loads(payload)["model_name"] == "add_sub", payload
        serving.update_routes(endpoint.routes, ENDPOINT, traffic={})
        status, payload, _ = endpoint.post(body)
        assert status == 400 and b"FAILED_PRECONDITION" in payload, payload
    finally:
        serving.update_routes(endpoint.routes, ENDPOINT, traffic={"1": 0, "2": 100})


def test_redirect_to_metadata_and_infer_of_another_model(endpoint):
    client = endpoint.client()
    assert client.ready()
    meta = client.metadata("add_sub")
    assert meta["name"] == "add_sub" and [i["name"] for i in meta["inputs"]] == ["INPUT0",
                                                                                 "INPUT1"]
    out = client.infer("add_sub", ADD_SUB)
    np.testing.assert_array_equal(out["OUTPUT0"], [[1, 2, 3, 4]])
    np.testing.assert_array_equal(out["OUTPUT1"], [[-1, 0, 1, 2]])
    assert client.metadata("text_len")["name"] == "text_len"
    send = client.sender("add_sub", ADD_SUB)
    for _ in range(3):
        send()
    with pytest.raises(EndpointError, match="HTTP 404: .*unknown model.*nope"):
        client.metadata("nope")
    # the redirect's other routes, as the frontend switches them to GET
    for route in ("v2/models/add_sub/ready", "v2/models/add_sub/config", "v2", "v2/health/live",
                  "v2/models/add_sub/stats", "v2/models/stats"):
        status, payload, _ = endpoint.post(headers={REDIRECT_HEADER: route})
        assert status == 200, (route, payload)
    status, payload, _ = endpoint.post(headers={REDIRECT_HEADER: "v2/models/add_sub/config"})
    assert json.loads(payload)["max_batch_size"] == 8


def test_binary_body_with_the_vertex_mime_type(endpoint):
    import tritonclient.http as httpclient

    built = []
    for name, array in ADD_SUB.items():
        item = httpclient.InferInput(name, list(array.shape), "FP32")
        item.set_data_from_numpy(array, binary_data=True)
        built.append(item)
    body, size = httpclient.InferenceServerClient.generate_request_body(built)
    infer = {REDIRECT_HEADER: "v2/models/add_sub/infer"}
    status, payload, headers = endpoint.post(body, {**infer, "Content-Type":
                                                    f"{BINARY_TYPE}{size}"})
    assert status == 200, payload
    length = int(headers["Inference-Header-Content-Length"])  # binary outputs came back
    result = httpclient.InferenceServerClient.parse_response_body(payload, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[1, 2, 3, 4]])
    # Triton's own checks of the header size, and KServe's header is not Vertex's
    status, payload, _ = endpoint.post(body, {**infer, "Content-Type":
                                              f"{BINARY_TYPE}{len(body) + 1}"})
    assert status == 400 and b"inference header size should be in range" in payload
    status, payload, _ = endpoint.post(body, {**infer, "Content-Type": "text/plain; "
                                              f"{BINARY_TYPE}{size}"})
    assert status == 400 and b"expect MIME type for binary data starts with" in payload
    status, payload, _ = endpoint.post(body, {**infer, "Content-Type": "application/"
                                              "octet-stream", "Inference-Header-Content-Length":
                                              str(size)})
    assert status == 400, payload  # the whole body read as JSON


def test_401_without_or_with_a_wrong_or_expired_token(endpoint):
    for token in (None, "wrong"):
        status, payload, headers = endpoint.post(b"{}", token=token)
        assert status == 401 and b"UNAUTHENTICATED" in payload
        assert headers["WWW-Authenticate"].startswith("Bearer")
    good = endpoint.tokens.read_text()
    secret = good.split()[0]
    endpoint.tokens.write_text(f"{secret} 1000.0\n")  # expired long ago
    try:
        assert endpoint.post(b"{}", token=secret)[0] == 401
        with pytest.raises(Unavailable, match="refused the credentials"):
            connect({"url": endpoint.url, "endpoint": ENDPOINT},
                    lambda: Credential(secret, 4e9))
    finally:
        endpoint.tokens.write_text(good)
    assert endpoint.post(headers={REDIRECT_HEADER: "v2/health/ready"})[0] == 200


def test_404_for_another_endpoint_or_path(endpoint):
    for url in (serving.predict_url(endpoint.base, PROJECT, REGION, "999"),
                serving.predict_url(endpoint.base, "other", REGION, ENDPOINT),
                serving.predict_url(endpoint.base, PROJECT, "europe-west4", ENDPOINT),
                endpoint.url.replace(":rawPredict", ":predict"),
                endpoint.base + "/v2/health/ready"):
        status, payload, _ = endpoint.post(b"{}", url=url)
        assert status == 404 and b"NOT_FOUND" in payload, url


def test_405_for_get_and_400_for_an_unknown_redirect(endpoint):
    assert endpoint.post(method="GET", headers={REDIRECT_HEADER: "v2/health/ready"})[0] == 405
    assert endpoint.post(method="GET")[0] == 405  # the default model's infer takes POST
    for route in ("v2/models/add_sub/generate", "v2/nothing", "/v2/health/ready", "metrics/x",
                  "v2/models/add_sub/versions/x/infer"):
        status, payload, _ = endpoint.post(headers={REDIRECT_HEADER: route})
        assert (status, payload) == (400, b""), route


def test_token_refresh_after_a_401(endpoint):
    client = endpoint.client()
    client.infer("add_sub", ADD_SUB)
    send = client.sender("add_sub", ADD_SUB)
    send()
    serving.write_token(endpoint.tokens, 3600)  # the old token is no longer accepted
    client.infer("add_sub", ADD_SUB)
    assert client.auth.fetches == 2
    serving.write_token(endpoint.tokens, 3600)
    send()  # the sender too
    assert client.auth.fetches == 3
    assert oct(endpoint.tokens.stat().st_mode & 0o777) == "0o600"


def test_load_request_as_is_and_a_new_token_after_a_401(endpoint):
    """The load engine's request, sent as it is with fresh()'s header, reaches the model named
    in the redirect (a version too) and answers its outputs as JSON. Once the endpoint
    refuses the token, refused() (however many requests met the 401) makes the next fresh()
    fetch one new token, which works."""
    client = endpoint.client()
    request = client.load_request("add_sub", ADD_SUB, version="1")
    assert request.url == endpoint.url and request.refresh <= 60
    assert request.headers[REDIRECT_HEADER] == "v2/models/add_sub/versions/1/infer"

    def post(headers: dict) -> tuple[int, bytes, dict]:
        return endpoint.post(request.body, {**request.headers, **headers}, token=None)

    headers = request.fresh()
    status, payload, _ = post(headers)
    assert status == 200, payload
    outputs = {o["name"]: o["data"] for o in json.loads(payload)["outputs"]}
    assert outputs == {"OUTPUT0": [1, 2, 3, 4], "OUTPUT1": [-1, 0, 1, 2]}
    fetched = client.auth.fetches
    serving.write_token(endpoint.tokens, 3600)  # the old token is no longer accepted
    assert request.fresh() == headers and post(headers)[0] == 401
    request.refused()
    request.refused()
    renewed = request.fresh()
    assert renewed != headers and client.auth.fetches == fetched + 1
    assert post(renewed)[0] == 200
    assert request.fresh() == renewed and client.auth.fetches == fetched + 1


def _fails(tmp_path, folder: Path, spec: dict, tag: str) -> DeployFailed:
    with pytest.raises(DeployFailed) as failed:
        serving.start_model_server(folder, spec, tmp_path, tag, print, timeout=120)
    assert not triton.tagged(tag)  # nothing left running
    return failed.value


def test_startup_failures_carry_tritons_message(tritonserver, tmp_path):
    several = _fails(tmp_path, REPOS / "multi", container(), "vgw-test-several")
    assert serving.SEVERAL_MODELS in several.message
    missing = _fails(tmp_path, REPOS / "multi", container("--vertex-ai-default-model=scale2"),
                     "vgw-test-missing")
    assert "Expect the default model 'scale2' is loaded" in missing.message
    image = _fails(tmp_path, REPOS / "add_sub", container(
        image="nvcr.io/nvidia/tritonserver:24.09-py3"), "vgw-test-nvcr")
    assert "nvcr.io" in image.message and "Artifact Registry" in image.message
    nested = tmp_path / "artefact"
    shutil.copytree(REPOS / "add_sub", nested / "models")
    deeper = _fails(tmp_path, nested, container(), "vgw-test-nested")
    assert "no model repository" in deeper.message or "models" in deeper.message


def test_check_image():
    assert serving.check_image(IMAGE) is None
    assert serving.check_image("gcr.io/proj/tritonserver@sha256:" + "a" * 64) is None
    assert serving.check_image("eu.gcr.io/proj/triton:1") is None
    assert "nvcr.io" in serving.check_image("nvcr.io/nvidia/tritonserver:24.09-py3")
    assert "Artifact Registry" in serving.check_image("docker.io/library/triton:1")
    assert serving.check_image("") is not None


def test_the_table_matches_tritons_own_vertex_frontend(endpoint, tmp_path):
    """The gateway changes nothing on the way: the same requests sent straight to a Triton
    Vertex AI frontend and through the gateway (to the containers' own frontends) get the
    same status, and the same JSON when 200; its start-up failures say what serving.py
    reports."""
    server = triton.find_server(None)
    http, grpc, metrics, vertex = triton.free_ports(4)
    routes = {"AIP_PREDICT_ROUTE": "/predict", "AIP_HEALTH_ROUTE": "/health"}

    def start(tag: str, *args: str) -> int:
        command = triton.tritonserver_command(
            server, REPOS / "multi", host="127.0.0.1", http_port=http, grpc_port=grpc,
            metrics_port=metrics, args=["--allow-vertex-ai=true", f"--vertex-ai-port={vertex}",
                                        *args])
        return triton.start(command, {**server.process_env(), **routes}, tmp_path / f"{tag}.log",
                            tag)

    tag = "vgw-test-real"
    try:
        pid = start(tag, "--vertex-ai-default-model=pipeline")
        triton.wait_ready(f"http://127.0.0.1:{vertex}", pid, tmp_path / f"{tag}.log", 120, print,
                          ready_path="/health", index_url=None)
        cases = [("POST", None, json.dumps({"inputs": [{"name": "X", "datatype": "FP32",
                                                        "shape": [1, 1, 3],
                                                        "data": [1, 2, 3]}]}).encode())]
        cases += [("POST", route, b"") for route in (
            "v2/models/add_sub", "v2/models/add_sub/versions/1", "v2/models/add_sub/ready",
            "v2/models/add_sub/config", "v2/models/add_sub/stats", "v2/models/stats", "v2",
            "v2/health/ready", "v2/health/live", "v2/models/nope", "v2/models/add_sub/generate",
            "v2/nothing", "/v2", "v2/models/add_sub/versions/x")]
        cases += [("POST", "v2/models/add_sub/infer", json.dumps(ADD_SUB_JSON).encode()),
                  ("GET", "v2/health/ready", None), ("GET", None, None)]
        for method, route, body in cases:
            headers = {REDIRECT_HEADER: route} if route is not None else {}
            real = endpoint.post(body or b"", headers, method, token=None,
                                 url=f"http://127.0.0.1:{vertex}/predict")
            ours = endpoint.post(body or b"", headers, method)
            assert real[0] == ours[0], (method, route, real[:2], ours[:2])
            if real[0] == 200 and route not in ("v2/models/stats", "v2/models/add_sub/stats"):
                assert (json.loads(real[1]) if real[1] else real[1]) == (
                    json.loads(ours[1]) if ours[1] else ours[1]), route
        triton.stop(tag)
        for args, said in (((), serving.SEVERAL_MODELS),
                           (("--vertex-ai-default-model=scale2",),
                            serving.NOT_LOADED.format(name="scale2"))):
            pid = start(tag, *args)
            with pytest.raises(DeployFailed):
                triton.wait_ready(f"http://127.0.0.1:{vertex}", pid, tmp_path / f"{tag}.log",
                                  120, print, ready_path="/health", index_url=None)
            triton.stop(tag)
            assert said in (tmp_path / f"{tag}.log").read_text()
    finally:
        triton.stop(tag)
        assert not triton.tagged(tag)
