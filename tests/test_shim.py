"""ONNX and TorchScript models on the embedded Triton (deployer/shim.py), on every target that
serves here: the served outputs are the frameworks' own, the user's repository is untouched."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from conftest import Worker, one_line_error, tensorrt_repository

pytestmark = pytest.mark.usefixtures("tritonserver")

X = [[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]]
Y = [[0.1, 0.2, 0.3], [-1.0, 0.0, 1.0]]
ONNX_SERVED = "onnxruntime 1.20 through the Python backend"
TORCH_SERVED = "torch 2.13 through the Python backend"

#: target, its options, the models it serves of the framework repository
CASES = [
    ("local", [], {"net_onnx", "net_pt", "scale", "mixed"}),
    ("sagemaker-twin", ["-o", "default_model=mixed"], {"mixed"}),
    # one archive per top-level model: net_onnx and scale travel inside mixed.tar.gz
    ("sagemaker-twin", ["-o", "mode=multi"], {"net_pt", "mixed"}),
    ("azure-twin", [], {"net_onnx", "net_pt", "scale", "mixed"}),
]
IDS = ["local", "sagemaker-single", "sagemaker-multi", "azure"]


def _needs_torch() -> None:
    missing = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        reason = (f"exporting the test models needs {', '.join(missing)} "
                  "(pip install -r examples/requirements.txt)")
        print(reason)
        pytest.skip(reason)


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path → sha256), folders included as ''."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "" for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def framework_repo(tmp_path_factory):
    _needs_torch()
    from frameworks import framework_repository

    return framework_repository(tmp_path_factory.mktemp("fw") / "repo")


@pytest.fixture(scope="module")
def expected(framework_repo, tmp_path_factory, tritonserver):
    """sample.json, exact.json (onnxruntime's own outputs) and close.json (the PyTorch
    module's), computed outside Triton."""
    import numpy as np
    import torch

    from deployer import runtime
    from frameworks import direct_onnx, net_module

    folder = tmp_path_factory.mktemp("expected")
    sample = {"net_onnx": {"x": X, "y": Y}, "mixed": {"x": X, "y": Y},
              "net_pt": {"INPUT__0": X, "INPUT__1": Y}, "scale": {"IN": Y}}
    # the runtime gets onnxruntime on first use of the shim; direct_onnx runs in its Python
    server = runtime.install(["onnxruntime==1.20.1"])
    python = str(server.root / "bin" / "python")
    onnx_file = framework_repo / "net_onnx" / "1" / "model.onnx"
    probs, twice = direct_onnx(python, onnx_file, {"x": X, "y": Y})
    mixed = direct_onnx(python, onnx_file, {"x": X, "y": (np.float32(10) * np.asarray(
        Y, dtype=np.float32)).tolist()})[0]
    with torch.no_grad():
        out0, out1 = net_module()(torch.tensor(X), torch.tensor(Y))
    files = {"sample.json": sample,
             "exact.json": {"net_onnx": {"probs": probs, "twice": twice},
                            "mixed": {"probs": mixed}},
             "close.json": {"net_pt": {"OUTPUT__0": out0.tolist(), "OUTPUT__1": out1.tolist()}}}
    for name, doc in files.items():
        (folder / name).write_text(json.dumps(doc))
    return folder


@pytest.mark.parametrize("target, options, served", CASES, ids=IDS)
def test_served_outputs_are_the_frameworks_own(cli, framework_repo, expected, target, options,
                                               served):
    before = tree(framework_repo)
    name = f"fw-{target}"
    deployed = cli("deploy", framework_repo, "-t", target, "--name", name, *options, "--json")
    assert deployed.code == 0, deployed
    try:
        exact = sorted(served & {"net_onnx", "mixed"})
        result = cli("test", name, *[a for m in exact for a in ("--model", m)],
                     "--sample", expected / "sample.json", "--expect", expected / "exact.json",
                     "--rtol", "0", "--atol", "0", "--json")
        assert result.code == 0, result
        report = result.json()
        checks = {m["model"]: {c["name"]: c["passed"] for c in m["checks"]}
                  for m in report["models"]}
        assert checks == {m: {"metadata": True, "infer": True, "outputs": True,
                                "expect": True} for m in exact}
        by_model = {m["model"]: m["served"] for m in report["models"]}
        if "net_onnx" in by_model:
            assert by_model["net_onnx"].startswith(ONNX_SERVED), by_model
        assert by_model.get("mixed") == ""   # an ensemble runs on Triton's own scheduler
        if "net_pt" in served:
            result = cli("test", name, "--model", "net_pt", "--sample",
                         expected / "sample.json", "--expect", expected / "close.json",
                         "--json")
            assert result.code == 0, result
            model = result.json()["models"][0]
            assert model["served"].startswith(TORCH_SERVED)
            assert [c["passed"] for c in model["checks"]] == [True, True, True, True]
        status = cli("status", name)
        assert status.code == 0 and ("served by onnxruntime 1.20" in status.out), status
    finally:
        down = cli("teardown", name)
        assert down.code == 0, down
    assert tree(framework_repo) == before, "the user's repository was written to"


def test_a_batch_of_requests_runs_once_and_each_gets_its_own_rows(cli, framework_repo,
                                                                   tmp_path):
    """Dynamic batching hands the shim several requests at once: they run as one batch and
    each answer is that request's rows. Triton is told to wait for 8 rows (the 4 requests'
    1 + 2 + 2 + 3, or 30 s), so the batch forms whatever the machine's speed."""
    import urllib.request

    import numpy as np

    from deployer.triton import KServeClient
    from frameworks import net_module

    repo = tmp_path / "repo"
    shutil.copytree(framework_repo / "net_pt", repo / "net_pt")
    config = repo / "net_pt" / "config.pbtxt"
    config.write_text(config.read_text().replace(
        "dynamic_batching { }", "dynamic_batching { preferred_batch_size: [ 8 ] "
        "max_queue_delay_microseconds: 30000000 }"))
    deployed = cli("deploy", repo, "--name", "batched", "--json")
    assert deployed.code == 0, deployed
    endpoint = deployed.json()["endpoint"]
    sizes = (1, 2, 2, 3)
    rows = [np.random.default_rng(i).normal(size=(n, 4)).astype(np.float32)
            for i, n in enumerate(sizes)]

    def send(i):
        client = KServeClient(endpoint["url"])
        try:
            return client.infer("net_pt", {
                "INPUT__0": rows[i], "INPUT__1": np.zeros((sizes[i], 3), np.float32)})
        finally:
            client.close()

    try:
        threads = [Worker(send, i) for i in range(4)]
        for thread in threads:
            thread.start()
        answers = [thread.result() for thread in threads]  # a failure in one is raised here
        metrics = urllib.request.urlopen(endpoint["metrics"], timeout=10).read().decode()
    finally:
        assert cli("teardown", "batched").code == 0
    import torch

    module = net_module()
    for i, x in enumerate(rows):
        with torch.no_grad():
            want = module(torch.from_numpy(x), torch.zeros(sizes[i], 3))
        np.testing.assert_allclose(answers[i]["OUTPUT__0"], want[0].numpy(), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(answers[i]["OUTPUT__1"], want[1].numpy(), rtol=1e-5)
    counts = {name: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              for name in ("nv_inference_request_success", "nv_inference_exec_count")
              if line.startswith(name + "{") and 'model="net_pt"' in line}
    assert counts == {"nv_inference_request_success": 4, "nv_inference_exec_count": 1}, counts


def test_config_fields_the_shim_does_not_apply_are_warned(cli, framework_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(framework_repo, repo, ignore=shutil.ignore_patterns("mixed", "scale"))
    config = repo / "net_onnx" / "config.pbtxt"
    config.write_text(config.read_text().replace("KIND_CPU", "KIND_GPU") + (
        'optimization { execution_accelerators { gpu_execution_accelerator : '
        '[ { name : "tensorrt" } ] } }\n'
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'))
    result = cli("run", repo, "--model", "net_onnx")
    assert result.code == 0, result
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, result.err
    for field in ("optimization.execution_accelerators", "parameters (intra_op_thread_count)",
                  "instance_group KIND_GPU"):
        assert field in warnings[0], warnings[0]


def test_a_config_that_does_not_match_the_onnx_file_fails_like_triton(cli, framework_repo,
                                                                      tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(framework_repo / "net_onnx", repo / "net_onnx")
    config = repo / "net_onnx" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "y" data_type: TYPE_FP32',
                                                 'name: "y" data_type: TYPE_INT64'))
    result = cli("deploy", repo, "--name", "mismatch")
    assert cli("teardown", "mismatch").code == 0
    assert result.code == 3, result
    assert "configuration expects datatype TYPE_INT64 for input 'y', model provides " \
           "TYPE_FP32" in one_line_error(result)


def test_gpu_only_backends_are_still_refused_before_anything_starts(cli, tmp_path):
    repo = tensorrt_repository(tmp_path / "repo")
    for target in ("local", "sagemaker-twin", "azure-twin"):
        result = cli("validate", repo, "-t", target)
        assert result.code == 2, result
        assert "needs the tensorrt backend" in one_line_error(result)


def test_stage_links_files_and_rewrites_only_the_shimmed_configs(framework_repo, tmp_path):
    from deployer import shim
    from deployer.repository import Repository

    repo = tmp_path / "repo"
    shutil.copytree(framework_repo, repo)
    (repo / "net_pt" / "1" / "model.py").write_text("# the user's own file\n")
    before = tree(repo)
    repository = Repository.load(repo)
    models = shim.stage(repository, tmp_path / "staged", {"python", "ensemble"})
    assert tree(repo) == before, "staging wrote into the repository"
    assert sorted(m.name for m in models) == ["net_onnx", "net_pt"]
    staged = Repository.load(tmp_path / "staged")
    for name, original in repository.models.items():
        copy = staged.models[name]
        assert (copy.inputs, copy.outputs, copy.max_batch_size, copy.versions) == (
            original.inputs, original.outputs, original.max_batch_size, original.versions)
        assert copy.config.dynamic_batching == original.config.dynamic_batching
        assert copy.backend == ("python" if name in ("net_onnx", "net_pt") else
                                original.backend)
    onnx = tmp_path / "staged" / "net_onnx" / "1" / "model.onnx"
    assert onnx.stat().st_ino == (repo / "net_onnx" / "1" / "model.onnx").stat().st_ino
    assert (tmp_path / "staged" / "net_pt" / "1" / "model.py").read_text() == shim.MODEL_PY
    assert (tmp_path / "staged" / "scale" / "config.pbtxt").read_bytes() == \
        (repo / "scale" / "config.pbtxt").read_bytes()


def test_a_config_that_leaves_the_tensors_to_auto_complete_is_refused(cli, framework_repo,
                                                                     tmp_path):
    """Triton's own backends fill in missing inputs/outputs from the file; the shim cannot
    before the server starts, so it says so at validation."""
    repo = tmp_path / "repo"
    shutil.copytree(framework_repo / "net_onnx", repo / "net_onnx")
    config = repo / "net_onnx" / "config.pbtxt"
    config.write_text(config.read_text().split("input [")[0])
    result = cli("validate", repo)
    assert result.code == 2, result
    assert "model 'net_onnx' lists no inputs" in one_line_error(result)


def test_an_update_serves_a_new_staged_copy_and_drops_the_old(cli, framework_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(framework_repo / "net_onnx", repo / "net_onnx")
    assert cli("deploy", repo, "--name", "upd").code == 0
    try:
        first = [r["data"]["served"] for r in cli("status", "upd", "--json").json()["resources"]]
        updated = cli("deploy", repo, "--name", "upd", "--update", "--json")
        assert updated.code == 0, updated
        resources = cli("status", "upd", "--json").json()["resources"]
        live = [r["data"]["served"] for r in resources if r["status"] == "created"]
        assert len(live) == 1 and Path(live[0]).is_dir() and live[0] != first[0]
        assert not Path(first[0]).exists(), "the retired server's staged copy is left"
        assert cli("test", "upd").code == 0
    finally:
        assert cli("teardown", "upd").code == 0
    assert not Path(live[0]).exists()
