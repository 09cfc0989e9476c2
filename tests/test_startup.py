"""Starting a server: a model that cannot load fails the deploy at once (exit 3, the model's
reason), on every target; the managed runtime's stub finds its libpython or the runtime is not
created; and no process we start inherits the deployer's credentials.

Deploys here pass a start-up timeout far beyond pytest's (600 s): a test that finishes at all
proves the deploy did not wait for the timeout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from deployer import runtime
from deployer.errors import UsageError
from deployer.triton import TAG_ENV, stop, tagged

from conftest import REPOS, crashing_repository, one_line_error
from test_local import processes_with

NEVER_WAIT = ("-o", "startup_timeout=3000")
SECRETS = {"AWS_SECRET_ACCESS_KEY": "aws-secret-of-the-deployer",
           "AWS_ACCESS_KEY_ID": "AKIADEPLOYER",
           "AZURE_CLIENT_SECRET": "azure-secret-of-the-deployer",
           "GOOGLE_APPLICATION_CREDENTIALS": "/secret/google.json",
           "HF_TOKEN": "hf-token-of-the-deployer"}
IMAGE = "triton-deployer/tritonserver-cpu:24.10-py3"


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def managed(tritonserver) -> runtime.Server:
    if tritonserver.source != "managed":
        pytest.skip(f"the tritonserver in use is {tritonserver.source}, not the managed runtime")
    return tritonserver


# -- a model that cannot load --------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    "--exit-on-error=false",                      # the server stays up: its log says why
    "--exit-on-error=false,--log-error=false",    # and logs no error: the repository index does
], ids=["log", "index"])
def test_model_raising_in_initialize_fails_at_once(cli, tmp_path, tritonserver, args):
    repo = crashing_repository(tmp_path / "broken", "weights file is corrupt")
    result = cli("deploy", repo, "--name", "crash", *NEVER_WAIT, "-o", f"args={args}")
    assert result.code == 3, result
    line = one_line_error(result)
    assert "cannot serve: failed to load 'add_sub' version 1: Internal: RuntimeError: weights " \
           "file is corrupt (the model is UNAVAILABLE" in line
    assert cli("status", "crash", "--json").json()["status"] == "failed"
    record = cli("status", "crash", "--json").json()
    assert cli("teardown", "crash").code == 0
    assert tagged(record["resources"][0]["data"]["tag"]) == []


def _runtime_with_a_stub_that_cannot_load(real: runtime.Server, cache: Path) -> tuple[Path, str]:
    """A copy of the managed runtime (in ``cache``) whose stub is the one for another Python,
    whose libpython the loader cannot find: the bug of a runtime made from a pyenv Python."""
    root = cache / runtime.runtime_dir().name
    root.mkdir(parents=True)
    (root / "bin").symlink_to(real.root / "bin")
    shutil.copytree(real.backend_dir, root / "backends")
    marker = json.loads((real.root / runtime.MARKER).read_text())
    (root / runtime.MARKER).write_text(json.dumps({**marker, "libpython": ""}))
    stubs = Path(marker["site_packages"]) / "pytriton" / "tritonserver" / "python_backend_stubs"
    for version in sorted(p.name for p in stubs.iterdir()):
        shutil.copy2(stubs / version / runtime.STUB, root / "backends" / "python" / runtime.STUB)
        check = runtime.managed_server(root).stub_check()
        if check["missing"].startswith("libpython"):
            return root, check["missing"]
    pytest.skip("every Python backend stub of nvidia-pytriton finds its libpython here")


def test_stub_that_cannot_start_fails_at_once(cli, tmp_path, monkeypatch, tritonserver):
    """The real tritonserver waits for a stub that never connects; the deploy must not."""
    real = managed(tritonserver)
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    _, library = _runtime_with_a_stub_that_cannot_load(real, tmp_path / "cache")
    info = cli("server", "info", "--json").json()
    assert info["managed"]["stub"]["loads"] is False
    assert info["managed"]["stub"]["missing"] == library
    assert f"CANNOT LOAD {library}" in cli("server", "info").out

    result = cli("run", REPOS / "add_sub", "--name", "nostub", *NEVER_WAIT)
    assert result.code == 3, result
    line = one_line_error(result)
    assert f"tritonserver cannot serve 'add_sub': the Python backend stub cannot start " \
           f"({library}: cannot open shared object file" in line
    assert "deployer server install --force" in line
    assert "torn down nostub" in result.out
    assert processes_with(str(tmp_path / "cache")) == []   # neither the server nor a stub


def test_runtime_whose_stub_cannot_load_is_not_created(cli, tmp_path, monkeypatch):
    """Creation runs the stub before it writes the completion marker: a Python whose libpython
    the loader cannot find gives one line naming the library, exit 5, and no runtime."""
    loader = runtime._ldconfig()
    for path in [None, *runtime._candidates()]:
        try:
            found = runtime.describe(path)
        except UsageError:
            continue
        lib = Path(found.libpython)
        if found.problem() is None and lib.name not in loader and \
                not any((Path(d) / lib.name).exists() for d in ("/lib", "/usr/lib", "/lib64")):
            break
    else:
        pytest.skip("no Python here whose libpython is outside the loader's folders")
    hidden = dataclasses.replace(found, libpython="")   # as if we had not found it
    monkeypatch.setattr(runtime, "choose", lambda python=None: hidden)
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))
    result = cli("server", "install")
    assert result.code == 5, result
    line = one_line_error(result)
    assert f"stub cannot load {lib.name}" in line and "the runtime was not created" in line
    assert "--python PATH" in line
    root = runtime.runtime_dir(found.minor)
    assert not (root / runtime.MARKER).exists() and not root.exists()
    assert runtime.managed_server(root) is None


# -- what a started process inherits -------------------------------------------------------------

def env_repository(root: Path, report: Path) -> Path:
    """add_sub whose model writes the environment it sees at initialize to ``report``."""
    shutil.copytree(REPOS / "add_sub", root, ignore=shutil.ignore_patterns("__pycache__"))
    model = root / "add_sub" / "1" / "model.py"
    model.write_text(model.read_text().replace(
        "class TritonPythonModel:\n",
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        import json, os\n"
        f"        with open({str(report)!r}, 'w') as handle:\n"
        "            json.dump(dict(os.environ), handle)\n\n"))
    return root


@pytest.mark.parametrize("target,options", [
    ("local", ()),
    ("sagemaker-twin", ("-o", "role=arn:aws:iam::123456789012:role/R", "-o", "bucket=unused")),
])
def test_servers_and_models_never_see_the_deployers_credentials(cli, tmp_path, monkeypatch,
                                                                 tritonserver, target, options):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    report = tmp_path / "model-saw.json"
    repo = env_repository(tmp_path / "repo", report)
    deployed = cli("deploy", repo, "--target", target, "--name", "env", *options, "--json")
    assert deployed.code == 0, deployed
    process = next(r for r in deployed.json()["resources"] if r["kind"] == "process")
    try:
        server = environ_of(int(process["id"]))
        model = json.loads(report.read_text())
        for seen in (server, model):
            assert not set(SECRETS) & set(seen), sorted(seen)
            assert not any(v in seen.values() for v in SECRETS.values())
            assert seen[TAG_ENV] == process["data"]["tag"]
            assert seen["PATH"] and seen["HOME"] == os.environ["HOME"]
        assert os.pathsep in server["LD_LIBRARY_PATH"] or tritonserver.source != "managed"
        if target == "sagemaker-twin":
            assert server["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] == "add_sub"
    finally:
        assert cli("teardown", "env").code == 0
    assert tagged(process["data"]["tag"]) == []


def test_azure_twin_gateway_inherits_no_credentials(tmp_path, monkeypatch):
    pytest.importorskip("azure.ai.ml")
    from deployer_plugins.azure import twin

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    twin.write_key(tmp_path / "key")
    tag = "h1-gateway-env"
    pid, _ = twin.start_gateway(tmp_path, tag, tmp_path / "key", tmp_path / "routes.json",
                                lambda _: None)
    try:
        seen = environ_of(pid)
        assert not set(SECRETS) & set(seen) and seen[TAG_ENV] == tag
    finally:
        stop(tag)
    assert tagged(tag) == []


# -- docker ----------------------------------------------------------------------------------------

@pytest.fixture
def engine():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        client.images.get(IMAGE)
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine with {IMAGE} ({exc}); .ci/run starts and builds them")
    yield client
    client.close()


def test_docker_model_that_cannot_load_fails_at_once(cli, tmp_path, monkeypatch, engine):
    """The container stays up (exit-on-error off) with its model UNAVAILABLE: the deploy stops
    at once; and the container's environment holds none of the deployer's credentials."""
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    repo = crashing_repository(tmp_path / "broken", "weights file is corrupt")
    result = cli("deploy", repo, "--target", "docker", "--name", "dk-crash", *NEVER_WAIT,
                 "-o", f"image={IMAGE}", "-o", "args=--exit-on-error=false")
    assert result.code == 3, result
    line = one_line_error(result)
    assert "tritonserver in container triton-deployer-dk-crash cannot serve: failed to load " \
           "'add_sub' version 1: Internal: RuntimeError: weights file is corrupt" in line
    record = cli("status", "dk-crash", "--json").json()
    try:
        (container,) = engine.containers.list(
            all=True, filters={"label": f"triton-deployer.deployment={record['id']}"})
        env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
        assert not set(SECRETS) & set(env)
        assert "weights file is corrupt" in cli("logs", "dk-crash").out
    finally:
        assert cli("teardown", "dk-crash").code == 0
