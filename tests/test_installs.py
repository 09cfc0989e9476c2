"""Fresh installs, as a new user makes them: the base package, each extra alone, ``[all]``,
``[sagemaker]`` beside the SageMaker Python SDK v2, and the README's ``[all]`` install on every
CPython 3.10-3.13 this machine has.

Each install is a new virtual environment (made by that interpreter's ``venv``, with its own
pip) around its own copy of the source tree, so concurrent editable builds never share a
folder. They are built in the background, a few at a time (pip's wheel cache is warm after
.ci/run), while the tests drive the installed ``deployer`` of the ones already built. Only PyPI
is contacted (pip; the managed runtime of a Python seen for the first time).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: what `pip install -e .` and the quickstart need from the source tree
SOURCES = ("pyproject.toml", "README.md", "deployer", "plugins", "examples")
PIP = ("-m", "pip", "install", "--disable-pip-version-check", "-q")
WORKERS = 3  # pip waits on the index and the disk as much as on the CPU
QUICKSTART = ("run", "examples/add_sub/models", "--sample", "examples/add_sub/sample.json",
              "--expect", "examples/add_sub/expect.json")
SAGEMAKER_PLAN = ("plan", "examples/add_sub/models", "-t", "sagemaker", "--json",
                  "-o", "role=arn:aws:iam::123456789012:role/SM", "-o", "bucket=b",
                  "-o", "region=us-east-1")
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
#: the GPU image of the default instance type (ml.g4dn.xlarge), from an SDK's image map
TRITON_IMAGE = re.compile(
    r"^763104351884\.dkr\.ecr\.us-east-1\.amazonaws\.com/sagemaker-tritonserver:\d+\.\d+-py3$")
CLOUDS = ("docker", "sagemaker", "azure", "vertex")  # the built-in targets that need an extra
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One install: which interpreter, what is pip-installed, which clouds become usable."""

    name: str
    python: str
    requirements: tuple[str, ...]
    usable: tuple[str, ...]
    #: how the SageMaker image map gets there: "sagemaker-core 2" or "sdk v2"
    image_map: str | None = None


@dataclasses.dataclass
class Install:
    spec: Spec
    src: Path
    venv: Path
    seconds: float

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


# -- interpreters -------------------------------------------------------------------------

PROBE = ("import ensurepip, json, sys, venv; print(json.dumps([sys.implementation.name, "
         "'%d.%d' % sys.version_info[:2], sys.executable]))")


def _candidates(version: str) -> list[str]:
    """pyenv builds (newest patch first), then python3.X on PATH, then Debian's."""
    def patch(path: Path) -> int:
        tail = path.parent.parent.name.split(".")[-1]
        return int(tail) if tail.isdigit() else -1

    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(pyenv.glob(f"{version}.*/bin/python{version}"), key=patch, reverse=True)
    return [str(p) for p in found] + [shutil.which(f"python{version}") or "",
                                      f"/usr/bin/python{version}"]


def find_python(version: str) -> tuple[str | None, str]:
    """A CPython ``version`` with venv and ensurepip, or None and why not."""
    why = []
    for candidate in dict.fromkeys(c for c in _candidates(version) if c):
        if not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run([candidate, "-c", PROBE], capture_output=True, text=True,
                               timeout=60, env=_clean_env())
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            why.append(f"{candidate}: {last}")
            continue
        impl, got, executable = json.loads(probe.stdout)
        if impl == "cpython" and got == version:
            return executable, ""
        why.append(f"{candidate}: {impl} {got}")
    return None, (f"no CPython {version} with venv on this machine (looked in ~/.pyenv/versions, "
                  f"python{version} on PATH, /usr/bin/python{version}"
                  + (f"; {'; '.join(why)}" if why else "") + "): .ci/run installs it")


def _runner_python() -> str:
    """The interpreter this test session's environment was made from."""
    return getattr(sys, "_base_executable", None) or sys.executable


# -- processes ----------------------------------------------------------------------------

def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any virtualenv, credentials or deployer settings (except the
    shared runtime cache), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "AZURE_", "DEPLOYER_", "PYTHON", "CONDA"))
           and k not in ("VIRTUAL_ENV", "PYTEST_CURRENT_TEST")}
    if "DEPLOYER_CACHE_DIR" in os.environ:
        env["DEPLOYER_CACHE_DIR"] = os.environ["DEPLOYER_CACHE_DIR"]
    env.update(extra)
    return env


def _run(args, *, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run in its own process group; at the timeout, SIGTERM the group (the deployer tears
    down on it), then SIGKILL, and fail."""
    proc = subprocess.Popen([str(a) for a in args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        raise AssertionError(f"{args} did not finish within {timeout}s:\n{out[-2000:]}\n"
                             f"{err[-4000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _build(spec: Spec, python: str, root: Path) -> Install:
    """A fresh venv from ``python`` with ``spec.requirements`` pip-installed in a copy of the
    source tree; raises with pip's output when the install fails."""
    started = time.monotonic()
    src, venv = root / "src", root / "venv"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    env = _clean_env()
    for args in ([python, "-m", "venv", venv], [venv / "bin" / "python", *PIP, *spec.requirements]):
        done = _run(args, cwd=src, env=env, timeout=1200)
        assert done.returncode == 0, (f"{spec.name}: {' '.join(map(str, args))} exited "
                                      f"{done.returncode}:\n{done.stdout[-3000:]}\n"
                                      f"{done.stderr[-6000:]}")
    return Install(spec, src, venv, round(time.monotonic() - started, 1))


# -- the installs -------------------------------------------------------------------------

def _specs(runner: str) -> list[Spec]:
    extras = [Spec("base", runner, ("-e", "."), ()),
              Spec("docker", runner, ("-e", ".[docker]"), ("docker",)),
              Spec("sagemaker", runner, ("-e", ".[sagemaker]"), ("sagemaker",),
                   "sagemaker-core 2"),
              Spec("azure", runner, ("-e", ".[azure]"), ("azure",)),
              Spec("vertex", runner, ("-e", ".[vertex]"), ("vertex",)),
              Spec("all", runner, ("-e", ".[all]"), CLOUDS, "sagemaker-core 2"),
              # pip install 'sagemaker<3' 'triton-deployer[sagemaker]'
              Spec("sagemaker-beside-sdk-v2", runner, ("sagemaker<3", "-e", ".[sagemaker]"),
                   ("sagemaker", "docker"), "sdk v2")]  # the SDK v2 requires docker
    return extras


class Installs:
    """Builds every install in the background; ``get(name)`` waits for one."""

    def __init__(self, root: Path, wanted: set[str]):
        self.started = time.monotonic()
        self.root = root
        self.pythons = {v: find_python(v) for v in PYTHONS}
        runner, _ = find_python("%d.%d" % sys.version_info[:2])
        runner = runner or _runner_python()
        self.specs = {s.name: s for s in _specs(runner)}
        for version, (python, _) in self.pythons.items():
            if python is None:
                continue
            if os.path.realpath(python) == os.path.realpath(runner):
                self.specs[f"python{version}"] = self.specs["all"]  # the same install
            else:
                self.specs[f"python{version}"] = Spec(f"python{version}", python,
                                                      ("-e", ".[all]"), CLOUDS,
                                                      "sagemaker-core 2")
        self.pool = concurrent.futures.ThreadPoolExecutor(WORKERS, "install")
        self.futures: dict[str, concurrent.futures.Future] = {}
        # in the order the tests use them; only those the selected tests use
        for spec in dict.fromkeys(s for n, s in self.specs.items() if n in wanted):
            self.futures[spec.name] = self.pool.submit(_build, spec, spec.python,
                                                       root / spec.name)

    def get(self, name: str) -> Install:
        if name not in self.specs:
            version = name.removeprefix("python")
            pytest.skip(self.pythons[version][1])
        # the worker's exception (pip's output) is re-raised here; a build that never ends
        # fails at its own timeout inside _run
        return self.futures[self.specs[name].name].result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        built = [f"{name} {f.result().seconds}s" for name, f in self.futures.items()
                 if f.done() and not f.cancelled() and f.exception() is None]
        print(f"\ninstalls: {', '.join(built)}; test file wall time "
              f"{time.monotonic() - self.started:.0f}s")


@pytest.fixture(scope="module")
def installs(tmp_path_factory, request):
    wanted = set()
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.module is sys.modules[__name__] and params:
            wanted.add(params["name"] if "name" in params else f"python{params['version']}")
    built = Installs(tmp_path_factory.mktemp("installs"), wanted)
    try:
        yield built
    finally:
        built.close()


def deployer(install: Install, *args: str, state: Path, timeout: float = 120,
             **env: str) -> subprocess.CompletedProcess:
    """The installed ``deployer``, from the source copy's root (the README's paths)."""
    path = f"{install.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return _run([install.bin("deployer"), *args], cwd=install.src, timeout=timeout,
                env=_clean_env(DEPLOYER_STATE_DIR=str(state), PATH=path,
                               AWS_EC2_METADATA_DISABLED="true",
                               AWS_CONFIG_FILE=str(state / "no-aws-config"),
                               AWS_SHARED_CREDENTIALS_FILE=str(state / "no-aws-credentials"),
                               **env))


def one_line(done: subprocess.CompletedProcess, code: int) -> str:
    """The single line a failed command printed: exit ``code``, nothing else on stderr."""
    assert done.returncode == code, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def quickstart_passes(install: Install, state: Path) -> None:
    """The README's quickstart: deploy → test → teardown on the embedded Triton, exit 0,
    nothing left recorded."""
    done = deployer(install, *QUICKSTART, state=state, timeout=900)
    assert done.returncode == 0, done
    assert "run PASSED" in done.stdout + done.stderr, done
    left = deployer(install, "list", "--json", state=state)
    assert left.returncode == 0 and json.loads(left.stdout) == [], left


def versions(install: Install, *dists: str) -> dict[str, str | None]:
    code = ("import importlib.metadata as m, json, sys\n"
            "def v(d):\n"
            "    try: return m.version(d)\n"
            "    except m.PackageNotFoundError: return None\n"
            "print(json.dumps({d: v(d) for d in sys.argv[1:]}))")
    done = _run([install.bin("python"), "-c", code, *dists], cwd=install.src,
                env=_clean_env(), timeout=60)
    assert done.returncode == 0, done
    return json.loads(done.stdout)


def _builtin_targets() -> set[str]:
    from deployer import plugins

    return {name for name, cls in plugins.load().targets.items()
            if cls.__module__.startswith("deployer_plugins.")}


# -- the tests ----------------------------------------------------------------------------

@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", ["base", "docker", "sagemaker", "azure", "vertex", "all",
                                  "sagemaker-beside-sdk-v2"])
def test_every_install_the_readme_names(installs, name, tmp_path):
    """``deployer targets`` lists every built-in target (an unusable one with what to install);
    an unusable target is one line, exit 5; the quickstart passes on local (and the twins
    rehearse, with and without the SDKs); ``plan -t sagemaker`` works wherever boto3 and an
    image map are installed, and with boto3 alone once given ``-o image=URI``."""
    install = installs.get(name)
    spec = install.spec
    state = tmp_path / "state"

    listed = deployer(install, "targets", "--json", state=state)
    assert listed.returncode == 0, listed
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == _builtin_targets(), rows
    for target, row in rows.items():
        usable = target not in CLOUDS or target in spec.usable
        assert row["available"] is usable, row
        if not usable:
            assert f"pip install 'triton-deployer[{target}]'" in row["reason"], row
    table = deployer(install, "targets", state=state)
    assert table.returncode == 0 and table.stderr == "", table
    assert all(target in table.stdout for target in rows), table.stdout

    for target in CLOUDS:
        if target not in spec.usable:
            line = one_line(deployer(install, "plan", "examples/add_sub/models", "-t", target,
                                     state=state), 5)
            assert f"target {target!r} is unavailable" in line, line
            assert f"pip install 'triton-deployer[{target}]'" in line, line

    quickstart_passes(install, state)
    if name in ("base", "all"):  # the twins rehearse with and without the clouds' SDKs
        for cloud in ("sagemaker", "azure", "vertex"):
            done = deployer(install, "rehearse", "examples/add_sub/models", "-t", cloud,
                            state=state, timeout=600)
            assert done.returncode == 0 and "rehearse PASSED" in done.stdout + done.stderr, done

    if spec.image_map:
        found = versions(install, "sagemaker-core", "sagemaker", "boto3")
        assert found["boto3"], found
        if spec.image_map == "sdk v2":  # pip chose sagemaker-core 1.x, which has no image map
            assert found["sagemaker"].startswith("2."), found
            assert found["sagemaker-core"].startswith("1."), found
        else:
            assert found["sagemaker-core"].startswith("2.") and found["sagemaker"] is None, found
        planned = deployer(install, *SAGEMAKER_PLAN, state=state, **FAKE_AWS)
        assert planned.returncode == 0, planned
        model = next(r for r in json.loads(planned.stdout)["resources"] if r["kind"] == "model")
        assert TRITON_IMAGE.match(model["details"]["image"]), model

    if name == "docker":
        # boto3 alone (no image map): a line saying to pass -o image=URI, which then works
        done = _run([install.bin("python"), *PIP, "boto3"], cwd=install.src,
                    env=_clean_env(), timeout=600)
        assert done.returncode == 0, done
        line = one_line(deployer(install, *SAGEMAKER_PLAN, state=state, **FAKE_AWS), 5)
        assert "no SageMaker Triton image map" in line and "-o image=URI" in line, line
        uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-triton:24.09-py3"
        planned = deployer(install, *SAGEMAKER_PLAN, "-o", f"image={uri}", state=state,
                           **FAKE_AWS)
        assert planned.returncode == 0, planned
        assert uri in planned.stdout, planned


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("version", PYTHONS)
def test_quickstart_on_every_python(installs, version, tmp_path):
    """The README's install (``pip install -e '.[all]'``) in a fresh venv of this CPython,
    then its quickstart, pass; every target is listed and usable."""
    install = installs.get(f"python{version}")
    state = tmp_path / "state"
    ran = _run([install.bin("python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
               cwd=install.src, env=_clean_env(), timeout=60)
    assert ran.stdout.strip() == version, ran
    listed = deployer(install, "targets", "--json", state=state)
    assert listed.returncode == 0, listed
    assert all(row["available"] for row in json.loads(listed.stdout)), listed.stdout
    quickstart_passes(install, state)
