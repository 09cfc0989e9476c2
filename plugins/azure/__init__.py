"""Target ``azure``: an Azure ML managed online endpoint with a no-code Triton deployment.
Its rehearsal ``azure-twin`` (:mod:`.twin`) is a target of its own built from the same
builders (:mod:`.spec`) and update steps (:mod:`.update`).

Deploy creates, in order, the endpoint, the registered model (the repository folder, type
``triton_model``), the deployment, and its traffic share; teardown undoes them newest first
(traffic to 0, delete the deployment, archive the model, delete the endpoint). Every control-plane
call goes through :mod:`.seam`; azure-ai-ml is imported only inside methods that need it.

``deploy --update`` registers the new repository as the model's next version and then either
updates the deployment in place (Azure's rolling update: on failure the old instances keep
serving) or, with ``-o blue_green=true``, creates a new deployment beside the old one with no
traffic, smoke-tests it through the ``azureml-model-deployment`` header, moves the traffic, and
only then deletes the old deployment and archives its model (the steps of :mod:`.update`).

With the scaling options (``min_instances`` ... ``scale_out_cooldown``) the deployment starts
with ``Scaling.initial`` instances and, when it may scale, an Azure Monitor autoscale setting
targets it (recorded last, so teardown deletes it first): one profile with the range, and two
rules on the endpoint's ``RequestsPerMinute`` for the deployment, per instance (scale out by one
above the target, in by one below half of it). Blue/green gives the new deployment a setting of
its own and removes the old one's with the old deployment; in place keeps (and updates) it.

After a load, ``cloud_time`` reads Azure Monitor's metrics of the endpoint for the serving
deployment (``RequestLatency``, ``RequestsPerMinute``; see :meth:`AzureTarget.cloud_time`).
"""

from __future__ import annotations

import contextlib
import re

from deployer import hookimpl
from deployer.errors import (DeployerError, DeployFailed, TeardownIncomplete, Unavailable,
                             UsageError)
from deployer.target import CloudTime, Fleet, Target, wait_for_metrics

from . import spec, update
from .twin import AzureTwin

DEPLOYMENT_HEADER = spec.DEPLOYMENT_HEADER
OPTIONS = spec.OPTIONS
LOG_LINES = 30
ERROR_WORDS = re.compile(r"(?i)error|fail|exception|refused|denied")
#: seconds between two metrics queries while waiting for Azure Monitor, and between two
#: progress lines
METRICS_POLL = 15.0
METRICS_PROGRESS = 30.0
#: the minute that must be published for the window to count as covered: the one this many
#: seconds before the window's end (its end follows the last request by a moment)
METRICS_SETTLE = 2.0


def _hints(exc, then: str) -> str:
    """The seam error's own hint (quota, deadline), then what to do about the deployment."""
    return f"{exc.hint}; {then}" if getattr(exc, "hint", None) else then


def _registering(name: str, model) -> str:
    """What registering the model says: its name and the bytes it uploads."""
    from pathlib import Path

    from deployer.progress import amount

    folder = Path(str(getattr(model, "path", "") or ""))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) \
        if folder.is_dir() else 0
    return (f"  registering model {name} (uploads the repository"
            + (f", {amount(size, 'bytes')})" if size else ")"))


def _failure(seam, ep: str, dep: str, exc) -> tuple[str, str]:
    """(one line with the provisioning state, the containers' log lines as details)."""
    from .seam import LOG_CONTAINERS, DeadlineExceeded

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


class AzureTarget(Target):
    name = "azure"
    description = "Azure ML managed online endpoint with a no-code Triton deployment"
    options = OPTIONS
    hardware = "azure"
    requires = ("azure.ai.ml", "azure.identity")
    install_hint = "pip install 'triton-deployer[azure]'"
    twin = "azure-twin"
    runs_here = False

    # -- what would be sent ----------------------------------------------------------------
    def validate(self, repository) -> None:
        spec.check_settings(self.settings, repository)
        if spec.autoscales(self.settings) and not spec.sdk_installed(spec.MONITOR):
            raise UsageError("autoscaling needs azure-mgmt-monitor (an Azure Monitor autoscale "
                             "setting)", hint=self.install_hint)
        spec.warn_instance_type(self.settings.instance_type, self.progress)
        spec.warn_sequences(self.settings, repository, self.progress)

    def plan(self, repository, name):
        return spec.plan(self.settings, repository, name, self.progress)

    def export(self, repository, name, directory):
        """endpoint.yml and deployment.yml, for 'az ml online-endpoint create -f'."""
        return spec.export(self.settings, repository, name, directory, self.progress)

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
        names, endpoint_doc, deployment_doc = spec.documents(self.settings, repository,
                                                             record.name, record.id)
        endpoint_e, model_e, deployment_e = spec.checked_entities(endpoint_doc, deployment_doc)
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
            resource = context.record("endpoint", ep, auth_mode=self.settings.auth_mode)
            info = seam.create_or_update_endpoint(
                endpoint_e, label=f"  creating endpoint {ep} (a few minutes)")
            context.created(resource, scoring_uri=info.scoring_uri,
                            provisioning_state=info.provisioning_state)
            context.set_endpoint(url=info.scoring_uri, endpoint=ep, deployment=dep,
                                 auth_mode=self.settings.auth_mode)

            resource = context.record("model", names.model,
                                      version=self.settings.model_version)
            model_name, version = seam.register_model(model_e, label=_registering(
                names.model, model_e))
            context.created(resource, id=f"{model_name}:{version}", name=model_name,
                            version=version)
            deployment_e.model = f"azureml:{model_name}:{version}"

            resource = context.record("deployment", f"{ep}/{dep}", endpoint=ep, deployment=dep,
                                      **spec.sent_limits(deployment_doc))
            try:
                state = seam.create_or_update_deployment(deployment_e, label=(
                    f"  creating deployment {ep}/{dep} on {deployment_doc['instance_type']} "
                    f"x{deployment_doc['instance_count']} (10-20 minutes)"))
            except seam_module.ProvisioningFailed as exc:
                message, details = _failure(seam, ep, dep, exc)
                raise DeployFailed(message, details=details,
                                   hint=_hints(exc, teardown)) from None
            context.created(resource, provisioning_state=state)

            resource = context.record("traffic", f"{ep}/{dep}", endpoint=ep, deployment=dep,
                                      percent=self.settings.traffic)
            seam.set_traffic(ep, {dep: self.settings.traffic})
            context.created(resource)
            self._autoscale(seam, context, ep, dep, deployment_doc["tags"])

    def _autoscale(self, seam, context, ep: str, dep: str, tags: dict, resource=None):
        """When the options scale: the autoscale setting of deployment ``ep/dep``, recorded
        before it is created (or, given its ``resource``, updated in place). Returns it."""
        fleet = spec.autoscales(self.settings)
        if fleet is None:
            return None
        endpoint_id, deployment_id = seam.resource_ids(ep, dep)
        document = spec.autoscale_document(fleet, dep, endpoint_id, deployment_id,
                                           seam.location or seam.check_workspace(), tags)
        setting = spec.autoscale_entity(document)
        name = spec.autoscale_name(ep, dep)
        data = dict(endpoint=ep, deployment=dep, target=deployment_id, minimum=fleet.minimum,
                    maximum=fleet.maximum, rule=spec.autoscale_rule(document))
        self.progress(f"  {'updating' if resource else 'creating'} autoscale setting {name}: "
                      f"{fleet.minimum}-{fleet.maximum} instances")
        if resource is None:
            resource = context.record("autoscale", name, **data)
        else:
            context.update(resource, **data)
        seam.create_autoscale(name, setting)
        context.created(resource)
        return resource

    # -- update (deploy --update) ----------------------------------------------------------
    def update(self, repository, context) -> None:
        """In place (the deployment's rolling update), or blue/green with ``-o blue_green``:
        the steps of :mod:`.update`, each call through the seam."""
        record = context.deployment
        plan = update.plan(self.settings, repository, record)
        _, model_e, deployment_e = spec.checked_entities(plan.endpoint_doc, plan.deployment_doc)
        seam = self._check_update(plan, record)
        with self._calls(record.name, hint=plan.keeps):
            update.run(_Cloud(self, seam, plan.endpoint, model_e, deployment_e), plan,
                       repository, context)

    def _check_update(self, plan, record):
        """Reads only: the endpoint is still this deployment's, its old deployment is there
        and the new one's name is free. Returns the seam."""
        ep, old, new = plan.endpoint, plan.old, plan.new
        with self._calls(record.name, "check"):
            seam = self._seam()
            seam.check_workspace()
            info = seam.get_endpoint(ep)
            gone = seam.get_deployment_state(ep, old) is None
            taken = not plan.in_place and seam.get_deployment_state(ep, new) is not None
        if info is None or info.tags.get(spec.ID_TAG) != record.id:
            raise DeployFailed(f"endpoint {ep} is gone or no longer this deployment's",
                               hint=f"run 'deployer teardown {record.name}' and deploy again")
        if gone:
            raise DeployFailed(f"deployment {ep}/{old} is gone",
                               hint=f"run 'deployer teardown {record.name}' and deploy again")
        if taken:
            raise UsageError(f"deployment {ep}/{new} already exists on the endpoint",
                             hint="pass another -o new_deployment=NAME")
        return seam

    def _secret(self, deployment):
        """A function fetching the seam's Credential (a key, or a fresh token)."""
        def fetch():
            with self._calls(deployment.name, "read"):
                return self._seam().credential(deployment.endpoint["endpoint"],
                                               deployment.endpoint.get("auth_mode", "key"))
        return fetch

    def client(self, deployment):
        from .client import connect

        return connect(deployment.endpoint, self._secret(deployment))

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
            if resource.kind == "autoscale":
                return seam.delete_autoscale(resource.id)
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
            if resource.kind == "autoscale":
                return seam.get_autoscale(resource.id) is not None
        return False

    def recover(self, name, deployment_id):
        """The endpoints tagged with the deployment's id (or, without one, its name), each
        followed by its deployments (the model each serves first, its traffic after), and the
        tagged versions of model ``model_name`` (default: the name) that nothing serves, and the
        tagged autoscale settings (each after its deployment's traffic; one whose deployment is
        gone last, so it goes first)."""
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
            settings = (seam.find_autoscales(tags) if spec.sdk_installed(spec.MONITOR)
                        else [])

            def autoscale(ep, dep):
                suffix = f"/onlineendpoints/{ep}/deployments/{dep}".lower()
                for setting in [a for a in settings
                                if a.target_resource_uri.lower().endswith(suffix)]:
                    settings.remove(setting)
                    found.append(Resource("autoscale", setting.name, "created", {
                        "endpoint": ep, "deployment": dep,
                        "target": setting.target_resource_uri}))

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
                    autoscale(ep, deployment.name)
            model_name = self.settings.model_name or name
            for version in seam.model_versions(model_name, tags):
                if (model_name, version) not in models:
                    # registered, never served: right after the endpoint, as deploy records it
                    models.add((model_name, version))
                    at = 1 if found and found[0].kind == "endpoint" else 0
                    found.insert(at, Resource("model", f"{model_name}:{version}", "created",
                                             {"name": model_name, "version": version}))
            found.extend(Resource("autoscale", a.name, "created",
                                  {"target": a.target_resource_uri}) for a in settings)
        return found

    def request_limits(self, deployment):
        """From the settings the serving deployment was created (or last updated) with, as
        its record keeps them; a deployment recorded without them got Azure's defaults."""
        return update.serving_limits(deployment, spec.AZURE_REQUEST_DEFAULTS)

    def instances(self, deployment):
        """The fleet at its minimum (``compare`` notes the price at the maximum)."""
        fleet = spec.check_scaling(self.settings)
        return [(self.settings.instance_type,
                 fleet.minimum if fleet else self.settings.instance_count)]

    def fleet(self, deployment):
        """The serving deployment's sku capacity (what Azure scales; counted as current only
        once its provisioning state is Succeeded) and its autoscale setting's range and rules,
        asked of Azure now."""
        ep, dep = deployment.endpoint.get("endpoint"), deployment.endpoint.get("deployment")
        if not ep or not dep:
            return None
        with self._calls(deployment.name, "read"):
            seam = self._seam()
            found = seam.deployment_capacity(ep, dep)
            if found is None:
                return None
            count, state = found
            current = count if state.lower() == "succeeded" else None
            recorded = update.live(deployment, "autoscale", deployment=dep)
            setting = seam.get_autoscale(recorded[-1].id) if recorded else None
        if setting is None:
            rule = (f"autoscale setting {recorded[-1].id} is gone; the count stays "
                    f"{count}") if recorded else ""
            return Fleet(count, count, count, current, rule)
        rule = spec.autoscale_rule(setting.document)
        if not setting.enabled:
            rule = f"disabled: {rule}"
        return Fleet(setting.minimum, setting.maximum, count, current, rule)

    def cloud_time(self, deployment, start, end, *, wait, progress):
        """Azure Monitor's view of the requests between ``start`` and ``end``: the endpoint's
        ``RequestLatency`` (the whole request as the endpoint sees it, ms) and
        ``RequestsPerMinute`` for the serving deployment (filter ``deployment eq 'NAME'``),
        per minute (PT1M) over the whole minutes holding the window, through the seam's
        ``metrics.list``. The endpoint has no metric that splits that time into parts (its
        deployments publish percentiles only), so the one figure is ``request_latency_ms``:
        the minutes' Averages weighed by their Counts. ``requests`` is the sum of the minutes'
        RequestsPerMinute Totals.

        Azure publishes a minute late: it asks again every ``METRICS_POLL`` seconds until the
        minute of the window's end has data or ``wait`` seconds have passed. What is missing,
        and a refused query, is said in ``note``."""
        from . import seam as seam_module

        ep, dep = deployment.endpoint.get("endpoint"), deployment.endpoint.get("deployment")
        if not ep or not dep:
            return None
        query = seam_module.metrics_query(dep, start, end)
        source = (f"Azure Monitor metrics of endpoint {ep}: {seam_module.LATENCY_METRIC} "
                  f"(Average weighed by Count) and {seam_module.REQUESTS_METRIC} (Total), "
                  f"filter {query['filter']}, interval {query['interval']}, whole minutes "
                  f"{query['timespan']}")
        try:
            seam = self._seam()
            resource = seam.endpoint_id(ep)
            source = source.replace(f"endpoint {ep}", resource, 1)
            found = self._poll_metrics(seam, resource, dep, start, end, wait, progress)
        except seam_module.SeamError as exc:
            return CloudTime({}, None, source, note=_metrics_refused(exc))
        except ImportError as exc:
            return CloudTime({}, None, source, note=f"cannot read Azure Monitor's metrics: "
                             f"{exc} ({self.install_hint})")
        return _cloud_figures(found, end, wait, source)

    @staticmethod
    def _poll_metrics(seam, resource: str, dep: str, start: float, end: float, wait: float,
                      progress):
        """The metrics once the window's last minute is published, or at ``wait``."""
        def waiting(waited: float) -> None:
            progress(f"waiting up to {wait:g} s for Azure Monitor's metrics of "
                     f"{resource.rsplit('/', 1)[-1]}/{dep} (published a minute or more "
                     f"late; {waited:.0f} s so far)")

        return wait_for_metrics(lambda: seam.endpoint_metrics(resource, dep, start, end),
                                lambda found: _covered(found, end), wait=wait,
                                progress=waiting, poll=METRICS_POLL, every=METRICS_PROGRESS,
                                clock=seam.clock, sleep=seam.sleep)

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


def _last_minute(end: float) -> float:
    """The start of the minute that must be published for a window ending at ``end``."""
    return (end - METRICS_SETTLE) // 60 * 60


def _covered(found, end: float) -> bool:
    """Whether the latency of the window's last minute is published."""
    from .seam import LATENCY_METRIC

    last = _last_minute(end)
    return any(m.minute >= last and m.count for m in found.minutes.get(LATENCY_METRIC, []))


def _cloud_figures(found, end: float, wait: float, source: str) -> CloudTime:
    """The mean per request of the published minutes (never 0 for nothing) and their requests;
    ``note`` says what is not yet published."""
    import time as time_module

    from .seam import LATENCY_METRIC, REQUESTS_METRIC

    latency = [m for m in found.minutes.get(LATENCY_METRIC, [])
               if m.count and m.average is not None]
    totals = [m.total for m in found.minutes.get(REQUESTS_METRIC, []) if m.total is not None]
    requests = round(sum(totals)) if totals else None
    if not latency:
        return CloudTime({}, None, source, note=f"not yet published after {wait:g} s",
                         requests=requests)
    mean = round(sum(m.average * m.count for m in latency) / sum(m.count for m in latency), 3)
    note = ""
    if not _covered(found, end):
        minute = time_module.strftime("%H:%M", time_module.gmtime(_last_minute(end)))
        note = (f"the minute {minute} UTC not yet published after {wait:g} s: the figures are "
                "of the minutes before it")
    return CloudTime({"request_latency_ms": mean}, mean, source, note=note, requests=requests)


def _metrics_refused(exc) -> str:
    """One line for a metrics query Azure refused (or that never got an answer)."""
    from .seam import METRICS_HINT

    status = f"HTTP {exc.status}" if exc.status else "no answer"
    code = f" {exc.code}" if exc.code and exc.code not in str(exc) else ""
    return " ".join(f"Azure Monitor's metrics could not be read ({status}{code}): {exc}; "
                    f"{exc.hint or METRICS_HINT}".split())


class _Cloud:
    """The update's backend on Azure (see :class:`.update.Backend`): seam calls."""

    traffic_data: dict = {}
    #: what create_deployment made besides the deployment (its autoscale setting), removed
    #: with it when the smoke test fails
    fresh: list = []

    def __init__(self, target: AzureTarget, seam, endpoint: str, model_e, deployment_e):
        self.target, self.seam, self.endpoint = target, seam, endpoint
        self.model_e, self.deployment_e = model_e, deployment_e

    def register_model(self, plan, context):
        model = context.record("model", plan.names.model, version=plan.model_version)
        name, version = self.seam.register_model(self.model_e, label=_registering(
            plan.names.model, self.model_e))
        context.created(model, id=f"{name}:{version}", name=name, version=version)
        self.deployment_e.model = f"azureml:{name}:{version}"
        return model

    def create_deployment(self, plan, context, model):
        from .seam import ProvisioningFailed, SeamError

        ep, new, old = plan.endpoint, plan.new, plan.old
        created = None
        if plan.in_place:
            label = (f"  updating deployment {ep}/{old} in place to {model.id} "
                     "(a rolling update, 10-20 minutes)")
        else:
            label = f"  creating deployment {ep}/{new} beside {old}, no traffic (10-20 minutes)"
            created = context.record("deployment", f"{ep}/{new}", endpoint=ep, deployment=new,
                                     model=model.id, **spec.sent_limits(plan.deployment_doc))
        try:
            state = self.seam.create_or_update_deployment(self.deployment_e, label=label)
        except ProvisioningFailed as exc:
            message, details = _failure(self.seam, ep, new, exc)
            update.abandon(self.target, [r for r in (created, model) if r], context)
            message = f"update of {message}" if plan.in_place else f"{message}; it was removed"
            raise DeployFailed(message, details=details, hint=_hints(exc, plan.keeps)) from None
        tags = plan.deployment_doc["tags"]
        if created is not None:
            context.created(created, provisioning_state=state)
            try:  # the new deployment's own setting; the old one's goes with the old deployment
                setting = self.target._autoscale(self.seam, context, ep, new, tags)
            except SeamError as exc:
                update.abandon(self.target, [r for r in context.deployment.resources[::-1]
                                             if r.kind == "autoscale" and r.status == "creating"
                                             and r.data.get("deployment") == new]
                               + [created, model], context)
                raise DeployFailed(f"{exc}; the new deployment {ep}/{new} was removed",
                                   hint=_hints(exc, plan.keeps)) from None
            self.fresh = [setting] if setting else []
            return created
        for resource in update.live(context.deployment, "deployment", deployment=old):
            context.update(resource, model=model.id, provisioning_state=state,
                           **spec.sent_limits(plan.deployment_doc))
        # in place: the same deployment id, so its setting stays (updated to the options)
        kept = update.live(context.deployment, "autoscale", deployment=old)
        if spec.autoscales(self.target.settings) is not None:
            self.target._autoscale(self.seam, context, ep, old, tags,
                                   kept[-1] if kept else None)
        elif kept:
            update.retire(self.target, kept, context)  # the options no longer scale
        return None

    def switch(self, plan, context, deployment) -> list:
        return []  # the rolling update already moved the deployment to the new version

    def traffic(self) -> dict:
        return self.seam.get_endpoint(self.endpoint).traffic

    def set_traffic(self, traffic: dict) -> None:
        self.seam.set_traffic(self.endpoint, traffic)


@hookimpl
def deployer_register_targets():
    return [AzureTarget, AzureTwin]
