"""Target ``azure-twin``, and the pieces of a local managed online endpoint it is made of: a
key, a gateway, Triton behind it.

The twin is a Target of its own that holds the same builders as ``azure`` (:mod:`.spec`: names,
documents, repository rules) and the same update steps (:mod:`.update`) with a local backend:
the folder Azure would register is copied and served by the embedded tritonserver behind a
gateway that checks the bearer key and routes on ``azureml-model-deployment``. A model whose
backend that server lacks (ONNX, TorchScript) runs from the shim's staged copy of the folder
(:mod:`deployer.shim`), one per deployment, removed with it. The pieces are
also used by the tests' fake control plane. Each process is started detached and tagged
(:mod:`deployer.triton`), so it outlives the CLI command that started it and teardown finds it
by its tag.

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

from deployer import pyimports, triton
from deployer.errors import DeployFailed, UsageError
from deployer.target import Fleet, Option, Target

from . import spec, update

#: the Python-backend view of the image a no-code deployment runs (deployer/pyimports.py)
IMAGE = pyimports.Image(spec.IMAGE_PYTHON, spec.IMAGE_NAME)


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
                  traffic: int | None = None, remove: bool = False,
                  limits: dict | None = None) -> dict:
    """Edit the gateway's routes file: a deployment's upstream ``url``, its ``traffic``
    share, its request ``limits`` (:func:`gateway_limits`), or ``remove`` it."""
    routes = read_routes(path)
    routes.setdefault("deployments", {})
    routes.setdefault("traffic", {})
    routes.setdefault("limits", {})
    if remove:
        for part in ("deployments", "traffic", "limits"):
            routes[part].pop(deployment, None)
    if url is not None:
        routes["deployments"][deployment] = url
    if traffic is not None:
        routes["traffic"][deployment] = traffic
    if limits is not None:
        routes["limits"][deployment] = limits
    write_routes(path, routes)
    return routes


def gateway_limits(request: dict, instance_count: int) -> dict:
    """The gateway's limits for a deployment with ``request`` settings (Azure's
    ``request_settings`` keys; missing ones take Azure's defaults) on ``instance_count``
    instances: ``concurrency`` in flight, ``timeout_ms`` per request, ``queue_ms`` (the
    deprecated max_queue_wait_ms, None unless sent)."""
    full = {**spec.AZURE_REQUEST_DEFAULTS, **request}
    return {"concurrency": int(full["max_concurrent_requests_per_instance"]) * instance_count,
            "timeout_ms": int(full["request_timeout_ms"]),
            "queue_ms": request.get("max_queue_wait_ms")}


def start_gateway(work_dir: Path, tag: str, key_file: Path, routes_file: Path,
                  progress: Callable[[str], None], host: str = "127.0.0.1",
                  timeout: float = 30.0, requests_log: Path | None = None) -> tuple[int, str]:
    """Start the gateway on a free port; return (pid, url) once it answers. With
    ``requests_log`` it appends a line per request there (see :mod:`.gateway`)."""
    from . import gateway

    if not routes_file.exists():
        write_routes(routes_file, {"deployments": {}, "traffic": {}})
    port_file = work_dir / f"{tag}.port"
    port_file.unlink(missing_ok=True)
    log_path = work_dir / "gateway.log"
    command = [sys.executable, "-m", gateway.__name__, "--host", host, "--port", "0",
               "--key-file", str(key_file), "--routes", str(routes_file),
               "--port-file", str(port_file)]
    if requests_log is not None:
        command += ["--requests-log", str(requests_log)]
    pid = triton.start(command, {}, log_path, tag)   # the allow-listed environment only
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if not triton.alive(pid) or time.monotonic() > deadline:
            raise DeployFailed("the rehearsal gateway did not start; last log lines:\n"
                               + triton.tail(log_path), hint=f"full log: {log_path}")
        time.sleep(0.02)
    url = f"http://{host}:{int(port_file.read_text())}"
    triton.wait_ready(url, pid, log_path, timeout, progress, what="gateway",
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


def serve_model(model_dir: Path, destination: Path, progress: Callable[[str], None],
                server_path: str | None = None) -> tuple[triton.Server, Path, dict[str, str]]:
    """The server for the downloaded ``model_dir``, the folder to give it (``model_dir``, or
    the shim's staged copy written to ``destination`` when a model needs a framework the server
    lacks) and how each such model is served (:func:`deployer.triton.serve_folder`).

    DeployFailed when the download is no repository any more (an empty version folder, which
    the upload leaves out): the deployment's Triton would not load it."""
    from deployer.errors import ValidationError
    from deployer.repository import Repository

    try:
        downloaded = Repository.load(model_dir)
    except ValidationError as exc:
        raise DeployFailed(f"the model folder the deployment downloads is no repository: "
                           f"{exc.message}",
                           hint="Azure uploads files only, so an empty folder (an ensemble's "
                                "version folder) never reaches the deployment: put a file in "
                                "it, e.g. .gitkeep") from None
    server = pyimports.rehearsal_server(
        downloaded, triton.find_server(server_path, progress, create=True), IMAGE, progress)
    folder, served = triton.serve_folder(server, downloaded, destination, progress,
                                         where="azure rehearsal")
    return server, folder, served


def start_triton(model_dir: Path, work_dir: Path, tag: str, progress: Callable[[str], None],
                 server_path: str | None = None, host: str = "127.0.0.1",
                 timeout: float = 120.0, log_name: str = "inference-server.log",
                 server: triton.Server | None = None) -> tuple[int, str, str]:
    """Serve ``model_dir`` as a no-code deployment's Triton does (every model loaded at start,
    the server exits if one fails) on ``server`` (default: the one ``server_path`` names, see
    :func:`deployer.triton.find_server`); return (pid, url, metrics URL) once ready."""
    server = server or triton.find_server(server_path, progress, create=True)
    http_port, grpc_port, metrics_port = triton.free_ports(3, host)
    log_path = work_dir / log_name
    command = triton.tritonserver_command(server, model_dir, host=host, http_port=http_port,
                                          grpc_port=grpc_port, metrics_port=metrics_port)
    # the image's Python packages only (deployer/pyimports.py)
    guard = pyimports.guard(server, [model_dir], IMAGE, work_dir, progress)
    pid = triton.start(command, server.process_env(guard), log_path, tag)
    url = f"http://{host}:{http_port}"
    triton.wait_ready(url, pid, log_path, timeout, progress, what="the deployment's tritonserver")
    return pid, url, f"http://{host}:{metrics_port}/metrics"


def rehearsal_options(options) -> tuple:
    """A twin's options: its cloud's, with ``server`` and a local ``startup_timeout``."""
    return tuple(o for o in options if o.name != "startup_timeout") + (
        Option("server", str, None, "path of a tritonserver (default: $DEPLOYER_TRITONSERVER, "
               "PATH, then the managed runtime)"),
        Option("startup_timeout", float, 120.0, "seconds to wait for tritonserver"),
    )


def _entities(endpoint_doc, deployment_doc) -> None:
    """The SDK's offline check of the documents, when the SDK is here (the twin runs
    without it)."""
    if spec.sdk_installed():
        spec.checked_entities(endpoint_doc, deployment_doc)


class AzureTwin(Target):
    """The rehearsal: the folder ``azure`` registers, served by the embedded tritonserver
    behind a gateway that checks the bearer key and routes on ``azureml-model-deployment``."""

    name = "azure-twin"
    description = ("rehearsal of azure on this machine: embedded tritonserver behind a "
                   "bearer-key gateway that routes on azureml-model-deployment")
    options = rehearsal_options(spec.OPTIONS)
    hardware = "azure"
    runs_here = True

    def validate(self, repository) -> None:
        spec.check_settings(self.settings, repository)
        spec.warn_instance_type(self.settings.instance_type, self.progress)
        spec.warn_sequences(self.settings, repository, self.progress)
        pyimports.rehearsal_server(repository, triton.find_server(self.settings.server,
                                                                  create=False), IMAGE)
        triton.check_backends(repository, self.settings.server,
                              hint="it cannot be rehearsed here; name a server that has it "
                                   "with -o server=PATH")

    def plan(self, repository, name):
        """azure's plan without the autoscale setting: the twin records the range and runs
        one instance (its export still writes the setting's document)."""
        return [r for r in spec.plan(self.settings, repository, name, self.progress,
                                     sdk_required=False) if r.kind != "autoscale"]

    def export(self, repository, name, directory):
        """endpoint.yml and deployment.yml, as ``azure`` exports them."""
        return spec.export(self.settings, repository, name, directory, self.progress,
                           sdk_required=False)

    def deploy(self, repository, context) -> None:
        record = context.deployment
        work = Path(context.work_dir)
        names, endpoint_doc, deployment_doc = spec.documents(self.settings, repository,
                                                             record.name, record.id)
        _entities(endpoint_doc, deployment_doc)
        ep, dep = names.endpoint, names.deployment
        key_file, routes = work / "endpoint.key", work / "routes.json"

        tag = f"{record.id}-gateway"
        resource = context.record("endpoint", ep, tag=tag, key_file=str(key_file),
                                  routes=str(routes), log=str(work / "gateway.log"))
        write_key(key_file)
        pid, url = start_gateway(work, tag, key_file, routes, self.progress)
        url += "/score"  # as Azure's scoring URI
        context.created(resource, pid=pid, scoring_uri=url, provisioning_state="Succeeded")
        context.set_endpoint(url=url, endpoint=ep, deployment=dep,
                             auth_mode=self.settings.auth_mode, key_file=str(key_file))

        resource = context.record("model", names.model, path=str(work / "model"))
        model_dir = copy_model(repository, work / "model")
        context.created(resource, id=f"{names.model}:{self.settings.model_version or 1}",
                        path=str(work / "model"), served=str(model_dir))

        tag = f"{record.id}-{dep}"
        log_path = work / "inference-server.log"
        sent = spec.sent_limits(deployment_doc)
        resource = context.record("deployment", f"{ep}/{dep}", endpoint=ep, deployment=dep,
                                  tag=tag, log=str(log_path), routes=str(routes),
                                  staged=str(work / "served"), **sent)
        try:
            pid, triton_url, served, metrics = self._start(model_dir, work / "served", tag,
                                                           log_path)
        except DeployFailed as exc:
            raise DeployFailed(f"deployment {ep}/{dep} failed, provisioning state Failed: "
                               f"{exc.message}", hint=exc.hint) from None
        update_routes(routes, dep, url=triton_url, traffic=0,
                      limits=gateway_limits(sent["request_settings"], sent["instance_count"]))
        context.created(resource, pid=pid, url=triton_url, provisioning_state="Succeeded")
        context.set_endpoint(served_by=served, metrics=metrics)

        resource = context.record("traffic", f"{ep}/{dep}", endpoint=ep, deployment=dep,
                                  routes=str(routes), percent=self.settings.traffic)
        update_routes(routes, dep, traffic=self.settings.traffic)
        context.created(resource)

    def _start(self, model_dir: Path, staged: Path, tag: str,
               log_path: Path) -> tuple[int, str, dict[str, str], str]:
        """A deployment's tritonserver on ``model_dir`` (or its staged copy in ``staged``):
        (pid, url, how the shimmed models are served, its metrics URL), once ready."""
        server, folder, served = serve_model(model_dir, staged, self.progress,
                                             self.settings.server)
        pid, url, metrics = start_triton(folder, log_path.parent, tag, self.progress,
                                         timeout=self.settings.startup_timeout,
                                         log_name=log_path.name, server=server)
        return pid, url, served, metrics

    def update(self, repository, context) -> None:
        """The steps of :mod:`.update` on this machine. Both modes start a new tritonserver on
        the new model folder first. Blue/green: it joins the gateway's routes as the new
        deployment with 0 traffic, is smoke-tested through the gateway with the header, gets
        the traffic, then the old server stops. In place: once it is ready, the deployment's
        route switches to it and the old server stops (a surge, as Azure's rolling update; no
        smoke check, as in place on Azure)."""
        record = context.deployment
        plan = update.plan(self.settings, repository, record)
        _entities(plan.endpoint_doc, plan.deployment_doc)
        routes = self._routes(plan, record)
        local = _Local(self, repository, routes, Path(context.work_dir))
        update.run(local, plan, repository, context)
        context.set_endpoint(served_by=local.served, metrics=local.metrics)  # the new server

    @staticmethod
    def _routes(plan, record) -> Path:
        """The routes file of the running gateway, once the new deployment's name is free."""
        gateways = [r for r in update.live(record, "endpoint") if triton.tagged(r.data["tag"])]
        if not gateways:
            raise DeployFailed(f"the rehearsal gateway of {plan.endpoint} is not running",
                               hint=f"run 'deployer teardown {record.name}' and deploy again")
        routes = Path(gateways[0].data["routes"])
        if not plan.in_place and plan.new in read_routes(routes).get("deployments", {}):
            raise UsageError(f"deployment {plan.endpoint}/{plan.new} already exists on the "
                             "endpoint", hint="pass another -o new_deployment=NAME")
        return routes

    def client(self, deployment):
        from .client import connect

        return connect(deployment.endpoint, self._secret(deployment))

    def request_limits(self, deployment):
        """What the gateway enforces for the serving deployment, from the settings it was
        made with (a deployment recorded without them had no throttle: None)."""
        return update.serving_limits(deployment)

    def fleet(self, deployment):
        """The range and rules the options would give ``azure``, recorded; one instance runs
        (the twin does not scale)."""
        fleet = spec.check_scaling(self.settings)
        low, high = ((fleet.minimum, fleet.maximum) if fleet else
                     (self.settings.instance_count, self.settings.instance_count))
        scaled = spec.autoscales(self.settings)
        rule = ""
        if scaled is not None:
            endpoint_id, deployment_id = spec.arm_ids(self.settings, "ENDPOINT", "DEPLOYMENT")
            rule = spec.autoscale_rule(spec.autoscale_document(
                scaled, "DEPLOYMENT", endpoint_id, deployment_id, "", {})) + " "
        if rule or (low, high) != (1, 1):
            rule += "(recorded; the twin runs one instance and does not scale)"
        return Fleet(low, high, 1, 1, rule)

    def _secret(self, deployment):
        from .seam import Credential

        try:
            key = Credential(read_key(Path(deployment.endpoint["key_file"])))
        except (KeyError, FileNotFoundError):
            raise UsageError(f"the rehearsal key of {deployment.name} is gone",
                             hint=f"run 'deployer teardown {deployment.name}' and deploy "
                                  "again") from None
        return lambda: key

    def recover(self, name, deployment_id):
        """The gateway and servers tagged with the deployment's id (an update's carry
        ``<id>-<deployment>-<suffix>``), the gateway first."""
        from deployer.state import Resource

        if not deployment_id:
            return []
        found = [(tag != f"{deployment_id}-gateway", tag, pids)
                 for tag, pids in triton.all_tagged().items()
                 if tag.startswith(deployment_id + "-")]
        return [Resource("process", " ".join(map(str, pids)), "created", {"tag": tag})
                for _, tag, pids in sorted(found)]

    def delete(self, resource, deployment) -> bool:
        data = resource.data
        if resource.kind == "process":  # found by recover
            return triton.stop(data["tag"])
        if resource.kind == "endpoint":
            stopped = triton.stop(data["tag"])
            had_key = Path(data["key_file"]).exists()
            Path(data["key_file"]).unlink(missing_ok=True)
            return stopped or had_key
        if resource.kind == "model":
            present = Path(data["path"]).exists()
            shutil.rmtree(data["path"], ignore_errors=True)
            return present
        if resource.kind == "deployment":
            stopped = triton.stop(data["tag"])
            if data.get("staged"):
                shutil.rmtree(data["staged"], ignore_errors=True)
            routes = Path(data["routes"])
            serving = read_routes(routes).get("deployments", {}).get(data["deployment"])
            # after an in-place update the route names a newer server: leave it
            if routes.exists() and (not data.get("url") or serving in (None, data["url"])):
                update_routes(routes, data["deployment"], remove=True)
            return stopped
        if resource.kind == "traffic":
            routes = read_routes(Path(data["routes"]))
            if not routes.get("traffic", {}).get(data["deployment"]):
                return False
            update_routes(Path(data["routes"]), data["deployment"], traffic=0)
            return True
        raise UsageError(f"unknown resource kind {resource.kind!r}")

    def exists(self, resource, deployment) -> bool:
        data = resource.data
        if resource.kind == "process":
            return bool(triton.tagged(data["tag"]))
        if resource.kind == "endpoint":
            return bool(triton.tagged(data["tag"])) or Path(data["key_file"]).exists()
        if resource.kind == "model":
            return Path(data["path"]).exists()
        if resource.kind == "deployment":
            return bool(triton.tagged(data["tag"]))
        if resource.kind == "traffic":
            routes = read_routes(Path(data["routes"]))
            return bool(routes.get("traffic", {}).get(data["deployment"]))
        return False

    def logs(self, deployment, lines=100) -> str:
        parts = []
        for resource in deployment.resources:
            if resource.data.get("log") and resource.status != "deleted":
                parts.append(f"--- {Path(resource.data['log']).name} ---\n"
                             + triton.tail(resource.data["log"], lines))
        return "\n".join(parts)


class _Local:
    """The update's backend on this machine (see :class:`.update.Backend`): a copied model
    folder, a new tritonserver, the gateway's routes file."""

    def __init__(self, target: AzureTwin, repository, routes: Path, work: Path):
        self.target, self.repository, self.routes, self.work = target, repository, routes, work
        self.suffix = secrets.token_hex(3)  # names this update's folder, server and log
        self.traffic_data = {"routes": str(routes)}
        self.served: dict[str, str] = {}
        self.metrics = ""

    def register_model(self, plan, context):
        record = context.deployment
        versions = [int(r.id.rpartition(":")[2]) for r in record.resources
                    if r.kind == "model" and r.id.rpartition(":")[2].isdigit()]
        version = plan.model_version or str(1 + max(versions or [0]))
        folder = self.work / f"model-{self.suffix}"
        model = context.record("model", plan.names.model, path=str(folder))
        self.model_dir = copy_model(self.repository, folder)
        context.created(model, id=f"{plan.names.model}:{version}", served=str(self.model_dir))
        return model

    def create_deployment(self, plan, context, model):
        ep, new = plan.endpoint, plan.new
        tag = f"{context.deployment.id}-{new}-{self.suffix}"
        log_path = self.work / f"inference-server-{new}-{self.suffix}.log"
        staged = self.work / f"served-{self.suffix}"
        self.sent = spec.sent_limits(plan.deployment_doc)
        created = context.record("deployment", f"{ep}/{new}", endpoint=ep, deployment=new,
                                 tag=tag, log=str(log_path), routes=str(self.routes),
                                 staged=str(staged), **self.sent)
        try:
            pid, url, self.served, self.metrics = self.target._start(self.model_dir, staged,
                                                                     tag, log_path)
        except DeployFailed as exc:
            triton.stop(tag)  # never routed: the route (in place: the old server's) stays
            shutil.rmtree(staged, ignore_errors=True)
            context.deleted(created)
            update.abandon(self.target, [model], context)
            raise DeployFailed(f"{'update of ' if plan.in_place else ''}deployment {ep}/{new} "
                               f"failed, provisioning state Failed: {exc.message}",
                               hint=f"{plan.keeps}; {exc.hint}", details=exc.details) from None
        context.created(created, pid=pid, url=url, provisioning_state="Succeeded")
        if not plan.in_place:
            update_routes(self.routes, new, url=url, traffic=0, limits=self._limits())
        return created

    def _limits(self) -> dict:
        return gateway_limits(self.sent["request_settings"], self.sent["instance_count"])

    def switch(self, plan, context, deployment) -> list:
        self.target.progress(f"  switching {plan.endpoint}/{plan.old} to the new server")
        update_routes(self.routes, plan.old, url=deployment.data["url"], limits=self._limits())
        return [r for r in update.live(context.deployment, "deployment", deployment=plan.old)
                if r is not deployment]

    def traffic(self) -> dict:
        return dict(read_routes(self.routes).get("traffic", {}))

    def set_traffic(self, traffic: dict) -> None:
        current = read_routes(self.routes)
        current["traffic"] = traffic
        write_routes(self.routes, current)
