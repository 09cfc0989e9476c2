"""A fake Azure ML control plane for the azure target's tests: an in-memory workspace behind
the same ``Seam`` interface as the real one, whose data plane is real.

Install it with ``monkeypatch.setattr(seam, "factory", fake.factory)``. Endpoints get a real
rehearsal gateway (bearer key, ``azureml-model-deployment`` routing) and deployments a real
tritonserver serving the registered folder; the scoring URI points at the gateway. It answers as
the service does: not found, conflicts (a name taken elsewhere in the region, a deployment that
still has traffic), provisioning states, and a Failed deployment with both containers' logs.
An ``aml_token``/``aad_token`` endpoint hands out a new token per ``credential`` call, valid
``token_lifetime`` seconds: its gateway answers 401 to it after that (``token_fetches`` counts).
An update of an existing deployment (``create_or_update_deployment`` with its name) is a rolling
update: the new server starts beside the old one, takes over its route once ready, and if it
fails the old one keeps serving and the deployment keeps its state.
Every call is in ``calls`` as ``(method, name)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import secrets
import shutil
import time
from pathlib import Path

from deployer import server as proc
from deployer.errors import DeployFailed
from deployer_plugins.azure import gateway, seam, spec, twin

#: seconds a replaced or deleted deployment's tritonserver gets after SIGTERM before SIGKILL:
#: its graceful exit takes seconds, and nothing of ours observes it
STOP_GRACE = 1.0

STORAGE_LOG = ("Downloading model {model} from the workspace datastore\n"
               "Model download complete: {path}\n")


@dataclasses.dataclass
class _Endpoint:
    name: str
    auth_mode: str
    tags: dict
    folder: Path
    gateway_tag: str
    scoring_uri: str
    deployments: dict = dataclasses.field(default_factory=dict)  # name -> _Deployment

    @property
    def key_file(self) -> Path:
        return self.folder / "key"

    @property
    def routes(self) -> Path:
        return self.folder / "routes.json"


@dataclasses.dataclass
class _Deployment:
    name: str
    state: str
    tag: str
    log: Path
    model: str


class FakeAzure(seam.Seam):
    def __init__(self, root: Path, taken: tuple[str, ...] = ()):
        self.root = Path(root)
        self.endpoints: dict[str, _Endpoint] = {}
        self.models: dict[tuple[str, str], dict] = {}
        #: endpoint names another workspace of the region holds
        self.taken = set(taken)
        #: hand out a key the gateway refuses (keys regenerated behind our back)
        self.stale_key = False
        #: raise AuthError on every call (no credential)
        self.no_credential = False
        self.calls: list[tuple[str, str]] = []
        #: seconds a token of an aml_token/aad_token endpoint is valid for
        self.token_lifetime = 2.0
        self.token_fetches = 0
        self._ids = itertools.count(1)

    def factory(self, settings, progress):
        self.progress = progress
        return self

    def _call(self, method: str, name: str) -> None:
        self.calls.append((method, name))
        if self.no_credential:
            raise seam.AuthError(f"{method} {name}: DefaultAzureCredential failed to retrieve "
                                 "a token from the included credentials")

    def stop_all(self) -> None:
        for endpoint in list(self.endpoints.values()):
            self._remove(endpoint)

    # -- endpoints --------------------------------------------------------------------------
    def get_endpoint(self, name):
        self._call("get_endpoint", name)
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return None
        routes = twin.read_routes(endpoint.routes)
        return seam.EndpointInfo(name, "Succeeded", endpoint.scoring_uri,
                                 dict(routes.get("traffic", {})), dict(endpoint.tags))

    def create_or_update_endpoint(self, entity):
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        assert isinstance(entity, ManagedOnlineEndpoint)
        entity._to_rest_online_endpoint("fakeregion")  # the SDK's own serialisation
        self._call("create_or_update_endpoint", entity.name)
        if entity.name in self.taken:
            raise seam.ConflictError(f"creating endpoint {entity.name}: the name is already "
                                     "used in this region", "EndpointNameNotAvailable")
        if entity.name in self.endpoints:
            endpoint = self.endpoints[entity.name]
            endpoint.tags, endpoint.auth_mode = dict(entity.tags or {}), entity.auth_mode
        else:
            folder = self.root / f"ep{next(self._ids)}-{entity.name}"
            folder.mkdir(parents=True)
            twin.write_key(folder / "key")
            tag = f"fake-azure-{folder.name}-{(entity.tags or {}).get(spec.ID_TAG, 'x')}"
            _, url = twin.start_gateway(folder, tag, folder / "key", folder / "routes.json",
                                        lambda _: None)
            self.endpoints[entity.name] = _Endpoint(
                entity.name, entity.auth_mode, dict(entity.tags or {}), folder, tag,
                url + "/score")
        return self.get_endpoint(entity.name)

    def delete_endpoint(self, name):
        self._call("delete_endpoint", name)
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return False
        self._remove(endpoint)
        return True

    def _remove(self, endpoint: _Endpoint) -> None:
        for deployment in endpoint.deployments.values():
            proc.stop(deployment.tag, STOP_GRACE)
        proc.stop(endpoint.gateway_tag)
        shutil.rmtree(endpoint.folder, ignore_errors=True)
        self.endpoints.pop(endpoint.name, None)

    def set_traffic(self, endpoint_name, traffic):
        self._call("set_traffic", endpoint_name)
        endpoint = self._endpoint(endpoint_name)
        unknown = [d for d in traffic if d not in endpoint.deployments]
        if unknown or sum(traffic.values()) > 100 or any(v < 0 for v in traffic.values()):
            raise seam.SeamError(f"setting traffic on {endpoint_name}: invalid traffic "
                                 f"{traffic}", "BadArgument")
        routes = twin.read_routes(endpoint.routes)
        routes["traffic"] = dict(traffic)
        twin.write_routes(endpoint.routes, routes)
        return self.get_endpoint(endpoint_name)

    def credential(self, endpoint_name, auth_mode):
        self._call("credential", endpoint_name)
        endpoint = self._endpoint(endpoint_name)
        if endpoint.auth_mode in ("aml_token", "aad_token"):
            return self._token(endpoint)
        key = twin.read_key(endpoint.key_file)
        return seam.Credential("stale-" + key if self.stale_key else key)

    def _token(self, endpoint: _Endpoint) -> seam.Credential:
        """A new token, added to the gateway's key file beside the ones still valid."""
        self.token_fetches += 1
        now, token = time.time(), secrets.token_urlsafe(32)
        expiry = now + self.token_lifetime
        valid = [f"{s} {e!r}" for s, e in gateway.parse_keys(endpoint.key_file.read_text())
                 if e is not None and e > now]
        tmp = endpoint.key_file.with_name("key.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(valid + [f"{token} {expiry!r}"]) + "\n")
        os.replace(tmp, endpoint.key_file)
        return seam.Credential("stale-" + token if self.stale_key else token, expiry)

    def _endpoint(self, name) -> _Endpoint:
        if name not in self.endpoints:
            raise seam.NotFoundError(f"endpoint {name}: not found", "ResourceNotFound")
        return self.endpoints[name]

    # -- models -----------------------------------------------------------------------------
    def register_model(self, model):
        from azure.ai.ml.entities import Model

        assert isinstance(model, Model) and model.type == "triton_model", model
        self._call("register_model", model.name)
        if not Path(model.path).is_dir():
            raise seam.SeamError(f"registering model {model.name}: path {model.path} is not a "
                                 "folder", "UserError")
        version = model.version or str(1 + max(
            [int(v) for (n, v) in self.models if n == model.name and v.isdigit()] or [0]))
        existing = self.models.get((model.name, version))
        if existing and existing["path"] != str(model.path):
            raise seam.ConflictError(f"model {model.name}:{version} already exists with "
                                     "different content", "Conflict")
        self.models[(model.name, version)] = {"path": str(model.path), "archived": False,
                                              "tags": dict(model.tags or {})}
        return model.name, version

    def model_active(self, name, version):
        self._call("model_active", f"{name}:{version}")
        found = self.models.get((name, version))
        return bool(found and not found["archived"])

    def archive_model(self, name, version):
        self._call("archive_model", f"{name}:{version}")
        found = self.models.get((name, version))
        if not found or found["archived"]:
            return False
        found["archived"] = True
        return True

    # -- deployments ------------------------------------------------------------------------
    def create_or_update_deployment(self, entity):
        from azure.ai.ml.entities import ManagedOnlineDeployment

        assert isinstance(entity, ManagedOnlineDeployment)
        entity._to_rest_object(location="fakeregion")
        self._call("create_or_update_deployment", f"{entity.endpoint_name}/{entity.name}")
        endpoint = self._endpoint(entity.endpoint_name)
        _, name, version = str(entity.model).split(":")
        model = self.models.get((name, version))
        if model is None:
            raise seam.NotFoundError(f"model {entity.model}: not found", "ResourceNotFound")
        old = endpoint.deployments.get(entity.name)
        attempt = next(self._ids)
        tag = f"{endpoint.gateway_tag}-{entity.name}-{attempt}"
        log = endpoint.folder / f"{entity.name}-{attempt}-inference-server.log"
        deployment = _Deployment(entity.name, "Updating" if old else "Creating", tag, log,
                                 model["path"])
        if not old:
            endpoint.deployments[entity.name] = deployment
        try:
            _, url = twin.start_triton(Path(model["path"]), endpoint.folder, tag, lambda _: None,
                                       timeout=60, log_name=log.name)
        except DeployFailed:
            proc.stop(tag, STOP_GRACE)  # one that never became ready
            if old:  # rolling update: the old instances keep serving, the state is kept
                old.log, old.model = log, model["path"]  # get_logs shows the failed attempt
            else:
                deployment.state = "Failed"
            raise seam.ProvisioningFailed(
                "ResourceNotReady: User container has crashed or terminated", "Failed",
                "ResourceNotReady") from None
        deployment.state = "Succeeded"
        endpoint.deployments[entity.name] = deployment
        twin.update_routes(endpoint.routes, entity.name, url=url)
        if old:
            proc.stop(old.tag, STOP_GRACE)
        return "Succeeded"

    def get_deployment_state(self, endpoint_name, name):
        self._call("get_deployment_state", f"{endpoint_name}/{name}")
        endpoint = self.endpoints.get(endpoint_name)
        deployment = endpoint and endpoint.deployments.get(name)
        return deployment.state if deployment else None

    def delete_deployment(self, endpoint_name, name):
        self._call("delete_deployment", f"{endpoint_name}/{name}")
        endpoint = self.endpoints.get(endpoint_name)
        if endpoint is None or name not in endpoint.deployments:
            return False
        if twin.read_routes(endpoint.routes).get("traffic", {}).get(name):
            raise seam.ConflictError(f"deleting deployment {endpoint_name}/{name}: it still "
                                     "receives traffic; set it to 0 first", "BadArgument")
        proc.stop(endpoint.deployments.pop(name).tag, STOP_GRACE)
        twin.update_routes(endpoint.routes, name, remove=True)
        return True

    def logs(self, endpoint_name, name, lines, container_type):
        self._call(f"logs:{container_type}", f"{endpoint_name}/{name}")
        endpoint = self._endpoint(endpoint_name)
        deployment = endpoint.deployments.get(name)
        if deployment is None:
            raise seam.NotFoundError(f"deployment {endpoint_name}/{name}: not found")
        if container_type == "storage-initializer":
            return STORAGE_LOG.format(model=deployment.model, path=deployment.model)
        return proc.tail(deployment.log, lines)
