"""Target ``docker``: NVIDIA's Triton image on a Docker engine, the repository bind-mounted
read-only at ``/models``.

An image that lacks a model's backend but serves it through the Python backend (the CPU image
of ``build_cpu_image.sh`` says so by its labels, for ONNX and TorchScript models) gets the
staged copy of :mod:`deployer.shim` mounted instead, from the deployment's work folder.

One container per deployment, named ``triton-deployer-<name>`` and labelled with the deployment
id and name, so teardown finds it even when its id was never recorded, and :func:`orphans`
finds containers whose state was lost. The ``docker`` SDK is imported only inside methods.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Iterable

from deployer import hookimpl
from deployer.errors import DeployFailed, UsageError, ValidationError
from deployer.target import Option, PlannedResource, Target

DEFAULT_VERSION = "24.10"
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:{version}-py3"
#: the ports tritonserver listens on inside the container
INNER = {"http_port": 8000, "grpc_port": 8001, "metrics_port": 8002}
HOST = "127.0.0.1"


def container_name(name: str) -> str:
    """The container of deployment ``name`` (deterministic: found again after a crash)."""
    return f"triton-deployer-{name}"


class DockerTarget(Target):
    name = "docker"
    description = "NVIDIA's Triton container on a Docker engine (local, or DOCKER_HOST)"
    requires = ("docker",)
    install_hint = "pip install 'triton-deployer[docker]'"
    options = (
        Option("image", str, None, "Triton image (default: nvcr.io/nvidia/tritonserver:"
               "<version>-py3; a local CPU one: triton-deployer/tritonserver-cpu:24.10-py3)"),
        Option("version", str, DEFAULT_VERSION, "NGC release YY.MM of the default image"),
        Option("gpus", str, "", "GPUs: '' (none), all, a count, or ids (device=0,1)"),
        Option("http_port", int, 0, "host HTTP port on 127.0.0.1 (0 = a free one)"),
        Option("grpc_port", int, 0, "host gRPC port on 127.0.0.1 (0 = a free one)"),
        Option("metrics_port", int, 0, "host metrics port on 127.0.0.1 (0 = a free one)"),
        Option("shm_size", str, "1g", "shared memory of the container (/dev/shm), e.g. 256m, 1g"),
        Option("args", list, [], "extra tritonserver arguments, comma-separated"),
        Option("env", list, [], "container environment, KEY=VALUE, comma-separated"),
        Option("pull", str, "missing", "when to pull the image (progress on stderr)",
               choices=("missing", "always", "never")),
        Option("startup_timeout", float, 300.0, "seconds to wait for the server to be ready"),
        Option("stop_timeout", float, 10.0, "seconds between SIGTERM and SIGKILL on teardown"),
        Option("docker_host", str, None, "Docker engine address (default: $DOCKER_HOST, else "
               "the local socket), e.g. unix:///var/run/docker.sock"),
    )

    # -- options -------------------------------------------------------------------------------
    @property
    def image(self) -> str:
        return self.settings.image or NGC_IMAGE.format(version=self.settings.version)

    def _host(self, resource=None) -> str | None:
        """The engine: the one recorded at deploy time wins (teardown must find the same)."""
        from . import engine

        if resource is not None and resource.data.get("docker_host"):
            return resource.data["docker_host"]
        return engine.resolve_host(self.settings.docker_host)

    def _connect(self, resource=None):
        from . import engine

        return engine.connect(self._host(resource))

    def validate(self, repository) -> None:
        from deployer.triton import port_in_use

        from . import engine

        if not self.settings.image and not re.fullmatch(r"\d{2}\.\d{2}", self.settings.version):
            raise UsageError(f"option 'version' must be an NGC release YY.MM such as "
                             f"{DEFAULT_VERSION}; got {self.settings.version!r}")
        try:
            engine.parse_gpus(self.settings.gpus)
        except ValueError as exc:
            raise UsageError(f"option 'gpus' {self.settings.gpus!r}: {exc}") from None
        if not re.fullmatch(r"\d+[bkmgBKMG]?", self.settings.shm_size.strip()):
            raise UsageError(f"option 'shm_size' expects a size such as 256m or 1g; got "
                             f"{self.settings.shm_size!r}")
        bad = [item for item in self.settings.env if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=",
                                                                   item)]
        if bad:
            raise UsageError(f"option 'env' expects KEY=VALUE items; got {bad[0]!r}",
                             hint="e.g. -o env=OMP_NUM_THREADS=2,LOG_LEVEL=info")
        given = [self.settings[k] for k in INNER if self.settings[k]]
        if len(given) != len(set(given)):
            raise UsageError("http_port, grpc_port and metrics_port must differ")
        for option in INNER:
            port = self.settings[option]
            if port and port_in_use(port, HOST):
                raise ValidationError(f"port {port} ({option}) is already in use",
                                      hint=f"pass another -o {option}=PORT or 0 for a free one")
        host = self._host()
        if engine.is_remote(host):
            raise ValidationError(
                f"the Docker engine at {host} runs on another machine: it cannot bind-mount "
                f"{repository.path} from here",
                hint="use a local engine (unset DOCKER_HOST or -o docker_host), or copy the "
                     "repository to that machine and deploy from there")
        client = engine.connect(host)
        try:
            found = engine.find_image(client, self.image)
        finally:
            client.close()
        if found is None and self.settings.pull == "never":
            raise engine.Unavailable(
                f"image {self.image} is not in the Docker engine and pull=never",
                hint=engine.load_hint(self.image))
        have, through = engine.carried(found)
        if have is not None:
            for model in repository.models.values():
                if model.backend not in have and model.backend not in through:
                    raise self._lacks(model, have, through)

    def _lacks(self, model, have: set[str], through: dict) -> ValidationError:
        from deployer.shim import FRAMEWORKS

        served = (f"; through the Python backend it serves: {', '.join(sorted(through))}"
                  if through else "")
        hint = "use NVIDIA's image (leave -o image unset), or a cloud target"
        if model.backend in FRAMEWORKS:
            hint = ("rebuild the image with 'plugins/docker/build_cpu_image.sh --force "
                    "--frameworks all', or " + hint)
        return ValidationError(
            f"model {model.name!r} needs the {model.backend} backend, which image {self.image} "
            f"lacks (it has: {', '.join(sorted(have))}{served})",
            path=str(model.config_path), hint=hint)

    def plan(self, repository, name):
        from . import engine

        return [PlannedResource("container", container_name(name), {
            "image": self.image, "repository": str(repository.path), "mount": "/models (ro)",
            "gpus": self.settings.gpus or "none",
            "ports": {k: self.settings[k] or "free" for k in INNER},
            "engine": engine.current_host(self.settings.docker_host) or "default socket"})]

    # -- deploy --------------------------------------------------------------------------------
    def deploy(self, repository, context) -> None:
        import docker.errors
        from docker.types import Mount

        from deployer.triton import tritonserver_command

        from . import engine

        deployment = context.deployment
        cname = container_name(deployment.name)
        host = engine.current_host(self.settings.docker_host)
        client = engine.connect(host)
        try:
            image = engine.ensure_image(client, self.image, self.settings.pull, self.progress)
            self._check_name_free(client, cname, deployment.name)
            folder, served = self._serve_folder(repository, context, *engine.carried(image))
            auto = not any(self.settings[k] for k in INNER)
            ports = self._ports()
            labels = {engine.LABEL_DEPLOYMENT: deployment.id,
                      engine.LABEL_NAME: deployment.name,
                      engine.LABEL_REPOSITORY: str(repository.path)}
            command = tritonserver_command("tritonserver", "/models", **INNER,
                                           args=self.settings.args)
            resource = context.record("container", cname, container=cname, image=self.image,
                                      docker_host=host, served=str(folder), **ports)
            self.progress(f"  creating container {cname} from {self.image}")
            for attempt in range(3):
                try:
                    container = client.containers.create(
                        self.image, command, name=cname, detach=True, labels=labels,
                        mounts=[Mount("/models", str(folder), type="bind", read_only=True)],
                        ports={f"{INNER[k]}/tcp": (HOST, ports[k]) for k in INNER},
                        shm_size=self.settings.shm_size, environment=list(self.settings.env),
                        device_requests=engine.device_requests(self.settings.gpus) or None)
                except docker.errors.APIError as exc:
                    raise self._create_error(exc, cname, folder) from None
                context.update(resource, id=container.id, **ports)
                try:
                    container.start()
                    break
                except docker.errors.APIError as exc:
                    text = str(exc.explanation or exc)
                    if not (auto and attempt < 2 and engine.port_conflict(text)):
                        raise engine.start_error(exc, cname, self.settings.gpus) from None
                    # someone took a free port between our choice and the start: choose again
                    container.remove(force=True)
                    ports = self._ports()
            url = f"http://{HOST}:{ports['http_port']}"
            context.set_endpoint(url=url, grpc=f"{HOST}:{ports['grpc_port']}",
                                 metrics=f"http://{HOST}:{ports['metrics_port']}/metrics",
                                 container=cname, served_by=served)
            seconds = self._wait_ready(container, url, context, resource)
            self._check_models_visible(url, repository, folder)
            context.created(resource, ready_seconds=round(seconds, 3))
        except engine.ERRORS as exc:
            raise engine.engine_error(f"deploy of {deployment.name}", exc) from None
        finally:
            client.close()

    def _serve_folder(self, repository, context, have: set[str] | None,
                      through: dict) -> tuple[Path, dict[str, str]]:
        """The folder to mount at /models, and how each model the image serves through the
        Python backend is served (``{model: "onnxruntime 1.20 through the Python backend,
        docker image TAG"}``). The repository itself when the image has every backend (an
        image without labels, like NVIDIA's, has them all); else the staged copy
        :func:`deployer.shim.stage` writes into the deployment's work folder (hard links:
        real files to the container)."""
        from deployer import shim

        models = shim.shimmed(repository, have) if have is not None else []
        if not models:
            return repository.path, {}
        for model in models:   # validate could not tell: the image arrived with the deploy
            if model.backend not in through:
                raise self._lacks(model, have, through)
        folder = Path(context.work_dir) / "served"
        shim.stage(repository, folder, have)
        served = shim.describe_all(models, through, f"docker image {self.image}", self.progress)
        self.progress(f"  {', '.join(m.name for m in models)} through the Python backend of "
                      f"{self.image} (staged copy: {folder})")
        return folder, served

    def _ports(self) -> dict[str, int]:
        from deployer.triton import free_ports

        free = iter(free_ports(3, HOST))
        return {k: self.settings[k] or next(free) for k in INNER}

    def _check_name_free(self, client, cname: str, name: str) -> None:
        import docker.errors

        from . import engine

        try:
            other = client.containers.get(cname)
        except docker.errors.NotFound:
            return
        owner = other.labels.get(engine.LABEL_DEPLOYMENT)
        raise UsageError(
            f"a container named {cname} already exists ({other.status}"
            + (f", left by a deployment {name!r} whose record is gone" if owner else
               ", not made by triton-deployer") + ")",
            hint=f"remove it with 'docker rm -f {cname}', or deploy under another --name")

    def _create_error(self, exc, cname: str, folder: Path):
        from . import engine

        text = " ".join(str(exc.explanation or exc).split())
        if "bind source path does not exist" in text or ("mount" in text and "denied" in text):
            return UsageError(
                f"the Docker engine cannot share {folder} with the container ({text})",
                hint="the engine must run on this machine and see this path (Docker Desktop: "
                     "add it to the shared folders)")
        if "Conflict" in text or "already in use" in text:
            return UsageError(f"a container named {cname} already exists ({text})",
                              hint=f"remove it with 'docker rm -f {cname}'")
        return engine.engine_error(f"cannot create container {cname}", exc)

    def _wait_ready(self, container, url: str, context, resource) -> float:
        """``deployer.triton.watch_start`` on the container: ready, exited, or a model that
        cannot load (its log, the repository index) stops the wait at once."""
        import docker.errors

        from deployer.triton import answers, watch_start

        cname = container.name
        read = {"text": "", "checked": 0.0, "read": 0.0, "ended": False}

        def exited() -> str | None:
            now = time.monotonic()
            if now - read["checked"] < 0.25:
                return None
            read["checked"] = now
            try:
                container.reload()
            except docker.errors.NotFound:
                raise DeployFailed(f"container {cname} vanished while starting",
                                   hint="something removed it; deploy again") from None
            if container.status in ("exited", "dead"):
                read["ended"] = True
                code = container.attrs.get("State", {}).get("ExitCode")
                return f"exit code {code}"
            return None

        def new_lines() -> list[str]:
            if time.monotonic() - read["read"] < 0.25 and not read["ended"]:
                return []
            read["read"] = time.monotonic()
            try:
                text = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
            except docker.errors.APIError:
                return []
            end = text.rfind("\n") + 1
            fresh, read["text"] = text[len(read["text"]):end], text[:end]
            return fresh.splitlines()

        return watch_start(lambda: answers(url + "/v2/health/ready"), exited, new_lines,
                           timeout=self.settings.startup_timeout, progress=self.progress,
                           what=f"tritonserver in container {cname}", index_url=url,
                           log=lambda: self._save_log(container, context, resource))

    def _save_log(self, container, context, resource) -> str:
        return self._failure(container, context, resource)[2]

    def _failure(self, container, context, resource) -> tuple[str, str, str]:
        """Save the container's log next to the record; the error that tells, and an excerpt."""
        from deployer.triton import failure_in

        path = Path(context.work_dir) / "tritonserver.log"
        try:
            text = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - the log is a help, the failure is the news
            text = ""
        path.write_text(text)
        context.update(resource, log=str(path))
        headline, excerpt = failure_in(text)
        return headline or "(no log output)", excerpt, str(path)

    def _check_models_visible(self, url: str, repository, folder: Path) -> None:
        """A path the engine cannot see arrives as an empty /models: Triton is ready with no
        model at all. Say so instead of letting the test step fail on 404s."""
        import json
        import urllib.request

        request = urllib.request.Request(url + "/v2/repository/index", data=b"{}",
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                index = json.loads(answer.read() or b"[]")
        except (OSError, ValueError):
            return
        if repository.models and not index:
            raise DeployFailed(
                f"the container sees no model under /models: the Docker engine cannot read "
                f"{folder}",
                hint="the engine must run on this machine and see this path (remote "
                     "DOCKER_HOST, or a folder Docker Desktop does not share)")

    # -- after deploy --------------------------------------------------------------------------
    def client(self, deployment):
        from deployer.triton import KServeClient

        return KServeClient(deployment.endpoint["url"], grpc=deployment.endpoint.get("grpc"))

    def delete(self, resource, deployment) -> bool:
        from . import engine

        client = self._connect(resource)
        try:
            removed = False
            for container in engine.ours(client, resource.id, deployment.id):
                self.progress(f"  stopping and removing container {container.name}")
                removed = engine.remove(container, self.settings.stop_timeout) or removed
            return removed
        finally:
            client.close()

    def exists(self, resource, deployment) -> bool:
        from . import engine

        client = self._connect(resource)
        try:
            return bool(engine.ours(client, resource.id, deployment.id))
        finally:
            client.close()

    def logs(self, deployment, lines=100) -> str:
        from deployer.triton import tail

        from . import engine

        resources = [r for r in deployment.resources if r.kind == "container"]
        if not resources:
            return ""
        resource = resources[-1]
        client = self._connect(resource)
        try:
            found = engine.ours(client, resource.id, deployment.id)
            if found:
                try:
                    text = found[0].logs(stdout=True, stderr=True, tail=lines)
                except engine.ERRORS as exc:
                    raise engine.engine_error(f"cannot read the logs of {found[0].name}",
                                              exc) from None
                return text.decode("utf-8", "replace").rstrip("\n")
        finally:
            client.close()
        return tail(resource.data["log"], lines) if resource.data.get("log") else ""

    def recover(self, name, deployment_id):
        """Containers labelled with the deployment's id (or, without it, with its name)."""
        from deployer.state import Resource

        from . import engine

        client = self._connect()
        try:
            found = [c for c in engine.labelled(client, deployment_id)
                     if deployment_id or c.labels.get(engine.LABEL_NAME) == name]
            return [Resource("container", c.id, "created",
                             {"container": c.name, "docker_host": engine.current_host(
                                 self.settings.docker_host)}) for c in found]
        finally:
            client.close()

    @classmethod
    def orphans(cls, known):
        """Our labelled containers (on the engine DOCKER_HOST names, when it is on this
        machine) whose deployment id no record has."""
        from . import engine

        if engine.is_remote(engine.resolve_host(None)):
            return []
        return [{"kind": "container", "id": item["container"], "tag": item["deployment"],
                 "remove": f"docker rm -f {item['container']}", "name": item["name"] or "",
                 "status": item["status"], "image": item["image"] or ""}
                for item in orphans(known, timeout=5)]


def orphans(known: Iterable[str] = (), docker_host: str | None = None,
            strict: bool = False, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Containers labelled by the docker target whose deployment id is not in ``known`` (the
    ids the state store has): ``[{"deployment", "name", "repository", "container",
    "container_id", "status", "image", "created", "ports"}]``.

    An engine that cannot be reached or a missing ``docker`` SDK gives ``[]`` (``deployer list``
    must not fail because Docker is down) unless ``strict``, which raises ``Unavailable``.
    ``DockerTarget.orphans`` (what ``deployer list --orphans`` calls) is built on it.
    """
    from deployer.errors import DeployerError

    try:
        from . import engine

        client = engine.connect(engine.resolve_host(docker_host), timeout=timeout)
    except (ImportError, DeployerError):
        if strict:
            raise
        return []
    try:
        return list(engine.iter_orphans(client, known))
    except DeployerError:
        if strict:
            raise
        return []
    finally:
        client.close()


@hookimpl
def deployer_register_targets():
    return [DockerTarget]
