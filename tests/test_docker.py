"""The docker target end to end: a real Docker engine and the locally built CPU image
(``plugins/docker/build_cpu_image.sh``), driven through the CLI.

Skipped, with the reason, when the engine does not answer or the image is absent; CI starts
the engine (``.ci/start-docker.sh``) and builds the image first, so nothing is skipped there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

from deployer.testing import TargetContract

from conftest import REPOS, crashing_repository, one_line_error, tensorrt_repository

IMAGE = "triton-deployer/tritonserver-cpu:24.10-py3"
LABEL = "triton-deployer.deployment"


def _engine():
    try:
        import docker
    except ImportError:
        pytest.skip("the docker SDK is not installed (pip install 'triton-deployer[docker]')",
                    allow_module_level=True)
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine answers ({exc}); start one with .ci/start-docker.sh",
                    allow_module_level=True)
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"image {IMAGE} is absent; build it with plugins/docker/build_cpu_image.sh",
                    allow_module_level=True)
    return client


ENGINE = _engine()


def containers_of(deployment_id: str) -> list:
    return ENGINE.containers.list(all=True, filters={"label": f"{LABEL}={deployment_id}"})


def _ours(tmp_root: str) -> list:
    """Our labelled containers serving a repository of this checkout or of this session's
    temporary folder (another test session's are not ours to judge)."""
    roots = (str(REPOS.parent.parent), tmp_root)
    return [c for c in ENGINE.containers.list(all=True, filters={"label": LABEL})
            if c.labels.get("triton-deployer.repository", "").startswith(roots)]


@pytest.fixture(autouse=True)
def _no_container_left(request, tmp_path_factory):
    """Whatever a test does, none of the containers it made may survive it."""
    tmp_root = str(tmp_path_factory.getbasetemp())
    before = {c.id for c in _ours(tmp_root)}
    yield
    left = [c for c in _ours(tmp_root) if c.id not in before]
    for container in left:   # clean up for the next test, then fail this one
        container.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"


class TestDockerContract(TargetContract):
    @pytest.fixture
    def target_name(self):
        return "docker"

    @pytest.fixture
    def target_options(self):
        return {"image": IMAGE, "stop_timeout": 5}

    @pytest.fixture
    def repository(self):
        return REPOS / "add_sub"


def test_run_multi_model_repository_json(cli):
    result = cli("run", REPOS / "multi", "--target", "docker", "-o", f"image={IMAGE}", "--json",
                 "--requests", "50", "--concurrency", "2")
    assert result.code == 0, result
    report = result.json()
    assert report["passed"] is True and report["exit_code"] == 0 and report["error"] is None
    models = {m["model"]: m for m in report["models"]}
    assert set(models) == {"add_sub", "pipeline", "scale", "text_len"}
    for model in models.values():
        assert [c["name"] for c in model["checks"]] == ["metadata", "infer", "outputs"]
        assert model["passed"]
    assert models["text_len"]["outputs"]["UPPER"]["first"][0] == "TRITON-DEPLOYER-0"
    load = report["test"]["load"][0]
    assert load["requests"] >= 50 and load["errors"] == {}
    deployment = report["deployment"]
    (container,) = deployment["resources"]
    assert container["kind"] == "container" and container["status"] == "created"
    assert container["data"]["image"] == IMAGE
    assert deployment["endpoint"]["url"] == f"http://127.0.0.1:{container['data']['http_port']}"
    assert deployment["endpoint"]["container"] == f"triton-deployer-{report['name']}"
    assert report["teardown"]["removed"] == [{"kind": "container", "id": container["id"]}]
    assert containers_of(deployment["id"]) == []


def test_deploy_status_logs_teardown(cli, monkeypatch):
    deployed = cli("deploy", REPOS / "add_sub", "--target", "docker", "--name", "dk-steps",
                   "-o", f"image={IMAGE}", "-o", "env=OMP_NUM_THREADS=1,DEPLOYER_TEST=yes",
                   "-o", "args=--log-verbose=0", "-o", "shm_size=128m", "--json")
    assert deployed.code == 0, deployed
    record = deployed.json()
    assert record["status"] == "ready"
    (container,) = containers_of(record["id"])
    assert container.name == "triton-deployer-dk-steps" and container.status == "running"
    assert container.labels["triton-deployer.name"] == "dk-steps"
    assert container.id == record["resources"][0]["id"]
    config = container.attrs
    assert "DEPLOYER_TEST=yes" in config["Config"]["Env"]
    assert config["Config"]["Cmd"][-1] == "--log-verbose=0"
    assert config["HostConfig"]["ShmSize"] == 128 * 1024 * 1024
    (mount,) = config["Mounts"]
    assert mount["Destination"] == "/models" and mount["RW"] is False
    assert all(b[0]["HostIp"] == "127.0.0.1"
               for b in config["HostConfig"]["PortBindings"].values())

    assert [d["name"] for d in cli("list", "--json").json()] == ["dk-steps"]
    assert cli("status", "dk-steps", "--json").json()["live"] is True
    assert cli("test", "dk-steps").code == 0
    logs = cli("logs", "dk-steps")
    assert logs.code == 0 and "Started HTTPService" in logs.out

    import deployer_plugins.docker as target

    lost = [o for o in target.orphans() if o["deployment"] == record["id"]]
    assert lost and lost[0]["name"] == "dk-steps" and lost[0]["status"] == "running"
    assert all(o["deployment"] != record["id"] for o in target.orphans(known=[record["id"]]))
    # the record is lost: 'deployer list --orphans' still finds the container by its label
    state = Path(os.environ["DEPLOYER_STATE_DIR"]) / "deployments" / "dk-steps.json"
    saved = state.read_text()
    state.unlink()
    try:
        found = [o for o in cli("list", "--orphans", "--json").json()["orphans"]
                 if o["tag"] == record["id"]]
        assert found == [{"target": "docker", "kind": "container",
                          "id": "triton-deployer-dk-steps", "tag": record["id"],
                          "remove": "docker rm -f triton-deployer-dk-steps", "name": "dk-steps",
                          "status": "running", "image": IMAGE}]
    finally:
        state.write_text(saved)
    assert not [o for o in cli("list", "--orphans", "--json").json()["orphans"]
                if o["tag"] == record["id"]]

    again = cli("deploy", REPOS / "add_sub", "--target", "docker", "--name", "dk-steps",
                "-o", f"image={IMAGE}")
    assert again.code == 2 and "deployer teardown dk-steps" in one_line_error(again)

    # teardown talks to the engine the deploy recorded, whatever DOCKER_HOST says now
    assert record["resources"][0]["data"]["docker_host"]
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    torn = cli("teardown", "dk-steps", "--json")
    assert torn.code == 0, torn
    assert torn.json()["removed"] == [{"kind": "container", "id": container.id}]
    assert containers_of(record["id"]) == []
    assert cli("teardown", "dk-steps", "--json").json()["found"] is False


def test_missing_image_is_one_line(cli):
    result = cli("run", REPOS / "add_sub", "--target", "docker", "-o",
                 "image=triton-deployer/no-such-image:0.0", "-o", "pull=never")
    assert result.code == 5, result
    line = one_line_error(result)
    assert "image triton-deployer/no-such-image:0.0 is not in the Docker engine" in line
    assert "docker load -i" in line and "build_cpu_image.sh" in line
    assert cli("list", "--json").json() == []


def test_missing_image_that_cannot_be_pulled(cli):
    # no registry is reachable here (and the name does not exist anywhere)
    result = cli("deploy", REPOS / "add_sub", "--target", "docker", "--name", "dk-pull",
                 "-o", "image=127.0.0.1:9/triton-deployer/none:0.0")
    assert result.code == 5, result
    line = one_line_error(result)
    assert "cannot be pulled" in line and "docker load -i" in line
    assert cli("teardown", "dk-pull").code == 0


def test_container_that_exits_at_start(cli, tmp_path):
    repo = crashing_repository(tmp_path / "broken", "weights file is corrupt")
    result = cli("deploy", repo, "--target", "docker", "--name", "dk-broken",
                 "-o", f"image={IMAGE}")
    assert result.code == 3, result
    line = one_line_error(result)
    assert "tritonserver in container triton-deployer-dk-broken cannot serve: " in line
    # the model's error, not the GPU-less noise Triton logs first
    assert "failed to load 'add_sub' version 1: Internal: RuntimeError: weights file is " \
           "corrupt" in line
    assert "CudaDriverHelper" not in result.err
    assert "  | E" in result.err and "model.py(3): initialize" in result.err   # the details
    record = cli("status", "dk-broken", "--json").json()
    assert record["status"] == "failed"
    assert "weights file is corrupt" in cli("logs", "dk-broken").out
    torn = cli("teardown", "dk-broken", "--json")
    assert torn.code == 0 and torn.json()["removed"], torn
    assert containers_of(record["id"]) == []


def test_created_but_not_recorded_is_found_by_label(tmp_path, monkeypatch):
    """A crash between the engine creating the container and its id reaching state."""
    from deployer.api import Deployer
    from deployer.errors import Interrupted
    from deployer.target import DeployContext

    deployer = Deployer(state_dir=tmp_path / "state", progress=lambda _: None)

    def crash(self, resource, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(DeployContext, "update", crash)
    with pytest.raises(Interrupted):
        deployer.deploy(REPOS / "add_sub", "docker", "dk-crash", {"image": IMAGE})
    monkeypatch.undo()
    stored = deployer.store.load("dk-crash")
    (resource,) = stored.resources
    assert resource.status == "creating" and resource.id == "triton-deployer-dk-crash"
    assert len(containers_of(stored.id)) == 1
    torn = deployer.teardown("dk-crash")
    assert torn.removed == [{"kind": "container", "id": "triton-deployer-dk-crash"}]
    assert containers_of(stored.id) == []


def test_a_container_that_took_the_name_is_left_alone(cli):
    squatter = ENGINE.containers.create(IMAGE, ["true"], name="triton-deployer-dk-squat")
    try:
        result = cli("deploy", REPOS / "add_sub", "--target", "docker", "--name", "dk-squat",
                     "-o", f"image={IMAGE}")
        assert result.code == 2, result
        line = one_line_error(result)
        assert "a container named triton-deployer-dk-squat already exists" in line
        assert "docker rm -f triton-deployer-dk-squat" in line
        assert cli("teardown", "dk-squat").code == 0
        squatter.reload()   # still there
    finally:
        squatter.remove(force=True)


@pytest.mark.parametrize("how", ["option", "env"])
def test_engine_down_is_one_line(cli, monkeypatch, how):
    args = ["run", REPOS / "add_sub", "--target", "docker", "-o", f"image={IMAGE}"]
    if how == "option":
        args += ["-o", "docker_host=unix:///nonexistent.sock"]
    else:
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    result = cli(*args)
    assert result.code == 5, result
    line = one_line_error(result)
    assert "cannot reach the Docker engine at unix:///nonexistent.sock" in line
    assert "--target local" in line
    assert cli("list", "--json").json() == []


def test_remote_engine_cannot_share_the_repository(cli):
    result = cli("deploy", REPOS / "add_sub", "--target", "docker",
                 "-o", "docker_host=tcp://build-box.example:2376")
    assert result.code == 2, result
    assert "runs on another machine: it cannot bind-mount" in one_line_error(result)


def test_port_in_use_is_a_usage_error(cli):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("deploy", REPOS / "add_sub", "--target", "docker", "-o", f"image={IMAGE}",
                     "-o", f"http_port={port}")
    assert result.code == 2, result
    assert f"port {port} (http_port) is already in use" in one_line_error(result)


def test_gpus_asked_on_an_engine_without_gpus(cli):
    import glob

    if "nvidia" in (ENGINE.info().get("Runtimes") or {}) or glob.glob("/dev/nvidia*"):
        pytest.skip("this machine has NVIDIA GPUs: the engine may well serve gpus=all")
    result = cli("run", REPOS / "add_sub", "--target", "docker", "-o", f"image={IMAGE}",
                 "-o", "gpus=all")
    assert result.code == 5, result
    line = one_line_error(result)
    assert "asks for GPUs, but the Docker engine has no GPU support" in line
    assert "NVIDIA Container Toolkit" in line


def test_bad_options_are_usage_errors(cli):
    for option, needle in (("gpus=0", "option 'gpus'"), ("env=NOEQUALS", "KEY=VALUE"),
                           ("version=24", "YY.MM"), ("pull=sometimes", "must be one of")):
        result = cli("plan", REPOS / "add_sub", "--target", "docker", "-o", option)
        assert result.code == 2, (option, result)
        assert needle in one_line_error(result)


def test_backend_the_cpu_image_lacks(cli, tmp_path):
    repo = tensorrt_repository(tmp_path / "trt")
    result = cli("deploy", repo, "--target", "docker", "-o", f"image={IMAGE}")
    assert result.code == 2, result
    line = one_line_error(result)
    assert f"needs the tensorrt backend, which image {IMAGE} lacks (it has: ensemble, " \
           "python; through the Python backend it serves: onnxruntime, pytorch)" in line
    assert "NVIDIA's image" in line
    assert cli("list", "--json").json() == []


#: run by the image's own Python in the deployed container: onnxruntime's answer, no Triton
DIRECT_ONNX = """
import json, sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession("/models/net_onnx/1/model.onnx",
                                       providers=["CPUExecutionProvider"])
feeds = json.loads(sys.argv[1])
print(json.dumps([[o.tolist() for o in session.run(None, {
    k: np.asarray(v, dtype=np.float32) for k, v in feed.items()})] for feed in feeds]))
"""


def test_onnx_and_torchscript_through_the_python_backend(cli, tmp_path):
    """The framework repository on the CPU image: ONNX and TorchScript models run through its
    Python backend from a staged copy; the outputs are onnxruntime's own, exactly (computed by
    the image's onnxruntime in the same container, outside Triton), and the PyTorch module's."""
    missing = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"exporting the test models needs {', '.join(missing)} (pip install -r " \
                 "examples/requirements.txt)"
        print(reason)
        pytest.skip(reason)
    import numpy as np
    import torch

    from frameworks import framework_repository, net_module

    def tree(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    repo = framework_repository(tmp_path / "repo")
    before = tree(repo)
    x = [[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]]
    y = [[0.1, 0.2, 0.3], [-1.0, 0.0, 1.0]]
    deployed = cli("deploy", repo, "--target", "docker", "--name", "dk-fw",
                   "-o", f"image={IMAGE}", "--json")
    assert deployed.code == 0, deployed
    record = deployed.json()
    try:
        where = f"through the Python backend, docker image {IMAGE}"
        assert record["endpoint"]["served_by"] == {"net_onnx": f"onnxruntime 1.20 {where}",
                                                   "net_pt": f"torch 2.13 {where}"}
        (container,) = containers_of(record["id"])
        (mount,) = container.attrs["Mounts"]   # the staged copy, not the repository
        assert mount["Source"] == record["resources"][0]["data"]["served"] != str(repo)
        assert mount["RW"] is False

        y10 = (np.float32(10) * np.asarray(y, dtype=np.float32)).tolist()
        code, (out, err) = container.exec_run(
            ["python3", "-c", DIRECT_ONNX, json.dumps([{"x": x, "y": y}, {"x": x, "y": y10}])],
            demux=True)
        assert code == 0, err
        (probs, twice), (mixed, _) = json.loads(out)
        with torch.no_grad():
            out0, out1 = net_module()(torch.tensor(x), torch.tensor(y))
        files = {"sample.json": {"net_onnx": {"x": x, "y": y}, "mixed": {"x": x, "y": y},
                                 "net_pt": {"INPUT__0": x, "INPUT__1": y}},
                 "exact.json": {"net_onnx": {"probs": probs, "twice": twice},
                                "mixed": {"probs": mixed}},
                 "close.json": {"net_pt": {"OUTPUT__0": out0.tolist(),
                                           "OUTPUT__1": out1.tolist()}}}
        for name, doc in files.items():
            (tmp_path / name).write_text(json.dumps(doc))

        result = cli("test", "dk-fw", "--model", "net_onnx", "--model", "mixed",
                     "--sample", tmp_path / "sample.json", "--expect", tmp_path / "exact.json",
                     "--rtol", "0", "--atol", "0", "--json")
        assert result.code == 0, result
        models = {m["model"]: m for m in result.json()["models"]}
        assert {name: [(c["name"], c["passed"]) for c in m["checks"]]
                for name, m in models.items()} == {
            name: [("metadata", True), ("infer", True), ("outputs", True), ("expect", True)]
            for name in ("net_onnx", "mixed")}
        assert models["net_onnx"]["served"] == f"onnxruntime 1.20 {where}"
        assert models["mixed"]["served"] == ""   # an ensemble runs on Triton's own scheduler

        result = cli("test", "dk-fw", "--model", "net_pt", "--sample", tmp_path / "sample.json",
                     "--expect", tmp_path / "close.json", "--rtol", "1e-5", "--atol", "1e-5",
                     "--json")
        assert result.code == 0, result
        (model,) = result.json()["models"]
        assert [(c["name"], c["passed"]) for c in model["checks"]] == [
            ("metadata", True), ("infer", True), ("outputs", True), ("expect", True)]
        assert model["served"] == f"torch 2.13 {where}"
        status = cli("status", "dk-fw")
        assert status.code == 0 and f"served by torch 2.13 {where}" in status.out, status
    finally:
        torn = cli("teardown", "dk-fw", "--json")
    assert torn.code == 0, torn
    assert torn.json()["removed"] == [{"kind": "container", "id": record["resources"][0]["id"]}]
    assert containers_of(record["id"]) == []
    assert tree(repo) == before, "the user's repository was written to"


def test_plan_names_the_container(cli):
    result = cli("plan", REPOS / "add_sub", "--target", "docker", "--name", "dk-plan",
                 "-o", f"image={IMAGE}", "--json")
    assert result.code == 0, result
    (resource,) = result.json()["resources"]
    assert resource["kind"] == "container" and resource["name"] == "triton-deployer-dk-plan"
    assert resource["details"]["image"] == IMAGE


def test_compare_local_and_docker_with_report(cli, tmp_path, tritonserver):
    """Issue 6's end-to-end: local against docker, JSON and the HTML report."""
    report = tmp_path / "r.html"
    result = cli("compare", REPOS / "add_sub", "--target", "local", "--target", "docker",
                 "-o", f"docker.image={IMAGE}", "--requests", "300", "--concurrency", "1",
                 "--concurrency", "4", "--json", "--report", report)
    assert result.code == 0, result
    data = result.json()
    assert data["passed"] and data["sequential"] == ["local", "docker"] and not data["parallel"]
    for target in data["targets"]:
        assert target["passed"] and target["torn_down"], target
        assert target["deploy_seconds"] > 0 and target["throughput_rps"] > 0
        assert target["cost_per_hour"] == 0.0 and target["cost_per_million"] == 0.0
    html = report.read_text()
    assert 'data-chart="throughput"' in html and "local vs docker" in html
    assert cli("list", "--json").json() == []
