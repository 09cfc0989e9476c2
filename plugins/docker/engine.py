"""The Docker engine as the docker target sees it: one connection, images, our containers, and
every engine error said in one line with what to do next.

Only imported from the target's methods: it imports the ``docker`` SDK.
"""

from __future__ import annotations

import os
import re
import time
import urllib.parse
from typing import Any, Callable, Iterable, Iterator

import docker
import docker.errors
import requests.exceptions

from deployer.errors import DeployerError, TeardownIncomplete, Unavailable, UsageError

LABEL_DEPLOYMENT = "triton-deployer.deployment"
LABEL_NAME = "triton-deployer.name"
LABEL_REPOSITORY = "triton-deployer.repository"
#: images built by build_cpu_image.sh say which backends they carry, which backends they serve
#: through the Python backend (deployer/shim.py) and the versions of those frameworks
LABEL_BACKENDS = "triton-deployer.backends"
LABEL_SHIM = "triton-deployer.shim"
LABEL_SHIM_VERSIONS = "triton-deployer.shim.versions"

CPU_IMAGE = "triton-deployer/tritonserver-cpu:24.10-py3"
START_HINT = ("start it: 'sudo systemctl start docker', or on CI 'sudo .ci/start-docker.sh'; "
              "check DOCKER_HOST or -o docker_host; or deploy with --target local")
#: what a call to the engine raises when it fails (the SDK lets some of requests' through)
ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1", "[::1]"}


def resolve_host(option: str | None) -> str | None:
    """The engine address: the option, else $DOCKER_HOST, else None (the SDK's default socket)."""
    return option or os.environ.get("DOCKER_HOST") or None


def current_host(option: str | None) -> str | None:
    """Like :func:`resolve_host`, but the default made explicit (the current docker context's
    host, usually unix:///var/run/docker.sock), so that the deployment records which engine it
    used and teardown talks to the same one whatever DOCKER_HOST says then."""
    host = resolve_host(option)
    if host:
        return host
    try:
        from docker.context import ContextAPI

        return ContextAPI.get_current_context().Host or None
    except Exception:  # noqa: BLE001 - a broken context config: fall back to the SDK default
        return None


def describe(host: str | None) -> str:
    return host or "unix:///var/run/docker.sock"


def is_remote(host: str | None) -> bool:
    """Whether the engine runs on another machine (its bind mounts see that machine's files)."""
    if not host:
        return False
    parsed = urllib.parse.urlparse(host if "://" in host else f"tcp://{host}")
    if parsed.scheme in ("unix", "npipe", "fd"):
        return False
    return (parsed.hostname or "") not in LOCAL_HOSTS


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for needle, said in (("FileNotFoundError", "no such socket"),
                         ("No such file", "no such socket"),
                         ("Connection refused", "connection refused"),
                         ("Permission denied", "permission denied"),
                         ("timed out", "timed out"), ("Name or service not known", "unknown host"),
                         ("nodename nor servname", "unknown host")):
        if needle in text:
            return said
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def connect(host: str | None, timeout: float = 300.0) -> docker.DockerClient:
    """A client that has answered a ping; raise Unavailable (exit 5) when the engine does not."""
    environment = dict(os.environ)
    if host:
        environment["DOCKER_HOST"] = host
    try:
        # from_env keeps the TLS settings of DOCKER_TLS_VERIFY / DOCKER_CERT_PATH
        client = docker.from_env(environment=environment, timeout=timeout)
        client.ping()
        return client
    except ERRORS as exc:
        reason = _reason(exc)
        if reason == "permission denied":
            raise Unavailable(
                f"no permission to use the Docker engine at {describe(host)}",
                hint="run as root or join the 'docker' group (then log in again), or deploy "
                     "with --target local") from None
        raise Unavailable(f"cannot reach the Docker engine at {describe(host)} ({reason})",
                          hint=START_HINT) from None


def engine_error(what: str, exc: BaseException) -> DeployerError:
    """An unexpected engine answer as one line (the engine died, refused a request...)."""
    if isinstance(exc, docker.errors.APIError):
        text = " ".join(str(exc.explanation or exc).split())
        return Unavailable(f"{what}: the Docker engine answered: {text}")
    return Unavailable(f"{what}: lost the Docker engine ({_reason(exc)})", hint=START_HINT)


def load_hint(image: str) -> str:
    return (f"load it with 'docker load -i FILE' from a 'docker save {image}' archive, or "
            f"build a CPU image with 'plugins/docker/build_cpu_image.sh' and pass "
            f"-o image={CPU_IMAGE}")


def find_image(client: docker.DockerClient, image: str):
    try:
        return client.images.get(image)
    except docker.errors.ImageNotFound:
        return None
    except ERRORS as exc:
        raise engine_error(f"cannot inspect image {image}", exc) from None


def carried(image) -> tuple[set[str] | None, dict[str, str | None]]:
    """What an image says by its labels: its backends (``None`` when it does not say, like
    NVIDIA's, which has them all) and ``{backend: framework version}`` for those it serves
    through the Python backend (``triton-deployer.shim=onnxruntime,pytorch``,
    ``triton-deployer.shim.versions=onnxruntime==1.20.1,torch==2.13.0+cpu``)."""
    from deployer.shim import FRAMEWORKS

    labels = (image.labels or {}) if image is not None else {}
    if not labels.get(LABEL_BACKENDS):
        return None, {}
    have = {b.strip() for b in labels[LABEL_BACKENDS].split(",") if b.strip()} | {"ensemble"}
    versions = dict(item.strip().split("==", 1)
                    for item in labels.get(LABEL_SHIM_VERSIONS, "").split(",") if "==" in item)
    through = {}
    if "python" in have:
        for backend in labels.get(LABEL_SHIM, "").split(","):
            if backend.strip() in FRAMEWORKS:
                framework = FRAMEWORKS[backend.strip()]
                through[framework.backend] = versions.get(framework.distribution)
    return have, through


def ensure_image(client: docker.DockerClient, image: str, policy: str,
                 progress: Callable[[str], None]):
    """The image, pulled according to ``policy`` (missing | always | never)."""
    present = find_image(client, image)
    if policy == "never" or (policy == "missing" and present is not None):
        if present is None:
            raise Unavailable(f"image {image} is not in the Docker engine and pull=never",
                              hint=load_hint(image))
        return present
    try:
        pull(client, image, progress)
    except ERRORS as exc:
        text = " ".join(str(getattr(exc, "explanation", None) or exc).split())
        if present is not None:
            raise Unavailable(f"pull=always: cannot pull {image}: {text}",
                              hint="use -o pull=missing to run the image the engine has") \
                from None
        raise Unavailable(f"image {image} is not in the Docker engine and cannot be pulled: "
                          f"{text}", hint=load_hint(image)) from None
    return client.images.get(image)


def pull(client: docker.DockerClient, image: str, progress: Callable[[str], None]) -> None:
    """``docker pull``, reported as a transfer in bytes with one part per layer it downloads
    (see :class:`LayerBytes`)."""
    from docker.utils import parse_repository_tag

    from deployer.progress import transfer

    repository, tag = parse_repository_tag(image)
    with transfer(progress, f"  pulling {image}", None) as moving:
        layers = LayerBytes(moving)
        for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise docker.errors.APIError(event["error"], explanation=event["error"])
            layers.hear(event)


class LayerBytes:
    """The bytes of a pull's layers from the engine's stream of events, each downloaded layer
    a part of ``moving`` (a ``deployer.progress`` transfer): ``Pulling fs layer`` adds it (its
    size unknown), ``Downloading`` says how far it is (``progressDetail``: current, total: the
    compressed size), ``Download complete`` makes it whole, and so does ``Extracting`` (whose
    own count starts again from 0, of the same total: a small layer may say nothing before
    it) and ``Pull complete``. A layer the engine has (``Already exists``) is not a part."""

    def __init__(self, moving):
        self.moving = moving
        self.sizes: dict[str, int | None] = {}

    def hear(self, event: dict) -> None:
        layer, status = event.get("id"), str(event.get("status") or "")
        if not layer or status.startswith("Pulling from"):
            return
        total = (event.get("progressDetail") or {}).get("total")
        if status == "Pulling fs layer":
            self.sizes[layer] = None
            self.moving.part(layer, 0, None)
            return
        if layer not in self.sizes:
            return  # Already exists, or a layer we never heard of
        if total:
            self.sizes[layer] = int(total)
        size = self.sizes[layer]
        if status == "Downloading" and size:
            current = int((event.get("progressDetail") or {}).get("current") or 0)
            self.moving.part(layer, min(current, size), size)
        elif status in ("Verifying Checksum", "Download complete", "Extracting") and size:
            self.moving.part(layer, size, size)
        elif status == "Pull complete":  # never said how big: nothing we could count
            self.moving.part(layer, size or 0, size or 0)


# -- our containers --------------------------------------------------------------------------

def labelled(client: docker.DockerClient, deployment_id: str | None = None) -> list:
    """Containers (running or not) labelled by us, for one deployment or for all."""
    label = f"{LABEL_DEPLOYMENT}={deployment_id}" if deployment_id else LABEL_DEPLOYMENT
    try:
        return client.containers.list(all=True, filters={"label": label})
    except ERRORS as exc:
        raise engine_error("cannot list containers", exc) from None


def ours(client: docker.DockerClient, ref: str | None, deployment_id: str) -> list:
    """Containers of one deployment: the recorded id or name when its label says it is ours
    (a container that merely took the name is never touched), plus any labelled with the id."""
    found = {}
    if ref:
        try:
            container = client.containers.get(ref)
            if container.labels.get(LABEL_DEPLOYMENT) == deployment_id:
                found[container.id] = container
        except docker.errors.NotFound:
            pass
        except ERRORS as exc:
            raise engine_error(f"cannot inspect container {ref}", exc) from None
    for container in labelled(client, deployment_id):
        found.setdefault(container.id, container)
    return list(found.values())


def remove(container, stop_timeout: float) -> bool:
    """Stop (SIGTERM, SIGKILL after ``stop_timeout``) and remove; False if already gone."""
    try:
        if container.status in ("running", "restarting", "paused"):
            container.stop(timeout=max(0, int(round(stop_timeout))))
        container.remove(force=True, v=True)
        return True
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        text = " ".join(str(exc.explanation or exc).split())
        if "already in progress" in text:   # another teardown is removing it: wait for it
            for _ in range(100):
                try:
                    container.reload()
                except docker.errors.NotFound:
                    return True
                time.sleep(0.1)
        raise TeardownIncomplete(f"cannot remove container {container.name}: {text}",
                                 hint=f"look at it with 'docker inspect {container.name}'") \
            from None
    except ERRORS as exc:
        raise engine_error(f"cannot remove container {container.name}", exc) from None


def port_conflict(text: str) -> bool:
    return "address already in use" in text or "port is already allocated" in text


def gpu_missing(text: str) -> bool:
    return "could not select device driver" in text or "nvidia-container-cli" in text


def start_error(exc: docker.errors.APIError, container_name: str, gpus: str) -> DeployerError:
    text = " ".join(str(exc.explanation or exc).split())
    if gpu_missing(text):
        return Unavailable(
            f"-o gpus={gpus} asks for GPUs, but the Docker engine has no GPU support ({text})",
            hint="install the NVIDIA Container Toolkit on the engine's host and restart "
                 "dockerd, or leave gpus empty to run on CPU")
    if port_conflict(text):
        return UsageError(f"a port of container {container_name} is already in use ({text})",
                          hint="pass other -o http_port/grpc_port/metrics_port, or 0 for free "
                               "ones")
    return Unavailable(f"the Docker engine could not start container {container_name}: {text}")


def parse_gpus(value: str) -> tuple[str, Any] | None:
    """``""``/``none`` → None; ``all`` → ("count", -1); ``2`` → ("count", 2);
    ``device=0,1`` or ``0,1`` or ``GPU-uuid`` → ("ids", [...]). Raise ValueError otherwise."""
    text = (value or "").strip()
    if text.lower() in ("", "none", "off", "false"):
        return None
    if text.lower() == "all":
        return ("count", -1)
    if text.isdigit() and "," not in text:
        if int(text) < 1:
            raise ValueError("a count must be at least 1 (for GPU 0 alone write device=0)")
        return ("count", int(text))
    ids = [part.strip() for part in text.removeprefix("device=").split(",") if part.strip()]
    if not ids or not all(re.fullmatch(r"[A-Za-z0-9-]+", part) for part in ids):
        raise ValueError("expected all, a count, or GPU ids such as device=0,1")
    return ("ids", ids)


def device_requests(gpus: str) -> list:
    from docker.types import DeviceRequest

    spec = parse_gpus(gpus)
    if spec is None:
        return []
    if spec[0] == "count":
        return [DeviceRequest(count=spec[1], capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=spec[1], capabilities=[["gpu"]])]


#: error lines Triton prints on every start on a machine without a GPU: never the cause
def describe_container(container) -> dict[str, Any]:
    labels = container.labels
    ports = {}
    for inner, bound in ((container.attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
        if bound:
            ports[inner] = f"{bound[0].get('HostIp', '')}:{bound[0].get('HostPort', '')}"
    return {"deployment": labels.get(LABEL_DEPLOYMENT), "name": labels.get(LABEL_NAME),
            "repository": labels.get(LABEL_REPOSITORY), "container": container.name,
            "container_id": container.id, "status": container.status,
            "image": (container.attrs.get("Config") or {}).get("Image"),
            "created": container.attrs.get("Created"), "ports": ports}


def iter_orphans(client: docker.DockerClient, known: Iterable[str]) -> Iterator[dict[str, Any]]:
    known = set(known)
    for container in labelled(client):
        if container.labels.get(LABEL_DEPLOYMENT) not in known:
            yield describe_container(container)
