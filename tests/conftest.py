from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest

REPOS = Path(__file__).parent / "repos"
EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """Every test gets its own state directory; the runtime cache is shared (it is costly)."""
    monkeypatch.setenv("DEPLOYER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("DEPLOYER_RAISE_ERRORS", raising=False)
    monkeypatch.delenv("DEPLOYER_DISABLE_PLUGINS", raising=False)


@pytest.fixture(scope="session")
def tritonserver():
    """The real tritonserver (the managed runtime is created on first use). Skips with the
    reason when it cannot be had; CI creates it, so nothing is skipped there."""
    from deployer import runtime
    from deployer.errors import DeployerError

    try:
        return runtime.find_server(progress=print)
    except DeployerError as exc:
        pytest.skip(f"no tritonserver: {exc}")


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def json(self):
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out[-800:]!r}, err={self.err[-1500:]!r})"


@pytest.fixture
def cli():
    """Run the CLI in-process: ``cli("run", REPO, "--json")`` → Result(code, out, err)."""
    from deployer.cli import main

    def invoke(*args: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
        return Result(int(code), out.getvalue(), err.getvalue())

    return invoke


def onnx_repository(root: Path) -> Path:
    """A repository whose one model needs the ONNX Runtime backend (which the embedded and the
    CPU Docker Triton lack)."""
    (root / "resnet" / "1").mkdir(parents=True)
    (root / "resnet" / "1" / "model.onnx").write_bytes(b"onnx")
    (root / "resnet" / "config.pbtxt").write_text(
        'name: "resnet"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 1\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [3] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]\n')
    return root


def crashing_repository(root: Path, message: str) -> Path:
    """A copy of the add_sub repository whose model raises ``message`` in ``initialize``, so
    the server that loads it exits at start."""
    import shutil

    shutil.copytree(REPOS / "add_sub", root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "add_sub" / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        f"        raise RuntimeError({message!r})\n")
    return root


def one_line_error(result: Result) -> str:
    """The error line of a failed command; asserts there is no traceback."""
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.err
    return lines[0]


def pytest_sessionfinish(session, exitstatus):
    """In CI every part is started, so a skipped test is a failure, not a pass."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") == "true" and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; every part must run in CI",
                            red=True)
        session.exitstatus = 1
