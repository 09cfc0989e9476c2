"""Target ``azure``: an Azure ML managed online endpoint with a no-code Triton deployment,
and ``azure-twin``, its rehearsal on this machine.

Deploy creates, in order, the endpoint, the registered model (the repository folder, type
``triton_model``), the deployment, and its traffic share; teardown undoes them newest first
(traffic to 0, delete the deployment, archive the model, delete the endpoint). Every control-plane
call goes through :mod:`.seam`; azure-ai-ml is imported only inside methods that need it.

``deploy --update`` registers the new repository as the model's next version and then either
updates the deployment in place (Azure's rolling update: on failure the old instances keep
serving) or, with ``-o blue_green=true``, creates a new deployment beside the old one with no
traffic, smoke-tests it through the ``azureml-model-deployment`` header, moves the traffic, and
only then deletes the old deployment and archives its model.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from deployer import hookimpl
from deployer.errors import (DeployerError, DeployFailed, TeardownIncomplete, Unavailable,
                             UsageError, ValidationError)
from deployer.target import Option, PlannedResource, Rehearsal, Target

from . import spec

DEPLOYMENT_HEADER = spec.DEPLOYMENT_HEADER
LOG_LINES = 30
ERROR_WORDS = re.compile(r"(?i)error|fail|exception|refused|denied")
#: how long the blue/green smoke check waits for the new deployment to answer ready
SMOKE_READY_SECONDS = 60.0

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
    Option("blue_green", bool, False, "deploy --update: create a new deployment beside the old "
           "one (no traffic), smoke-test it, move the traffic, then delete the old one "
           "(default: update the deployment in place)"),
    Option("new_deployment", str, None, "deploy --update with blue_green: the new deployment's "
           "name (default: blue <-> green, else NAME-green)"),
    Option("startup_timeout", float, 1800.0, "seconds each long-running Azure operation "
           "(endpoint, deployment, traffic, delete) may take; past it the deploy stops (exit 3) "
           "with the provisioning state and the container logs. A state line every 30 s"),
)


def toggled(name: str) -> str:
    """The blue/green partner of a deployment name."""
    for this, other in (("blue", "green"), ("green", "blue")):
        if name.endswith(this):
            return name[:-len(this)] + other
    return f"{name}-green"


def _hints(exc, then: str) -> str:
    """The seam error's own hint (quota, deadline), then what to do about the deployment."""
    return f"{exc.hint}; {then}" if getattr(exc, "hint", None) else then


def _live(record, kind: str, **match) -> list:
    """The recorded resources of ``kind`` not deleted, whose data match ``match``."""
    return [r for r in record.resources if r.kind == kind and r.status != "deleted"
            and all(r.data.get(k) == v for k, v in match.items())]


class _Names:
    def __init__(self, settings, name: str):
        self.endpoint = spec.check_name("endpoint", settings.endpoint or
                                        spec.endpoint_name_from(name), "endpoint")
        self.deployment = spec.check_name("deployment", settings.deployment, "deployment")
        self.model = settings.model_name or name
        if not spec.ASSET_RE.match(self.model):
            raise ValidationError(f"model name {self.model!r} is not a valid Azure asset name",
                                  hint="pass -o model_name= with letters, digits, -, _ or .")


class AzureTarget(Target):
    name = "azure"
    description = "Azure ML managed online endpoint with a no-code Triton deployment"
    options = OPTIONS
    requires = ("azure.ai.ml", "azure.identity")
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
        if self.settings.new_deployment:
            spec.check_name("deployment", self.settings.new_deployment, "new_deployment")
        if not self.settings.startup_timeout > 0:
            raise ValidationError(f"startup_timeout must be positive (seconds), got "
                                  f"{self.settings.startup_timeout}")

    def _documents(self, repository, name: str, deployment_id: str | None = None,
                   endpoint: str | None = None, deployment: str | None = None):
        """The endpoint and deployment documents; ``endpoint``/``deployment`` override the
        names the options give (an update keeps the recorded endpoint)."""
        names = _Names(self.settings, name)
        names.endpoint = endpoint or names.endpoint
        names.deployment = deployment or names.deployment
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
        from .seam import stdout_to_stderr

        with stdout_to_stderr():
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

        if getattr(self, "_connected", None) is None:
            self._connected = seam.connect(self.settings, self.progress)
        return self._connected

    @contextlib.contextmanager
    def _calls(self, name: str, stage: str = "create", hint: str | None = None):
        """Seam failures as one-line deployer errors, by stage: ``check`` (nothing created
        yet: exit 2 for credentials, roles and a missing workspace, else 3), ``create`` (3;
        the record keeps what was created), ``read`` (test, logs: 2, else 5), ``teardown``
        (TeardownIncomplete, 4)."""
        from . import seam

        try:
            yield
        except seam.SeamError as exc:
            raise self._error(exc, name, stage, hint) from None

    @staticmethod
    def _error(exc, name: str, stage: str, hint: str | None) -> DeployerError:
        from . import seam

        message = " ".join(str(exc).split())
        if exc.code and exc.code not in message:
            message += f" ({exc.code})"
        hints = [exc.hint] if exc.hint else []
        access = isinstance(exc, (seam.AuthError, seam.WorkspaceMissing))
        if stage == "teardown":
            return TeardownIncomplete(message, hint="; ".join(
                hints + [f"then run 'deployer teardown {name}' again"]))
        if stage == "check":
            return (UsageError if access else DeployFailed)(
                message, hint="; ".join(hints + ["nothing was created"]))
        if stage == "read":
            return (UsageError if access else Unavailable)(message, hint="; ".join(hints) or
                                                           None)
        if isinstance(exc, seam.ConflictError):
            hints.append("choose another name (e.g. -o endpoint=NAME)")
        return DeployFailed(message, hint="; ".join(
            hints + [hint or f"run 'deployer teardown {name}' to remove what was created"]))

    def deploy(self, repository, context) -> None:
        from . import seam as seam_module

        record = context.deployment
        names, endpoint_doc, deployment_doc = self._documents(repository, record.name, record.id)
        endpoint_e, model_e, deployment_e = self._check_entities(endpoint_doc, deployment_doc)
        ep, dep = names.endpoint, names.deployment
        with self._calls(record.name, "check"):  # reads only: credentials, roles, workspace
            seam = self._seam()
            seam.check_workspace()
            existing = seam.get_endpoint(ep)
        if existing is not None and existing.tags.get(spec.ID_TAG) != record.id:
            raise UsageError(f"endpoint {ep} already exists and this deployment did not "
                             "create it", hint="pass -o endpoint=ANOTHER-NAME")
        teardown = f"run 'deployer teardown {record.name}' to remove what was created"
        with self._calls(record.name):
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
                message, details = self._failure(seam, ep, dep, exc)
                raise DeployFailed(message, details=details,
                                   hint=_hints(exc, teardown)) from None
            context.created(resource, provisioning_state=state)

            resource = context.record("traffic", f"{ep}/{dep}", endpoint=ep, deployment=dep,
                                      percent=self.settings.traffic)
            seam.set_traffic(ep, {dep: self.settings.traffic})
            context.created(resource)

    def _failure(self, seam, ep: str, dep: str, exc) -> tuple[str, str]:
        """(one line with the provisioning state, the containers' log lines as details)."""
        from .seam import LOG_CONTAINERS

        from .seam import DeadlineExceeded

        first = " ".join(str(exc).split())
        outcome = "did not finish in time" if isinstance(exc, DeadlineExceeded) else "failed"
        message = f"deployment {ep}/{dep} {outcome}, provisioning state {exc.state}: {first}"
        parts: list[str] = []
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
        return message, "\n".join(parts)

    # -- update (deploy --update) ----------------------------------------------------------
    def _update_plan(self, repository, record):
        """(endpoint, old deployment, new deployment, names, model entity, deployment entity),
        checked before any call."""
        endpoint = record.endpoint
        if not endpoint.get("endpoint") or not endpoint.get("deployment"):
            raise UsageError(f"{record.name!r} has no endpoint recorded",
                             hint=f"run 'deployer teardown {record.name}' and deploy again")
        ep, old = endpoint["endpoint"], endpoint["deployment"]
        if self.settings.endpoint and self.settings.endpoint != ep:
            raise UsageError(f"{record.name!r} lives on endpoint {ep}; an update cannot move it "
                             f"to {self.settings.endpoint}",
                             hint=f"drop -o endpoint, or tear {record.name} down and deploy again")
        new = old
        if self.settings.blue_green:
            new = spec.check_name("deployment", self.settings.new_deployment or toggled(old),
                                  "new_deployment")
            if new == old:
                raise UsageError(f"the new deployment must not be named like the old one ({old})",
                                 hint="pass another -o new_deployment=NAME")
        names, endpoint_doc, deployment_doc = self._documents(repository, record.name, record.id,
                                                              endpoint=ep, deployment=new)
        version = self.settings.model_version
        if version and any(r.data.get("version") == version and
                           r.data.get("name", r.id.split(":")[0]) == names.model
                           for r in _live(record, "model")):
            raise UsageError(f"model {names.model}:{version} is already what {record.name!r} "
                             "serves", hint="pass a new -o model_version, or leave it unset for "
                                            "the next version")
        _, model_e, deployment_e = self._check_entities(endpoint_doc, deployment_doc)
        return ep, old, new, names, model_e, deployment_e

    def update(self, repository, context) -> None:
        """In place (the deployment's rolling update), or blue/green with ``-o blue_green``."""
        from . import seam as seam_module

        record = context.deployment
        ep, old, new, names, model_e, deployment_e = self._update_plan(repository, record)
        keeps = f"{ep}/{old} still serves the previous version"
        with self._calls(record.name, "check"):
            seam = self._seam()
            seam.check_workspace()
            info = seam.get_endpoint(ep)
            gone = seam.get_deployment_state(ep, old) is None
            taken = new != old and seam.get_deployment_state(ep, new) is not None
        if info is None or info.tags.get(spec.ID_TAG) != record.id:
            raise DeployFailed(f"endpoint {ep} is gone or no longer this deployment's",
                               hint=f"run 'deployer teardown {record.name}' and deploy again")
        if gone:
            raise DeployFailed(f"deployment {ep}/{old} is gone",
                               hint=f"run 'deployer teardown {record.name}' and deploy again")
        if taken:
            raise UsageError(f"deployment {ep}/{new} already exists on the endpoint",
                             hint="pass another -o new_deployment=NAME")
        with self._calls(record.name, hint=keeps):
            old_models = _live(record, "model")

            self.progress(f"  registering model {names.model} (uploads the repository)")
            model = context.record("model", names.model, version=self.settings.model_version)
            model_name, version = seam.register_model(model_e)
            context.created(model, id=f"{model_name}:{version}", name=model_name,
                            version=version)
            deployment_e.model = f"azureml:{model_name}:{version}"

            if new == old:
                self.progress(f"  updating deployment {ep}/{old} in place to {model_name}:"
                              f"{version} (a rolling update, 10-20 minutes)")
                try:
                    state = seam.create_or_update_deployment(deployment_e)
                except seam_module.ProvisioningFailed as exc:
                    message, details = self._failure(seam, ep, old, exc)
                    self._abandon([model], context)
                    raise DeployFailed(f"update of {message}", details=details,
                                       hint=_hints(exc, keeps)) from None
                for resource in _live(record, "deployment", deployment=old):
                    context.update(resource, model=f"{model_name}:{version}",
                                   provisioning_state=state)
                self._retire(old_models, context)
                return

            self.progress(f"  creating deployment {ep}/{new} beside {old}, no traffic "
                          f"(10-20 minutes)")
            created = context.record("deployment", f"{ep}/{new}", endpoint=ep, deployment=new,
                                     model=f"{model_name}:{version}")
            try:
                state = seam.create_or_update_deployment(deployment_e)
            except seam_module.ProvisioningFailed as exc:
                message, details = self._failure(seam, ep, new, exc)
                self._abandon([created, model], context)
                raise DeployFailed(f"{message}; it was removed", details=details,
                                   hint=_hints(exc, keeps)) from None
            context.created(created, provisioning_state=state)
            self._move_traffic(repository, context, ep, old, new, [created, model], keeps,
                               old_models, lambda traffic: seam.set_traffic(ep, traffic),
                               lambda: seam.get_endpoint(ep).traffic)

    def _move_traffic(self, repository, context, ep: str, old: str, new: str, fresh: list,
                      keeps: str, old_models: list, set_traffic, get_traffic,
                      **traffic_data) -> None:
        """Blue/green once the new deployment is up: the smoke check (on failure ``fresh`` is
        removed), the traffic (recorded with ``traffic_data``), then the old is retired."""
        record = context.deployment
        self.progress(f"  smoke test of {ep}/{new} ({DEPLOYMENT_HEADER}: {new})")
        failure = self._smoke(repository, record, new)
        if failure:
            self._abandon(fresh, context)
            raise DeployFailed(f"the new deployment {ep}/{new} failed its smoke test, so it "
                               f"was removed: {failure}", hint=keeps)
        percent = self.settings.traffic
        self.progress(f"  moving traffic: {new} {percent}%, {old} 0%")
        traffic = context.record("traffic", f"{ep}/{new}", endpoint=ep, deployment=new,
                                 percent=percent, **traffic_data)
        set_traffic({**get_traffic(), old: 0, new: percent})
        context.created(traffic)
        context.set_endpoint(deployment=new)
        self.progress(f"  removing the old deployment {ep}/{old}")
        self._retire(_live(record, "traffic", deployment=old) +
                     _live(record, "deployment", deployment=old) + old_models, context)

    def _secret(self, deployment):
        """A function fetching the seam's Credential (a key, or a fresh token)."""
        def fetch():
            with self._calls(deployment.name, "read"):
                return self._seam().credential(deployment.endpoint["endpoint"],
                                       deployment.endpoint.get("auth_mode", "key"))
        return fetch

    def _smoke(self, repository, deployment, name: str) -> str | None:
        """Ready, then one inference per served model with generated inputs, on deployment
        ``name`` through the scoring host. Returns why it failed, or None."""
        from deployer.samples import generated_inputs

        try:
            client = self._client({**deployment.endpoint, "deployment": name},
                                  self._secret(deployment))
        except DeployerError as exc:
            return str(exc)
        try:
            deadline = time.monotonic() + SMOKE_READY_SECONDS
            while not client.ready():
                if time.monotonic() > deadline:
                    return f"not ready after {SMOKE_READY_SECONDS:.0f}s"
                time.sleep(0.5)
            for model_name in self.models_served(repository):
                model = repository.models[model_name]
                answer = client.infer(model_name, generated_inputs(model))
                missing = [o.name for o in model.outputs if o.name not in answer]
                if missing:
                    return f"{model_name}: outputs missing: {', '.join(missing)}"
        except (DeployerError, Exception) as exc:  # EndpointError and anything else
            return " ".join(str(exc).split())[:500]  # one line: Triton's messages hold newlines
        finally:
            client.close()
        return None

    def _retire(self, resources: list, context) -> None:
        """Remove what the new version replaced (``delete``, then mark it deleted). The new
        version already serves: what cannot be removed now is a warning and stays recorded,
        so teardown removes it."""
        for resource in resources:
            try:
                self.delete(resource, context.deployment)
            except DeployerError as exc:
                self.progress(f"  warning: could not remove the previous {resource.kind} "
                              f"{resource.id}: {exc}; teardown will retry")
                continue
            context.deleted(resource)

    def _abandon(self, resources: list, context) -> None:
        """Best effort after a failed update: remove what it created; what cannot be removed
        stays recorded for teardown."""
        for resource in resources:
            try:
                self.delete(resource, context.deployment)
            except DeployerError as exc:
                self.progress(f"  could not remove {resource.kind} {resource.id}: {exc}")
                continue
            context.deleted(resource)

    def client(self, deployment):
        return self._client(deployment.endpoint, self._secret(deployment))

    @staticmethod
    def _client(endpoint: dict, fetch: Callable[[], Any]):
        import urllib.parse

        from .client import AzureClient

        # KServe routes sit at the root of the scoring host; the URI itself ends in /score
        parsed = urllib.parse.urlparse(endpoint["url"])
        client = AzureClient(f"{parsed.scheme}://{parsed.netloc}", fetch,
                             endpoint["deployment"], endpoint["endpoint"])
        client.probe()
        return client

    def delete(self, resource, deployment) -> bool:
        data = resource.data
        with self._calls(deployment.name, "teardown"):
            seam = self._seam()
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
        data = resource.data
        with self._calls(deployment.name, "teardown"):
            seam = self._seam()
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

    def recover(self, name, deployment_id):
        """The endpoints tagged with the deployment's id (or, without one, its name), each
        followed by its deployments (the model each serves first, its traffic after), and the
        tagged versions of model ``model_name`` (default: the name) that nothing serves."""
        from deployer.state import Resource

        tags = {spec.ID_TAG: deployment_id} if deployment_id else {spec.NAME_TAG: name}
        found: list = []
        models: set = set()

        def model(model_name, version):
            if (model_name, version) not in models:
                models.add((model_name, version))
                found.append(Resource("model", f"{model_name}:{version}", "created",
                                      {"name": model_name, "version": version}))

        with self._calls(name, "teardown"):
            seam = self._seam()
            for endpoint in seam.find_endpoints(tags):
                ep = endpoint.name
                found.append(Resource("endpoint", ep, "created", {
                    "auth_mode": endpoint.auth_mode, "scoring_uri": endpoint.scoring_uri}))
                for deployment in seam.list_deployments(ep):
                    if deployment.model:
                        model(*deployment.model)
                    data = {"endpoint": ep, "deployment": deployment.name}
                    found.append(Resource("deployment", f"{ep}/{deployment.name}", "created",
                                          dict(data)))
                    if endpoint.traffic.get(deployment.name):
                        found.append(Resource("traffic", f"{ep}/{deployment.name}", "created",
                                              {**data,
                                               "percent": endpoint.traffic[deployment.name]}))
            model_name = self.settings.model_name or name
            for version in seam.model_versions(model_name, tags):
                if (model_name, version) not in models:
                    # registered, never served: right after the endpoint, as deploy records it
                    models.add((model_name, version))
                    at = 1 if found and found[0].kind == "endpoint" else 0
                    found.insert(at, Resource("model", f"{model_name}:{version}", "created",
                                             {"name": model_name, "version": version}))
        return found

    def instances(self, deployment):
        return [(self.settings.instance_type, self.settings.instance_count)]

    def logs(self, deployment, lines=100) -> str:
        from .seam import LOG_CONTAINERS

        endpoint = deployment.endpoint
        if not endpoint.get("endpoint"):
            return ""
        with self._calls(deployment.name, "read"):
            seam = self._seam()
            return "\n".join(f"--- {c} ---\n" + seam.logs(endpoint["endpoint"],
                                                          endpoint["deployment"], lines, c)
                             for c in LOG_CONTAINERS)


class AzureTwin(Rehearsal, AzureTarget):
    """The rehearsal: the uploaded folder served by the embedded tritonserver behind a gateway
    that checks the bearer key and routes on ``azureml-model-deployment``."""

    name = "azure-twin"
    description = ("rehearsal of azure on this machine: embedded tritonserver behind a "
                   "bearer-key gateway that routes on azureml-model-deployment")
    options = tuple(o for o in OPTIONS if o.name != "startup_timeout") + (
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
        if AzureTarget.unavailable_reason():  # the rehearsal runs without the SDK
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

    def _secret(self, deployment):
        from . import seam, twin

        try:
            key = seam.Credential(twin.read_key(Path(deployment.endpoint["key_file"])))
        except (KeyError, FileNotFoundError):
            raise UsageError(f"the rehearsal key of {deployment.name} is gone",
                             hint=f"run 'deployer teardown {deployment.name}' and deploy "
                                  "again") from None
        return lambda: key

    def update(self, repository, context) -> None:
        """Both modes start a new tritonserver on the new model folder first. Blue/green: it
        joins the gateway's routes as the new deployment with 0 traffic, is smoke-tested
        through the gateway with the header, gets the traffic, then the old server stops. In
        place: once it is ready, the deployment's route switches to it and the old server stops
        (a surge, as Azure's rolling update; no smoke check, as in place on Azure)."""
        import secrets

        from deployer import server as proc

        from . import twin

        record = context.deployment
        work = Path(context.work_dir)
        ep, old, new, names, _, _ = self._update_plan(repository, record)
        keeps = f"{ep}/{old} still serves the previous version"
        gateways = [r for r in _live(record, "endpoint") if proc.tagged(r.data["tag"])]
        if not gateways:
            raise DeployFailed(f"the rehearsal gateway of {ep} is not running",
                               hint=f"run 'deployer teardown {record.name}' and deploy again")
        routes = Path(gateways[0].data["routes"])
        if new != old and new in twin.read_routes(routes).get("deployments", {}):
            raise UsageError(f"deployment {ep}/{new} already exists on the endpoint",
                             hint="pass another -o new_deployment=NAME")
        old_models = _live(record, "model")
        versions = [int(r.id.rpartition(":")[2]) for r in record.resources
                    if r.kind == "model" and r.id.rpartition(":")[2].isdigit()]
        version = self.settings.model_version or str(1 + max(versions or [0]))

        suffix = secrets.token_hex(3)
        folder = work / f"model-{suffix}"
        model = context.record("model", names.model, path=str(folder))
        model_dir = twin.copy_model(repository, folder)
        context.created(model, id=f"{names.model}:{version}", served=str(model_dir))

        tag = f"{record.id}-{new}-{suffix}"
        log_path = work / f"inference-server-{new}-{suffix}.log"
        created = context.record("deployment", f"{ep}/{new}", endpoint=ep, deployment=new,
                                 tag=tag, log=str(log_path), routes=str(routes))
        try:
            pid, triton_url = twin.start_triton(model_dir, work, tag, self.progress,
                                                self.settings.server,
                                                timeout=self.settings.startup_timeout,
                                                log_name=log_path.name)
        except DeployFailed as exc:
            proc.stop(tag)  # never routed: the route (in place: the old server's) stays
            context.deleted(created)
            self._abandon([model], context)
            raise DeployFailed(f"{'update of ' if new == old else ''}deployment {ep}/{new} "
                               f"failed, provisioning state Failed: {exc.message}",
                               hint=f"{keeps}; {exc.hint}", details=exc.details) from None
        context.created(created, pid=pid, url=triton_url, provisioning_state="Succeeded")

        if new == old:
            self.progress(f"  switching {ep}/{old} to the new server")
            twin.update_routes(routes, old, url=triton_url)
            self._retire([r for r in _live(record, "deployment", deployment=old)
                          if r is not created] + old_models, context)
            return

        twin.update_routes(routes, new, url=triton_url, traffic=0)

        def set_traffic(traffic):
            current = twin.read_routes(routes)
            current["traffic"] = traffic
            twin.write_routes(routes, current)

        self._move_traffic(repository, context, ep, old, new, [created, model], keeps,
                           old_models, set_traffic,
                           lambda: dict(twin.read_routes(routes).get("traffic", {})),
                           routes=str(routes))

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
            routes = Path(data["routes"])
            serving = twin.read_routes(routes).get("deployments", {}).get(data["deployment"])
            # after an in-place update the route names a newer server: leave it
            if routes.exists() and (not data.get("url") or serving in (None, data["url"])):
                twin.update_routes(routes, data["deployment"], remove=True)
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
            if resource.data.get("log") and resource.status != "deleted":
                parts.append(f"--- {Path(resource.data['log']).name} ---\n"
                             + tail(resource.data["log"], lines))
        return "\n".join(parts)


@hookimpl
def deployer_register_targets():
    return [AzureTarget, AzureTwin]
