"""Target ``vertex-twin``: what ``vertex`` deploys, on this machine.

The same steps (:class:`deployer_plugins.vertex.Steps`) over a local backend with the seam's
contract (:class:`LocalVertex`): the artefact ``vertex`` would upload is written under the
deployment's work folder at the path of its ``gs://`` uri; a model is the record of its
artifact uri and container spec; an endpoint is a gateway with Vertex's ``:rawPredict`` route
and bearer tokens; a deployed model is the embedded tritonserver started as NVIDIA's image
starts on Vertex (:func:`.serving.start_model_server`: the container args, ``AIP_STORAGE_URI``,
the default-model rule of Triton's Vertex frontend). Processes are detached and tagged with the
deployment id, so they outlive the command that started them and teardown finds them.

The token is random, lives an hour, and is kept only in a file of mode 0600 in the work folder
(state records the file's path, never the token); a client past its expiry gets a new one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from deployer import pyimports, triton
from deployer.errors import DeployFailed, UsageError
from deployer.target import Fleet, Target

from . import Steps, spec, storage
from ..azure.twin import rehearsal_options
from .serving import IMAGE

TOKEN_LIFETIME = 3600.0
#: a token this close to its expiry is replaced before it is handed out (seconds)
TOKEN_MARGIN = 300.0


class LocalStore:
    """Cloud Storage as a folder: ``gs://BUCKET/PATH/`` is ``root/BUCKET/PATH``."""

    def __init__(self, root: Path):
        self.root = root

    def folder(self, uri: str) -> Path:
        bucket, path = storage.parse_uri(uri)
        return self.root / bucket / path.strip("/")

    def _done(self, uri: str) -> Path:
        folder = self.folder(uri)
        return folder.with_name(folder.name + ".complete")

    def upload(self, layout, uri: str, progress) -> tuple[int, int]:
        if self._done(uri).exists():
            return 0, 0
        storage.materialize(layout, self.folder(uri))
        self._done(uri).write_text(layout.digest)
        return len(layout.objects), layout.size

    def exists(self, uri: str) -> bool:
        return self.folder(uri).exists()

    def delete(self, uri: str) -> int:
        folder = self.folder(uri)
        count = sum(1 for p in folder.rglob("*")) if folder.exists() else 0
        shutil.rmtree(folder, ignore_errors=True)
        self._done(uri).unlink(missing_ok=True)
        return count


class LocalVertex:
    """The seam's public methods (:mod:`.seam`) on this machine; what exists is kept in
    ``vertex.json`` in the work folder."""

    def __init__(self, work: Path, deployment_id: str, settings, progress, store: LocalStore):
        self.work, self.deployment_id = work, deployment_id
        self.settings, self.progress, self.store = settings, progress, store
        self.project = spec.project(settings) or "rehearsal"
        self.region = settings.region
        self.path = work / "vertex.json"
        self.served_by: dict = {}
        self.metrics = ""

    # -- bookkeeping -------------------------------------------------------------------------
    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"next": 1, "models": {}, "endpoints": {}}

    def _write(self, data: dict) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    def _new_id(self, data: dict) -> str:
        number = data["next"]
        data["next"] = number + 1
        return str(number)

    def _resource(self, kind: str, number: str) -> str:
        return f"projects/{self.project}/locations/{self.region}/{kind}/{number}"

    # -- models ------------------------------------------------------------------------------
    def check(self) -> None:
        pass

    def _model_info(self, name: str, entry: dict):
        from .seam import ModelInfo

        return ModelInfo(name, entry["display_name"], entry["labels"], entry["artifact_uri"])

    def upload_model(self, display_name: str, artifact_uri: str, container: dict, labels,
                     label: str | None = None):
        if label:
            self.progress(label)
        if not self.store.exists(artifact_uri):
            raise DeployFailed(f"artifact_uri {artifact_uri} holds no objects")
        data = self._read()
        name = self._resource("models", self._new_id(data))
        data["models"][name] = {"display_name": display_name, "artifact_uri": artifact_uri,
                                "container": container, "labels": dict(labels)}
        self._write(data)
        return self._model_info(name, data["models"][name])

    def get_model(self, name: str):
        entry = self._read()["models"].get(name)
        return entry and self._model_info(name, entry)

    def find_models(self, labels: dict) -> list:
        return [self._model_info(n, e) for n, e in self._read()["models"].items()
                if labels.items() <= e["labels"].items()]

    def delete_model(self, name: str) -> bool:
        data = self._read()
        if data["models"].pop(name, None) is None:
            return False
        self._write(data)
        return True

    # -- endpoints ---------------------------------------------------------------------------
    def _endpoint_info(self, name: str, entry: dict):
        from .seam import DeployedModel, EndpointInfo

        deployed = [DeployedModel(i, d["model"], d["display_name"])
                    for i, d in entry["deployed"].items()]
        return EndpointInfo(name, entry["display_name"], entry["labels"],
                            dict(entry["traffic"]), deployed, entry["predict_url"])

    def create_endpoint(self, display_name: str, labels):
        from . import serving

        data = self._read()
        number = self._new_id(data)
        name = self._resource("endpoints", number)
        tag = f"{self.deployment_id}-gateway-{number}"
        tokens, routes = self.work / f"endpoint-{number}.token", self.work / f"routes-{number}.json"
        data["endpoints"][name] = {
            "display_name": display_name, "labels": dict(labels), "tag": tag,
            "tokens": str(tokens), "routes": str(routes), "traffic": {}, "deployed": {},
            "predict_url": "", "number": number}
        self._write(data)  # recorded before the gateway starts
        serving.write_token(tokens, TOKEN_LIFETIME)
        serving.update_routes(routes, number)
        _, base = serving.start_gateway(self.work, tag, tokens, routes, self.progress,
                                        self.project, self.region)
        data = self._read()
        entry = data["endpoints"][name]
        entry["predict_url"] = serving.predict_url(base, self.project, self.region, number)
        self._write(data)
        return self._endpoint_info(name, entry)

    def get_endpoint(self, name: str):
        entry = self._read()["endpoints"].get(name)
        return None if entry is None else self._endpoint_info(name, entry)

    def running(self, name: str) -> bool:
        entry = self._read()["endpoints"].get(name)
        return entry is not None and bool(triton.tagged(entry["tag"]))

    def find_endpoints(self, labels: dict) -> list:
        return [self._endpoint_info(n, e) for n, e in self._read()["endpoints"].items()
                if labels.items() <= e["labels"].items()]

    def _traffic(self, name: str, split: dict) -> None:
        from . import serving

        data = self._read()
        entry = data["endpoints"][name]
        entry["traffic"] = {k: int(v) for k, v in split.items() if k in entry["deployed"]}
        self._write(data)
        serving.update_routes(Path(entry["routes"]), entry["number"], traffic=entry["traffic"])

    def set_traffic(self, name: str, split: dict):
        total = sum(split.values())
        if total not in (0, 100):
            raise DeployFailed(f"the traffic split of {name} sums to {total}, not 100")
        self._traffic(name, split)
        return self.get_endpoint(name)

    def deploy_model(self, endpoint: str, model: str, display_name: str, machine: dict,
                     traffic_percentage: int, timeout: float, label: str | None = None) -> str:
        from . import serving

        if label:
            self.progress(label)
        data = self._read()
        entry, model_entry = data["endpoints"].get(endpoint), data["models"].get(model)
        if entry is None or model_entry is None:
            raise DeployFailed(f"{'endpoint ' + endpoint if entry is None else 'model ' + model}"
                               " not found")
        number = self._new_id(data)
        tag = f"{self.deployment_id}-model-{number}"
        log_name = f"model-server-{number}.log"
        entry["last_log"] = str(self.work / log_name)
        self._write(data)
        served = serving.start_model_server(
            self.store.folder(model_entry["artifact_uri"]), model_entry["container"], self.work,
            tag, self.progress, server_path=self.settings.server,
            timeout=min(timeout, float(self.settings.startup_timeout)), log_name=log_name)
        self.served_by.update(served.served_by or {})
        self.metrics = served.metrics  # the newest container's
        data = self._read()
        entry = data["endpoints"][endpoint]
        entry["deployed"][number] = {"model": model, "display_name": display_name, "tag": tag,
                                     "url": served.url, "default_model": served.default_model,
                                     "log": str(self.work / log_name),
                                     "machine": dict(machine)}  # recorded, not scaled
        self._write(data)
        serving.update_routes(Path(entry["routes"]), entry["number"], deployed_id=number,
                              url=served.url, default_model=served.default_model)
        others = {k: v for k, v in entry["traffic"].items() if k != number}
        left = sum(others.values())
        split = {k: (v * (100 - traffic_percentage)) // left if left else 0
                 for k, v in others.items()}
        split[number] = 100 - sum(split.values()) if left else traffic_percentage
        if not left and traffic_percentage != 100:
            split[number] = 100  # Vertex: the only deployed model takes all the traffic
        self._traffic(endpoint, split)
        return number

    def undeploy_model(self, endpoint: str, deployed_id: str) -> bool:
        from . import serving

        data = self._read()
        entry = data["endpoints"].get(endpoint)
        item = entry and entry["deployed"].get(deployed_id)
        if not item:
            return False
        share = entry["traffic"].pop(deployed_id, 0)
        rest = {k: v for k, v in entry["traffic"].items()}
        if share and rest:  # what it held goes to the others, as Vertex's undeploy does
            first = max(rest, key=rest.get)
            rest[first] += share
        entry["traffic"] = rest
        self._write(data)
        serving.update_routes(Path(entry["routes"]), entry["number"], deployed_id=deployed_id,
                              remove=True)
        serving.update_routes(Path(entry["routes"]), entry["number"], traffic=rest)
        triton.stop(item["tag"])
        data = self._read()
        data["endpoints"][endpoint]["deployed"].pop(deployed_id, None)
        self._write(data)
        return True

    def delete_endpoint(self, name: str) -> bool:
        data = self._read()
        entry = data["endpoints"].get(name)
        if entry is None:
            return False
        for item in entry["deployed"].values():  # force: as endpoint.delete(force=True)
            triton.stop(item["tag"])
        triton.stop(entry["tag"])
        for path in (entry["tokens"], entry["routes"]):
            Path(path).unlink(missing_ok=True)
        data["endpoints"].pop(name)
        self._write(data)
        return True

    # -- reading -----------------------------------------------------------------------------
    def credential(self, name: str):
        """A token for the endpoint's gateway; a fresh one when it is near its expiry."""
        from deployer.triton import Credential

        from . import serving

        entry = self._read()["endpoints"].get(name)
        if entry is None:
            raise UsageError(f"the rehearsal endpoint {name} is gone")
        tokens = Path(entry["tokens"])
        secret, expiry = _last_token(tokens)
        if secret is None or expiry - time.time() < TOKEN_MARGIN:
            serving.write_token(tokens, TOKEN_LIFETIME)
            secret, expiry = _last_token(tokens)
        return Credential(secret, expiry)

    def logs(self, name: str, lines: int = 100) -> str:
        entry = self._read()["endpoints"].get(name) or {}
        path = entry.get("last_log")
        return triton.tail(Path(path), lines) if path and Path(path).exists() else ""


def _last_token(path: Path) -> tuple[str | None, float]:
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return None, 0.0
    if not lines:
        return None, 0.0
    secret, *expiry = lines[-1]
    return secret, float(expiry[0]) if expiry else time.time() + TOKEN_LIFETIME


class VertexTwin(Steps, Target):
    """The rehearsal: the artefact ``vertex`` uploads, served by the embedded tritonserver as
    NVIDIA's image serves it on Vertex, behind a gateway with Vertex's rawPredict route."""

    name = "vertex-twin"
    description = ("rehearsal of vertex on this machine: its artefact and container args, "
                   "served by the embedded tritonserver behind a rawPredict gateway")
    options = rehearsal_options(spec.OPTIONS)
    hardware = "vertex"
    runs_here = True
    cloud = False

    @classmethod
    def choose_hardware(cls, gpu, settings):
        return spec.choose_hardware(gpu, settings)

    def validate(self, repository) -> None:
        spec.check_settings(self.settings, repository, cloud=False)
        spec.warn_machine(self.settings, self.progress)
        pyimports.rehearsal_server(repository, triton.find_server(self.settings.server,
                                                                  create=False), IMAGE)
        triton.check_backends(repository, self.settings.server,
                              hint="it cannot be rehearsed here; name a server that has it "
                                   "with -o server=PATH")

    def plan(self, repository, name):
        return spec.plan(self.settings, repository, name, self.progress, cloud=False)

    def fleet(self, deployment):
        """The range and target vertex would set, from the recorded options; one instance
        runs here, and the twin does not scale it."""
        found = spec.replicas(self.settings)
        rule = f"{found.rule} " if found.rule else ""
        return Fleet(found.minimum, found.maximum, 1, 1,
                     f"{rule}(recorded; the twin runs one instance and does not scale)")

    @staticmethod
    def _work(deployment) -> Path:
        from deployer.state import StateStore as Store

        work = deployment.endpoint.get("work")
        return Path(work) if work else Store().work_dir(deployment.name)

    def _state_root(self, deployment):
        work = deployment.endpoint.get("work")
        return Path(work).parent.parent if work else None

    def _backend(self, deployment=None) -> LocalVertex:
        if getattr(self, "_local", None) is None:
            deployment = deployment or self._deployment
            work = self._work(deployment)
            self._local = LocalVertex(work, deployment.id, self.settings, self.progress,
                                      LocalStore(work / "gcs"))
        return self._local

    def _store(self) -> LocalStore:
        return self._backend().store

    def _served(self) -> dict:
        backend = self._backend()
        return {**({"served_by": backend.served_by} if backend.served_by else {}),
                **({"metrics": backend.metrics} if backend.metrics else {})}

    def deploy(self, repository, context) -> None:
        self._deployment = context.deployment
        context.set_endpoint(work=str(context.work_dir))
        super().deploy(repository, context)

    def update(self, repository, context) -> None:
        self._deployment = context.deployment
        super().update(repository, context)

    def delete(self, resource, deployment) -> bool:
        if resource.kind == "process":  # found by its tag (recover)
            return triton.stop(resource.id)
        self._deployment = deployment
        return super().delete(resource, deployment)

    def exists(self, resource, deployment) -> bool:
        if resource.kind == "process":
            return bool(triton.tagged(resource.id))
        self._deployment = deployment
        return super().exists(resource, deployment)

    def recover(self, name, deployment_id):
        """The gateways and model servers tagged with the deployment's id, gateways first
        (teardown stops them newest first: the servers, then the gateways)."""
        from deployer.state import Resource

        if not deployment_id:
            return []
        tags = [t for t in triton.all_tagged() if t.startswith(f"{deployment_id}-")]
        tags.sort(key=lambda t: ("-gateway-" not in t, t))
        return [Resource("process", tag, "created", {"tag": tag}) for tag in tags]

    def client(self, deployment):
        from .client import connect

        self._deployment = deployment
        backend = self._backend()
        endpoint = deployment.endpoint.get("endpoint")
        if not endpoint or not backend.running(endpoint):
            raise UsageError(f"the rehearsal endpoint of {deployment.name} is not running",
                             hint=f"run 'deployer teardown {deployment.name}' and deploy again")
        return connect(deployment.endpoint, lambda: backend.credential(endpoint))

    def logs(self, deployment, lines=100) -> str:
        self._deployment = deployment
        endpoint = deployment.endpoint.get("endpoint")
        return self._backend().logs(endpoint, lines) if endpoint else ""
