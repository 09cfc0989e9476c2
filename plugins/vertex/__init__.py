"""Target ``vertex``: a Vertex AI endpoint serving the repository with NVIDIA's Triton image
(a custom container), and its rehearsal ``vertex-twin`` (:mod:`.twin`).

Deploy creates, in order: the artefact (the repository under ``gs://BUCKET/PREFIX/<digest>/``,
content addressed: an unchanged repository uploads nothing), the Vertex ``Model`` (its
``artifact_uri`` and a container spec naming the image), the ``Endpoint``, and the deployed
model (machine, accelerator, replica range and request-count target: Vertex's own
autoscaling, set by the shared scaling options or min/max_replica_count; nothing else to
create) with all the traffic. Teardown undoes them newest first: undeploy, delete the
endpoint, delete the model, delete the objects unless another recorded deployment still uses
them. ``deploy --update`` deploys the new model (with the same scaling: the recorded options)
beside the old one with no traffic, moves the traffic, checks every model answers, and only
then undeploys the old one (on failure the traffic goes back and the new one is removed).

Both targets run the same steps (:class:`Steps`) over a backend with the seam's contract
(:mod:`.seam` for the cloud, :class:`.twin.LocalVertex` here) and an artefact store
(:class:`.storage.Storage` on Cloud Storage, a folder here). google-cloud-* are imported only
inside the seam and the store.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from deployer import hookimpl
from deployer.errors import (DeployerError, DeployFailed, TeardownIncomplete, Unavailable,
                             UsageError)
from deployer.target import Fleet, Target

from . import spec, storage

#: container log lines shown with a failed deploy
LOG_LINES = 30


class Steps:
    """deploy, update and teardown over ``self._backend()`` (the seam's public methods) and
    ``self._store()`` (upload / delete / exists / users of an artefact uri)."""

    settings: Any
    progress: Callable[[str], None]
    cloud = True

    # -- what a subclass provides ------------------------------------------------------------
    def _backend(self):
        raise NotImplementedError

    def _store(self):
        raise NotImplementedError

    @contextlib.contextmanager
    def _calls(self, name: str, stage: str = "create", hint: str | None = None):
        yield

    # -- the shared steps --------------------------------------------------------------------
    def _layout(self, repository):
        lay = storage.layout(repository)
        return lay, storage.artefact_uri(self._bucket(), self.settings.prefix, lay.digest)

    def _bucket(self) -> str:
        return self.settings.bucket or "rehearsal"

    def _upload(self, repository, context, old: list | None = None):
        """The artefact: recorded, then uploaded (only what is missing). Returns its uri."""
        lay, uri = self._layout(repository)
        if old and any(r.id == uri for r in old):
            self.progress(f"  artefact {uri} unchanged")
            return uri
        if not self.cloud:   # the cloud's upload says so itself, as a transfer
            self.progress(f"  writing the artefact vertex would upload to {uri} here")
        resource = context.record("artefact", uri, uri=uri, digest=lay.digest)
        objects, sent = self._store().upload(lay, uri, self.progress)
        if not sent and not objects:
            self.progress("  every object was there already: 0 bytes sent")
        context.created(resource, objects_sent=objects, bytes_sent=sent)
        return uri

    def _model(self, repository, context, name: str, uri: str, labels: dict):
        container = spec.container_spec(self.settings, repository)
        resource = context.record("model", name, display_name=name, artifact_uri=uri,
                                  image=container["image_uri"], args=container["args"])
        info = self._backend().upload_model(
            name, uri, container, labels,
            label=f"  uploading model {name} (image {container['image_uri']})")
        context.update(resource, id=info.name)
        context.created(resource, name=info.name)
        return info

    def _deploy_model(self, context, endpoint: str, model: str, name: str,
                      traffic: int, teardown_hint: str):
        from .seam import OperationFailed

        machine = spec.machine(self.settings)
        accelerator = (f" + {machine['accelerator_type']} x{machine['accelerator_count']}"
                       if machine["accelerator_type"] else "")
        target = machine.get(spec.TARGET_KEY)
        scaling = f", {target} requests/minute per replica" if target is not None else ""
        label = (f"  deploying {name} on {machine['machine_type']}{accelerator}, "
                 f"{machine['min_replica_count']}-{machine['max_replica_count']} replicas"
                 f"{scaling} (10-30 minutes on Vertex)")
        note = spec.quota_note(self.settings)
        if note and self.cloud:
            self.progress(f"  {note}")
        resource = context.record("deployed-model", name, endpoint=endpoint, model=model,
                                  display_name=name, **machine)
        backend = self._backend()
        try:
            deployed = backend.deploy_model(endpoint, model, name, machine, traffic,
                                            float(self.settings.startup_timeout), label=label)
        except (OperationFailed, DeployFailed) as exc:
            if isinstance(exc, DeployFailed):  # the twin's container
                message = f"deploying {name} on {endpoint} failed: {exc.message}"
            else:  # the seam's line names the deploy already
                message = " ".join(str(exc).split())
            details = self._failure_logs(endpoint)
            raise DeployFailed(message, details=details or getattr(exc, "details", None),
                               hint="; ".join(h for h in (getattr(exc, "hint", None),
                                                          teardown_hint) if h)) from None
        context.created(resource, deployed_id=deployed)
        return resource, deployed

    def _failure_logs(self, endpoint: str) -> str:
        """The container's error lines (Triton's status tables left out), else its last."""
        from deployer import triton

        try:
            text = self._backend().logs(endpoint, 10 * LOG_LINES)
        except Exception:  # noqa: BLE001 - the logs only add to the failure being reported
            return ""
        return triton.failure_in(text, LOG_LINES)[1] if text.strip() else ""

    def deploy(self, repository, context) -> None:
        record, s = context.deployment, self.settings
        names = spec.Names(s, record.name)
        labels = spec.labels(s, record.name, record.id)
        teardown = f"run 'deployer teardown {record.name}' to remove what was created"
        if self.cloud:
            spec.require_image(s)
        with self._calls(record.name, "check"):
            self._backend().check()
            self._check_bucket()
        with self._calls(record.name):
            uri = self._upload(repository, context)
            model = self._model(repository, context, names.model, uri, labels)
            self.progress(f"  creating endpoint {names.endpoint}")
            resource = context.record("endpoint", names.endpoint, display_name=names.endpoint)
            endpoint = self._backend().create_endpoint(names.endpoint, labels)
            context.update(resource, id=endpoint.name)
            context.created(resource, name=endpoint.name, predict_url=endpoint.predict_url)
            context.set_endpoint(url=endpoint.predict_url, endpoint=endpoint.name,
                                 project=spec.project(s), region=s.region)
            _, deployed = self._deploy_model(context, endpoint.name, model.name,
                                             names.deployed, 100, teardown)
            context.set_endpoint(deployed_id=deployed, **self._served())

    def _served(self) -> dict:
        return {}

    def _state_root(self, deployment):
        """Where the deployments are recorded (None: the default state folder)."""
        return None

    def _check_bucket(self) -> None:
        pass

    # -- update ------------------------------------------------------------------------------
    def update(self, repository, context) -> None:
        """The new model beside the old one with no traffic, the traffic moved to it, every
        model asked once, then the old one undeployed and its model (and artefact, unless the
        new one reads the same) removed. A failure moves the traffic back and removes the new
        model: the old one serves on."""
        from deployer_plugins.azure.update import abandon, retire, smoke

        record, s = context.deployment, self.settings
        old = [r for r in record.resources if r.status != "deleted"]
        endpoint = next((r for r in old if r.kind == "endpoint"), None)
        serving = [r for r in old if r.kind == "deployed-model"]
        if endpoint is None or not serving:
            raise DeployFailed(f"{record.name} has no endpoint or deployed model to update",
                               hint=f"run 'deployer teardown {record.name}' and deploy again")
        ep = endpoint.data.get("name", endpoint.id)
        keeps = "the previous model still serves all the traffic"
        if self.cloud:
            spec.require_image(s)
        with self._calls(record.name, "check"):
            backend = self._backend()
            backend.check()
            info = backend.get_endpoint(ep)
        if info is None:
            raise DeployFailed(f"endpoint {ep} is gone",
                               hint=f"run 'deployer teardown {record.name}' and deploy again")
        revision = sum(r.kind == "model" for r in record.resources)
        names = spec.Names(s, record.name, revision)
        labels = spec.labels(s, record.name, record.id)
        start = len(record.resources)

        def fresh() -> list:  # what this update recorded, newest first
            return [r for r in record.resources[start:] if r.status != "deleted"][::-1]

        with self._calls(record.name, hint=keeps):
            uri = self._upload(repository, context, [r for r in old if r.kind == "artefact"])
            model = self._model(repository, context, names.model, uri, labels)
            try:
                _, deployed = self._deploy_model(context, ep, model.name, names.deployed, 0,
                                                 keeps)
            except DeployFailed:
                abandon(self, fresh(), context)
                raise
            before = dict(backend.get_endpoint(ep).traffic)
            self.progress(f"  moving all traffic to {names.deployed}")
            backend.set_traffic(ep, {**{k: 0 for k in before}, deployed: 100})
        problem = smoke(lambda: self.client(record), repository, list(repository.models))
        if problem:
            with self._calls(record.name, hint=keeps):
                self.progress("  the new model failed its check: moving the traffic back")
                backend.set_traffic(ep, {**before, deployed: 0})
            abandon(self, fresh(), context)
            raise DeployFailed(f"the updated model failed its check: {problem}; the traffic "
                               "went back and it was removed", hint=keeps)
        context.set_endpoint(deployed_id=deployed, **self._served())
        retired = [r for r in old if r.kind in ("deployed-model", "model")
                   or (r.kind == "artefact" and r.id != uri)]
        retire(self, sorted(retired, key=lambda r: ("deployed-model", "model",
                                                    "artefact").index(r.kind)), context)

    # -- teardown ----------------------------------------------------------------------------
    @staticmethod
    def _deployed(info, resource):
        """The endpoint's deployed model a record names (its id, else its display name)."""
        wanted = resource.data.get("deployed_id")
        for item in info.deployed if info else ():
            if (wanted and item.id == wanted) or (not wanted and item.display_name
                                                  == resource.data.get("display_name")):
                return item
        return None

    def _users(self, uri: str, deployment) -> list[str]:
        """Other recorded deployments whose live artefact is ``uri``."""
        from deployer.state import StateStore as Store

        users = []
        for other in Store(self._state_root(deployment)).list():
            if other.name != deployment.name and any(
                    r.kind == "artefact" and r.id == uri and r.status != "deleted"
                    for r in other.resources):
                users.append(other.name)
        return users

    def _named(self, resource, deployment) -> str | None:
        """The Vertex name of a recorded model or endpoint. One recorded but not known to be
        created (an interrupted create may have finished in Vertex) is looked up by its
        display name among those labelled with the deployment's id."""
        if resource.data.get("name"):
            return resource.data["name"]
        labels = {spec.ID_LABEL: spec.label_value(deployment.id)}
        backend = self._backend()
        found = backend.find_models(labels) if resource.kind == "model" else \
            backend.find_endpoints(labels)
        return next((item.name for item in found
                     if item.display_name == resource.data.get("display_name")), None)

    def delete(self, resource, deployment) -> bool:
        data = resource.data
        with self._calls(deployment.name, "teardown"):
            backend = self._backend()
            if resource.kind == "deployed-model":
                info = backend.get_endpoint(data["endpoint"])
                item = self._deployed(info, resource)
                return item is not None and backend.undeploy_model(data["endpoint"], item.id)
            if resource.kind in ("endpoint", "model"):
                name = self._named(resource, deployment)
                delete = backend.delete_endpoint if resource.kind == "endpoint" else \
                    backend.delete_model
                return bool(name) and delete(name)
            if resource.kind == "artefact":
                users = self._users(resource.id, deployment)
                if users:
                    self.progress(f"  artefact {resource.id} stays: {', '.join(users)} "
                                  "still uses it")
                    return False
                return self._store().delete(resource.id) > 0
        raise UsageError(f"unknown resource kind {resource.kind!r}")

    def exists(self, resource, deployment) -> bool:
        data = resource.data
        with self._calls(deployment.name, "teardown"):
            backend = self._backend()
            if resource.kind == "deployed-model":
                return self._deployed(backend.get_endpoint(data["endpoint"]),
                                      resource) is not None
            if resource.kind in ("endpoint", "model"):
                name = self._named(resource, deployment)
                get = backend.get_endpoint if resource.kind == "endpoint" else \
                    backend.get_model
                return bool(name) and get(name) is not None
            if resource.kind == "artefact":
                return not self._users(resource.id, deployment) and \
                    self._store().exists(resource.id)
        return False

    def recover(self, name, deployment_id):
        """The models labelled with the deployment's id (or, without one, its name), then the
        endpoints so labelled, each followed by its deployed models. The artefact's objects
        carry no labels: they stay (content addressed, they may serve other deployments)."""
        from deployer.state import Resource

        labels = {spec.ID_LABEL: deployment_id} if deployment_id else \
            {spec.NAME_LABEL: spec.label_value(name)}
        found: list = []
        with self._calls(name, "teardown"):
            backend = self._backend()
            for model in backend.find_models(labels):
                found.append(Resource("model", model.name, "created",
                                      {"name": model.name, "display_name": model.display_name,
                                       "artifact_uri": model.artifact_uri}))
            for endpoint in backend.find_endpoints(labels):
                found.append(Resource("endpoint", endpoint.name, "created",
                                      {"name": endpoint.name,
                                       "display_name": endpoint.display_name}))
                for item in endpoint.deployed:
                    found.append(Resource("deployed-model", item.display_name, "created",
                                          {"endpoint": endpoint.name, "deployed_id": item.id,
                                           "display_name": item.display_name,
                                           "model": item.model}))
        return found


class VertexTarget(Steps, Target):
    name = "vertex"
    description = "a Vertex AI endpoint serving NVIDIA's Triton image as a custom container"
    options = spec.OPTIONS
    hardware = "vertex"
    requires = ("google.cloud.aiplatform", "google.cloud.storage")
    install_hint = "pip install 'triton-deployer[vertex]'"
    twin = "vertex-twin"
    runs_here = False

    @classmethod
    def choose_hardware(cls, gpu, settings):
        return spec.choose_hardware(gpu, settings)

    def validate(self, repository) -> None:
        spec.check_settings(self.settings, repository, cloud=True)
        spec.warn_machine(self.settings, self.progress)

    def plan(self, repository, name):
        return spec.plan(self.settings, repository, name, self.progress, cloud=True)

    def _backend(self):
        from . import seam

        if getattr(self, "_connected", None) is None:
            self._connected = seam.connect(self.settings, self.progress)
        return self._connected

    def _store(self):
        if getattr(self, "_storage", None) is None:
            self._storage = storage.Storage(spec.project(self.settings))
        return self._storage

    def _check_bucket(self) -> None:
        bucket = self.settings.bucket
        if self._store().bucket_location(bucket) is None:
            raise UsageError(f"bucket gs://{bucket} does not exist or is not visible to these "
                             "credentials", hint=f"create it: gcloud storage buckets create "
                             f"gs://{bucket} --location={self.settings.region}; nothing was "
                             "created")

    @contextlib.contextmanager
    def _calls(self, name: str, stage: str = "create", hint: str | None = None):
        """Seam and storage failures as one-line deployer errors, by stage: ``check``
        (nothing created yet: exit 2 for credentials and permissions, else 3), ``create``
        (3; the record keeps what was created), ``read`` (2, else 5), ``teardown``
        (TeardownIncomplete, 4)."""
        from . import seam

        try:
            yield
        except (seam.SeamError, storage.StorageError) as exc:
            raise self._error(exc, name, stage, hint) from None

    @staticmethod
    def _error(exc, name: str, stage: str, hint: str | None) -> DeployerError:
        from . import seam

        message = " ".join(str(exc).split())
        hints = [exc.hint] if getattr(exc, "hint", None) else []
        access = isinstance(exc, seam.AuthError)
        if stage == "teardown":
            return TeardownIncomplete(message, hint="; ".join(
                hints + [f"then run 'deployer teardown {name}' again"]))
        if stage == "check":
            return (UsageError if access else DeployFailed)(
                message, hint="; ".join(hints + ["nothing was created"]))
        if stage == "read":
            return (UsageError if access else Unavailable)(message,
                                                           hint="; ".join(hints) or None)
        return DeployFailed(message, hint="; ".join(
            hints + [hint or f"run 'deployer teardown {name}' to remove what was created"]))

    def client(self, deployment):
        from .client import connect

        def fetch():
            with self._calls(deployment.name, "read"):
                return self._backend().credential()

        return connect(deployment.endpoint, fetch)

    def instances(self, deployment):
        return spec.instances(self.settings)

    def fleet(self, deployment):
        """The serving deployed model's range as Vertex reports it (its dedicated resources),
        and its available replicas now (``status.available_replica_count``); Vertex's v1 API
        reports no desired count (None). None when the endpoint or the model is gone."""
        endpoint = deployment.endpoint.get("endpoint")
        wanted = deployment.endpoint.get("deployed_id")
        if not endpoint or not wanted:
            return None
        with self._calls(deployment.name, "read"):
            info = self._backend().get_endpoint(endpoint)
        item = next((d for d in info.deployed if d.id == wanted), None) if info else None
        if item is None or item.min_replica_count is None:
            return None
        found = spec.Replicas(item.min_replica_count, item.max_replica_count or
                              item.min_replica_count, item.request_count_target)
        return Fleet(found.minimum, found.maximum, None, item.available_replica_count,
                     found.rule)

    def logs(self, deployment, lines=100) -> str:
        endpoint = deployment.endpoint.get("endpoint")
        if not endpoint:
            return ""
        with self._calls(deployment.name, "read"):
            return self._backend().logs(endpoint, lines)


@hookimpl
def deployer_register_targets():
    from .twin import VertexTwin

    return [VertexTarget, VertexTwin]
