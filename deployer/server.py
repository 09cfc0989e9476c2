"""Running a ``tritonserver`` process in the background and stopping it for sure.

Every process we start carries ``DEPLOYER_DEPLOYMENT_ID`` in its environment, so teardown can
find it (and its Python-backend stubs) even when its pid was never recorded, and never kills a
stranger that reused a pid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from .errors import DeployFailed, TeardownIncomplete

TAG_ENV = "DEPLOYER_DEPLOYMENT_ID"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports on ``host`` the kernel says are free now (bound together, then
    released: another process may still take one before the server binds it). Raises OSError
    when ``host`` is not an address of this machine."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether TCP ``port`` on ``host`` cannot be bound now (something listens on it, or the
    address is not ours). Never raises."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


#: variables a process we start inherits from ours; every other one (AWS_*, AZURE_*, GOOGLE_*,
#: tokens, the deployer's own settings) is left out: a model must not read the deployer's
#: credentials, and one that could would work in rehearsal and fail in the cloud
INHERITED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
                       "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                       "NVIDIA_DRIVER_CAPABILITIES", "OMP_NUM_THREADS"})
INHERITED_PREFIXES = ("LC_",)

#: where each log we started a process into began (a log is appended to; older runs' errors
#: are not this run's)
_LOG_STARTS: dict[int, tuple[str, int]] = {}


def inherited(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of ``environ`` (default: ours): :data:`INHERITED` and ``LC_*``."""
    environ = os.environ if environ is None else environ
    return {key: value for key, value in environ.items()
            if key in INHERITED or key.startswith(INHERITED_PREFIXES)}


def start(command: Sequence[str], env: dict[str, str], log_path: Path, tag: str) -> int:
    """Start ``command`` detached (own session), output to ``log_path``; return its pid.

    The one place every process we start gets its environment: the allow-listed part of ours
    (:func:`inherited`), then ``env`` (what we set: library path, ``SAGEMAKER_*``...), then
    the deployment tag ``tag`` (:data:`TAG_ENV`), by which :func:`tagged` and :func:`stop`
    find it and its children. Pass only what you set in ``env``, never a copy of
    ``os.environ``. The log is appended to; :func:`wait_ready` reads it from here on. Raises
    OSError (FileNotFoundError, PermissionError) when ``command`` cannot be run.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = {**inherited(), **env, TAG_ENV: tag}
    with open(log_path, "ab") as log:
        offset = log.tell()
        proc = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=environment, start_new_session=True, close_fds=True)
    _LOG_STARTS[proc.pid] = (str(log_path), offset)
    return proc.pid


def tail(path: Path | str, lines: int = 20) -> str:
    """The last ``lines`` lines of the text file ``path`` (read from its last 64 KiB, bytes
    that are not UTF-8 replaced); "" when the file does not exist."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


#: log lines a tritonserver without a GPU prints, never the cause of a failure
HARMLESS = ("CudaDriverHelper has not been initialized", "Failed to initialize NVML",
            "DCGM unable to start", "Unable to allocate pinned system memory")


def failure_in(text: str, lines: int = 12) -> tuple[str, str]:
    """The most telling error in a Triton log (a model that failed to load, by preference),
    and an excerpt of the error lines, without the status tables and GPU-less noise."""
    shown = [line for line in text.splitlines()
             if line.strip() and line[:1] not in "|+" and not any(h in line for h in HARMLESS)]
    errors = [line for line in shown if line[:1] == "E" and line[1:5].isdigit()]
    telling = [line for line in errors if "failed to load" in line] or errors
    if telling:
        headline = telling[0].split("] ", 1)[-1].strip().strip('"').split("\\n")[0].strip()
    else:
        headline = shown[-1].strip() if shown else ""
    excerpt = errors[-lines:] if errors else shown[-lines:]
    return headline, "\n".join(excerpt)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int) -> bool:
    """Whether process ``pid`` is running: a zombie counts as ended, and one that is our child
    (started by :func:`start`) is reaped first, so it does not linger as one. Never raises."""
    _reap(pid)
    return _alive(pid)


@dataclasses.dataclass(frozen=True)
class LoadError:
    """A model the server cannot load, as its log or its repository index says."""

    model: str
    version: str
    reason: str
    #: the shared library the Python backend stub could not load, when that is the cause
    library: str = ""

    def line(self, what: str) -> str:
        if self.library:
            return (f"{what} cannot serve {self.model!r}: the Python backend stub cannot start "
                    f"({self.reason})")
        version = f" version {self.version}" if self.version else ""
        return f"{what} cannot serve: failed to load {self.model!r}{version}: {self.reason}"

    def hint(self, log: str) -> str:
        if self.library:
            return (f"the stub needs {self.library} on its library path: for the managed "
                    "runtime run 'deployer server install --force' (it finds the libpython of "
                    f"the Python it uses), or install that library; full log: {log}")
        return f"the model is UNAVAILABLE: fix it and deploy again; full log: {log}"


_LOADING = re.compile(r"loading: (\S+?):(\d+)")
_FAILED = re.compile(r"failed to load '([^']+)' version (\d+): (.*)")
_NO_LIBRARY = re.compile(r"triton_python_backend_stub: error while loading shared libraries: "
                         r"([^:\s]+): ([^\"\\]*)")


def _first_line(reason: str) -> str:
    return reason.split("\\n")[0].split("\n")[0].strip().rstrip('"').strip()


def load_error(lines: Sequence[str]) -> LoadError | None:
    """The first sign in Triton log ``lines`` that a model cannot load: a ``failed to load``
    error (``initialize`` raised, a backend missing...) or a Python backend stub that cannot
    start because a shared library is missing (Triton itself would wait for it)."""
    loading = ("", "")
    for line in lines:
        found = _LOADING.search(line)
        if found:
            loading = (found.group(1), found.group(2))
        found = _NO_LIBRARY.search(line)
        if found:
            return LoadError(loading[0] or "?", loading[1],
                             f"{found.group(1)}: {found.group(2).strip()}",
                             library=found.group(1))
        found = _FAILED.search(line)
        if found and line[:1] == "E":
            return LoadError(found.group(1), found.group(2), _first_line(found.group(3)))
    return None


def index_error(url: str) -> LoadError | None:
    """A model that ``POST {url}/v2/repository/index`` says is UNAVAILABLE with a reason
    (other than ``unloaded``); None while none is, or while the HTTP endpoint is not up."""
    request = urllib.request.Request(url + "/v2/repository/index", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            index = json.loads(answer.read() or b"[]")
    except (OSError, ValueError):
        return None
    for model in index if isinstance(index, list) else ():
        reason = _first_line(str(model.get("reason") or ""))
        if model.get("state") == "UNAVAILABLE" and reason and reason != "unloaded":
            return LoadError(str(model.get("name")), str(model.get("version") or ""), reason)
    return None


def answers(url: str) -> bool:
    """Whether GET ``url`` answers 200 within 2 seconds; never raises."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def watch_start(ready: Callable[[], bool], exited: Callable[[], str | None],
                new_lines: Callable[[], list[str]], *, timeout: float,
                progress: Callable[[str], None], what: str, log: Callable[[], str],
                index_url: str | None = None) -> float:
    """Wait until ``ready()``; return the seconds it took. Fail (DeployFailed, exit 3) at once
    when a model cannot load — its load error in the log (``new_lines()``: the log lines
    written since the last call) or UNAVAILABLE with a reason in the repository index at
    ``index_url`` — or when ``exited()`` says the process ended (its description, e.g. "exit
    code 1"), else after ``timeout`` seconds. ``log()`` keeps the full log and says where.

    The one start-up watch for every server we start: local, docker and the twins.
    """
    started = time.monotonic()
    last_note = last_index = started
    seen: list[str] = []

    def fail(error: LoadError | None, message: Callable[[str], str] = str,
             hint: str = "full log: ") -> DeployFailed:
        where = log()
        headline, excerpt = failure_in("\n".join(seen[-400:]))
        if error:
            return DeployFailed(error.line(what), hint=error.hint(where), details=excerpt)
        return DeployFailed(message(headline or "(no log output)"), hint=hint + where,
                            details=excerpt)

    while True:
        if ready():
            return time.monotonic() - started
        seen.extend(new_lines())
        del seen[:-2000]
        error = load_error(seen)
        if error:
            raise fail(error)
        ended = exited()
        if ended is not None:
            seen.extend(new_lines())
            raise fail(load_error(seen), lambda headline: f"{what} exited before it was ready"
                       + (f" ({ended})" if ended else "") + f": {headline}")
        now = time.monotonic()
        if index_url and now - last_index >= 0.5:
            last_index = now
            error = index_error(index_url)
            if error:
                raise fail(error)
        elapsed = now - started
        if elapsed > timeout:
            raise fail(None, lambda headline: f"{what} not ready after {timeout:.0f}s (last: "
                       f"{headline})", "raise -o startup_timeout=SECONDS, or read the full log: ")
        if now - last_note >= 5:
            progress(f"  waiting for {what} to be ready ({elapsed:.0f}s)")
            last_note = now
        time.sleep(0.1)


class LogLines:
    """The complete lines a log file gained since the last call, from where our process
    started writing it (a log is appended to: older runs' errors are not this run's)."""

    def __init__(self, path: Path | str, offset: int = 0):
        self.path, self.offset = str(path), offset

    def __call__(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(4 * 1024 * 1024)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode("utf-8", "replace").splitlines()


def wait_ready(url: str, pid: int, log_path: Path, timeout: float,
               progress: Callable[[str], None], what: str = "tritonserver",
               ready_path: str = "/v2/health/ready", index_url: str | None = "") -> float:
    """Wait for process ``pid`` (started by :func:`start`) to answer ``url + ready_path``;
    fail at once if it exits or a model cannot load (see :func:`watch_start`). ``index_url``
    is Triton's HTTP endpoint for the repository index (default: ``url`` when the ready path
    is Triton's; None: no index). Return seconds. Raises DeployFailed (exit 3) with the log's
    failure headline, its error lines as details and the log's path as the hint."""
    if index_url == "":
        index_url = url if ready_path.startswith("/v2/") else None
    path, offset = _LOG_STARTS.pop(pid, (str(log_path), 0))

    def exited() -> str | None:
        _reap(pid)
        return None if _alive(pid) else ""

    return watch_start(lambda: answers(url + ready_path), exited,
                       LogLines(log_path, offset if path == str(log_path) else 0),
                       timeout=timeout, progress=progress, what=what,
                       log=lambda: str(log_path), index_url=index_url)


def all_tagged() -> dict[str, list[int]]:
    """Every live process that carries a deployment tag (:data:`TAG_ENV`): ``{tag: [pid,
    ...]}``. Processes of other users, whose environment we cannot read, are left out."""
    prefix = f"{TAG_ENV}=".encode()
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                variables = handle.read().split(b"\0")
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        for variable in variables:
            if variable.startswith(prefix) and _alive(int(entry)):
                found.setdefault(variable[len(prefix):].decode(), []).append(int(entry))
    return found


def tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment carries our deployment tag."""
    needle = f"{TAG_ENV}={tag}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read() + b"\0" and _alive(int(entry)):
                    found.append(int(entry))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def _gone(tag: str, pids: list[int], seconds: float) -> bool:
    """Wait up to ``seconds`` for every process tagged ``tag`` to end (reaping our children)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pid in pids:
            _reap(pid)
        if not tagged(tag):
            return True
        time.sleep(0.05)
    return False


def recorded_log(deployment, lines: int = 100) -> str:
    """The last lines of the log of the server a deployment serves from: the newest resource
    with a ``log`` that is not deleted, else the newest one at all (a failed deploy's)."""
    logs = [r for r in deployment.resources if r.data.get("log")]
    live = [r for r in logs if r.status != "deleted"] or logs
    return tail(live[-1].data["log"], lines) if live else ""


def stop(tag: str, grace: float = 10.0) -> bool:
    """Stop every process tagged ``tag``: SIGTERM, then SIGKILL after ``grace`` seconds.

    Returns True if something was running. Raises TeardownIncomplete if a process survives.
    """
    pids = tagged(tag)
    if not pids:
        return False
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    if _gone(tag, pids, grace):
        return True
    for pid in tagged(tag):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if _gone(tag, pids, 5.0):
        return True
    raise TeardownIncomplete(f"processes {tagged(tag)} survived SIGKILL",
                             hint="check them with 'ps', then run teardown again")
