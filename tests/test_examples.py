"""The examples' READMEs, run as written.

Each example README marks the blocks a user types with an HTML comment just before the fence:
``<!-- ci: LABEL -->``. This file reads those blocks (so README and test cannot drift), copies the
example folder without what its ``.gitignore`` lists (a fresh clone), and runs every line with
``/bin/sh -c`` in that copy, where ``python`` and ``deployer`` are this Python and its deployer.

Labels: ``build`` (preprocess/train/export, must exit 0: writes ``model_repository`` (Python
backend), ``model_repository_native`` (TorchScript) and ``model_repository_onnx`` (ONNX)); then
``local``, ``docker`` and the cloud rehearsals ``azure``, ``sagemaker`` (the Python-backend
repository), and ``native-local``, ``native-sagemaker``, ``native-azure`` (the TorchScript and ONNX
repositories, which the embedded Triton serves through its Python backend). Each deploy line must
exit 0 with every model tested and every ``expect`` check passed (``--json`` is appended to read
the report); a model of the TorchScript or ONNX repository must report that it was served by
torch 2.13 or onnxruntime 1.20 through the Python backend, one of the Python-backend repository
that it needed no stand-in.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES

#: example -> (the labels its README must have, the models its repository holds,
#:             the Python packages its scripts import besides numpy)
NATIVE_LABELS = {"native-local", "native-sagemaker", "native-azure"}
EXAMPLE_SPECS = {
    "workshop": ({"build", "local", "docker", "azure", "vertex"} | NATIVE_LABELS,
                 {"workshop_model"},
                 ("torch", "onnx", "pandas")),
    "ncf": ({"build", "local", "docker", "sagemaker", "vertex"} | NATIVE_LABELS,
            {"ncf_food_model", "ncf_fashion_model"}, ("torch", "onnx")),
}
#: a README label -> the target that must be installed for its commands
TARGET_OF_LABEL = {"local": "local", "docker": "docker", "azure": "azure-twin",
                   "sagemaker": "sagemaker-twin", "native-local": "local",
                   "native-sagemaker": "sagemaker-twin", "native-azure": "azure-twin",
                   "vertex": "vertex-twin"}
#: repository folder -> how each of its models must say it was served ("": natively)
SERVED = {"model_repository": "",
          "model_repository_native": "torch 2.13 through the Python backend",
          "model_repository_onnx": "onnxruntime 1.20 through the Python backend"}
BLOCK = re.compile(r"<!--\s*ci:\s*([\w-]+)\s*-->\s*\n```[\w-]*\n(.*?)^```", re.S | re.M)
COMMAND_TIMEOUT = 300


def ci_blocks(example: str) -> dict[str, list[str]]:
    """label -> the command lines of the README blocks marked ``<!-- ci: label -->``."""
    text = (EXAMPLES / example / "README.md").read_text()
    blocks: dict[str, list[str]] = {}
    for label, body in BLOCK.findall(text):
        lines = [line.strip() for line in body.splitlines()]
        blocks.setdefault(label, []).extend(
            line for line in lines if line and not line.startswith("#"))
    return blocks


def _needs(example: str) -> None:
    missing = [m for m in EXAMPLE_SPECS[example][2] if importlib.util.find_spec(m) is None]
    if missing:
        reason = (f"examples/{example} needs {', '.join(missing)}, not importable here "
                  "(pip install -r examples/requirements.txt)")
        print(reason)
        pytest.skip(reason)


def _shims(folder: Path) -> Path:
    """A bin folder whose ``python`` and ``deployer`` are the running interpreter's."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, command in (("python", f"exec {shlex.quote(sys.executable)} \"$@\""),
                          ("deployer", f"exec {shlex.quote(sys.executable)} -m deployer \"$@\"")):
        shim = folder / name
        shim.write_text(f"#!/bin/sh\n{command}\n")
        shim.chmod(0o755)
    return folder


def _gitignored(example: str) -> list[str]:
    lines = (EXAMPLES / example / ".gitignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines
            if line.strip() and not line.startswith("#")]


class Workdir:
    """A fresh copy of an example, and a way to run README lines in it."""

    def __init__(self, example: str, root: Path):
        self.example = example
        self.path = root / example
        shutil.copytree(EXAMPLES / example, self.path,
                        ignore=shutil.ignore_patterns(*_gitignored(example)))
        self.bin = _shims(root / "bin")

    def sh(self, line: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        started = time.monotonic()
        done = subprocess.run(["/bin/sh", "-c", line], cwd=self.path, env=env,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        print(f"[{self.example}] {line}  -> exit {done.returncode} "
              f"in {time.monotonic() - started:.1f}s")
        return done


def _report(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"


@functools.lru_cache(maxsize=None)
def installed_targets() -> frozenset[str]:
    done = subprocess.run([sys.executable, "-m", "deployer", "targets", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, _report(done)
    return frozenset(t["name"] for t in json.loads(done.stdout) if t["available"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """example -> a Workdir in which the README's ``build`` block ran (once per example)."""
    made: dict[str, Workdir] = {}

    def get(example: str) -> Workdir:
        _needs(example)
        if example not in made:
            work = Workdir(example, tmp_path_factory.mktemp(f"example-{example}"))
            for line in ci_blocks(example)["build"]:
                done = work.sh(line)
                assert done.returncode == 0, f"{line}\n{_report(done)}"
            made[example] = work
        return made[example]

    return get


# -- the READMEs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("example", sorted(EXAMPLE_SPECS))
def test_readme_has_the_ci_blocks(example):
    blocks = ci_blocks(example)
    assert set(blocks) == EXAMPLE_SPECS[example][0]
    for label, lines in blocks.items():
        assert lines, f"{example}: block {label!r} is empty"
        for line in lines:
            first = line.split()[0]
            assert first in ("python", "deployer"), f"{example}: {line!r}"
    for label in NATIVE_LABELS:   # both the TorchScript and the ONNX repository
        assert {line.split()[2] for line in blocks[label]} == {
            "model_repository_native", "model_repository_onnx"}, (example, label)
    assert set(SERVED) <= set(_gitignored(example))


# -- build, deploy, test, tear down --------------------------------------------------------------

DEPLOY_CASES = [(example, label) for example, (labels, _, _) in sorted(EXAMPLE_SPECS.items())
                for label in sorted(labels & set(TARGET_OF_LABEL))]


@pytest.mark.usefixtures("tritonserver")
@pytest.mark.parametrize("example, label", DEPLOY_CASES, ids=[f"{e}-{l}" for e, l in DEPLOY_CASES])
def test_readme_deploy_commands(built, example, label):
    target = TARGET_OF_LABEL[label]
    if target not in installed_targets():
        reason = f"{label} target not installed ({target} is not available)"
        print(reason)
        pytest.skip(reason)
    work = built(example)
    models = EXAMPLE_SPECS[example][1]
    for line in ci_blocks(example)[label]:
        assert re.match(r"deployer (run|rehearse) ", line), line
        assert "--expect expect.json" in line, f"{line}: the outputs must be checked"
        done = work.sh(f"{line} --json")
        assert done.returncode == 0, f"{line}\n{_report(done)}"
        report = json.loads(done.stdout)
        assert report["passed"] is True and report["exit_code"] == 0, report
        assert report["target"] == target
        # a SageMaker single-model endpoint serves its default model only; Vertex reaches
        # every model (the others through the redirect header)
        default = re.search(r"default_model=(\S+)", line) if target == "sagemaker-twin" \
            else None
        assert {m["model"] for m in report["models"]} == (
            {default.group(1)} if default else models), line
        served = SERVED[line.split()[2]]
        for model in report["models"]:
            checks = {c["name"]: c["passed"] for c in model["checks"]}
            assert checks == {"metadata": True, "infer": True, "outputs": True,
                              "expect": True}, (line, model)
            assert model["served"].startswith(served) and bool(model["served"]) == bool(
                served), (line, model["model"], model["served"])
        assert report["teardown"]["found"] is True and report["teardown"]["removed"], report
