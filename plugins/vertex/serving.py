"""What a Vertex endpoint is made of, on this machine: the container NVIDIA's image runs, and
a gateway that stands for Vertex's prediction service. The twin and the tests' fake control
plane are built from these pieces.

The container (:func:`start_model_server`): on Vertex, NVIDIA's image runs
``/opt/tritonserver/bin/tritonserver "$@"`` when ``AIP_MODE`` is set (its
``docker/entrypoint.d/99-check-run-aip-mode.sh``), the args being the model's container args
after Vertex expanded ``$(VAR)`` in them (``AIP_STORAGE_URI``: the copy of ``artifact_uri``).
Here the embedded tritonserver serves the same folder with Triton's own Vertex AI frontend
(``--allow-vertex-ai``, the embedded server has it) on a free local port standing for
``AIP_HTTP_PORT``: its predict and health routes, its redirect header, its binary content type
and its start-up rule on the default model are NVIDIA's code, not a copy.

The endpoint (:func:`start_gateway`): :mod:`.gateway`, one process per endpoint, with a token
file (:func:`write_token`) and a routes file (:func:`update_routes`) it reads again whenever
they change. Each process is started detached and tagged (:mod:`deployer.triton`), so it
outlives the command that started it and teardown finds it by its tag.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from deployer import pyimports, triton
from deployer.errors import DeployFailed

from .spec import ARTIFACT_RE, GCR_RE, IMAGE_NAME, IMAGE_PYTHON

#: the Python-backend view of the image the container runs (deployer/pyimports.py)
IMAGE = pyimports.Image(IMAGE_PYTHON, IMAGE_NAME)

#: routes Vertex gives the container (``AIP_PREDICT_ROUTE``, ``AIP_HEALTH_ROUTE``), as its
#: custom-container requirements document them
PREDICT_ROUTE = "/v1/endpoints/{endpoint}/deployedModels/{deployed}:predict"
HEALTH_ROUTE = "/v1/endpoints/{endpoint}/deployedModels/{deployed}"
#: NVIDIA's image serves the Vertex frontend on AIP_HTTP_PORT, 8080 unless the spec names one
DEFAULT_PORT = 8080

#: Triton's Vertex frontend refuses to start without a default model and several ready models
#: (server src/vertex_ai_server.cc, VertexAiAPIServer::Create), or with one that is not ready
SEVERAL_MODELS = ("Expect the model repository contains only a single model if default model "
                  "is not specified")
NOT_LOADED = "Expect the default model '{name}' is loaded"

#: flags of ours: the served folder, the addresses and ports, which frontends run
_OWNED = re.compile(r"^--(model-repository|model-store|vertex-ai-[a-z-]+|allow-[a-z-]+|"
                    r"(http|grpc|metrics|sagemaker)-[a-z-]+)$")


def check_image(image: str) -> str | None:
    """Why Vertex would refuse to pull ``image``, or None: it pulls only from Artifact
    Registry or Container Registry (never ``nvcr.io``, NVIDIA's own registry)."""
    image = (image or "").strip()
    if not image:
        return "the container spec names no image"
    if image.split("/", 1)[0] == "nvcr.io":
        return (f"image {image} is on nvcr.io: Vertex AI pulls only from Artifact Registry "
                "or Container Registry")
    if ARTIFACT_RE.match(image) or GCR_RE.match(image):
        return None
    return (f"image {image} is not in Artifact Registry (REGION-docker.pkg.dev/PROJECT/REPO/"
            "IMAGE) or Container Registry ([REGION.]gcr.io/PROJECT/IMAGE): Vertex AI pulls "
            "from nowhere else")


@dataclasses.dataclass(frozen=True)
class Served:
    """A running container: its tritonserver's ``pid``; ``url``, where its Vertex AI frontend
    listens (``AIP_HTTP_PORT``), with its ``predict`` and ``health`` routes
    (``AIP_PREDICT_ROUTE``, ``AIP_HEALTH_ROUTE``); the ``default_model`` that requests without
    the redirect header reach; and how shimmed models are served (``served_by``)."""

    pid: int
    url: str
    default_model: str
    served_by: dict[str, str]
    predict: str = PREDICT_ROUTE.format(endpoint="rehearsal", deployed="rehearsal")
    health: str = HEALTH_ROUTE.format(endpoint="rehearsal", deployed="rehearsal")
    #: its tritonserver's Prometheus metrics (on 127.0.0.1), "" when unknown
    metrics: str = ""


def expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` replaced by ``env[VAR]`` as Vertex expands container args (Kubernetes
    rules): an unknown name stays as written, ``$$(VAR)`` is the literal ``$(VAR)``."""
    def one(match: re.Match) -> str:
        if match.group(1):
            return f"$({match.group(2)})"
        return env.get(match.group(2), match.group(0))

    return re.sub(r"(\$)?\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def container_env(folder: Path, container: dict, endpoint: str = "rehearsal",
                  deployed: str = "rehearsal") -> dict[str, str]:
    """The variables Vertex sets in the container (``AIP_*``) with the spec's own ``env``;
    ``AIP_STORAGE_URI`` is ``folder``, where the artefact was copied."""
    ports = container.get("ports") or [DEFAULT_PORT]
    port = ports[0]["containerPort"] if isinstance(ports[0], dict) else ports[0]
    aip = {"AIP_MODE": "PREDICTION", "AIP_STORAGE_URI": str(folder), "AIP_HTTP_PORT": str(port),
           "AIP_PREDICT_ROUTE": PREDICT_ROUTE.format(endpoint=endpoint, deployed=deployed),
           "AIP_HEALTH_ROUTE": HEALTH_ROUTE.format(endpoint=endpoint, deployed=deployed)}
    return {**aip, **{str(k): str(v) for k, v in (container.get("env") or {}).items()}}


def parse_args(args: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(``--model-repository``, ``--vertex-ai-default-model``, the other args, passed on to
    tritonserver) from expanded container args; either flag may be ``--flag=V`` or
    ``--flag V``. Flags naming ports, addresses and frontends are dropped: the rehearsal
    chooses its own."""
    repository = default = None
    rest: list[str] = []
    items = iter(args)
    for arg in items:
        flag, eq, value = arg.partition("=")
        if not _OWNED.match(flag):
            rest.append(arg)
            continue
        if not eq:
            value = next(items, "")
        if flag in ("--model-repository", "--model-store"):
            repository = value
        elif flag == "--vertex-ai-default-model":
            default = value
    return repository, default, rest


def _repository_in(folder: Path, container: dict, env: dict[str, str]):
    """The repository the container args name: (its path, the default model flag, the other
    args). DeployFailed for args tritonserver or Vertex would refuse."""
    args = [expand(str(a), env) for a in container.get("args") or []]
    left = [a for a in args if re.search(r"\$\([A-Za-z_]", a)]
    if left:
        raise DeployFailed(f"container arg {left[0]!r} names a variable the container does "
                           "not have", hint="Vertex sets AIP_STORAGE_URI, AIP_HTTP_PORT, "
                                            "AIP_PREDICT_ROUTE and AIP_HEALTH_ROUTE")
    named, default, rest = parse_args(args)
    if not named:
        raise DeployFailed("the container args name no --model-repository: tritonserver "
                           "exits at start", hint="pass --model-repository=$(AIP_STORAGE_URI)")
    path = Path(named)
    if not path.is_absolute() or not path.is_dir():
        raise DeployFailed(f"the container's tritonserver cannot read --model-repository="
                           f"{named}: no such folder in the container",
                           hint="pass --model-repository=$(AIP_STORAGE_URI)")
    return path, default, rest


def _load(path: Path):
    from deployer.errors import ValidationError
    from deployer.repository import Repository

    try:
        return Repository.load(path)
    except ValidationError as exc:
        raise DeployFailed(f"--model-repository={path} is no model repository: {exc.message}",
                           hint="the repository's models must sit at the artefact root "
                                "(gs://.../DIGEST/MODEL/config.pbtxt)") from None


def ready_models(url: str) -> list[str]:
    """The names in Triton's index of READY models (``POST /v2/repository/index``), one
    entry per ready version, as the Vertex frontend reads it."""
    request = urllib.request.Request(url + "/v2/repository/index",
                                     data=json.dumps({"ready": True}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return [entry["name"] for entry in json.loads(answer.read())]


def _frontend_failure(log_path: Path) -> str | None:
    """Triton's own reason its Vertex frontend did not start, from its log."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for line in reversed(text.splitlines()):
        for known in (SEVERAL_MODELS, "Expect the default model"):
            if known in line:
                return line[line.index(known):].strip()
    return None


def start_model_server(folder: Path, container: dict, work_dir: Path, tag: str,
                       progress: Callable[[str], None], server_path: str | None = None,
                       timeout: float = 120.0, log_name: str = "model-server.log") -> Served:
    """Run ``container`` (a Vertex container spec: ``image_uri``, ``args``, ``env``,
    ``ports``) as NVIDIA's image runs on Vertex, with ``folder`` as ``AIP_STORAGE_URI``, on the
    embedded tritonserver (or the one ``server_path`` names), tagged ``tag``, its log in
    ``work_dir / log_name``; return once it is ready and the frontend would have started.

    DeployFailed, nothing left running, when Vertex or the container would fail: an image
    Vertex cannot pull, args naming no readable repository, a folder that is no repository,
    a model that cannot load, and the frontend's default-model rule (Triton's message)."""
    work_dir = Path(work_dir)
    refused = check_image(container.get("image_uri", ""))
    if refused:
        raise DeployFailed(f"Vertex cannot pull the container image: {refused}",
                           hint="push the image to REGION-docker.pkg.dev/PROJECT/REPO and "
                                "pass it as -o image")
    env = container_env(Path(folder).resolve(), container)
    path, named, extra = _repository_in(Path(folder), container, env)
    repository = _load(path)
    server = pyimports.rehearsal_server(
        repository, triton.find_server(server_path, progress, create=True), IMAGE, progress)
    served_folder, served_by = triton.serve_folder(server, repository, work_dir / f"{tag}.staged",
                                                   progress, where="vertex rehearsal")
    http_port, grpc_port, metrics_port, vertex_port = triton.free_ports(4)
    env["AIP_HTTP_PORT"] = str(vertex_port)  # the container's port, here a free local one
    log_path = work_dir / log_name
    frontend = ["--allow-vertex-ai=true", f"--vertex-ai-port={vertex_port}"] + (
        [f"--vertex-ai-default-model={named}"] if named else [])
    command = triton.tritonserver_command(server, served_folder, host="127.0.0.1",
                                          http_port=http_port, grpc_port=grpc_port,
                                          metrics_port=metrics_port, args=extra + frontend)
    guard = pyimports.guard(server, [served_folder], IMAGE, work_dir, progress)
    # AIP_MODE only makes the image's entrypoint run tritonserver: the flags above say the rest
    aip = {k: v for k, v in env.items() if k != "AIP_MODE"}
    pid = triton.start(command, {**server.process_env(guard), **aip}, log_path, tag)
    url = f"http://127.0.0.1:{http_port}"
    vertex = f"http://127.0.0.1:{vertex_port}"
    try:
        triton.wait_ready(url, pid, log_path, timeout, progress,
                          what="the container's tritonserver")
        triton.wait_ready(vertex, pid, log_path, timeout, progress,
                          what="the container's Vertex AI frontend",
                          ready_path=env["AIP_HEALTH_ROUTE"], index_url=None)
        ready = ready_models(url)
    except DeployFailed as exc:
        triton.stop(tag)
        reason = _frontend_failure(log_path)
        if reason is None:
            raise
        raise DeployFailed(f"the container's tritonserver exited: failed to start Vertex AI "
                           f"service: {reason}",
                           hint="name the model requests without a redirect header reach, "
                                "one of the repository's: -o default_model=NAME "
                                "(--vertex-ai-default-model)", details=exc.details) from None
    except (OSError, ValueError, KeyError) as exc:
        triton.stop(tag)
        raise DeployFailed(f"the container's tritonserver did not list its ready models: {exc}",
                           hint=f"full log: {log_path}") from None
    except BaseException:
        triton.stop(tag)
        raise
    chosen = named or ready[0]  # the frontend started: one ready model, or the named one
    return Served(pid, vertex, chosen, served_by, env["AIP_PREDICT_ROUTE"],
                  env["AIP_HEALTH_ROUTE"], f"http://127.0.0.1:{metrics_port}/metrics")


# -- the gateway ---------------------------------------------------------------------------

def write_token(path: Path, lifetime_s: float) -> None:
    """Replace the token file with a fresh random token and its expiry (seconds since the
    epoch) on one line, in a new file readable by its owner only: the gateway accepts that
    token alone from then on (the format of :func:`deployer_plugins.azure.gateway.parse_keys`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{secrets.token_urlsafe(32)} {time.time() + lifetime_s:.3f}\n")
    os.replace(tmp, path)


def read_routes(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"endpoint": None, "deployed": {}, "traffic": {}}


def update_routes(routes_file: Path, endpoint_id: str, deployed_id: str | None = None,
                  url: str | None = None, default_model: str | None = None,
                  traffic: dict | None = None, remove: bool = False) -> dict:
    """Edit the gateway's routes file, JSON ``{"endpoint": ID, "deployed": {DEPLOYED_ID:
    {"url": FRONTEND_URL, "default_model": NAME, "predict": ROUTE, "health": ROUTE}},
    "traffic": {DEPLOYED_ID: PERCENT}}``: the endpoint id it answers for; a deployed model's
    container (its Vertex frontend's ``url`` and routes, ``default_model``) or,
    with ``remove``, its removal (route and traffic); ``traffic``, the whole new split.
    Written whole (replace), so the gateway never reads half a file; returns the routes."""
    routes = read_routes(routes_file)
    routes["endpoint"] = str(endpoint_id)
    routes.setdefault("deployed", {})
    routes.setdefault("traffic", {})
    if deployed_id is not None and remove:
        routes["deployed"].pop(str(deployed_id), None)
        routes["traffic"].pop(str(deployed_id), None)
    elif deployed_id is not None and url is not None:
        routes["deployed"][str(deployed_id)] = {
            "url": url, "default_model": default_model, "predict": Served.predict,
            "health": Served.health}
    if traffic is not None:
        routes["traffic"] = {str(k): int(v) for k, v in traffic.items()}
    tmp = Path(str(routes_file) + ".tmp")
    tmp.write_text(json.dumps(routes, indent=2, sort_keys=True))
    os.replace(tmp, routes_file)
    return routes


def predict_url(base_url: str, project: str, region: str, endpoint_id: str) -> str:
    """Vertex's rawPredict URL of the endpoint, on ``base_url`` (the gateway here;
    ``https://REGION-aiplatform.googleapis.com`` in the cloud)."""
    return (f"{base_url.rstrip('/')}/v1/projects/{project}/locations/{region}/endpoints/"
            f"{endpoint_id}:rawPredict")


def start_gateway(work_dir: Path, tag: str, tokens_file: Path, routes_file: Path,
                  progress: Callable[[str], None], project: str, region: str,
                  timeout: float = 30.0) -> tuple[int, str]:
    """Start an endpoint's gateway (:mod:`.gateway`) on a free port, tagged ``tag``, its log
    in ``work_dir/<tag>.log``; return (pid, base URL) once it answers. The token never
    appears on its command line."""
    from . import gateway

    work_dir, routes_file = Path(work_dir), Path(routes_file)
    if not routes_file.exists():
        raise DeployFailed(f"the gateway's routes file {routes_file} is missing",
                           hint="write it first with update_routes(routes_file, endpoint_id)")
    port_file = work_dir / f"{tag}.port"
    port_file.unlink(missing_ok=True)
    log_path = work_dir / f"{tag}.log"
    command = [sys.executable, "-m", gateway.__name__, "--host", "127.0.0.1", "--port", "0",
               "--project", project, "--region", region, "--tokens", str(tokens_file),
               "--routes", str(routes_file), "--port-file", str(port_file)]
    pid = triton.start(command, {}, log_path, tag)   # the allow-listed environment only
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if not triton.alive(pid) or time.monotonic() > deadline:
            triton.stop(tag)
            raise DeployFailed("the rehearsal gateway did not start; last log lines:\n"
                               + triton.tail(log_path), hint=f"full log: {log_path}")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{int(port_file.read_text())}"
    try:
        triton.wait_ready(url, pid, log_path, timeout, progress, what="gateway",
                          ready_path=gateway.HEALTH_PATH)
    except BaseException:
        triton.stop(tag)
        raise
    return pid, url
