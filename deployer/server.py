"""Running a ``tritonserver`` process in the background and stopping it for sure.

Every process we start carries ``DEPLOYER_DEPLOYMENT_ID`` in its environment, so teardown can
find it (and its Python-backend stubs) even when its pid was never recorded, and never kills a
stranger that reused a pid.
"""

from __future__ import annotations

import contextlib
import os
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
    """Ports the kernel says are free now (bound together so they differ)."""
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
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def start(command: Sequence[str], env: dict[str, str], log_path: Path, tag: str) -> int:
    """Start ``command`` detached (own session), output to ``log_path``; return its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**env, TAG_ENV: tag}, start_new_session=True, close_fds=True)
    return proc.pid


def tail(path: Path | str, lines: int = 20) -> str:
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


def failure(log_path: Path | str, lines: int = 12) -> tuple[str, str]:
    """``failure_in`` the last lines of a log file."""
    return failure_in(tail(log_path, 400), lines)


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


def wait_ready(url: str, pid: int, log_path: Path, timeout: float,
               progress: Callable[[str], None], what: str = "tritonserver",
               ready_path: str = "/v2/health/ready") -> float:
    """Poll ``url + ready_path`` until 200; fail at once if the process exits. Return seconds."""
    started = time.monotonic()
    last_note = started
    while True:
        try:
            with urllib.request.urlopen(url + ready_path, timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        _reap(pid)
        if not _alive(pid):
            headline, excerpt = failure(log_path)
            raise DeployFailed(f"{what} exited before it was ready: {headline}",
                               hint=f"full log: {log_path}", details=excerpt)
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            headline, excerpt = failure(log_path)
            raise DeployFailed(f"{what} not ready after {timeout:.0f}s (last: {headline})",
                               hint="raise -o startup_timeout=SECONDS, or read the full log: "
                                    + str(log_path), details=excerpt)
        if time.monotonic() - last_note >= 5:
            progress(f"  waiting for {what} to be ready ({elapsed:.0f}s)")
            last_note = time.monotonic()
        time.sleep(0.05)


def all_tagged() -> dict[str, list[int]]:
    """Every live process that carries a deployment tag, by tag."""
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
