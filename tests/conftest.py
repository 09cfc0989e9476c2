from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPOS = Path(__file__).parent / "repos"
EXAMPLES = Path(__file__).parent.parent / "examples"
#: how long a test waits on a synchronisation point before failing (a hang, not a slow step)
WAIT = 120.0


def pytest_configure(config):
    # a thread that dies of an exception fails the test it ran in, not only warns
    config.addinivalue_line("filterwarnings",
                            "error::pytest.PytestUnhandledThreadExceptionWarning")


class Worker(threading.Thread):
    """A test's worker thread: ``Worker(fn, *args).start()``; :meth:`result` joins it, re-raises
    in the test what ``fn`` raised (an assertion too) and returns what it returned. A join that
    times out fails the test."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str | None = None):
        super().__init__(name=name or getattr(fn, "__name__", "worker"), daemon=True)
        self._fn, self._args = fn, args
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self._fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 - re-raised by result() in the test
            self.error = exc

    def result(self, timeout: float = WAIT) -> Any:
        self.join(timeout)
        if self.is_alive():
            pytest.fail(f"thread {self.name} still running after {timeout:g} s")
        if self.error is not None:
            raise self.error
        return self.value


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT,
             every: float = 0.01) -> Any:
    """Poll ``check`` until it returns something true, and return that; fails the test with
    ``what`` when it is still false after ``timeout`` seconds."""
    give_up = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > give_up:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)
    return found


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


def tensorrt_repository(root: Path) -> Path:
    """A repository whose one model needs the TensorRT backend (GPU only: no Triton here has
    it, and the shim does not stand in for it)."""
    (root / "engine" / "1").mkdir(parents=True)
    (root / "engine" / "1" / "model.plan").write_bytes(b"plan")
    (root / "engine" / "config.pbtxt").write_text(
        'name: "engine"\nplatform: "tensorrt_plan"\nmax_batch_size: 1\n'
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


def like_a_background_job() -> None:
    """``preexec_fn`` for a CLI process: start it with SIGINT ignored, as a shell (or CI)
    starts a background job; the CLI must still stop cleanly on SIGINT."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def one_line_error(result: Result) -> str:
    """The error line of a failed command; asserts there is no traceback."""
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.err
    return lines[0]


def _started_ticks(pid: int) -> int:
    """When a process started, in clock ticks since boot (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _now_ticks() -> int:
    with open("/proc/uptime") as handle:
        return int(float(handle.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def _containers() -> dict[str, dict[str, str]]:
    """Our labelled containers on the local engine (id → labels); {} without an engine."""
    try:
        import docker

        client = docker.from_env(timeout=10)
    except Exception:  # noqa: BLE001 - no SDK or no engine: nothing of ours can run there
        return {}
    try:
        return {c.id: {**c.labels, "name": c.name} for c in client.containers.list(
            all=True, filters={"label": "triton-deployer.deployment"})}
    except Exception:  # noqa: BLE001
        return {}
    finally:
        client.close()


def pytest_sessionstart(session):
    from deployer.server import all_tagged

    session.config._ours_before = (
        _now_ticks(), {pid for pids in all_tagged().values() for pid in pids}, _containers())


def _leftovers(session) -> list[str]:
    """Kill and remove every server, gateway and container this session started that is still
    there; describe each. A tagged process counts as this session's when it started after
    the session did and writes its log under this session's temporary folder."""
    import signal

    from deployer.server import all_tagged

    since, pids_before, containers_before = session.config._ours_before
    basetemp = str(session.config._tmp_path_factory.getbasetemp())
    found = []
    for tag, pids in all_tagged().items():
        for pid in pids:
            if pid in pids_before or _started_ticks(pid) < since:
                continue
            try:
                log = os.readlink(f"/proc/{pid}/fd/1")
            except OSError:
                continue
            if log.startswith("/") and not log.startswith(basetemp):
                continue  # another session's
            cmd = "?"
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            found.append(f"process {pid} ({Path(cmd).name}, tag {tag})")
    ids = set()  # deployments this session recorded and has not torn down
    for path in [*Path(basetemp).glob("**/deployments/*.json"),
                 *Path(basetemp).glob("**/work/*/deployment.json")]:
        with contextlib.suppress(OSError):
            ids.update(re.findall(r'"id": "([0-9a-f]+)"', path.read_text(errors="replace")))
    for cid, labels in _containers().items():
        if cid in containers_before or not (
                labels.get("triton-deployer.deployment") in ids
                or labels.get("triton-deployer.repository", "").startswith(basetemp)):
            continue  # not this session's
        import subprocess

        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
        found.append(f"container {labels['name']}")
    return found


def pytest_sessionfinish(session, exitstatus):
    """In CI every part is started, so a skipped test is a failure, not a pass. And nothing
    the session started may outlive it: a leftover is removed and fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("CI") == "true" and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; every part must run in CI",
                            red=True)
        session.exitstatus = 1
    if hasattr(session.config, "_ours_before"):
        left = _leftovers(session)
        if left:
            if reporter:
                reporter.write_line(f"{len(left)} server(s)/container(s) of this run outlived "
                                    f"it (now removed): {'; '.join(left)}", red=True)
            session.exitstatus = 1


def measured_at(run_cli, name: str, requests: int = 1024, concurrency: int = 512) -> dict:
    """``deployer test NAME --requests N --concurrency C --json`` through a ``run_cli`` that
    returns (code, out, err): the test passed, the load had no error, C in flight and at least
    N measured, its windows' variation given. Returns the load."""
    import json

    code, out, err = run_cli("test", name, "--requests", str(requests), "--concurrency",
                             str(concurrency), "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["passed"], report
    load = report["load"][0]
    assert load["errors"] == {}, load["errors"]
    assert load["concurrency"] == concurrency and load["requests"] >= requests, load
    assert load["processes"] >= 1 and set(load["window_cv"]) == {"throughput", "p50"}, load
    return load
