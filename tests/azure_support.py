"""A fake Azure ML control plane for the azure target's tests: an in-memory workspace behind the
seam's primitives (``deployer_plugins.azure.seam.Seam``), whose data plane is real.

Hand it in through the Python API: ``seam.factory = fake.factory`` (the CLI runs in-process in
tests). It answers as azure-ai-ml does: real entities (``ManagedOnlineEndpoint``,
``ManagedOnlineDeployment``, ``Model``, ``EndpointAuthKeys``/``EndpointAuthToken``), real
``LROPoller``s, and azure-core's real exceptions carrying Azure's JSON error body on a real
``azure.core.rest`` response (``azure_error``), so the seam's mapping runs as on Azure.

Endpoints get a real rehearsal gateway (bearer key, ``azureml-model-deployment`` routing) and
deployments a real tritonserver serving the registered folder; the scoring URI points at the
gateway. Not found, conflicts (a name taken elsewhere in the region, a deployment that still
has traffic), provisioning states, and a Failed deployment with both containers' logs are
modelled.
An ``aml_token``/``aad_token`` endpoint hands out a new token per ``credential`` call, valid
``token_lifetime`` seconds on ``wall`` (the clock a test may hand the client too); the gateway
accepts it until ``revoke_tokens`` (``token_fetches`` counts, ``tokens_issued`` keeps when).
A deployment keeps its ``request_settings`` and probes as the service does (Azure's defaults
filled in for what was not sent; out-of-range values refused with 400 BadArgument) and its
gateway route enforces them (:mod:`deployer_plugins.azure.gateway`: 429 past the concurrency,
408 past the timeout). Traffic shares must sum to 100 or 0.
An update of an existing deployment is a rolling update: the new server starts beside the old
one, takes over its route once ready, and if it fails the old one keeps serving (the
provisioning state says Failed).

Autoscale settings (azure-mgmt-monitor's ``autoscale_settings``) are kept as the service keeps
them: the JSON the client sends (the ``AutoscaleSettingResource``'s own serialisation) with the
id, name and type ARM adds, in ``autoscale`` by name. The service's checks are modelled (400
for a missing location or profile, a range with minimum > default > maximum, a target or metric
source that is not a deployment or endpoint of the workspace, a metric or dimension the source
does not have, a cooldown outside 1 minute to 1 week); once created the deployment's instance
count is brought into the range, as Azure does. Nothing ever scales on load.

Azure Monitor's metrics of an endpoint (``metrics.list``, seam primitive ``_metrics``) are
served from what its gateway measured: each gateway writes a line per request (when its
headers were read, the milliseconds to the end of its answer, the deployment it went to; see
:mod:`deployer_plugins.azure.gateway`), and the query answers, per minute of its timespan and
for the deployment its ``$filter`` names, ``RequestLatency`` (one sample per request) and
``RequestsPerMinute`` (one sample per status code per minute: its Total is the requests), with
the aggregations asked, as azure-mgmt-monitor's ``Response``. A request is published
``metrics_delay`` seconds after its answer on the fake clock (0: at once; ``math.inf``: never,
"not yet published"); ``sleep`` moves that clock instead of waiting. A metric, dimension,
aggregation or interval Azure does not have is refused with 400; ``metric_queries`` keeps every
query. ``gateway_requests`` reads the lines back.

Faults: ``fail(method, error)`` makes the next call of a seam method raise ``error`` (an
``azure_error``, say) or, for ``OperationFailure``, lets its long-running operation fail with
that code; ``stuck`` names operations that never finish (their poller's ``wait`` moves the fake
``clock`` on instead of sleeping). Every call is in ``calls`` as ``(method, name)``.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import itertools
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

from deployer import triton
from deployer.errors import DeployFailed
from deployer_plugins.azure import gateway, seam, spec, twin

#: seconds a replaced or deleted deployment's tritonserver gets after SIGTERM before SIGKILL:
#: its graceful exit takes seconds, and nothing of ours observes it
STOP_GRACE = 1.0
ARM = ("https://management.azure.com/subscriptions/00000000-0000-0000-0000-000000000000/"
       "resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws")
#: ARM ids: the resource group, and the workspace in it
GROUP_ID = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg"
WORKSPACE_ID = GROUP_ID + "/providers/Microsoft.MachineLearningServices/workspaces/ws"
#: the metrics Azure Monitor has for each source (Supported metrics, onlineEndpoints and
#: onlineEndpoints/deployments), with their dimensions
ENDPOINT_METRICS = {"RequestsPerMinute": {"deployment", "statusCode", "statusCodeClass",
                                          "modelStatusCode"},
                    "RequestLatency": {"deployment"}, "ConnectionsActive": set(),
                    "NewConnectionsPerSecond": set(), "NetworkBytes": set()}
DEPLOYMENT_METRICS = {"CpuUtilizationPercentage": {"instanceId"},
                      "CpuMemoryUtilizationPercentage": {"instanceId"},
                      "GpuUtilizationPercentage": {"instanceId"},
                      "GpuMemoryUtilizationPercentage": {"instanceId"},
                      "DeploymentCapacity": {"instanceId", "State"},
                      "DiskUtilization": {"instanceId", "disk"}}

STORAGE_LOG = ("Downloading model {model} from the workspace datastore\n"
               "Model download complete: {path}\n")
STUCK_LOG = ("I1130 09:00:01 server.cc: Waiting for the model repository to load\n"
             "I1130 09:00:02 model_lifecycle.cc: loading: add_sub:1 (stuck-marker)\n")
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 409: "Conflict", 429: "Too Many Requests"}


# -- Azure's answers, as azure-core builds them ------------------------------------------------
def _response(status: int, body: dict, method: str = "GET", url: str = ARM):
    """A real azure.core.rest response, as the requests transport makes it, with a JSON body."""
    import requests
    from azure.core.rest import HttpRequest
    from azure.core.rest._requests_basic import RestRequestsTransportResponse

    raw = requests.Response()
    raw.status_code, raw.reason = status, REASONS.get(status, "")
    raw.headers["Content-Type"] = "application/json; charset=utf-8"
    raw.raw = io.BytesIO(json.dumps(body).encode())
    response = RestRequestsTransportResponse(request=HttpRequest(method, url),
                                             internal_response=raw)
    response.read()
    return response


def azure_error(status: int, code: str, message: str, method: str = "GET", url: str = ARM):
    """What azure-ai-ml's generated operations raise for Azure's error answer: their error_map
    (401, 404, 409, 304) through azure-core's ``map_error``, else HttpResponseError in ARM's
    format (403 AuthorizationFailed, 429 TooManyRequests after the retries, 400 ...)."""
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                       ResourceExistsError, ResourceNotFoundError,
                                       ResourceNotModifiedError, map_error)
    from azure.mgmt.core.exceptions import ARMErrorFormat

    response = _response(status, {"error": {"code": code, "message": message}}, method, url)
    try:
        map_error(status_code=status, response=response,
                  error_map={401: ClientAuthenticationError, 404: ResourceNotFoundError,
                             409: ResourceExistsError, 304: ResourceNotModifiedError})
    except HttpResponseError as exc:
        return exc
    return HttpResponseError(response=response, error_format=ARMErrorFormat)


def not_found(kind: str, name: str):
    return azure_error(404, "ResourceNotFound", f"The Resource 'Microsoft.MachineLearningServices/"
                       f"workspaces/ws/{kind}/{name}' under resource group 'rg' was not found.")


def credential_error():
    """What a credential chain raises when nothing is set up here (no AZURE_* variables, no
    Azure CLI): the real azure-identity exception."""
    from azure.identity import AzureCliCredential, ChainedTokenCredential, EnvironmentCredential

    try:
        ChainedTokenCredential(EnvironmentCredential(), AzureCliCredential()).get_token(
            "https://management.azure.com/.default")
    except Exception as exc:  # noqa: BLE001 - the test wants exactly what it raises
        return exc
    raise AssertionError("a credential worked on this machine")


@dataclasses.dataclass
class OperationFailure:
    """A long-running operation Azure accepted that then failed with ``code``: raised as
    azure-core's ARM polling does, an HttpResponseError on the failed status body."""

    code: str
    message: str

    def error(self):
        from azure.core.exceptions import HttpResponseError
        from azure.core.polling.base_polling import OperationFailed

        body = {"status": "Failed", "error": {"code": self.code, "message": self.message}}
        return HttpResponseError(response=_response(200, body),
                                 error=OperationFailed("Operation failed or canceled"))


def _polling():
    from azure.core.polling import PollingMethod

    class Over(PollingMethod):
        """An operation already over (``result``), or failing in the poll thread (``error``)."""

        def __init__(self, result=None, error=None):
            self._result, self._error = result, error

        def initialize(self, client, initial_response, deserialization_callback):
            pass

        def run(self):
            if self._error is not None:
                raise self._error

        def status(self):
            return "Failed" if self._error is not None else "Succeeded"

        def finished(self):
            return self._error is None

        def resource(self):
            return self._result

        def get_continuation_token(self):
            return ""

    return Over


def poller(result=None, error=None):
    from azure.core.polling import LROPoller

    return LROPoller(None, None, lambda r: r, _polling()(result, error))


def stuck_poller(fake: FakeAzure):
    """A poller that never finishes; waiting on it moves the fake clock, not real time."""
    from azure.core.polling import LROPoller

    class Stuck(LROPoller):
        def wait(self, timeout=None):
            fake.skew += timeout or 0.0

        def done(self):
            return False

        def status(self):
            return "InProgress"

    return Stuck(None, None, lambda r: r, _polling()())


def slow_poller(fake: FakeAzure, states: list[str], set_state, finish):
    """A poller that is not done for ``len(states)`` waits, the resource in ``states[i]``
    during the i-th (``set_state``), then runs ``finish()`` (its result); waiting on it moves
    the fake clock, not real time."""
    from azure.core.polling import LROPoller

    class Slow(LROPoller):
        def __init__(self):
            super().__init__(None, None, lambda r: r, _polling()())
            self._left, self._done, self._result = list(states), False, None
            set_state(self._left[0])

        def wait(self, timeout=None):
            fake.skew += timeout or 0.0
            if self._done:
                return
            if self._left:
                set_state(self._left.pop(0))
            else:
                self._result, self._done = finish(), True

        def done(self):
            return self._done

        def status(self):
            return "Succeeded" if self._done else "InProgress"

        def result(self, timeout=None):
            return self._result

    return Slow()


@dataclasses.dataclass
class _Endpoint:
    name: str
    auth_mode: str
    tags: dict
    folder: Path
    gateway_tag: str
    scoring_uri: str
    deployments: dict = dataclasses.field(default_factory=dict)  # name -> _Deployment
    state: str = "Succeeded"

    @property
    def key_file(self) -> Path:
        return self.folder / "key"

    @property
    def routes(self) -> Path:
        return self.folder / "routes.json"

    @property
    def requests_log(self) -> Path:
        return self.folder / "requests.jsonl"


#: what the service fills in for probe settings not sent (ProbeSettings' documented defaults)
PROBE_DEFAULTS = {"initial_delay": 10, "period": 10, "timeout": 2, "success_threshold": 1,
                  "failure_threshold": 30}


@dataclasses.dataclass
class _Deployment:
    name: str
    state: str
    tag: str
    log: Path
    model: str
    reference: str = ""
    tags: dict = dataclasses.field(default_factory=dict)
    instance_type: str = ""
    instance_count: int = 1
    #: request_settings and probes as the service keeps them (defaults filled in)
    request: dict = dataclasses.field(default_factory=dict)
    probes: dict = dataclasses.field(default_factory=dict)
    #: the request_settings the create sent (what the gateway enforces)
    sent: dict = dataclasses.field(default_factory=dict)


def _settings(entity) -> tuple[dict, dict, dict]:
    """(request_settings sent, kept with defaults, probes kept with defaults) of a
    ManagedOnlineDeployment; azure_error 400 BadArgument for a value the service refuses."""
    given = entity.request_settings
    sent = {k: v for k, v in vars(given).items() if v is not None} if given else {}
    request = {**spec.AZURE_REQUEST_DEFAULTS, **sent}
    probes = {}
    for name in ("liveness_probe", "readiness_probe"):
        probe = getattr(entity, name, None)
        given_probe = {k: v for k, v in vars(probe).items() if v is not None} if probe else {}
        probes[name] = {**PROBE_DEFAULTS, **given_probe}
    problems = [f"request_settings.{k} {v} is below 1" for k, v in request.items() if v < 1]
    if request["request_timeout_ms"] > spec.MAX_REQUEST_TIMEOUT_MS:
        problems.append(f"request_settings.request_timeout_ms {request['request_timeout_ms']} "
                        f"exceeds the maximum of {spec.MAX_REQUEST_TIMEOUT_MS}")
    problems += [f"{name}.{k} {v} is below 1" for name, probe in probes.items()
                 for k, v in probe.items() if v < 1]
    if probes["liveness_probe"]["success_threshold"] != 1:
        problems.append("liveness_probe.success_threshold must be 1")
    if problems:
        raise azure_error(400, "BadArgument", "; ".join(problems), "PUT")
    return sent, request, probes


class FakeAzure(seam.Seam):
    def __init__(self, root: Path, taken: tuple[str, ...] = ()):
        self.root = Path(root)
        self.endpoints: dict[str, _Endpoint] = {}
        self.models: dict[tuple[str, str], dict] = {}
        #: endpoint names another workspace of the region holds
        self.taken = set(taken)
        #: hand out a key the gateway refuses (keys regenerated behind our back)
        self.stale_key = False
        #: every call fails as a credential chain with nothing set up does
        self.no_credential = False
        #: the workspace read answers 404
        self.workspace_missing = False
        self.region = "westeurope"
        self.calls: list[tuple[str, str]] = []
        #: seam method -> what its next calls raise (exceptions) or how its operation ends
        self.faults: dict[str, list] = {}
        #: seam methods whose next long-running operation never finishes (once each)
        self.stuck: set[str] = set()
        #: seam methods whose next long-running operation passes through these states first,
        #: one per state read of the seam (once each)
        self.slow: dict[str, list[str]] = {}
        #: seconds the fake clock is ahead of the monotonic clock
        self.skew = 0.0
        #: seconds since the epoch, the clock token expiries are given on
        self.wall = time.time
        #: seconds a token of an aml_token/aad_token endpoint is valid for
        self.token_lifetime = 2.0
        self.token_fetches = 0
        #: (reading of ``wall`` when issued, expiry) of every token handed out
        self.tokens_issued: list[tuple[float, float]] = []
        self._ids = itertools.count(1)
        #: autoscale setting name -> the JSON the service keeps
        self.autoscale: dict[str, dict] = {}
        #: seconds after its answer a request shows in the metrics (math.inf: never)
        self.metrics_delay = 0.0
        #: every metrics query, its keyword arguments and resource
        self.metric_queries: list[dict] = []

    def factory(self, settings, progress):
        return self

    def clock(self) -> float:
        return time.monotonic() + self.skew

    def sleep(self, seconds: float) -> None:
        self.skew += max(0.0, seconds)  # the fake clock moves on; nothing waits

    def fail(self, method: str, error, times: int = 1) -> None:
        self.faults.setdefault(method, []).extend([error] * times)

    def _call(self, method: str, name: str):
        self.calls.append((method, name))
        if self.no_credential:
            raise credential_error()
        queued = self.faults.get(method)
        if queued:
            fault = queued.pop(0)
            if isinstance(fault, BaseException):
                raise fault
            return fault
        return None

    def _slow(self, method: str, set_state, finish):
        """A slow poller when ``method`` is in :attr:`slow`, else the finished one."""
        states = self.slow.pop(method, None)
        if states:
            return slow_poller(self, states, set_state, finish)
        return poller(finish())

    def _stuck(self, method: str) -> bool:
        if method in self.stuck:
            self.stuck.discard(method)
            return True
        return False

    def stop_all(self) -> None:
        for endpoint in list(self.endpoints.values()):
            self._remove(endpoint)

    # -- workspace ---------------------------------------------------------------------------
    def _workspace(self):
        self._call("get_workspace", "ws")
        if self.workspace_missing:
            raise azure_error(404, "ResourceNotFound", "The Resource 'Microsoft.Machine"
                              "LearningServices/workspaces/ws' under resource group 'rg' was "
                              "not found. For more details please go to "
                              "https://aka.ms/ARMResourceNotFoundFix")
        return self.region

    # -- endpoints ---------------------------------------------------------------------------
    def _entity(self, endpoint: _Endpoint):
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        routes = twin.read_routes(endpoint.routes)
        return ManagedOnlineEndpoint(name=endpoint.name, auth_mode=endpoint.auth_mode,
                                     id=f"{WORKSPACE_ID}/onlineEndpoints/{endpoint.name}",
                                     tags=dict(endpoint.tags),
                                     traffic=dict(routes.get("traffic", {})),
                                     scoring_uri=endpoint.scoring_uri,
                                     provisioning_state=endpoint.state)

    def _endpoint(self, name):
        self._call("get_endpoint", name)
        return self._entity(self._get(name))

    def _get(self, name) -> _Endpoint:
        if name not in self.endpoints:
            raise not_found("onlineEndpoints", name)
        return self.endpoints[name]

    def _begin_endpoint(self, entity):
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        assert isinstance(entity, ManagedOnlineEndpoint)
        entity._to_rest_online_endpoint(self.region)  # the SDK's own serialisation
        failure = self._call("create_or_update_endpoint", entity.name)
        if entity.name in self.taken:
            raise azure_error(409, "EndpointNameNotAvailable", f"The endpoint name "
                              f"{entity.name} is already used in this region", "PUT")
        if entity.name in self.endpoints:
            endpoint = self.endpoints[entity.name]
            endpoint.tags, endpoint.auth_mode = dict(entity.tags or {}), entity.auth_mode
        else:
            folder = self.root / f"ep{next(self._ids)}-{entity.name}"
            folder.mkdir(parents=True)
            twin.write_key(folder / "key")
            tag = f"fake-azure-{folder.name}-{(entity.tags or {}).get(spec.ID_TAG, 'x')}"
            _, url = twin.start_gateway(folder, tag, folder / "key", folder / "routes.json",
                                        lambda _: None,
                                        requests_log=folder / "requests.jsonl")
            endpoint = self.endpoints[entity.name] = _Endpoint(
                entity.name, entity.auth_mode, dict(entity.tags or {}), folder, tag,
                url + "/score")
        endpoint.state = "Succeeded"
        if failure is not None:
            endpoint.state = "Failed"
            return poller(error=failure.error())
        if self._stuck("create_or_update_endpoint"):
            endpoint.state = "Creating"
            return stuck_poller(self)
        return self._slow("create_or_update_endpoint",
                          lambda state: setattr(endpoint, "state", state),
                          lambda: setattr(endpoint, "state", "Succeeded") or self._entity(endpoint))

    def _begin_delete_endpoint(self, name):
        failure = self._call("delete_endpoint", name)
        endpoint = self._get(name)
        if failure is not None:
            return poller(error=failure.error())
        return self._slow("delete_endpoint", lambda state: setattr(endpoint, "state", state),
                          lambda: self._remove(endpoint))

    def _remove(self, endpoint: _Endpoint) -> None:
        for deployment in endpoint.deployments.values():
            triton.stop(deployment.tag, STOP_GRACE)
        triton.stop(endpoint.gateway_tag)
        shutil.rmtree(endpoint.folder, ignore_errors=True)
        self.endpoints.pop(endpoint.name, None)

    def _begin_traffic(self, name, traffic):
        failure = self._call("set_traffic", name)
        endpoint = self._get(name)
        unknown = [d for d in traffic if d not in endpoint.deployments]
        if unknown or sum(traffic.values()) not in (0, 100) or any(
                v < 0 for v in traffic.values()):
            raise azure_error(400, "BadArgument", f"Invalid traffic {traffic}: deployments "
                              "must exist and their shares sum to 100 or 0", "PUT")
        if failure is not None:
            return poller(error=failure.error())
        routes = twin.read_routes(endpoint.routes)
        routes["traffic"] = dict(traffic)
        twin.write_routes(endpoint.routes, routes)
        endpoint.state = "Succeeded"
        if self._stuck("set_traffic"):
            endpoint.state = "Updating"
            return stuck_poller(self)
        return self._slow("set_traffic", lambda state: setattr(endpoint, "state", state),
                          lambda: setattr(endpoint, "state", "Succeeded") or self._entity(endpoint))

    def _endpoints(self):
        self._call("list_endpoints", "*")
        return [self._entity(e) for e in self.endpoints.values()]

    # -- keys and tokens ---------------------------------------------------------------------
    def _keys(self, name):
        from azure.ai.ml.entities import EndpointAadToken, EndpointAuthKeys, EndpointAuthToken
        from azure.core.credentials import AccessToken

        self._call("credential", name)
        endpoint = self._get(name)
        if endpoint.auth_mode in ("aml_token", "aad_token"):
            secret, expiry = self._token(endpoint)
            if endpoint.auth_mode == "aad_token":
                return EndpointAadToken(AccessToken(secret, int(expiry)))
            return EndpointAuthToken(access_token=secret, expiry_time_utc=expiry)
        key = twin.read_key(endpoint.key_file)
        return EndpointAuthKeys(primary_key=("stale-" + key) if self.stale_key else key,
                                secondary_key=None)

    def _token(self, endpoint: _Endpoint) -> tuple[str, float]:
        """A new token valid ``token_lifetime`` on ``wall``; the gateway's key file gets it
        beside the others, until ``revoke_tokens`` (or an hour: tests run on ``wall``)."""
        self.token_fetches += 1
        token = secrets.token_urlsafe(32)
        issued = self.wall()
        expiry = issued + self.token_lifetime
        self.tokens_issued.append((issued, expiry))
        now = time.time()
        self._write_keys(endpoint, [(s, e) for s, e in self._keys_of(endpoint)
                                    if e is None or e > now] + [(token, now + 3600.0)])
        return ("stale-" + token) if self.stale_key else token, expiry

    def revoke_tokens(self, name: str) -> None:
        """Every token of endpoint ``name`` is refused from now on (as once expired)."""
        endpoint = self.endpoints[name]
        self._write_keys(endpoint, [(s, e) for s, e in self._keys_of(endpoint) if e is None])

    @staticmethod
    def _keys_of(endpoint: _Endpoint) -> list:
        return list(gateway.parse_keys(endpoint.key_file.read_text()))

    @staticmethod
    def _write_keys(endpoint: _Endpoint, keys: list) -> None:
        tmp = endpoint.key_file.with_name("key.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(s if e is None else f"{s} {e!r}" for s, e in keys) + "\n")
        os.replace(tmp, endpoint.key_file)

    # -- models ------------------------------------------------------------------------------
    def _model_entity(self, name: str, version: str):
        from azure.ai.ml.entities import Model

        found = self.models[(name, version)]
        return Model(name=name, version=version, type="triton_model", tags=dict(found["tags"]),
                     stage="Archived" if found["archived"] else "Development")

    def _register(self, model):
        from azure.ai.ml.entities import Model

        assert isinstance(model, Model) and model.type == "triton_model", model
        self._call("register_model", model.name)
        if not Path(model.path).is_dir():
            raise azure_error(400, "UserError", f"path {model.path} is not a folder", "PUT")
        version = model.version or str(1 + max(
            [int(v) for (n, v) in self.models if n == model.name and v.isdigit()] or [0]))
        existing = self.models.get((model.name, version))
        if existing and existing["path"] != str(model.path):
            raise azure_error(409, "Conflict", f"model {model.name}:{version} already exists "
                              "with different content", "PUT")
        self.models[(model.name, version)] = {"path": str(model.path), "archived": False,
                                              "tags": dict(model.tags or {})}
        return self._model_entity(model.name, version)

    def _model(self, name, version):
        self._call("model_active", f"{name}:{version}")
        if (name, version) not in self.models:
            raise not_found("models", f"{name}/versions/{version}")
        return self._model_entity(name, version)

    def _archive(self, name, version):
        self._call("archive_model", f"{name}:{version}")
        self.models[(name, version)]["archived"] = True

    def _versions(self, name):
        self._call("list_models", name)
        return [self._model_entity(n, v) for (n, v), m in self.models.items()
                if n == name and not m["archived"]]

    # -- deployments -------------------------------------------------------------------------
    def _deployment_entity(self, endpoint: _Endpoint, deployment: _Deployment):
        from azure.ai.ml.entities import (ManagedOnlineDeployment, OnlineRequestSettings,
                                          ProbeSettings)

        probes = {k: ProbeSettings(**v) for k, v in deployment.probes.items()}
        return ManagedOnlineDeployment(
            name=deployment.name, endpoint_name=endpoint.name, model=deployment.reference,
            id=f"{WORKSPACE_ID}/onlineEndpoints/{endpoint.name}/deployments/{deployment.name}",
            tags=dict(deployment.tags), provisioning_state=deployment.state,
            instance_type=deployment.instance_type, instance_count=deployment.instance_count,
            request_settings=OnlineRequestSettings(**deployment.request), **probes)

    def _begin_deployment(self, entity):
        from azure.ai.ml.entities import ManagedOnlineDeployment

        assert isinstance(entity, ManagedOnlineDeployment)
        entity._to_rest_object(location=self.region)
        failure = self._call("create_or_update_deployment",
                             f"{entity.endpoint_name}/{entity.name}")
        endpoint = self._get(entity.endpoint_name)
        sent, request, probes = _settings(entity)
        _, name, version = str(entity.model).split(":")
        model = self.models.get((name, version))
        if model is None:
            raise not_found("models", f"{name}/versions/{version}")
        old = endpoint.deployments.get(entity.name)
        attempt = next(self._ids)
        tag = f"{endpoint.gateway_tag}-{entity.name}-{attempt}"
        log = endpoint.folder / f"{entity.name}-{attempt}-inference-server.log"
        deployment = _Deployment(entity.name, "Updating" if old else "Creating", tag, log,
                                 model["path"], str(entity.model), dict(entity.tags or {}),
                                 entity.instance_type, int(entity.instance_count or 1),
                                 request, probes, sent)
        if not old:
            endpoint.deployments[entity.name] = deployment
        if failure is not None:  # Azure accepted it, then it failed (OutOfQuota, ...)
            (old or deployment).state = "Failed"
            return poller(error=failure.error())
        if self._stuck("create_or_update_deployment"):
            log.write_text(STUCK_LOG)
            (old or deployment).log = log
            return stuck_poller(self)
        try:
            _, url, _ = twin.start_triton(Path(model["path"]), endpoint.folder, tag, lambda _: None,
                                       timeout=60, log_name=log.name)
        except DeployFailed:
            triton.stop(tag, STOP_GRACE)  # one that never became ready
            if old:  # rolling update: the old instances keep serving; the state says Failed
                old.log, old.model = log, model["path"]  # get_logs shows the failed attempt
            (old or deployment).state = "Failed"
            return poller(error=OperationFailure(
                "ResourceNotReady", "User container has crashed or terminated").error())
        deployment.state = "Succeeded"
        endpoint.deployments[entity.name] = deployment
        twin.update_routes(endpoint.routes, entity.name, url=url, limits=twin.gateway_limits(
            sent, deployment.instance_count))
        if old:
            triton.stop(old.tag, STOP_GRACE)
        shown = endpoint.deployments[entity.name]
        return self._slow("create_or_update_deployment",
                          lambda state: setattr(shown, "state", state),
                          lambda: setattr(shown, "state", "Succeeded")
                          or self._deployment_entity(endpoint, shown))

    def _deployment(self, endpoint_name, name):
        self._call("get_deployment_state", f"{endpoint_name}/{name}")
        endpoint = self._get(endpoint_name)
        if name not in endpoint.deployments:
            raise not_found("onlineEndpoints", f"{endpoint_name}/deployments/{name}")
        return self._deployment_entity(endpoint, endpoint.deployments[name])

    def _deployments(self, endpoint_name):
        self._call("list_deployments", endpoint_name)
        endpoint = self._get(endpoint_name)
        return [self._deployment_entity(endpoint, d) for d in endpoint.deployments.values()]

    def _begin_delete_deployment(self, endpoint_name, name):
        failure = self._call("delete_deployment", f"{endpoint_name}/{name}")
        endpoint = self._get(endpoint_name)
        if name not in endpoint.deployments:
            raise not_found("onlineEndpoints", f"{endpoint_name}/deployments/{name}")
        if twin.read_routes(endpoint.routes).get("traffic", {}).get(name):
            raise azure_error(400, "BadArgument", f"Deployment {name} still receives traffic; "
                              "set it to 0 first", "DELETE")
        if failure is not None:
            return poller(error=failure.error())
        def finish():
            triton.stop(endpoint.deployments.pop(name).tag, STOP_GRACE)
            twin.update_routes(endpoint.routes, name, remove=True)

        return self._slow("delete_deployment",
                          lambda state: setattr(endpoint.deployments[name], "state", state),
                          finish)

    def _logs(self, endpoint_name, name, lines, container_type):
        self._call(f"logs:{container_type}", f"{endpoint_name}/{name}")
        endpoint = self._get(endpoint_name)
        deployment = endpoint.deployments.get(name)
        if deployment is None:
            raise not_found("onlineEndpoints", f"{endpoint_name}/deployments/{name}")
        if container_type == "storage-initializer":
            return STORAGE_LOG.format(model=deployment.model, path=deployment.model)
        return triton.tail(deployment.log, lines)


    # -- autoscale settings (azure-mgmt-monitor) ----------------------------------------------
    def _source(self, uri: str):
        """The (endpoint, deployment or None) an ARM id names in this workspace, or None."""
        prefix = f"{WORKSPACE_ID}/onlineEndpoints/".lower()
        if not str(uri or "").lower().startswith(prefix):
            return None
        parts = str(uri)[len(prefix):].split("/")
        endpoint = self.endpoints.get(parts[0])
        if endpoint is None:
            return None
        if len(parts) == 1:
            return endpoint, None
        if len(parts) == 3 and parts[1].lower() == "deployments" and \
                parts[2] in endpoint.deployments:
            return endpoint, endpoint.deployments[parts[2]]
        return None

    def _check_autoscale(self, body: dict) -> list[str]:
        """What the service refuses in an autoscale setting's JSON."""
        import isodate

        problems = []
        properties = body.get("properties") or {}
        if not body.get("location"):
            problems.append("location is required")
        elif body["location"] != self.region:
            problems.append(f"location {body['location']} is not the target's ({self.region})")
        profiles = properties.get("profiles")
        if not profiles or len(profiles) > 20:
            problems.append("profiles: 1 to 20 are required")
        target = self._source(properties.get("targetResourceUri"))
        if target is None or target[1] is None:
            problems.append(f"targetResourceUri {properties.get('targetResourceUri')} is not "
                            "an online deployment of the workspace")
        for profile in profiles or []:
            capacity = profile.get("capacity") or {}
            try:
                low, default, high = (int(capacity[k]) for k in ("minimum", "default",
                                                                  "maximum"))
                if not 0 <= low <= default <= high:
                    problems.append(f"capacity {capacity} must be minimum <= default <= "
                                    "maximum")
            except (KeyError, TypeError, ValueError):
                problems.append(f"capacity {capacity} needs whole minimum, default, maximum")
            for rule in profile.get("rules") or []:
                trigger, action = rule.get("metricTrigger", {}), rule.get("scaleAction", {})
                source = self._source(trigger.get("metricResourceUri"))
                metrics = (None if source is None else
                           DEPLOYMENT_METRICS if source[1] is not None else ENDPOINT_METRICS)
                name = trigger.get("metricName")
                if metrics is None:
                    problems.append(f"metricResourceUri {trigger.get('metricResourceUri')} "
                                    "is not found")
                elif name not in metrics:
                    problems.append(f"metric {name} is not supported by the source")
                else:
                    problems += [f"dimension {d.get('DimensionName')} is not one of metric "
                                 f"{name}" for d in trigger.get("dimensions") or []
                                 if d.get("DimensionName") not in metrics[name]]
                cooldown = isodate.parse_duration(action.get("cooldown", "PT0S"))
                if not 60 <= cooldown.total_seconds() <= 7 * 86400:
                    problems.append(f"cooldown {action.get('cooldown')} must be between 1 "
                                    "minute and 1 week")
                window = isodate.parse_duration(trigger.get("timeWindow", "PT0S"))
                if not 300 <= window.total_seconds() <= 12 * 3600:
                    problems.append(f"timeWindow {trigger.get('timeWindow')} must be between "
                                    "5 minutes and 12 hours")
        return problems

    def _autoscale_put(self, name, setting):
        from azure.mgmt.monitor.models import AutoscaleSettingResource

        assert isinstance(setting, AutoscaleSettingResource), setting
        body = json.loads(json.dumps(setting.serialize()))  # what the client sends
        self._call("create_autoscale", name)
        problems = self._check_autoscale(body)
        if problems:
            raise azure_error(400, "BadRequest", "; ".join(problems), "PUT")
        body.update(id=f"{GROUP_ID}/providers/microsoft.insights/autoscalesettings/{name}",
                    name=name, type="Microsoft.Insights/autoscaleSettings")
        self.autoscale[name] = body
        # Azure brings the target's count into the range at once
        _, deployment = self._source(body["properties"]["targetResourceUri"])
        capacity = body["properties"]["profiles"][0]["capacity"]
        deployment.instance_count = min(max(deployment.instance_count,
                                            int(capacity["minimum"])),
                                        int(capacity["maximum"]))
        return AutoscaleSettingResource.deserialize(body)

    def _autoscale(self, name):
        from azure.mgmt.monitor.models import AutoscaleSettingResource

        self._call("get_autoscale", name)
        if name not in self.autoscale:
            raise azure_error(404, "ResourceNotFound", f"The Resource 'microsoft.insights/"
                              f"autoscalesettings/{name}' under resource group 'rg' was not "
                              "found.")
        return AutoscaleSettingResource.deserialize(self.autoscale[name])

    def _autoscale_delete(self, name):
        self._call("delete_autoscale", name)
        self.autoscale.pop(name, None)  # ARM answers 204 for nothing to delete

    def _autoscales(self):
        from azure.mgmt.monitor.models import AutoscaleSettingResource

        self._call("list_autoscales", "*")
        return [AutoscaleSettingResource.deserialize(b) for b in self.autoscale.values()]


    # -- Azure Monitor's metrics of an endpoint (azure-mgmt-monitor) ---------------------------
    def gateway_requests(self, endpoint: str, deployment: str | None = None) -> list[dict]:
        """The lines endpoint ``endpoint``'s gateway wrote (for ``deployment`` when given)."""
        path = self.endpoints[endpoint].requests_log
        lines = path.read_text().splitlines() if path.exists() else []
        found = [json.loads(line) for line in lines if line.strip()]
        return [r for r in found if deployment is None or r["deployment"] == deployment]

    def _metrics(self, resource_uri, *, timespan, interval, metricnames, aggregation, filter):
        from azure.mgmt.monitor.models import Response

        name = str(resource_uri).rsplit("/", 1)[-1]
        self._call("read_metrics", name)
        self.metric_queries.append({"resource": resource_uri, "timespan": timespan,
                                    "interval": interval, "metricnames": metricnames,
                                    "aggregation": aggregation, "filter": filter})
        source = self._source(resource_uri)
        if source is None:
            raise not_found("onlineEndpoints", name)
        endpoint, deployment = source
        names = metricnames.split(",")
        kinds = [a.strip().lower() for a in aggregation.split(",")]
        wanted = re.fullmatch(r"(\w+) eq '([^']*)'", filter or "")
        problems = [f"metric {m} is not supported by the source" for m in names
                    if deployment is not None or m not in ENDPOINT_METRICS]
        problems += [f"aggregation {a} is not one of average, count, total, minimum, maximum"
                     for a in kinds if a not in ("average", "count", "total", "minimum",
                                                 "maximum")]
        if interval != "PT1M":
            problems.append(f"interval {interval}: this fake serves PT1M")
        if not wanted:
            problems.append(f"$filter {filter!r}: this fake serves DIMENSION eq 'VALUE'")
        else:
            problems += [f"dimension {wanted[1]} is not one of metric {m}" for m in names
                         if wanted[1] not in ENDPOINT_METRICS.get(m, set())]
        if problems:
            raise azure_error(400, "BadRequest", "; ".join(problems))
        first, last = (datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
                       for t in timespan.split("/"))
        now = time.time() + self.skew
        published = [r for r in self.gateway_requests(endpoint.name, wanted[2])
                     if first <= r["t"] < last and r["t"] + r["ms"] / 1000
                     + self.metrics_delay <= now]
        minutes = [first + 60 * i for i in range(int((last - first) // 60))]

        def point(at: float, samples: list[float]) -> dict:
            stamp = datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat()
            found = {"timeStamp": stamp.replace("+00:00", "Z")}
            if samples:
                values = {"average": sum(samples) / len(samples), "count": len(samples),
                          "total": sum(samples), "minimum": min(samples),
                          "maximum": max(samples)}
                found.update({k: values[k] for k in kinds})
            return found

        def samples(metric: str, at: float) -> list[float]:
            those = [r for r in published if at <= r["t"] < at + 60]
            if metric == "RequestLatency":
                return [r["ms"] for r in those]
            statuses = sorted({r["status"] for r in those})  # one series per status code
            return [float(sum(r["status"] == s for r in those)) for s in statuses]

        value = [{"id": f"{resource_uri}/providers/Microsoft.Insights/metrics/{m}",
                  "type": "Microsoft.Insights/metrics",
                  "name": {"value": m, "localizedValue": m},
                  "unit": "MilliSeconds" if m == "RequestLatency" else "Count",
                  "timeseries": [{"metadatavalues": [{"name": {"value": wanted[1]},
                                                      "value": wanted[2]}],
                                  "data": [point(at, samples(m, at)) for at in minutes]}]
                  if published else [], "errorCode": "Success"} for m in names]
        return Response.deserialize({
            "cost": len(minutes), "timespan": timespan, "interval": interval,
            "namespace": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "resourceregion": self.region, "value": value})


# -- fixtures for the azure test modules (import them: ``from azure_support import fake``) ------
import pytest  # noqa: E402


@pytest.fixture
def fake(tmp_path):
    """A FakeAzure handed to the seam through the Python API, stopped afterwards."""
    # set by hand, not with monkeypatch: the contract suite calls monkeypatch.undo() mid-test
    world = FakeAzure(tmp_path / "azure")
    saved, seam.factory = seam.factory, world.factory
    try:
        yield world
    finally:
        seam.factory = saved
        world.stop_all()


@pytest.fixture
def run_cli(tmp_path, capfd):
    """Run the CLI in-process; return (exit code, stdout, stderr). Keeps every output."""
    from deployer import cli

    outputs: list[str] = []

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(["--state-dir", str(tmp_path / "state"), *args])
        out, err = capfd.readouterr()
        outputs.extend([out, err])
        return code, out, err

    run.outputs = outputs
    return run


def monitor_seam(answer):
    """A real ``MLSeam`` whose real ``MonitorManagementClient`` sends through a stand-in
    transport answering ``answer(request)``; returns (seam, transport), the requests it sent
    in ``transport.sent``."""
    from azure.core.credentials import AccessToken
    from azure.core.pipeline.transport import HttpTransport
    from azure.mgmt.monitor import MonitorManagementClient

    class Arm(HttpTransport):
        def __init__(self):
            self.sent = []

        def __enter__(self):
            return self

        def __exit__(self, *args):
            pass

        def open(self):
            pass

        def close(self):
            pass

        def send(self, request, **kwargs):
            self.sent.append(request)
            return answer(request)

    class Token:
        def get_token(self, *scopes, **kwargs):
            return AccessToken("t", int(time.time()) + 3600)

    arm = Arm()
    real = seam.MLSeam(SimpleNamespace(subscription_id="sub", resource_group_name="rg"))
    real._monitor = MonitorManagementClient(Token(), "sub", transport=arm)
    return real, arm
