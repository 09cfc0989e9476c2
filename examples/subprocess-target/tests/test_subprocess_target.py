"""The example target against the contract suite every built-in target passes, and through
the ``deployer`` command as a user runs it. Needs ``pip install -e examples/subprocess-target``
(the entry point is how the core finds the target) and a tritonserver (the managed runtime is
created on first use)."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path

import pytest

from deployer import triton
from deployer.cli import main
from deployer.testing import TargetContract

MODELS = Path(__file__).parent / "models"

pytestmark = pytest.mark.server


class TestSubprocessContract(TargetContract):
    @pytest.fixture
    def target_name(self):
        return "subprocess"

    @pytest.fixture
    def target_options(self):
        return {}  # the server deployer.triton.find_server picks

    @pytest.fixture
    def repository(self):
        return MODELS


def deployer(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--state-dir", str(tmp_path / "state"), *map(str, args)])
    return int(code), out.getvalue(), err.getvalue()


def test_serves_under_the_tritonserver_the_user_names(tmp_path):
    server = triton.find_server(None, lambda _: None)
    # the user's own tritonserver: a script that notes it ran, then runs a real server
    marker = tmp_path / "ran"
    named = tmp_path / "my-tritonserver"
    exports = "".join(f"export {k}={shlex.quote(v)}${{{k}:+:${k}}}\n"
                      for k, v in server.env.items())
    named.write_text(f"#!/bin/sh\n{exports}echo \"$@\" > {marker}\n"
                     f"exec {shlex.join(server.command())} \"$@\"\n")
    named.chmod(0o755)
    code, out, err = deployer(tmp_path, "run", MODELS, "-t", "subprocess", "-o",
                              f"server={named}", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["passed"] and report["teardown"]["removed"]
    [process] = report["deployment"]["resources"]
    assert process["data"]["server"] == str(named)
    assert f"--model-repository={MODELS}" in marker.read_text()
    assert not triton.tagged(process["data"]["tag"])


@pytest.mark.parametrize("option, message", [
    ("server=/no/such/tritonserver", "tritonserver '/no/such/tritonserver' not found"),
    ("args=--model-repository=/elsewhere", "-o args sets --model-repository"),
])
def test_bad_options_are_one_line_and_create_nothing(tmp_path, option, message):
    code, out, err = deployer(tmp_path, "deploy", MODELS, "-t", "subprocess", "--name", "bad",
                              "-o", option)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
    records = tmp_path / "state" / "deployments"
    assert not records.exists() or not list(records.iterdir())
