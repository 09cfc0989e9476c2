"""Target ``azure``: an Azure ML managed online endpoint with a no-code Triton deployment,
and ``azure-twin``, its rehearsal on this machine.

Deploy creates, in order, the endpoint, the registered model (the repository folder, type
``triton_model``), the deployment, and its traffic share; teardown undoes them newest first
(traffic to 0, delete the deployment, archive the model, delete the endpoint). Every control-plane
call goes through :mod:`.seam`; azure-ai-ml is imported only inside methods that need it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from deployer import hookimpl
from deployer.client import EndpointError, KServeClient
from deployer.errors import DeployFailed, Unavailable, UsageError, ValidationError
from deployer.target import Option, PlannedResource, Rehearsal, Target

from . import spec

DEPLOYMENT_HEADER = "azureml-model-deployment"
LOG_LINES = 30
ERROR_WORDS = re.compile(r"(?i)error|fail|exception|refused|denied")

OPTIONS = (
    Option("subscription", str, None, "Azure subscription id (with resource_group and "
           "workspace; else workspace_config is read)"),
    Option("resource_group", str, None, "resource group of the Azure ML workspace"),
    Option("workspace", str, None, "Azure ML workspace name"),
    Option("workspace_config", str, None, "path of the config.json MLClient.from_config reads "
           "(default: found from the current folder up)"),
    Option("endpoint", str, None, "endpoint name, 3-32 letters, digits, single dashes, unique "
           "in the region (default: from the deployment name)"),
    Option("deployment", str, "blue", "deployment name inside the endpoint"),
    Option("instance_type", str, "STANDARD_NC4AS_T4_V3", "VM size (a managed online endpoint "
           "SKU; case does not matter)"),
    Option("instance_count", int, 1, "number of instances"),
    Option("auth_mode", str, "key", "how callers authenticate", choices=("key", "aml_token",
                                                                         "aad_token")),
    Option("traffic", int, 100, "percent of the endpoint's traffic for the new deployment"),
    Option("model_name", str, None, "registered model name (default: the deployment name)"),
    Option("model_version", str, None, "registered model version (default: the next one)"),
    Option("tags", list, [], "extra tags KEY=VALUE on endpoint, deployment and model"),
    Option("yaml_dir", str, None, "plan writes endpoint.yml and deployment.yml here "
           "(for 'az ml online-endpoint create -f')"),
)


class _Names:
    def __init__(self, settings, name: str):
        self.endpoint = spec.check_name("endpoint", settings.endpoint or
                                        spec.endpoint_name_from(name), "endpoint")
        self.deployment = spec.check_name("deployment", settings.deployment, "deployment")
        self.model = settings.model_name or name
        if not spec.ASSET_RE.match(self.model):
            raise ValidationError(f"model name {self.model!r} is not a valid Azure asset name",
                                  hint="pass -o model_name= with letters, digits, -, _ or .")


class AzureClient(KServeClient):
    """KServe v2 on the scoring URI; a 401 says what to check."""

    def __init__(self, url: str, headers: dict[str, str], endpoint: str):
        super().__init__(url, headers)
        self._refused = (f"endpoint {endpoint} refused the credentials (HTTP 401): the key or "
                         "token is wrong, expired or regenerated, or auth_mode does not match")

    def _call(self, what, fn):
        try:
            return super()._call(what, fn)
        except EndpointError as exc:
            if exc.kind == "http-401":
                raise EndpointError(f"{what}: {self._refused}", kind=exc.kind) from None
            raise

    def probe(self) -> None:
        """Raise Unavailable at once on a 401 rather than waiting for a ready that never comes."""
        request = urllib.request.Request(self.url + "/v2/health/ready", headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=10):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise Unavailable(self._refused, hint="for a cloud endpoint: az ml online-"
                                  "endpoint get-credentials; then run the test again") from None
        except (urllib.error.URLError, OSError):
            pass  # not up yet: the test step's ready check reports it


class AzureTarget(Target):
    name = "azure"
    description = "Azure ML managed online endpoint with a no-code Triton deployment"
    options = OPTIONS
    requires = ("azure.ai.ml",)
    install_hint = "pip install 'triton-deployer[azure]'"
    twin = "azure-twin"
    runs_here = False

    # -- what would be sent ----------------------------------------------------------------
    def validate(self, repository) -> None:
        spec.check_repository(repository)
        spec.instance_type(self.settings.instance_type)
        if self.settings.instance_count < 1:
            raise ValidationError("instance_count must be at least 1")
        if not 0 <= self.settings.traffic <= 100:
            raise ValidationError(f"traffic must be 0-100 (percent), got {self.settings.traffic}")
        spec.parse_tags(self.settings.tags)
        if self.settings.endpoint:
            spec.check_name("endpoint", self.settings.endpoint, "endpoint")
        spec.check_name("deployment", self.settings.deployment, "deployment")

    def _documents(self, repository, name: str, deployment_id: str | None = None):
        names = _Names(self.settings, name)
        tags = {**spec.parse_tags(self.settings.tags), spec.NAME_TAG: name}
        if deployment_id:
            tags[spec.ID_TAG] = deployment_id
        model: dict[str, Any] = {"name": names.model, "path": str(repository.path),
                                 "type": "triton_model"}
        if self.settings.model_version:
            model["version"] = self.settings.model_version
        endpoint = spec.endpoint_yaml(names.endpoint, self.settings.auth_mode, tags)
        deployment = spec.deployment_yaml(
            names.deployment, names.endpoint, model, spec.instance_type(self.settings.instance_type),
            self.settings.instance_count, tags)
        return names, endpoint, deployment

    def _check_entities(self, endpoint_doc, deployment_doc):
        with contextlib.redirect_stdout(__import__("sys").stderr):
            return spec.entities(endpoint_doc, deployment_doc)

    def plan(self, repository, name):
        names, endpoint, deployment = self._documents(repository, name)
        self._check_entities(endpoint, deployment)
        if self.settings.yaml_dir:
            self._write_yaml(Path(self.settings.yaml_dir), endpoint, deployment)
        return [
            PlannedResource("endpoint", names.endpoint, endpoint),
            PlannedResource("model", names.model, deployment["model"]),
            PlannedResource("deployment", f"{names.endpoint}/{names.deployment}", deployment),
            PlannedResource("traffic", f"{names.endpoint}/{names.deployment}",
                            {names.deployment: self.settings.traffic}),
        ]

    def _write_yaml(self, folder: Path, endpoint, deployment) -> None:
        import json

        folder.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: no YAML library needed, and the SDK's loaders read it as such
        for file_name, doc in (("endpoint.yml", endpoint), ("deployment.yml", deployment)):
            (folder / file_name).write_text(json.dumps(doc, indent=2) + "\n")
            self.progress(f"wrote {folder / file_name}")

    # -- control plane ---------------------------------------------------------------------
    def _seam(self):
        from . import seam

        try:
            return seam.connect(self.settings, self.progress)
        except seam.AuthError as exc:
            raise Unavailable(str(exc), hint=seam.AUTH_HINT) from None
        except seam.SeamError as exc:
            raise UsageError(str(exc), hint="pass -o subscription=ID -o resource_group=RG "
                             "-o workspace=NAME, or -o workspace_config=PATH") from None

    @contextlib.contextmanager
    def _calls(self, name: str):
        """Turn seam failures into one-line deployer errors."""
        from . import seam

        try:
            yield
        except seam.AuthError as exc:
            raise Unavailable(str(exc), hint=seam.AUTH_HINT) from None
        except seam.ProvisioningFailed:
            raise
        except seam.SeamError as exc:
            message = str(exc) if not exc.code or exc.code in str(exc) else f"{exc} ({exc.code})"
            hint = f"run 'deployer teardown {name}' to remove what was created"
            if isinstance(exc, seam.ConflictError):
                hint = "choose another name (e.g. -o endpoint=NAME), then " + hint
            raise DeployFailed(message, hint=hint) from None

    def deploy(self, repository, context) -> None:
        from . import seam as seam_module

        record = context.deployment
        names, endpoint_doc, deployment_doc = self._documents(repository, record.name, record.id)
        endpoint_e, model_e, deployment_e = self._check_entities(endpoint_doc, deployment_doc)
        seam = self._seam()
        ep, dep = names.endpoint, names.deployment
        with self._calls(record.name):
            existing = seam.get_endpoint(ep)
            if existing is not None and existing.tags.get(spec.ID_TAG) != record.id:
                raise UsageError(f"endpoint {ep} already exists and this deployment did not "
                                 "create it", hint="pass -o endpoint=ANOTHER-NAME")
            self.progress(f"  creating endpoint {ep} (a few minutes)")
            resource = context.record("endpoint", ep, auth_mode=self.settings.auth_mode)
            info = seam.create_or_update_endpoint(endpoint_e)
            context.created(resource, scoring_uri=info.scoring_uri,
                            provisioning_state=info.provisioning_state)
            context.set_endpoint(url=info.scoring_uri, endpoint=ep, deployment=dep,
                                 auth_mode=self.settings.auth_mode)

            self.progress(f"  registering model {names.model} (uploads the repository)")
            resource = context.record("model", names.model,
                                      version=self.settings.model_version)
            model_name, version = seam.register_model(model_e)
            context.created(resource, id=f"{model_name}:{version}", name=model_name,
                            version=version)
            deployment_e.model = f"azureml:{model_name}:{version}"

            self.progress(f"  creating deployment {ep}/{dep} on {deployment_doc['instance_type']}"
                          f" x{deployment_doc['instance_count']} (10-20 minutes)")
            resource = context.record("deployment", f"{ep}/{dep}", endpoint=ep, deployment=dep)
            try:
                state = seam.create_or_update_deployment(deployment_e)
            except seam_module.ProvisioningFailed as exc:
                raise DeployFailed(self._failure(seam, ep, dep, exc),
                                   hint=f"run 'deployer teardown {record.name}' to remove what "
                                        "was created") from None
            context.created(resource, provisioning_state=state)

            resource = context.record("traffic", f"{ep}/{dep}", endpoint=ep, deployment=dep,
                                      percent=self.settings.traffic)
            seam.set_traffic(ep, {dep: self.settings.traffic})
            context.created(resource)

    def _failure(self, seam, ep: str, dep: str, exc) -> str:
        from .seam import LOG_CONTAINERS

        parts = [f"deployment {ep}/{dep} failed, provisioning state {exc.state}: {exc}"]
        for container in LOG_CONTAINERS:
            text = seam.logs(ep, dep, 4 * LOG_LINES, container).strip()
            lines = text.splitlines() if text else ["(empty)"]
            tail = lines[-LOG_LINES:]
            # the cause is often above the tail (Triton prints its options table after it)
            earlier = [line for line in lines[:-LOG_LINES] if ERROR_WORDS.search(line)][-10:]
            if earlier:
                parts.append(f"--- {container} (error lines) ---")
                parts.extend(earlier)
            parts.append(f"--- {container} (last {len(tail)} lines) ---")
            parts.extend(tail)
        return "\n".join(parts)

    def client(self, deployment):
        endpoint = deployment.endpoint
        seam = self._seam()
        with self._calls(deployment.name):
            secret = seam.credential(endpoint["endpoint"], endpoint.get("auth_mode", "key"))
        return self._client(endpoint, secret)

    @staticmethod
    def _client(endpoint: dict, secret: str) -> AzureClient:
        # KServe routes sit at the root of the scoring host; the URI itself ends in /score
        parsed = urllib.parse.urlparse(endpoint["url"])
        client = AzureClient(f"{parsed.scheme}://{parsed.netloc}", {"Authorization": f"Bearer {secret}",
                                               DEPLOYMENT_HEADER: endpoint["deployment"]},
                             endpoint["endpoint"])
        client.probe()
        return client

    def delete(self, resource, deployment) -> bool:
        seam = self._seam()
        data = resource.data
        with self._calls(deployment.name):
            if resource.kind == "endpoint":
                return seam.delete_endpoint(resource.id)
            if resource.kind == "model":
                return bool(data.get("version")) and seam.archive_model(
                    data.get("name", resource.id), data["version"])
            if resource.kind == "deployment":
                return seam.delete_deployment(data["endpoint"], data["deployment"])
            if resource.kind == "traffic":
                info = seam.get_endpoint(data["endpoint"])
                if info is None or not info.traffic.get(data["deployment"]):
                    return False
                seam.set_traffic(data["endpoint"], {**info.traffic, data["deployment"]: 0})
                return True
        raise UsageError(f"unknown resource kind {resource.kind!r}")

    def exists(self, resource, deployment) -> bool:
        seam = self._seam()
        data = resource.data
        with self._calls(deployment.name):
            if resource.kind == "endpoint":
                return seam.get_endpoint(resource.id) is not None
            if resource.kind == "model":
                return bool(data.get("version")) and seam.model_active(
                    data.get("name", resource.id), data["version"])
            if resource.kind == "deployment":
                return seam.get_deployment_state(data["endpoint"], data["deployment"]) is not None
            if resource.kind == "traffic":
                info = seam.get_endpoint(data["endpoint"])
                return bool(info and info.traffic.get(data["deployment"]))
        return False

    def instances(self, deployment):
        return [(self.settings.instance_type, self.settings.instance_count)]

    def logs(self, deployment, lines=100) -> str:
        from .seam import LOG_CONTAINERS

        endpoint = deployment.endpoint
        if not endpoint.get("endpoint"):
            return ""
        seam = self._seam()
        with self._calls(deployment.name):
            return "\n".join(f"--- {c} ---\n" + seam.logs(endpoint["endpoint"],
                                                          endpoint["deployment"], lines, c)
                             for c in LOG_CONTAINERS)


class AzureTwin(Rehearsal, AzureTarget):
    """The rehearsal: the uploaded folder served by the embedded tritonserver behind a gateway
    that checks the bearer key and routes on ``azureml-model-deployment``."""

    name = "azure-twin"
    description = ("rehearsal of azure on this machine: embedded tritonserver behind a "
                   "bearer-key gateway that routes on azureml-model-deployment")
    options = OPTIONS + (
        Option("server", str, None, "path of a tritonserver (default: $DEPLOYER_TRITONSERVER, "
               "PATH, then the managed runtime)"),
        Option("startup_timeout", float, 120.0, "seconds to wait for tritonserver"),
    )
    def validate(self, repository) -> None:
        super().validate(repository)
        from deployer import runtime

        runtime.check_backends(repository, self.settings.server,
                               hint="it cannot be rehearsed here; name a server that has it "
                                    "with -o server=PATH")

    def _check_entities(self, endpoint_doc, deployment_doc):
        import importlib.util

        if importlib.util.find_spec("azure.ai.ml") is None:  # the rehearsal runs without it
            return None, None, None
        return super()._check_entities(endpoint_doc, deployment_doc)

    def deploy(self, repository, context) -> None:
        from . import twin

        record = context.deployment
        work = Path(context.work_dir)
        names, endpoint_doc, deployment_doc = self._documents(repository, record.name, record.id)
        self._check_entities(endpoint_doc, deployment_doc)
        ep, dep = names.endpoint, names.deployment
        key_file, routes = work / "endpoint.key", work / "routes.json"

        tag = f"{record.id}-gateway"
        resource = context.record("endpoint", ep, tag=tag, key_file=str(key_file),
                                  routes=str(routes), log=str(work / "gateway.log"))
        twin.write_key(key_file)
        pid, url = twin.start_gateway(work, tag, key_file, routes, self.progress)
        url += "/score"  # as Azure's scoring URI
        context.created(resource, pid=pid, scoring_uri=url, provisioning_state="Succeeded")
        context.set_endpoint(url=url, endpoint=ep, deployment=dep,
                             auth_mode=self.settings.auth_mode, key_file=str(key_file))

        resource = context.record("model", names.model, path=str(work / "model"))
        model_dir = twin.copy_model(repository, work / "model")
        context.created(resource, id=f"{names.model}:{self.settings.model_version or 1}",
                        path=str(work / "model"), served=str(model_dir))

        tag = f"{record.id}-{dep}"
        log_path = work / "inference-server.log"
        resource = context.record("deployment", f"{ep}/{dep}", endpoint=ep, deployment=dep,
                                  tag=tag, log=str(log_path), routes=str(routes))
        try:
            pid, triton_url = twin.start_triton(model_dir, work, tag, self.progress,
                                                self.settings.server,
                                                timeout=self.settings.startup_timeout)
        except DeployFailed as exc:
            raise DeployFailed(f"deployment {ep}/{dep} failed, provisioning state Failed: "
                               f"{exc.message}", hint=exc.hint) from None
        twin.update_routes(routes, dep, url=triton_url, traffic=0)
        context.created(resource, pid=pid, url=triton_url, provisioning_state="Succeeded")

        resource = context.record("traffic", f"{ep}/{dep}", endpoint=ep, deployment=dep,
                                  routes=str(routes), percent=self.settings.traffic)
        twin.update_routes(routes, dep, traffic=self.settings.traffic)
        context.created(resource)

    def client(self, deployment):
        from . import twin

        endpoint = deployment.endpoint
        try:
            key = twin.read_key(Path(endpoint["key_file"]))
        except (KeyError, FileNotFoundError):
            raise UsageError(f"the rehearsal key of {deployment.name} is gone",
                             hint=f"run 'deployer teardown {deployment.name}' and deploy "
                                  "again") from None
        return self._client(endpoint, key)

    def delete(self, resource, deployment) -> bool:
        from deployer import server as proc

        from . import twin

        data = resource.data
        if resource.kind == "endpoint":
            stopped = proc.stop(data["tag"])
            had_key = Path(data["key_file"]).exists()
            Path(data["key_file"]).unlink(missing_ok=True)
            return stopped or had_key
        if resource.kind == "model":
            present = Path(data["path"]).exists()
            shutil.rmtree(data["path"], ignore_errors=True)
            return present
        if resource.kind == "deployment":
            stopped = proc.stop(data["tag"])
            if Path(data["routes"]).exists():
                twin.update_routes(Path(data["routes"]), data["deployment"], remove=True)
            return stopped
        if resource.kind == "traffic":
            routes = twin.read_routes(Path(data["routes"]))
            if not routes.get("traffic", {}).get(data["deployment"]):
                return False
            twin.update_routes(Path(data["routes"]), data["deployment"], traffic=0)
            return True
        raise UsageError(f"unknown resource kind {resource.kind!r}")

    def exists(self, resource, deployment) -> bool:
        from deployer import server as proc

        from . import twin

        data = resource.data
        if resource.kind == "endpoint":
            return bool(proc.tagged(data["tag"])) or Path(data["key_file"]).exists()
        if resource.kind == "model":
            return Path(data["path"]).exists()
        if resource.kind == "deployment":
            return bool(proc.tagged(data["tag"]))
        if resource.kind == "traffic":
            routes = twin.read_routes(Path(data["routes"]))
            return bool(routes.get("traffic", {}).get(data["deployment"]))
        return False

    def logs(self, deployment, lines=100) -> str:
        from deployer.server import tail

        parts = []
        for resource in deployment.resources:
            if resource.data.get("log"):
                parts.append(f"--- {Path(resource.data['log']).name} ---\n"
                             + tail(resource.data["log"], lines))
        return "\n".join(parts)


@hookimpl
def deployer_register_targets():
    return [AzureTarget, AzureTwin]
