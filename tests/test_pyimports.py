"""What a Python model may import in a cloud's Triton image (deployer/pyimports.py): the static
check before any cloud call, EXECUTION_ENV_PATH archives, and the twins' guard on the real
tritonserver."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from deployer import pyimports, triton
from deployer.errors import DeployFailed, ExitCode, ValidationError
from deployer.repository import Repository

from conftest import one_line_error

REPOS = Path(__file__).resolve().parent / "repos"
SAGEMAKER = "SageMaker's Triton image 24.09"
IMAGE = pyimports.Image("3.10", SAGEMAKER)
OURS = f"{sys.version_info[0]}.{sys.version_info[1]}"

ENV_PARAMETER = """
parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "%s" } }
"""
#: what bin/activate of a relocatable environment does (conda-pack's sets CONDA_PREFIX alike)
ACTIVATE = """\
# relocatable: the environment is wherever this file is
VIRTUAL_ENV="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV
PATH="$VIRTUAL_ENV/bin:$PATH"
export PATH
unset PYTHONHOME
"""
TINY = '"""A package the image does not have."""\n\n\ndef double(x):\n    return x * 2\n'


def copy_models(destination: Path, *names: str, source: str = "pyimports") -> Path:
    for name in names:
        shutil.copytree(REPOS / source / name, destination / name)
    return destination


def add_model(root: Path, name: str, model_py: str, extra_config: str = "") -> Path:
    """A copy of add_sub named ``name`` whose model.py is ``model_py``."""
    folder = root / name
    shutil.copytree(REPOS / "add_sub" / "add_sub", folder)
    config = (folder / "config.pbtxt").read_text().replace('"add_sub"', f'"{name}"')
    (folder / "config.pbtxt").write_text(config + extra_config)
    (folder / "1" / "model.py").write_text(model_py)
    return folder


def refused(repository: Path, python: str = "3.10") -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        pyimports.check(Repository.load(repository), python, SAGEMAKER)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "\n" not in str(caught.value)
    return caught.value


# -- the image's standard library ----------------------------------------------------------

def test_stdlib_follows_the_image_python():
    names, notes = pyimports.stdlib(OURS)
    assert names == frozenset(sys.stdlib_module_names) and notes == {}
    names, notes = pyimports.stdlib("3.10")
    assert "tomllib" not in names and notes["tomllib"] == "new in Python 3.11"
    assert {"json", "importlib", "distutils", "imp"} <= names
    names, notes = pyimports.stdlib("3.12")
    assert "distutils" not in names and "imp" not in names and "tomllib" in names
    assert notes["distutils"] == "removed from the standard library in Python 3.12"


# -- the static check ------------------------------------------------------------------------

def test_check_passes_what_the_image_has():
    assert pyimports.check(Repository.load(REPOS / "add_sub"), "3.10", SAGEMAKER) == {}
    # its own folder's modules (beside model.py and beside config.pbtxt), an optional import,
    # one for type checkers only
    helpers = Repository.load(REPOS / "pyimports")
    models = pyimports.python_models(helpers)
    assert [m.name for m in models] == ["helpers", "torch_model"]
    assert pyimports.problems(helpers.models["helpers"], IMAGE) == []


def test_check_refuses_an_import_the_image_lacks():
    error = refused(REPOS / "pyimports")
    path = REPOS / "pyimports" / "torch_model" / "1" / "model.py"
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1)
                if 'import_module("torch")' in text)
    assert str(error) == (
        f"{path}:{line}: model 'torch_model' imports 'torch', which {SAGEMAKER} (Python 3.10) "
        "does not have (add an EXECUTION_ENV_PATH archive (conda-pack) with it, or drop the "
        "import)")


def test_check_follows_the_model_folder_files(tmp_path):
    repo = copy_models(tmp_path / "repo", "helpers")
    (repo / "helpers" / "1" / "arith.py").write_text(
        "import numpy as np\nimport requests.adapters\n\n\ndef add(a, b):\n    return a + b\n")
    (repo / "helpers" / "shared_code.py").write_text("from yaml import safe_load\n")
    error = refused(repo)
    assert str(error).startswith(f"{repo / 'helpers' / 'shared_code.py'}:1: model 'helpers' "
                                 f"imports 'yaml', which {SAGEMAKER} (Python 3.10) does not have")
    assert error.details == (f"{repo / 'helpers' / '1' / 'arith.py'}:2: model 'helpers' imports "
                             f"'requests', which {SAGEMAKER} (Python 3.10) does not have")


def test_check_knows_the_image_python(tmp_path):
    add_model(tmp_path / "repo", "old", "import imp\nimport numpy\n")
    pyimports.check(Repository.load(tmp_path / "repo"), "3.10", SAGEMAKER)
    error = refused(tmp_path / "repo", "3.12")
    assert "model 'old' imports 'imp', which" in str(error)
    assert "(Python 3.12) does not have: removed from the standard library in Python 3.12" \
        in str(error)
    assert "(use what Python 3.12 has instead, or add an EXECUTION_ENV_PATH" in str(error)
    add_model(tmp_path / "new", "new", "import tomllib\n")
    assert "'tomllib', which" in str(refused(tmp_path / "new", "3.10"))
    pyimports.check(Repository.load(tmp_path / "new"), "3.12", SAGEMAKER)


def test_check_skips_models_the_python_backend_does_not_serve_in_the_cloud(tmp_path):
    from deployer import shim

    repo = tmp_path / "repo"
    (repo / "net" / "1").mkdir(parents=True)
    (repo / "net" / "1" / "model.onnx").write_bytes(b"not read")
    (repo / "net" / "config.pbtxt").write_text(
        'name: "net"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n')
    # the shim's staged copy: a Python model here, onnxruntime in the cloud
    staged = tmp_path / "staged"
    shim.stage(Repository.load(repo), staged, {"python"})
    assert "import onnxruntime" in (staged / "net" / "1" / "model.py").read_text()
    for folder in (repo, staged):
        assert pyimports.python_models(Repository.load(folder)) == []
        assert pyimports.check(Repository.load(folder), "3.10", SAGEMAKER) == {}


def test_check_is_one_line_for_a_model_that_does_not_parse(tmp_path):
    add_model(tmp_path / "repo", "broken", "def f(:\n")
    error = refused(tmp_path / "repo")
    assert str(error).startswith(f"{tmp_path / 'repo' / 'broken' / '1' / 'model.py'}:1: "
                                 "does not parse")


# -- EXECUTION_ENV_PATH ------------------------------------------------------------------------

def build_env(archive: Path, python: str, *, numpy_from: Path | None = None,
              activate: bool = True, interpreter: str = sys.executable) -> Path:
    """A venv-style relocatable environment packed as ``archive``: bin/activate, a python3
    link to ``interpreter``, pyvenv.cfg, and in lib/python<python>/site-packages the package
    ``tinypkg`` and numpy (links to ``numpy_from``'s, the runtime's: the archive stays small)."""
    tree = archive.parent / (archive.name + ".tree")
    site = tree / "lib" / f"python{python}" / "site-packages"
    (site / "tinypkg").mkdir(parents=True)
    (site / "tinypkg" / "__init__.py").write_text(TINY)
    (tree / "bin").mkdir()
    if activate:
        (tree / "bin" / "activate").write_text(ACTIVATE)
    real = os.path.realpath(interpreter)
    for name in ("python", "python3"):
        (tree / "bin" / name).symlink_to(real)
    (tree / "pyvenv.cfg").write_text(f"home = {os.path.dirname(real)}\n"
                                     "include-system-site-packages = false\n")
    if numpy_from is not None:
        for name in ("numpy", "numpy.libs"):
            if (numpy_from / name).exists():
                (site / name).symlink_to(numpy_from / name)
    else:
        (site / "numpy").mkdir()
        (site / "numpy" / "__init__.py").write_text("")
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(tree.rglob("*")):
            tar.add(path, str(path.relative_to(tree)), recursive=False)
    shutil.rmtree(tree)
    return archive


ENV_MODEL = """\
import numpy as np
import tinypkg
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", tinypkg.double(in0 + in1).astype(np.float32)),
                pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(np.float32)),
            ]))
        return responses
"""


def test_an_execution_env_brings_its_packages(tmp_path):
    folder = add_model(tmp_path / "repo", "tiny", ENV_MODEL,
                       ENV_PARAMETER % "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    build_env(folder / "env.tar.gz", "3.10")
    envs = pyimports.check(Repository.load(tmp_path / "repo"), "3.10", SAGEMAKER)
    assert envs["tiny"].python == "3.10" and {"tinypkg", "numpy"} <= envs["tiny"].modules
    # the environment replaces the image's packages: what it lacks is refused
    (folder / "1" / "model.py").write_text(ENV_MODEL + "import filelock\n")
    assert "imports 'filelock', which neither its env.tar.gz nor " \
        f"{SAGEMAKER} (Python 3.10) has" in str(refused(tmp_path / "repo"))
    # the archive travels with the artefact: SageMaker's archives (single and per model) and
    # Azure's upload (the repository's files) carry it
    from deployer_plugins.sagemaker import artefacts

    loaded = Repository.load(tmp_path / "repo")
    assert "tiny/env.tar.gz" in dict(loaded.files())
    assert "tiny/env.tar.gz" in dict(artefacts.single(loaded).members)
    assert "tiny/env.tar.gz" in dict(artefacts.multi(loaded)[0].members)
    # without the parameter, the same model is refused
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().split("\nparameters")[0])
    (folder / "1" / "model.py").write_text(ENV_MODEL)
    assert "imports 'tinypkg', which SageMaker" in str(refused(tmp_path / "repo"))


@pytest.mark.parametrize("value, setup, expected", [
    ("/opt/envs/env.tar.gz", None,
     "EXECUTION_ENV_PATH '/opt/envs/env.tar.gz' is not inside the model folder; SageMaker's "
     "Triton image 24.09 gets the model folder only"),
    ("$$TRITON_MODEL_DIRECTORY/../env.tar.gz", None,
     "EXECUTION_ENV_PATH '$$TRITON_MODEL_DIRECTORY/../env.tar.gz' leaves the model folder"),
    ("$$TRITON_MODEL_DIRECTORY/env.tar.gz", None, "names env.tar.gz, which is not in"),
    ("$$TRITON_MODEL_DIRECTORY/env.tar.gz", "garbage", "env.tar.gz is no readable tar.gz"),
    ("$$TRITON_MODEL_DIRECTORY/env.tar.gz", "no-activate",
     "env.tar.gz has no bin/activate: the Python backend sources it"),
    ("$$TRITON_MODEL_DIRECTORY/env.tar.gz", "python3.12",
     "env.tar.gz holds Python 3.12, SageMaker's Triton image 24.09 (Python 3.10) runs its "
     "Python backend stub with Python 3.10 (pack the environment with Python 3.10, or build "
     "a triton_python_backend_stub for Python 3.12 and put it in the model folder)"),
    ("$$TRITON_MODEL_DIRECTORY/env.zip", "zip", "env.zip is neither a .tar.gz archive"),
])
def test_execution_env_mistakes_are_refused(tmp_path, value, setup, expected):
    folder = add_model(tmp_path / "repo", "m", "import numpy\n", ENV_PARAMETER % value)
    if setup == "garbage":
        (folder / "env.tar.gz").write_bytes(b"not gzip")
    elif setup == "no-activate":
        build_env(folder / "env.tar.gz", "3.10", activate=False)
    elif setup == "python3.12":
        build_env(folder / "env.tar.gz", "3.12")
    elif setup == "zip":
        (folder / "env.zip").write_bytes(b"PK")
    assert expected in str(refused(tmp_path / "repo"))


def test_execution_env_of_another_python_with_its_own_stub(tmp_path):
    folder = add_model(tmp_path / "repo", "m", "import tinypkg\n",
                       ENV_PARAMETER % "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    build_env(folder / "env.tar.gz", "3.12")
    (folder / "triton_python_backend_stub").write_bytes(b"\x7fELF")
    assert pyimports.check(Repository.load(tmp_path / "repo"), "3.10", SAGEMAKER)["m"].python \
        == "3.12"


def test_a_twin_serves_an_environment_with_a_runtime_of_its_python(tmp_path, monkeypatch):
    from deployer import runtime

    monkeypatch.setenv("DEPLOYER_CACHE_DIR", str(tmp_path / "cache"))
    folder = add_model(tmp_path / "repo", "m", "import tinypkg\n",
                       ENV_PARAMETER % "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    build_env(folder / "env.tar.gz", "3.10")
    repository = Repository.load(tmp_path / "repo")
    own = triton.Server(executable=Path("tritonserver"), source="managed", python="3.11.7")
    with pytest.raises(ValidationError) as caught:
        pyimports.rehearsal_server(repository, own, IMAGE)
    assert str(caught.value) == (
        "model 'm': its EXECUTION_ENV_PATH environment holds Python 3.10, the embedded runtime "
        "runs Python 3.11: the rehearsal needs a runtime made with Python 3.10 (create one: "
        "'deployer server install --python python3.10')")
    # a runtime made with Python 3.10 serves it
    root = runtime.runtime_dir("3.10")
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text("")
    (root / runtime.MARKER).write_text(json.dumps({
        "complete": True, "python": "3.10.13", "interpreter": "/x/python3.10", "libpython": "",
        "site_packages": str(root / "lib" / "python3.10" / "site-packages"), "packages": []}))
    said = []
    chosen = pyimports.rehearsal_server(repository, own, IMAGE, said.append)
    assert chosen.root == root and chosen.python == "3.10.13"
    assert said == [f"serving with the Python 3.10 runtime ({root}): the EXECUTION_ENV_PATH "
                    "environment of m needs it"]
    # a server that is not the managed runtime, or none yet: as it is
    named = triton.Server(executable=Path("x"), source="named")
    assert pyimports.rehearsal_server(repository, named, IMAGE) is named
    assert pyimports.rehearsal_server(repository, None, IMAGE) is None


# -- the twins' guard, on the real tritonserver ------------------------------------------------

def serve(server, repository: Path, work: Path, image: pyimports.Image | None,
          roots: list[Path] | None = None):
    """Start ``server`` on ``repository`` the way the twins do (shim, then the guard when
    ``image``, for models under ``roots``: default, the served folder); return (url, tag) once
    ready. DeployFailed when a model cannot load."""
    from deployer.server import free_ports

    folder, _ = triton.serve_folder(server, Repository.load(repository), work / "staged")
    extra = pyimports.guard(server, roots or [folder], image, work) if image else {}
    http, grpc, metrics = free_ports(3)
    command = triton.tritonserver_command(server, folder, host="127.0.0.1", http_port=http,
                                          grpc_port=grpc, metrics_port=metrics)
    tag = f"pyimports-test-{os.getpid()}-{work.name}"
    pid = triton.start(command, server.process_env(extra), work / "server.log", tag)
    try:
        triton.wait_ready(f"http://127.0.0.1:{http}", pid, work / "server.log", 120,
                          lambda _: None)
    except BaseException:
        triton.stop(tag)
        raise
    return f"http://127.0.0.1:{http}", tag


def add_sub(url: str, model: str) -> dict[str, np.ndarray]:
    a = np.array([[1, 2, 3, 4]], dtype=np.float32)
    b = np.array([[0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    return triton.KServeClient(url).infer(model, {"INPUT0": a, "INPUT1": b})


@pytest.fixture
def managed(tritonserver):
    if tritonserver.source != "managed":
        pytest.skip("the guard applies to the managed runtime's stub")
    return tritonserver


def test_guard_refuses_what_the_image_lacks_and_only_that(managed, tmp_path):
    repo = copy_models(tmp_path / "repo", "torch_model")
    # torch is in the embedded runtime: unguarded, the model loads and answers
    url, tag = serve(managed, repo, tmp_path / "plain", None)
    try:
        assert add_sub(url, "torch_model")["OUTPUT0"].tolist() == [[1.5, 2.5, 3.5, 4.5]]
    finally:
        triton.stop(tag)
    # roots may hold the model folders at any depth (a multi-model endpoint's unpacked archives)
    with pytest.raises(DeployFailed) as caught:
        serve(managed, repo, tmp_path / "guarded", IMAGE, roots=[tmp_path])
    assert caught.value.exit_code == ExitCode.DEPLOY_FAILED
    assert ("failed to load 'torch_model' version 1: Internal: ModuleNotFoundError: No module "
            f"named 'torch' in {SAGEMAKER} (Python 3.10): torch_model/1/model.py imports it; "
            "add an EXECUTION_ENV_PATH archive (conda-pack) with it, or drop the import"
            ) in str(caught.value)


def test_guard_lets_the_image_packages_local_modules_and_the_shim_through(managed, tmp_path):
    missing = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"exporting the shim's test models needs {', '.join(missing)}")
    from frameworks import framework_repository

    repo = framework_repository(tmp_path / "repo", with_ensemble=True)
    copy_models(repo, "helpers")
    url, tag = serve(managed, repo, tmp_path / "work", IMAGE)
    try:
        client = triton.KServeClient(url)
        assert add_sub(url, "helpers")["OUTPUT1"].tolist() == [[0.5, 1.5, 2.5, 3.5]]
        x = np.ones((1, 4), dtype=np.float32)
        y = np.ones((1, 3), dtype=np.float32)
        # onnxruntime and torch, imported by the shim's model.py, pass
        assert client.infer("net_onnx", {"x": x, "y": y})["probs"].shape == (1, 3)
        assert client.infer("net_pt", {"INPUT__0": x, "INPUT__1": y})["OUTPUT__0"].shape == (1, 3)
        assert client.infer("mixed", {"x": x, "y": y})["probs"].shape == (1, 3)
    finally:
        triton.stop(tag)


@pytest.mark.parametrize("python", ["runtime", "3.10"])
def test_execution_env_on_the_embedded_server(managed, tmp_path, python):
    """The embedded Python backend (Triton 24.10's) extracts the archive, sources its
    bin/activate and runs the stub in it: the model imports the archive's package. An
    environment of the cloud image's Python (3.10) is served by the runtime made with it."""
    python = ".".join(managed.python.split(".")[:2]) if python == "runtime" else python
    image = pyimports.Image(python, f"the Python {python} test image")
    folder = add_model(tmp_path / "repo", "tiny", ENV_MODEL,
                       ENV_PARAMETER % "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    build_env(folder / "env.tar.gz", python)   # rebuilt below, once the runtime is known
    try:
        server = pyimports.rehearsal_server(Repository.load(tmp_path / "repo"), managed, image)
    except ValidationError as exc:
        pytest.skip(f"no runtime for Python {python} here: {exc}")
    site = sorted(Path(server.root).glob("lib/python3*/site-packages"))[0]
    build_env(folder / "env.tar.gz", python, numpy_from=site, interpreter=server.interpreter)
    checked = pyimports.check(Repository.load(tmp_path / "repo"), python, image.where)
    assert list(checked) == ["tiny"] and checked["tiny"].python == python, checked
    url, tag = serve(server, tmp_path / "repo", tmp_path / "work", image)
    try:
        assert add_sub(url, "tiny")["OUTPUT0"].tolist() == [[3.0, 5.0, 7.0, 9.0]]
    finally:
        triton.stop(tag)
    # inside the environment only its packages exist: pip, in every runtime, is not there
    (folder / "1" / "model.py").write_text("import pip\n" + ENV_MODEL)
    with pytest.raises(DeployFailed) as caught:
        serve(server, tmp_path / "repo", tmp_path / "work2", image)
    assert "ModuleNotFoundError: No module named 'pip'" in str(caught.value)


@pytest.mark.parametrize("target, options", [
    ("sagemaker", ["-o", "region=us-east-1", "-o", "mode=multi", "-o", "bucket=b",
                   "-o", "role=arn:aws:iam::123456789012:role/r"]),
    ("azure", ["-o", "subscription=s", "-o", "resource_group=g", "-o", "workspace=w"]),
    ("sagemaker-twin", ["-o", "mode=multi"]),
    ("azure-twin", []),
])
def test_the_targets_check_imports_before_any_call(cli, target, options):
    result = cli("validate", REPOS / "pyimports", "--target", target, *options)
    assert result.code == ExitCode.USAGE
    line = one_line_error(result)
    assert "model 'torch_model' imports 'torch', which " in line
    assert "(add an EXECUTION_ENV_PATH archive (conda-pack) with it, or drop the import)" in line


@pytest.mark.parametrize("target, options", [("sagemaker", []), ("sagemaker", ["-o", "mode=multi"]),
                                             ("azure", [])])
def test_the_twins_refuse_an_import_the_scan_cannot_see(cli, managed, tmp_path, target, options):
    repo = copy_models(tmp_path / "repo", "torch_model")
    model_py = repo / "torch_model" / "1" / "model.py"
    model_py.write_text(model_py.read_text().replace('"torch"', '"".join(["to", "rch"])'))
    result = cli("rehearse", repo, "--target", target, *options)
    assert result.code == ExitCode.DEPLOY_FAILED, result
    one_line_error(result)
    # (multi: the agent's HTTP 400 body is cut short in the line; the log lines below it say it)
    assert "ModuleNotFoundError: No module named 'torch' in " in result.err
    assert "torch_model/1/model.py imports it; add an EXECUTION_ENV_PATH archive" in result.err
    assert cli("list", "--json").json() == []
