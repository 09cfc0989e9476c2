"""The one place that calls Azure ML's ``MLClient``. Everything else talks to a ``Seam``.

A ``Seam`` has two faces. The target calls its public methods, which answer plain values and
fail with the exceptions below, each one line with Azure's error code, its message and a hint.
Beneath them are the primitives (``_endpoint``, ``_begin_deployment``, ...) that a backend
implements as azure-ai-ml does: they return SDK entities and ``LROPoller``s and raise
azure-core's exceptions. :class:`MLSeam` implements them with one ``MLClient``; tests implement
them with an in-memory workspace and set :data:`factory`. So the error mapping, the deadlines of
long-running operations and the stdout shield below are the same for both.

The SDK prints ``.`` on stdout while it polls: every call runs with stdout sent to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import re
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

LOG_CONTAINERS = ("inference-server", "storage-initializer")
#: a long-running operation's provisioning state is read this often (seconds); a plain log
#: shows a change at once, else a line each ``deployer.progress.EVERY``
STATE_EVERY = 10.0
#: default deadline of one long-running operation (seconds); the target passes its
#: ``startup_timeout``
DEADLINE = 1800.0

AUTH_HINT = ("run 'az login' (az login --tenant TENANT for another tenant), or set "
             "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a service principal")
WORKSPACE_HINT = ("check -o subscription, -o resource_group and -o workspace (or the "
                  "workspace_config file): 'az ml workspace show -w WORKSPACE -g GROUP "
                  "--subscription ID' must find it")
THROTTLE_HINT = ("Azure throttled the calls even after the SDK's retries: wait a few minutes "
                 "and run it again")
#: Azure Monitor's metrics of an online endpoint read after a load (Supported metrics for
#: Microsoft.MachineLearningServices/workspaces/onlineEndpoints): ``RequestLatency``, "the
#: average complete interval of time taken for a request to be responded in milliseconds", and
#: ``RequestsPerMinute``, both with the dimension ``deployment``, at a time grain of PT1M
LATENCY_METRIC = "RequestLatency"
REQUESTS_METRIC = "RequestsPerMinute"
METRICS_DIMENSION = "deployment"
METRICS_INTERVAL = "PT1M"
#: one query for both: Average and Count of the latency (Count, the samples behind each
#: minute's Average, weighs the minutes), Total of the requests (every series of the minute
#: summed: its Average would average over the status codes' series)
METRICS_AGGREGATION = "Average,Count,Total"
METRICS_HINT = ("the identity needs the 'Monitoring Reader' role (it holds "
                "microsoft.insights/metrics/read) on the endpoint or its resource group")
#: 404 codes that mean the workspace (or what holds it) is missing, not the resource asked for
WORKSPACE_CODES = ("WorkspaceNotFound", "ParentResourceNotFound", "ResourceGroupNotFound",
                   "SubscriptionNotFound", "InvalidSubscriptionId")


class SeamError(Exception):
    """A control-plane call failed: ``code`` is Azure's error code when known, ``hint`` what to
    do about it."""

    #: the HTTP status Azure answered with, when it came from an answer
    status: Optional[int] = None

    def __init__(self, message: str, code: str = "", hint: Optional[str] = None):
        super().__init__(message)
        self.code = code
        self.hint = hint


class NotFoundError(SeamError):
    pass


class ConflictError(SeamError):
    pass


class AuthError(SeamError):
    """No usable Azure credential, or Azure refused it (401)."""


class ForbiddenError(AuthError):
    """The identity is known but lacks a role (403 ``AuthorizationFailed``)."""


class WorkspaceMissing(SeamError):
    """The subscription, resource group or workspace does not exist (or is not visible)."""


class ThrottledError(SeamError):
    """429 ``TooManyRequests`` after the SDK's own retries."""


class ProvisioningFailed(SeamError):
    """A create finished in a state other than Succeeded; ``state`` is that state."""

    def __init__(self, message: str, state: str, code: str = "", hint: Optional[str] = None):
        super().__init__(message, code, hint)
        self.state = state


class DeadlineExceeded(ProvisioningFailed):
    """A long-running operation was still going at its deadline (it goes on in Azure)."""


@dataclasses.dataclass
class EndpointInfo:
    name: str
    provisioning_state: str
    scoring_uri: str
    traffic: dict[str, int]
    tags: dict[str, str]
    auth_mode: str = "key"


@dataclasses.dataclass
class DeploymentInfo:
    name: str
    provisioning_state: str
    #: the registered model it serves, (name, version), when known
    model: Optional[tuple[str, str]]
    tags: dict[str, str]


@dataclasses.dataclass
class AutoscaleInfo:
    """An Azure Monitor autoscale setting, as the control plane answers it."""

    name: str
    target_resource_uri: str
    minimum: int
    maximum: int
    default: int
    enabled: bool
    tags: dict[str, str]
    #: its ARM document (camelCase, as sent and answered)
    document: dict


@dataclasses.dataclass(frozen=True)
class MetricMinute:
    """One minute of one metric as Azure Monitor answers it (its series summed)."""

    #: the minute's start, seconds since the epoch
    minute: float
    average: Optional[float]
    count: Optional[float]
    total: Optional[float]


@dataclasses.dataclass
class EndpointMetrics:
    """An endpoint's metrics over whole minutes: what was asked, and the minutes Azure
    Monitor has published (a minute without data is left out)."""

    resource: str
    #: the query's parameters as sent (timespan, interval, metricnames, aggregation, filter)
    query: dict
    #: metric name -> its published minutes, oldest first
    minutes: dict[str, list[MetricMinute]]


def metrics_query(deployment: str, start: float, end: float) -> dict:
    """The metrics query over the whole minutes that hold ``start`` .. ``end`` (Unix
    seconds), for one deployment: ``metrics.list``'s keyword arguments."""
    first = math.floor(start / 60) * 60
    last = max(math.ceil(end / 60) * 60, first + 60)
    quoted = deployment.replace("'", "''")
    return {"timespan": f"{_iso(first)}/{_iso(last)}", "interval": METRICS_INTERVAL,
            "metricnames": f"{LATENCY_METRIC},{REQUESTS_METRIC}",
            "aggregation": METRICS_AGGREGATION, "filter": f"{METRICS_DIMENSION} eq '{quoted}'"}


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _minutes(answer) -> dict[str, list[MetricMinute]]:
    """Per metric, the minutes with data of an ``azure.mgmt.monitor.models.Response`` (series
    summed: counts and totals added, averages weighed by their counts)."""
    found: dict[str, list[MetricMinute]] = {}
    for metric in answer.value or []:
        name = str(getattr(metric.name, "value", "") or "")
        merged: dict[float, list[float | None]] = {}
        for series in metric.timeseries or []:
            for point in series.data or []:
                if point.average is None and point.count is None and point.total is None:
                    continue  # not published, or no request that minute
                at = point.time_stamp.timestamp()
                weighed, count, total = merged.setdefault(at, [None, None, None])
                if point.average is not None:
                    weight = point.count if point.count is not None else 1.0
                    weighed = (weighed or 0.0) + point.average * weight
                    count = (count or 0.0) + weight
                if point.total is not None:
                    total = (total or 0.0) + point.total
                merged[at] = [weighed, count, total]
        found[name] = [MetricMinute(at, None if not count else weighed / count, count, total)
                       for at, (weighed, count, total) in sorted(merged.items())]
    return found


@dataclasses.dataclass(frozen=True)
class Credential:
    """What the scoring URI wants after ``Bearer``: a key (``expires_on`` None, never
    refreshed) or a token with its expiry (seconds since the epoch). Its repr hides it."""

    secret: str = dataclasses.field(repr=False)
    expires_on: Optional[float] = None

    @property
    def is_token(self) -> bool:
        return self.expires_on is not None


_MODEL_REF = re.compile(r"(?:^azureml:(?P<n1>[^:/]+):(?P<v1>[^:/]+)$)|"
                        r"(?:/models/(?P<n2>[^/]+)/versions/(?P<v2>[^/]+)$)")


def model_reference(reference: Any) -> Optional[tuple[str, str]]:
    """(name, version) of ``azureml:NAME:VERSION`` or a model version's ARM id."""
    found = _MODEL_REF.search(str(reference or ""))
    if not found:
        return None
    return (found["n1"] or found["n2"], found["v1"] or found["v2"])


class Seam:
    """What the Azure target needs from the control plane. Entities are azure-ai-ml objects.

    Public methods are the contract; a backend implements the ``_`` primitives below them."""

    #: seconds one long-running operation may take; ``connect`` sets it from the options
    deadline: float = DEADLINE
    #: the workspace's region, known after ``check_workspace``
    location: str = ""

    def progress(self, line: str) -> None:
        pass

    def clock(self) -> float:
        """Monotonic seconds; the deadlines and state lines are measured on it."""
        return time.monotonic()

    # -- the contract ------------------------------------------------------------------------
    def check_workspace(self) -> str:
        """Read the workspace (the first call of a deploy, before anything is created): a
        missing workspace, no credential or no role fails here. Returns its region."""
        with sdk_call("reading the Azure ML workspace"):
            try:
                self.location = str(self._workspace() or "")
            except Exception as exc:  # noqa: BLE001 - a 404 here is the workspace itself
                if _status(exc) == 404:
                    raise WorkspaceMissing(f"the Azure ML workspace was not found: "
                                           f"{_message(exc)}", _code(exc),
                                           WORKSPACE_HINT) from None
                raise
        return self.location

    def get_endpoint(self, name: str) -> Optional[EndpointInfo]:
        try:
            with sdk_call(f"endpoint {name}"):
                return _endpoint_info(self._endpoint(name))
        except NotFoundError:
            return None

    def create_or_update_endpoint(self, endpoint, label: Optional[str] = None) -> EndpointInfo:
        """Create (or update) and wait, reported as a wait called ``label`` (see _finish)."""
        info = _endpoint_info(self._operation(
            f"creating endpoint {endpoint.name}", lambda: self._begin_endpoint(endpoint),
            lambda: self._endpoint_state(endpoint.name), label))
        if info.provisioning_state.lower() not in ("succeeded", ""):
            raise ProvisioningFailed(f"endpoint {endpoint.name} is {info.provisioning_state}",
                                     info.provisioning_state)
        return info

    def register_model(self, model, label: Optional[str] = None) -> tuple[str, str]:
        """Register (upload) a model; return its (name, version). Reported as a wait called
        ``label``: the SDK uploads a folder's files without telling how many bytes went."""
        from deployer import progress

        with progress.waiting(self.progress, label or f"  registering model {model.name}"), \
                sdk_call(f"registering model {model.name}"):
            registered = self._register(model)
        return registered.name, str(registered.version)

    def model_active(self, name: str, version: str) -> bool:
        try:
            with sdk_call(f"model {name}:{version}"):
                model = self._model(name, version)
        except NotFoundError:
            return False
        return str(getattr(model, "stage", "") or "").lower() != "archived"

    def archive_model(self, name: str, version: str) -> bool:
        if not self.model_active(name, version):
            return False
        with sdk_call(f"archiving model {name}:{version}"):
            self._archive(name, version)
        return True

    def create_or_update_deployment(self, deployment, label: Optional[str] = None) -> str:
        """Create (or update) and wait (a wait called ``label``, see _finish); return the
        provisioning state, or raise ProvisioningFailed (DeadlineExceeded when still going at
        the deadline)."""
        ep, name = deployment.endpoint_name, deployment.name
        what = f"{'creating' if self.get_deployment_state(ep, name) is None else 'updating'} " \
               f"deployment {ep}/{name}"
        with stdout_to_stderr():  # the poll thread prints from its start
            with sdk_call(what):  # refused before it began (403, 404, 409): as it is
                poller = self._begin_deployment(deployment)
            try:
                result = self._finish(poller, what, lambda: self._deployment_state(ep, name),
                                      label)
            except DeadlineExceeded:
                raise
            except SeamError as exc:  # the operation itself failed (OutOfQuota, ...)
                state = self.get_deployment_state(ep, name) or "Failed"
                hint = exc.hint
                if exc.code == "OutOfQuota":
                    hint = quota_hint(deployment.instance_type, self.location)
                raise ProvisioningFailed(str(exc), state, exc.code, hint) from None
        state = str(getattr(result, "provisioning_state", "") or "")
        if state.lower() != "succeeded":
            raise ProvisioningFailed(f"{what}: provisioning state {state}", state)
        return state

    def get_deployment_state(self, endpoint: str, name: str) -> Optional[str]:
        try:
            with sdk_call(f"deployment {endpoint}/{name}"):
                return str(self._deployment(endpoint, name).provisioning_state)
        except NotFoundError:
            return None

    def delete_deployment(self, endpoint: str, name: str) -> bool:
        try:
            self._operation(f"deleting deployment {endpoint}/{name}",
                            lambda: self._begin_delete_deployment(endpoint, name),
                            lambda: self._deployment_state(endpoint, name))
        except NotFoundError:
            return False
        return True

    def set_traffic(self, endpoint: str, traffic: dict[str, int]) -> EndpointInfo:
        return _endpoint_info(self._operation(
            f"setting traffic on {endpoint}", lambda: self._begin_traffic(endpoint, dict(traffic)),
            lambda: self._endpoint_state(endpoint)))

    def credential(self, endpoint: str, auth_mode: str) -> Credential:
        """The key, or a fresh token and its expiry (``aml_token``, ``aad_token``), the
        scoring URI wants after ``Bearer``. Never log it."""
        # get_keys answers by the endpoint's auth mode: EndpointAuthKeys (primary_key),
        # EndpointAuthToken (aml_token: access_token, expiry_time_utc from the service) or
        # EndpointAadToken (aad_token: the credential's get_token(scope) .token, .expires_on)
        with sdk_call(f"credentials of endpoint {endpoint}"):
            answer = self._keys(endpoint)
        key = getattr(answer, "primary_key", None)
        if key:
            return Credential(key)
        token = getattr(answer, "access_token", None)
        if not token:
            raise AuthError(f"endpoint {endpoint} handed out no key or token", hint=AUTH_HINT)
        expiry = getattr(answer, "expiry_time_utc", None)
        return Credential(token, float(expiry) if expiry else float("inf"))

    def logs(self, endpoint: str, deployment: str, lines: int, container_type: str) -> str:
        try:
            with sdk_call(f"logs of {endpoint}/{deployment}"):
                return self._logs(endpoint, deployment, lines, container_type) or ""
        except SeamError as exc:
            return f"(no {container_type} logs: {exc})"

    def delete_endpoint(self, name: str) -> bool:
        try:
            self._operation(f"deleting endpoint {name}", lambda: self._begin_delete_endpoint(name),
                            lambda: self._endpoint_state(name))
        except NotFoundError:
            return False
        return True

    def find_endpoints(self, tags: dict[str, str]) -> list[EndpointInfo]:
        """The workspace's endpoints whose tags include ``tags``."""
        with sdk_call("listing endpoints"):
            found = [_endpoint_info(e) for e in self._endpoints()]
        return [e for e in found if all(e.tags.get(k) == v for k, v in tags.items())]

    def list_deployments(self, endpoint: str) -> list[DeploymentInfo]:
        with sdk_call(f"listing deployments of {endpoint}"):
            return [DeploymentInfo(d.name, str(d.provisioning_state or ""),
                                   model_reference(d.model), dict(d.tags or {}))
                    for d in self._deployments(endpoint)]

    def model_versions(self, name: str, tags: dict[str, str]) -> list[str]:
        """Active versions of model ``name`` whose tags include ``tags``, oldest first."""
        try:
            with sdk_call(f"listing versions of model {name}"):
                models = list(self._versions(name))
        except NotFoundError:
            return []
        found = [str(m.version) for m in models
                 if str(getattr(m, "stage", "") or "").lower() != "archived"
                 and all((m.tags or {}).get(k) == v for k, v in tags.items())]
        return sorted(found, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))

    # -- autoscaling: Azure Monitor's autoscale settings (MonitorManagementClient) -------------
    def resource_ids(self, endpoint: str, deployment: str) -> tuple[str, str]:
        """The ARM ids of the endpoint and of its deployment (the setting's metric source and
        target)."""
        with sdk_call(f"endpoint {endpoint}"):
            endpoint_id = str(self._endpoint(endpoint).id or "")
        with sdk_call(f"deployment {endpoint}/{deployment}"):
            deployment_id = str(self._deployment(endpoint, deployment).id or "")
        if not endpoint_id or not deployment_id:
            raise SeamError(f"Azure gave no resource id for {endpoint}/{deployment}")
        return endpoint_id, deployment_id

    def deployment_capacity(self, endpoint: str, deployment: str
                            ) -> Optional[tuple[int, str]]:
        """(instance count of the deployment's sku, provisioning state), None when gone."""
        try:
            with sdk_call(f"deployment {endpoint}/{deployment}"):
                found = self._deployment(endpoint, deployment)
        except NotFoundError:
            return None
        return int(found.instance_count or 0), str(found.provisioning_state or "")

    def create_autoscale(self, name: str, setting) -> AutoscaleInfo:
        """Create (or update) autoscale setting ``name`` from an
        ``azure.mgmt.monitor.models.AutoscaleSettingResource``."""
        with sdk_call(f"creating autoscale setting {name}"):
            return _autoscale_info(self._autoscale_put(name, setting))

    def get_autoscale(self, name: str) -> Optional[AutoscaleInfo]:
        try:
            with sdk_call(f"autoscale setting {name}"):
                return _autoscale_info(self._autoscale(name))
        except NotFoundError:
            return None

    def delete_autoscale(self, name: str) -> bool:
        """Delete it; False when it was gone (ARM answers a DELETE of nothing with 204)."""
        if self.get_autoscale(name) is None:
            return False
        try:
            with sdk_call(f"deleting autoscale setting {name}"):
                self._autoscale_delete(name)
        except NotFoundError:
            return False
        return True

    # -- Azure Monitor's metrics of the endpoint (MonitorManagementClient.metrics) -----------
    def endpoint_id(self, endpoint: str) -> str:
        """The endpoint's ARM id (the resource its metrics are of)."""
        with sdk_call(f"endpoint {endpoint}"):
            found = str(self._endpoint(endpoint).id or "")
        if not found:
            raise SeamError(f"Azure gave no resource id for endpoint {endpoint}")
        return found

    def endpoint_metrics(self, resource: str, deployment: str, start: float,
                         end: float) -> EndpointMetrics:
        """The endpoint's request metrics for ``deployment`` over the whole minutes holding
        ``start`` .. ``end`` (see :func:`metrics_query`), as published so far."""
        query = metrics_query(deployment, start, end)
        try:
            with sdk_call(f"reading Azure Monitor metrics of {resource.rsplit('/', 1)[-1]}"):
                answer = self._metrics(resource, **query)
        except ForbiddenError as exc:
            if "Monitoring Reader" not in (exc.hint or ""):
                exc.hint = METRICS_HINT  # the role that reads metrics, whatever the message
            raise
        return EndpointMetrics(resource, query, _minutes(answer))

    def sleep(self, seconds: float) -> None:
        """Wait between two metrics queries."""
        time.sleep(max(0.0, seconds))

    def find_autoscales(self, tags: dict[str, str]) -> list[AutoscaleInfo]:
        """The resource group's autoscale settings whose tags include ``tags``."""
        with sdk_call("listing autoscale settings"):
            found = [_autoscale_info(a) for a in self._autoscales()]
        return [a for a in found if all(a.tags.get(k) == v for k, v in tags.items())]

    # -- waiting on a long-running operation ------------------------------------------------
    def _operation(self, what: str, begin: Callable[[], Any], state: Callable[[], str],
                   label: Optional[str] = None):
        """Begin a long-running operation and wait for its result (see _finish); stdout stays
        shielded from the moment its poll thread starts."""
        with stdout_to_stderr():
            with sdk_call(what):
                poller = begin()
            return self._finish(poller, what, state, label)

    def _finish(self, poller, what: str, state: Callable[[], str],
                label: Optional[str] = None):
        """The poller's result, waited for as a ``deployer.progress`` wait (``label``, else
        ``what``) that hears the provisioning state every STATE_EVERY seconds and the
        operation's own status at its end; DeadlineExceeded, with the current provisioning
        state, once ``deadline`` has passed."""
        from deployer import progress

        started = self.clock()
        deadline, next_read = started + self.deadline, started + STATE_EVERY
        with progress.waiting(self.progress, label or f"  {what}") as wait, sdk_call(what):
            while True:
                poller.wait(max(0.0, min(next_read, deadline) - self.clock()))
                if poller.done():
                    result = poller.result()
                    wait.end(str(getattr(result, "provisioning_state", "") or "")
                             or str(poller.status()))
                    return result
                now = self.clock()
                if now < next_read and now < deadline:
                    continue
                current = self._current(state, poller)
                wait.state(current)
                next_read = now + STATE_EVERY
                if now >= deadline:
                    _abandon(poller)
                    raise DeadlineExceeded(
                        f"{what}: still {current} after {progress.elapsed(now - started)}, "
                        f"past its deadline (startup_timeout={self.deadline:g}s); it goes on "
                        "in Azure",
                        current, "DeadlineExceeded",
                        "raise -o startup_timeout=SECONDS if it only needs longer")

    def _current(self, state: Callable[[], str], poller) -> str:
        try:
            with sdk_call("state"):
                return str(state() or "") or str(poller.status())
        except SeamError:
            return str(poller.status())

    def _endpoint_state(self, name: str) -> str:
        return str(self._endpoint(name).provisioning_state or "")

    def _deployment_state(self, endpoint: str, name: str) -> str:
        return str(self._deployment(endpoint, name).provisioning_state or "")

    # -- primitives: a backend implements these as azure-ai-ml does ----------------------------
    def _workspace(self) -> str:
        """The workspace's location."""
        raise NotImplementedError

    def _endpoint(self, name: str):
        raise NotImplementedError

    def _begin_endpoint(self, endpoint):
        raise NotImplementedError

    def _register(self, model):
        raise NotImplementedError

    def _model(self, name: str, version: str):
        raise NotImplementedError

    def _archive(self, name: str, version: str) -> None:
        raise NotImplementedError

    def _begin_deployment(self, deployment):
        raise NotImplementedError

    def _deployment(self, endpoint: str, name: str):
        raise NotImplementedError

    def _begin_delete_deployment(self, endpoint: str, name: str):
        raise NotImplementedError

    def _begin_traffic(self, endpoint: str, traffic: dict[str, int]):
        raise NotImplementedError

    def _keys(self, endpoint: str):
        raise NotImplementedError

    def _logs(self, endpoint: str, deployment: str, lines: int, container_type: str) -> str:
        raise NotImplementedError

    def _begin_delete_endpoint(self, name: str):
        raise NotImplementedError

    def _endpoints(self) -> list:
        raise NotImplementedError

    def _deployments(self, endpoint: str) -> list:
        raise NotImplementedError

    def _versions(self, name: str) -> list:
        raise NotImplementedError

    # azure-mgmt-monitor's autoscale_settings, in the workspace's resource group
    def _autoscale_put(self, name: str, setting):
        raise NotImplementedError

    def _autoscale(self, name: str):
        raise NotImplementedError

    def _autoscale_delete(self, name: str) -> None:
        raise NotImplementedError

    def _autoscales(self) -> list:
        raise NotImplementedError

    # azure-mgmt-monitor's metrics.list: an ``azure.mgmt.monitor.models.Response``
    def _metrics(self, resource_uri: str, *, timespan: str, interval: str, metricnames: str,
                 aggregation: str, filter: str):
        raise NotImplementedError


def _autoscale_info(setting) -> AutoscaleInfo:
    """From an ``AutoscaleSettingResource``; the range is its first profile's."""
    profiles = setting.profiles or []
    capacity = profiles[0].capacity if profiles else None

    def count(value) -> int:
        return int(value) if value not in (None, "") else 0

    return AutoscaleInfo(name=str(setting.name or ""),
                         target_resource_uri=str(setting.target_resource_uri or ""),
                         minimum=count(getattr(capacity, "minimum", None)),
                         maximum=count(getattr(capacity, "maximum", None)),
                         default=count(getattr(capacity, "default", None)),
                         enabled=bool(setting.enabled), tags=dict(setting.tags or {}),
                         document=setting.serialize(keep_readonly=True))


def _endpoint_info(endpoint) -> EndpointInfo:
    return EndpointInfo(name=endpoint.name,
                        provisioning_state=str(endpoint.provisioning_state or ""),
                        scoring_uri=endpoint.scoring_uri or "",
                        traffic=dict(endpoint.traffic or {}), tags=dict(endpoint.tags or {}),
                        auth_mode=str(getattr(endpoint, "auth_mode", None) or "key"))


def _abandon(poller) -> None:
    """Stop polling an operation given up on (it goes on in Azure): its thread would go on
    printing the SDK's dots on stdout."""
    method = poller.polling_method() if hasattr(poller, "polling_method") else None
    if method is not None and hasattr(method, "update_status"):
        def stop():
            raise _Abandoned("given up at the deadline")
        method.update_status = stop


class _Abandoned(Exception):
    pass


def _default_factory(settings, progress: Callable[[str], None]) -> Seam:
    return MLSeam.connect(settings, progress)


#: ``(settings, progress) -> Seam``: the real one; tests set it to their fake (in-process,
#: through the Python API)
factory: Callable[[Any, Callable[[str], None]], Seam] = _default_factory


def connect(settings, progress: Callable[[str], None]) -> Seam:
    import logging

    # azure-identity logs each failed credential as a multi-line warning: our error says it
    # in one line
    azure_log = logging.getLogger("azure")
    if not any(isinstance(h, logging.NullHandler) for h in azure_log.handlers):
        azure_log.addHandler(logging.NullHandler())
    seam = factory(settings, progress)
    seam.progress = progress
    seam.deadline = float(getattr(settings, "startup_timeout", None) or DEADLINE)
    return seam


_shield = threading.Lock()
_shield_depth = 0
_shield_saved = None


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """``sys.stdout`` points at stderr while any thread is inside (the SDK prints its poll dots
    there). Counted, unlike the standard library's redirect: two threads redirecting at once
    (compare deploys clouds in parallel) would restore each other's swap and leave stdout on
    stderr."""
    global _shield_depth, _shield_saved
    with _shield:
        if _shield_depth == 0:
            _shield_saved, sys.stdout = sys.stdout, sys.stderr
        _shield_depth += 1
    try:
        yield
    finally:
        with _shield:
            _shield_depth -= 1
            if _shield_depth == 0:
                sys.stdout = _shield_saved


@contextlib.contextmanager
def sdk_call(what: str) -> Iterator[None]:
    """Run SDK calls with their stdout on stderr and their exceptions turned into ours."""
    try:
        with stdout_to_stderr():
            yield
    except SeamError:
        raise
    except Exception as exc:  # noqa: BLE001 - credential errors have no common base
        if not type(exc).__module__.startswith("azure."):
            raise
        raise translate(exc, what) from None


def translate(exc: Exception, what: str) -> SeamError:
    """The SeamError for an azure-core (or azure-identity, azure-ai-ml) exception, read as the
    SDK raises it: ``status_code`` and ``error.code``/``error.message`` from Azure's JSON body
    ``{"error": {"code", "message"}}``, or a long-running operation's failed status body. Its
    ``status`` is the HTTP status (None without an answer)."""
    error = _translate(exc, what)
    error.status = _status(exc)
    return error


def _translate(exc: Exception, what: str) -> SeamError:
    from azure.core.exceptions import (ClientAuthenticationError, ResourceExistsError,
                                       ResourceNotFoundError)

    status, code, message = _status(exc), _code(exc), _message(exc)
    line = f"{what}: {message}"
    if isinstance(exc, ClientAuthenticationError) and exc.response is None:
        return AuthError(f"{what}: {credential_failure(exc)}", hint=AUTH_HINT)
    if status == 401 or isinstance(exc, ClientAuthenticationError):
        return AuthError(f"{line} (Azure refused the credential)", code, AUTH_HINT)
    if status == 403:
        return ForbiddenError(line, code, role_hint(str(getattr(getattr(exc, "error", None),
                                                                "message", "") or exc)))
    if code in WORKSPACE_CODES:
        return WorkspaceMissing(line, code, WORKSPACE_HINT)
    if status == 404 or isinstance(exc, ResourceNotFoundError):
        return NotFoundError(f"{what}: not found", code)
    if status == 409 or isinstance(exc, ResourceExistsError):
        return ConflictError(line, code)
    if status == 429 or code in ("TooManyRequests", "TooManyRequestsReceived"):
        return ThrottledError(line, code or "TooManyRequests", THROTTLE_HINT)
    return SeamError(line, code)


def _status(exc) -> Optional[int]:
    return getattr(exc, "status_code", None)


def _code(exc) -> str:
    return str(getattr(getattr(exc, "error", None), "code", None) or "")


def _first_line(text: str) -> str:
    return " ".join((text.strip().splitlines() or [""])[0].split())[:400]


def _message(exc) -> str:
    """``CODE: message`` from Azure's error body, else the exception's first line."""
    error = getattr(exc, "error", None)
    code, text = _code(exc), str(getattr(error, "message", None) or "")
    text = _first_line(text) if text else _first_line(str(exc)) or type(exc).__name__
    return f"{code}: {text}" if code and not text.startswith(code) else text


_ATTEMPT = re.compile(r"^\s*(\w+Credential): (.*)$")
_UNAVAILABLE = re.compile(r"(?i)unavailable|not (?:fully )?configured|not found|not installed|"
                          r"could not be found|requires the|no accounts")


def credential_failure(exc: Exception) -> str:
    """Which credential failed: DefaultAzureCredential lists each one it tried."""
    attempts = [(m[1], _first_line(m[2].split(". ")[0])) for m in
                map(_ATTEMPT.match, str(exc).splitlines()) if m]
    if not attempts:
        return f"Azure authentication failed: {_first_line(str(exc))}"
    failed = [(name, why) for name, why in attempts if not _UNAVAILABLE.search(why)]
    if failed:
        return "Azure authentication failed: " + "; ".join(f"{n}: {w}" for n, w in failed)
    tried = ", ".join(name for name, _ in attempts)
    return f"no Azure credential is set up (tried {tried})"


_SCOPE = re.compile(r"over scope '([^']+)'")
_ACTION = re.compile(r"perform action '([^']+)'")


def role_hint(message: str) -> str:
    """Which role to grant on which scope, from an ``AuthorizationFailed`` message."""
    scope = (_SCOPE.search(message) or [None, ""])[1]
    action = (_ACTION.search(message) or [None, ""])[1]
    lacks = f"the identity lacks permission {action}" if action else "the identity lacks a role"
    if "microsoft.insights/metrics/read" in action.lower():
        where = re.split(r"(?i)/providers/microsoft\.insights", scope)[0] or "ENDPOINT-ID"
        return (f"{lacks}: {METRICS_HINT} (az role assignment create --role 'Monitoring "
                f"Reader' --assignee ID --scope {where})")
    if "microsoft.insights/" in f"{scope} {action}".lower():
        group = re.match(r"(?i)(/subscriptions/[^/]+/resourceGroups/[^/]+)", scope)
        where = group[1] if group else "the workspace's resource group"
        return (f"{lacks}: grant it the 'Monitoring Contributor' role (it holds "
                f"microsoft.insights/autoscalesettings/write) on the resource group {where} "
                "(az role assignment create --role 'Monitoring Contributor' --assignee ID "
                f"--scope {where if group else 'GROUP-ID'}), then run 'az login' again")
    if "/providers/Microsoft.Storage/" in scope:
        return (f"{lacks}: grant it 'Storage Blob Data Contributor' on the workspace's "
                f"storage account {scope.split('/blobServices')[0]}")
    workspace = re.match(r"(.*?/workspaces/[^/]+)", scope)
    where = workspace[1] if workspace else (scope or "the workspace")
    return (f"{lacks}: grant it the 'AzureML Data Scientist' role (or Contributor) on the "
            f"workspace {where} (az role assignment create --role 'AzureML Data Scientist' "
            f"--assignee ID --scope {where if workspace else 'WORKSPACE-ID'}), then run "
            "'az login' again")


def quota_hint(instance_type: str, location: str) -> str:
    from .spec import quota_family

    family = quota_family(instance_type)
    what = f"the '{family}' quota" if family else f"the vCPU quota of {instance_type}'s VM family"
    where = f"in {location}" if location else "in the workspace's region"
    return (f"raise {what} for Azure ML managed online endpoints {where} (studio: Quota; or "
            "az ml compute list-usage), or pick another -o instance_type")


class MLSeam(Seam):
    """The real control plane: one ``MLClient``."""

    def __init__(self, ml_client, progress: Callable[[str], None] = lambda _: None,
                 credential=None):
        self.ml = ml_client
        self.progress = progress
        self.azure_credential = credential  # (``credential`` is the endpoint's key)
        self._monitor = None

    @classmethod
    def connect(cls, settings, progress: Callable[[str], None]) -> MLSeam:
        with stdout_to_stderr():
            from azure.ai.ml import MLClient
            from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
        with sdk_call("connecting to the Azure ML workspace"):
            if settings.workspace_config or not (settings.subscription and
                                                 settings.resource_group and settings.workspace):
                client = MLClient.from_config(credential, path=settings.workspace_config,
                                              show_progress=False)
            else:
                # show_progress=False: no tqdm bar (carriage returns) on stderr; our own
                # progress says what happens
                client = MLClient(credential, settings.subscription, settings.resource_group,
                                  settings.workspace, show_progress=False)
        return cls(client, progress, credential)

    def _workspace(self):
        return self.ml.workspaces.get(self.ml.workspace_name).location

    def _endpoint(self, name):
        return self.ml.online_endpoints.get(name)

    def _begin_endpoint(self, endpoint):
        return self.ml.online_endpoints.begin_create_or_update(endpoint)

    def _register(self, model):
        return self.ml.models.create_or_update(model)

    def _model(self, name, version):
        return self.ml.models.get(name, version=version)

    def _archive(self, name, version):
        self.ml.models.archive(name, version=version)

    def _begin_deployment(self, deployment):
        return self.ml.online_deployments.begin_create_or_update(deployment)

    def _deployment(self, endpoint, name):
        return self.ml.online_deployments.get(name, endpoint)

    def _begin_delete_deployment(self, endpoint, name):
        return self.ml.online_deployments.begin_delete(name, endpoint)

    def _begin_traffic(self, endpoint, traffic):
        current = self.ml.online_endpoints.get(endpoint)
        current.traffic = traffic
        return self.ml.online_endpoints.begin_create_or_update(current)

    def _keys(self, endpoint):
        return self.ml.online_endpoints.get_keys(endpoint)

    def _logs(self, endpoint, deployment, lines, container_type):
        return self.ml.online_deployments.get_logs(deployment, endpoint, lines,
                                                   container_type=container_type)

    def _begin_delete_endpoint(self, name):
        return self.ml.online_endpoints.begin_delete(name)

    def _endpoints(self):
        return list(self.ml.online_endpoints.list())

    def _deployments(self, endpoint):
        return list(self.ml.online_deployments.list(endpoint))

    def _versions(self, name):
        return list(self.ml.models.list(name=name))

    # -- Azure Monitor: one MonitorManagementClient on the same credential and subscription --
    @property
    def monitor(self):
        if self._monitor is None:
            from azure.mgmt.monitor import MonitorManagementClient

            credential = self.azure_credential or getattr(self.ml, "_credential", None)
            self._monitor = MonitorManagementClient(credential, self.ml.subscription_id)
        return self._monitor

    def _autoscale_put(self, name, setting):
        return self.monitor.autoscale_settings.create_or_update(self.ml.resource_group_name,
                                                                name, setting)

    def _autoscale(self, name):
        return self.monitor.autoscale_settings.get(self.ml.resource_group_name, name)

    def _autoscale_delete(self, name):
        self.monitor.autoscale_settings.delete(self.ml.resource_group_name, name)

    def _autoscales(self):
        return list(self.monitor.autoscale_settings.list_by_resource_group(
            self.ml.resource_group_name))

    def _metrics(self, resource_uri, **query):
        # the operation's URL template is "/{resourceUri}/providers/...": the id without its
        # leading slash
        return self.monitor.metrics.list(resource_uri.lstrip("/"), **query)
