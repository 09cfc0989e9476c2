"""The rehearsal twin: SageMaker's artefacts and container start-up, on the real tritonserver."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from deployer import cli
from deployer.triton import tagged
from deployer.testing import TargetContract

from deployer_plugins.sagemaker import container

from conftest import crashing_repository, one_line_error

ROOT = Path(__file__).parent
ADD_SUB = ROOT / "repos" / "add_sub"
MULTI = ROOT / "repos" / "multi"

pytestmark = pytest.mark.usefixtures("tritonserver")


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYER_STATE_DIR", str(tmp_path / "state"))
    # the rehearsal needs no AWS at all
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    return tmp_path / "state"


# -- composition: the twin is its own target -----------------------------------------------------

def test_the_twin_is_its_own_target_with_the_clouds_options():
    """A change to the cloud target cannot silently change its twin: the twin is no subclass of
    it, needs none of its SDKs, and accepts exactly its options."""
    from deployer.plugins import load
    from deployer.target import Target

    registry = load()
    cloud = registry.get("sagemaker")
    twin = registry.get(cloud.twin)
    assert twin.name == "sagemaker-twin" and issubclass(twin, Target)
    assert not issubclass(twin, cloud) and not issubclass(cloud, twin)
    assert [(o.name, o.default) for o in twin.options] == \
        [(o.name, o.default) for o in cloud.options]
    assert twin.requires == () and twin.runs_here and twin.twin is None
    assert twin.unavailable_reason() is None


# -- the serve script's start-up checks, on unpacked artefacts -----------------------------------

def _unpacked(tmp_path: Path, *models: str) -> Path:
    root = tmp_path / "opt-ml-model"
    for name in models:
        shutil.copytree(MULTI / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_startup_config_at_the_archive_root(tmp_path):
    root = tmp_path / "opt-ml-model"
    shutil.copytree(ADD_SUB / "add_sub", root)
    with pytest.raises(container.StartupError, match="Incorrect directory structure"):
        container.serve_args(root, {}, multi=False)


def test_startup_several_models_and_no_default(tmp_path):
    root = _unpacked(tmp_path, "add_sub", "text_len")
    with pytest.raises(container.StartupError, match="More than 1 model directory"):
        container.serve_args(root, {}, multi=False)
    args = container.serve_args(root, {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "text_len"}, False)
    assert args[-1] == "--load-model=text_len"


def test_startup_default_model_folder_missing(tmp_path):
    root = _unpacked(tmp_path, "add_sub")
    with pytest.raises(container.StartupError, match="does not exist"):
        container.serve_args(root, {"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME": "nope"}, False)


def test_startup_flags_follow_the_serve_script(tmp_path):
    root = _unpacked(tmp_path, "add_sub")
    args = container.serve_args(root, {"SAGEMAKER_TRITON_LOG_VERBOSE": "false",
                                       "SAGEMAKER_TRITON_THREAD_COUNT": "4"}, False)
    assert "--log-verbose=false" in args and "--sagemaker-thread-count=4" in args
    assert "--model-namespacing=true" in args and args[-1] == "--load-model=add_sub"
    assert not any(a.startswith("--load-model") for a in container.serve_args(root, {}, True))


# -- rehearsal through the CLI -------------------------------------------------------------------

def _cli(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_rehearse_single_model(state, capsys):
    code, out, err = _cli(capsys, "rehearse", str(ADD_SUB), "--target", "sagemaker", "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["target"] == "sagemaker-twin" and report["passed"]
    checks = {c["name"]: c["status"] for m in report["models"] for c in m["checks"]}
    assert checks == {"metadata": "passed", "infer": "passed", "outputs": "passed"}


def test_rehearse_multi_model_loads_each_archive(state, capsys):
    code, out, err = _cli(capsys, "rehearse", str(MULTI), "--target", "sagemaker",
                          "-o", "mode=multi")
    assert code == 0, out + err
    for name in ("add_sub", "pipeline", "text_len"):
        assert f"loading {name}.tar.gz (POST /models)" in err
        assert f"{name:<8}  infer     ok" in out and f"{name:<8}  outputs   ok" in out
        assert f"{name:<8}  metadata  ok" in out   # the twin reads Triton's real metadata


def test_load_request_reaches_each_model_of_a_multi_model_twin(state):
    """The load engine's request, sent as it is, is answered by the TargetModel's route with
    the outputs infer gives."""
    import http.client
    import urllib.parse

    import numpy as np

    from deployer.api import Deployer
    from deployer_plugins.sagemaker.invoke import decode

    inputs = {"INPUT0": np.arange(4, dtype=np.float32).reshape(1, 4),
              "INPUT1": np.ones((1, 4), dtype=np.float32)}
    deployer = Deployer(state_dir=state, progress=lambda _: None)
    record = deployer.deploy(MULTI, "sagemaker-twin", "twin-load", {"mode": "multi"})
    try:
        client = deployer.registry.create("sagemaker-twin", record.options,
                                          lambda _: None).client(record)
        expected = client.infer("add_sub", inputs)
        request = client.load_request("add_sub", inputs)
        assert request.fresh is None and request.url.endswith("/models/add_sub.tar.gz/invoke")
        url = urllib.parse.urlsplit(request.url)
        conn = http.client.HTTPConnection(url.netloc, timeout=60)
        conn.request("POST", url.path, request.body, dict(request.headers))
        answer = conn.getresponse()
        payload = answer.read()
        conn.close()
        assert answer.status == 200, payload
        got = decode(payload, answer.getheader("Content-Type"))
        assert sorted(got) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value)
    finally:
        deployer.teardown("twin-load")


@pytest.mark.parametrize("repo, extra, expected", [
    (ADD_SUB / "add_sub", [], "config.pbtxt at the repository root"),
    (MULTI, [], "More than 1 model directory"),
    (MULTI, ["-o", "default_model=nope"], "does not exist"),
], ids=["config-at-root", "no-default", "model-folder-missing"])
def test_rehearse_catches_container_startup_errors(state, capsys, repo, extra, expected):
    code, out, err = _cli(capsys, "rehearse", str(repo), "--target", "sagemaker", *extra)
    assert code == 2
    assert expected in out + err
    assert not (state / "deployments").exists() or not list((state / "deployments").iterdir())


# -- update: blue/green on this machine -----------------------------------------------------------

def test_update_is_blue_green_and_may_switch_mode(state, cli):
    first = cli("deploy", ADD_SUB, "--target", "sagemaker-twin", "--name", "twin-bg", "--json")
    assert first.code == 0, first
    old = first.json()
    old_folder, old_process = old["resources"]
    updated = cli("deploy", MULTI, "--target", "sagemaker-twin", "--name", "twin-bg",
                  "--update", "-o", "mode=multi", "--json")
    assert updated.code == 0, updated
    new = updated.json()
    assert new["id"] == old["id"] and new["error"] is None
    assert [(r["kind"], r["status"]) for r in new["resources"]] == [
        ("artefacts", "deleted"), ("process", "deleted"),
        ("artefacts", "created"), ("process", "created")]
    new_folder, new_process = new["resources"][2:]
    assert new_process["data"]["tag"] == f"{old['id']}-r1"
    assert new["endpoint"]["mode"] == "multi" and new["endpoint"]["url"] != old["endpoint"]["url"]
    assert tagged(old_process["data"]["tag"]) == [], "the old tritonserver must be gone"
    assert tagged(new_process["data"]["tag"]), "the new tritonserver must run"
    assert not Path(old_folder["id"]).exists() and Path(new_folder["id"]).is_dir()
    assert "loading pipeline.tar.gz (POST /models)" in updated.err
    tested = cli("test", "twin-bg", "--json")
    assert tested.code == 0, tested
    assert sorted(m["model"] for m in tested.json()["models"]) == ["add_sub", "pipeline",
                                                                   "text_len"]
    torn = cli("teardown", "twin-bg", "--json")
    assert torn.code == 0, torn
    assert sorted(r["kind"] for r in torn.json()["removed"]) == ["artefacts", "process"]
    assert tagged(new_process["data"]["tag"]) == [] and not Path(new_folder["id"]).exists()


def test_update_that_fails_keeps_the_old_version_serving(state, cli, tmp_path):
    first = cli("deploy", ADD_SUB, "--target", "sagemaker-twin", "--name", "twin-keep", "--json")
    assert first.code == 0, first
    old = first.json()
    broken = crashing_repository(tmp_path / "broken", "bad")
    failed = cli("deploy", broken, "--target", "sagemaker-twin", "--name", "twin-keep",
                 "--update")
    assert failed.code == 3, failed
    one_line_error(failed)
    status = cli("status", "twin-keep", "--json").json()
    assert status["status"] == "ready" and status["live"] is True
    assert status["error"].startswith("update failed:")
    assert status["endpoint"] == old["endpoint"], "the endpoint must still be the old server"
    assert tagged(old["resources"][1]["data"]["tag"]), "the old tritonserver must still run"
    assert tagged(f"{old['id']}-r1") == [], "the failed new tritonserver must be stopped"
    assert cli("test", "twin-keep").code == 0
    assert cli("teardown", "twin-keep").code == 0
    assert tagged(old["id"]) == []
    assert not list((state / "work" / "twin-keep").glob("sagemaker*"))


class TestSageMakerTwinContract(TargetContract):
    @pytest.fixture
    def target_name(self):
        return "sagemaker-twin"

    @pytest.fixture
    def target_options(self):
        return {"role": "arn:aws:iam::123456789012:role/R", "bucket": "unused"}

    @pytest.fixture
    def repository(self):
        return str(ADD_SUB)


class TestSageMakerTwinMultiContract(TestSageMakerTwinContract):
    @pytest.fixture
    def target_options(self):
        return {"mode": "multi"}

    @pytest.fixture
    def repository(self):
        return str(MULTI)
