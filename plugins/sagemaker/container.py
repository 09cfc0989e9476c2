"""SageMaker's Triton container, replayed on the embedded ``tritonserver``.

``serve_args`` is the logic of the container's ``serve`` script (triton-inference-server/server
``docker/sagemaker/serve``): the same checks, stopping with the same messages, and the same
flags from the same ``SAGEMAKER_*`` variables. ``start`` runs the server with Triton's own
SageMaker frontend (``--allow-sagemaker``: ``/ping``, ``/invocations``, ``/models``...);
``load`` is what SageMaker's agent does on a multi-model endpoint when a TargetModel is first
invoked: ``POST /models`` with the folder it unpacked the archive into. ``shimmed`` gives the
folder the embedded server is actually pointed at: the unpacked artefact, or, when a model needs
a framework that server lacks (ONNX, TorchScript), the shim's staged copy of it. The rehearsal
twin and the tests' runtime emulator both use this module.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from deployer.errors import DeployFailed

#: what SageMaker's agent sends with every multi-model request
TARGET_HEADER = "X-Amzn-SageMaker-Target-Model"


class StartupError(DeployFailed):
    """The container would stop at start-up; the message is the serve script's."""


def serve_args(repository: Path, environment: dict[str, str], multi: bool) -> list[str]:
    """``tritonserver`` arguments the serve script builds, or StartupError where it exits 1.

    ``repository`` plays ``/opt/ml/model`` (single) or the empty ``/tmp/sagemaker`` (multi).
    """
    env = environment.get
    args = [f"--model-repository={repository}",
            f"--model-namespacing={env('SAGEMAKER_TRITON_DISABLE_MODEL_NAMESPACING', 'true')}"]
    for variable, flag in (("SAGEMAKER_TRITON_BUFFER_MANAGER_THREAD_COUNT",
                            "--buffer-manager-thread-count"),
                           ("SAGEMAKER_TRITON_THREAD_COUNT", "--sagemaker-thread-count"),
                           ("SAGEMAKER_TRITON_LOG_INFO", "--log-info"),
                           ("SAGEMAKER_TRITON_LOG_WARNING", "--log-warning"),
                           ("SAGEMAKER_TRITON_LOG_ERROR", "--log-error")):
        if env(variable):
            args.append(f"{flag}={env(variable)}")
    args.append(f"--log-verbose={env('SAGEMAKER_TRITON_LOG_VERBOSE', 'true')}")
    args.append("--backend-config=python,shm-default-byte-size="
                + env("SAGEMAKER_TRITON_SHM_DEFAULT_BYTE_SIZE", "16777216"))
    args.append("--backend-config=python,shm-growth-byte-size="
                + env("SAGEMAKER_TRITON_SHM_GROWTH_BYTE_SIZE", "1048576"))
    if env("SAGEMAKER_TRITON_TENSORFLOW_VERSION"):
        args.append("--backend-config=tensorflow,version="
                    + env("SAGEMAKER_TRITON_TENSORFLOW_VERSION", ""))
    if multi:
        return args
    if (repository / "config.pbtxt").exists():
        raise StartupError(
            "the container would stop: 'ERROR: Incorrect directory structure. Model directory "
            "needs to contain the top level folder' (config.pbtxt at the root of the artefact)",
            hint="the archive root must hold one folder per model: <model>/config.pbtxt")
    default = env("SAGEMAKER_TRITON_DEFAULT_MODEL_NAME")
    if default:
        if not (repository / default).is_dir():
            raise StartupError(
                f"the container would stop: 'ERROR: Directory with provided SAGEMAKER_TRITON_"
                f"DEFAULT_MODEL_NAME {default} does not exist'",
                hint="pass -o default_model= a model folder of the repository")
    else:
        folders = sorted(p.name for p in repository.iterdir() if p.is_dir())
        if not folders:
            raise StartupError("the container would stop: 'ERROR: No model found in model "
                               "repository'")
        if len(folders) > 1:
            raise StartupError(
                "the container would stop: 'ERROR: More than 1 model directory found in model "
                f"repository' ({', '.join(folders)})",
                hint=f"pass -o default_model={folders[0]} (SAGEMAKER_TRITON_DEFAULT_MODEL_NAME)")
        default = folders[0]
    return args + [f"--load-model={default}"]


def pointed_at(args: list[str], folder: Path) -> list[str]:
    """``args`` with ``--model-repository`` naming ``folder`` instead of the artefact's."""
    return [f"--model-repository={folder}" if a.startswith("--model-repository=") else a
            for a in args]


def shimmed(server, folder: Path, destination: Path, progress,
            where: str = "sagemaker rehearsal") -> tuple[Path, dict[str, str]]:
    """What ``server`` is given for the unpacked artefact ``folder`` and how each model that
    needs the shim is served (:func:`deployer.triton.serve_folder`): ``folder`` itself and {}
    when the server has every backend, else the staged copy written to ``destination``. The
    artefact is only read."""
    from deployer import triton
    from deployer.repository import Repository

    return triton.serve_folder(server, Repository.load(folder), destination, progress, where)


def command(server, args: list[str], sagemaker_port: int, http_port: int,
            metrics_port: int | None = None) -> list[str]:
    """The container's ``tritonserver`` line. Unlike the container, HTTP stays on, bound to
    127.0.0.1 only, so the test step can read real model metadata (SageMaker has no route),
    and so do the metrics, when a port is given, for the server's share of the latency."""
    from deployer.triton import tritonserver_command

    return tritonserver_command(server, host="127.0.0.1", http_port=http_port,
                                metrics_port=metrics_port,
                                args=["--allow-sagemaker=true",
                                      f"--sagemaker-port={sagemaker_port}",
                                      "--model-control-mode=explicit", *args])


def start(server, args: list[str], environment: dict[str, str], log_path: Path, tag: str,
          timeout: float, progress) -> dict[str, int]:
    """Start the server like the container; wait for ``/ping``, failing at once when a model
    cannot load. Its environment: the allow-listed part of ours, the runtime's paths and
    ``environment`` (the container's ``SAGEMAKER_*``), never the deployer's credentials.
    Returns pid and ports."""
    from deployer import triton

    sagemaker_port, http_port, metrics_port = triton.free_ports(3)
    pid = triton.start(command(server, args, sagemaker_port, http_port, metrics_port),
                       server.process_env(environment), log_path, tag)
    triton.wait_ready(f"http://127.0.0.1:{sagemaker_port}", pid, log_path, timeout, progress,
                      what="tritonserver (SageMaker frontend)", ready_path="/ping",
                      index_url=f"http://127.0.0.1:{http_port}")
    return {"pid": pid, "sagemaker_port": sagemaker_port, "http_port": http_port,
            "metrics_port": metrics_port}


def request(method: str, url: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 60.0):
    """(status, headers, body) of one HTTP request; never raises for an HTTP error status."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers or {}), err.read()


def load(sagemaker_port: int, target_model: str, folder: Path, timeout: float = 360.0) -> None:
    """Load one unpacked multi-model archive under its TargetModel name, as SageMaker does."""
    body = json.dumps({"model_name": target_model, "url": str(folder)}).encode()
    status, _, answer = request("POST", f"http://127.0.0.1:{sagemaker_port}/models", body,
                                {"Content-Type": "application/json",
                                 TARGET_HEADER: target_model}, timeout)
    if status != 200:
        raise DeployFailed(f"loading {target_model} failed (HTTP {status}): "
                           f"{answer[:300].decode('utf-8', 'replace')}")


def mme_folder(root: Path, target_model: str) -> Path:
    """Where the agent unpacks a TargetModel: ``/opt/ml/models/<hash>/model``."""
    import hashlib

    return root / hashlib.sha256(target_model.encode()).hexdigest()[:32] / "model"
