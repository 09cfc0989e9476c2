"""The pieces of a local managed online endpoint: a key, a gateway, Triton behind it.

Used by the ``azure-twin`` target and by the tests' fake control plane. Each process is started
detached and tagged (``deployer.server``), so it outlives the CLI command that started it and
teardown finds it by its tag.

The endpoint key is random, made at deploy, and kept only in a file of mode 0600 in the
deployment's work folder (state records the file's path, never the key); teardown removes it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from deployer.errors import DeployFailed


def write_key(path: Path) -> None:
    """A fresh key in a new file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    os.replace(tmp, path)


def read_key(path: Path) -> str:
    return Path(path).read_text().strip()


def read_routes(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"deployments": {}, "traffic": {}}


def write_routes(path: Path, routes: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(routes, indent=2, sort_keys=True))
    os.replace(tmp, path)


def update_routes(path: Path, deployment: str, url: str | None = None,
                  traffic: int | None = None, remove: bool = False) -> dict:
    routes = read_routes(path)
    routes.setdefault("deployments", {})
    routes.setdefault("traffic", {})
    if remove:
        routes["deployments"].pop(deployment, None)
        routes["traffic"].pop(deployment, None)
    if url is not None:
        routes["deployments"][deployment] = url
    if traffic is not None:
        routes["traffic"][deployment] = traffic
    write_routes(path, routes)
    return routes


def start_gateway(work_dir: Path, tag: str, key_file: Path, routes_file: Path,
                  progress: Callable[[str], None], host: str = "127.0.0.1",
                  timeout: float = 30.0) -> tuple[int, str]:
    """Start the gateway on a free port; return (pid, url) once it answers."""
    from deployer import server as proc

    from . import gateway

    if not routes_file.exists():
        write_routes(routes_file, {"deployments": {}, "traffic": {}})
    port_file = work_dir / f"{tag}.port"
    port_file.unlink(missing_ok=True)
    log_path = work_dir / "gateway.log"
    command = [sys.executable, "-m", gateway.__name__, "--host", host, "--port", "0",
               "--key-file", str(key_file), "--routes", str(routes_file),
               "--port-file", str(port_file)]
    pid = proc.start(command, {}, log_path, tag)   # the allow-listed environment only
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        proc._reap(pid)
        if not proc._alive(pid) or time.monotonic() > deadline:
            raise DeployFailed("the rehearsal gateway did not start; last log lines:\n"
                               + proc.tail(log_path), hint=f"full log: {log_path}")
        time.sleep(0.02)
    url = f"http://{host}:{int(port_file.read_text())}"
    proc.wait_ready(url, pid, log_path, timeout, progress, what="gateway",
                    ready_path=gateway.HEALTH_PATH)
    return pid, url


def copy_model(repository, destination: Path) -> Path:
    """The folder a no-code deployment downloads: the repository's files as uploaded (symlinks
    resolved, ``__pycache__`` left out), under a folder named like the repository."""
    target = destination / repository.path.name
    shutil.rmtree(target, ignore_errors=True)
    for rel, source in repository.files():
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, out)
    return target


def start_triton(model_dir: Path, work_dir: Path, tag: str, progress: Callable[[str], None],
                 server_path: str | None = None, host: str = "127.0.0.1",
                 timeout: float = 120.0, log_name: str = "inference-server.log") -> tuple[int, str]:
    """Serve ``model_dir`` as a no-code deployment's Triton does (every model loaded at start,
    the server exits if one fails); return (pid, url) once ready."""
    from deployer import runtime
    from deployer import server as proc

    server = runtime.find_server(server_path, progress, create=True)
    http_port, grpc_port, metrics_port = proc.free_ports(3, host)
    log_path = work_dir / log_name
    command = server.command(
        f"--model-repository={model_dir}", f"--http-address={host}",
        f"--http-port={http_port}", f"--grpc-address={host}", f"--grpc-port={grpc_port}",
        f"--metrics-address={host}", f"--metrics-port={metrics_port}")
    pid = proc.start(command, server.process_env(), log_path, tag)
    url = f"http://{host}:{http_port}"
    proc.wait_ready(url, pid, log_path, timeout, progress, what="the deployment's tritonserver")
    return pid, url
