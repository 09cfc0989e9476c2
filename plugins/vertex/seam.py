"""The one place that calls Vertex AI's control plane. Everything else talks to a ``Seam``.

A ``Seam`` has two faces. The target calls its public methods, which answer plain values
(:class:`ModelInfo`, :class:`EndpointInfo`, ...) and fail with the exceptions below, each one
line with Google's status (``PERMISSION_DENIED``, HTTP 403), its message and a hint. Beneath
them are the primitives (``_upload_model``, ``_begin_deploy``, ...) that a backend implements as
google-cloud-aiplatform does: they return its resources (``aiplatform_v1`` ``Model`` and
``Endpoint`` messages, a ``google.api_core.operation.Operation`` for a deploy) and raise
``google.api_core.exceptions``. :class:`AiplatformSeam` implements them with the SDK; tests
implement them with an in-memory control plane and set :data:`factory`. So the error mapping,
the traffic arithmetic and the deploy's deadline are the same for both.

Resource names are Vertex's: ``projects/P/locations/L/models/ID`` and ``.../endpoints/ID``;
deployed model ids are numeric strings. A bare id is taken as one of the seam's project and
region. Not found is ``None`` / ``False`` (teardown is idempotent).

google.* is imported only inside the methods that call it (the CLI starts without it).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import sys
import time
from typing import Any, Callable, Iterator, Optional

from deployer import progress
from deployer.triton import Credential

#: seconds one deploy may take; ``connect`` sets it from ``startup_timeout``
DEADLINE = 1800.0
#: a running deploy's operation is read this often (seconds), its deployment stage reported;
#: a plain log shows a change at once, else a line each ``deployer.progress.EVERY``
STATE_EVERY = 10.0
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: Cloud Logging's REST call for a failed deploy's container lines
LOGGING_URL = "https://logging.googleapis.com/v2/entries:list"
#: the key of the model being deployed in a deploy request's traffic split (Vertex's rule)
DEPLOYING = "0"

AUTH_HINT = ("run 'gcloud auth application-default login', or set "
             "GOOGLE_APPLICATION_CREDENTIALS to a service account key file")
ROLE_HINT = ("grant the identity roles/aiplatform.user on project {project} (gcloud projects "
             "add-iam-policy-binding {project} --member=MEMBER --role=roles/aiplatform.user)")
API_HINT = "enable the API: gcloud services enable aiplatform.googleapis.com --project {project}"
IMAGE_HINT = ("Vertex could not pull the image: it must be in Artifact Registry or Container "
              "Registry of a project Vertex can read (the Vertex AI Service Agent "
              "service-PROJECT_NUMBER@gcp-sa-aiplatform.iam.gserviceaccount.com needs "
              "roles/artifactregistry.reader on the repository)")
LOG_HINT = "the container's last log lines follow; 'deployer logs NAME' shows more"


class SeamError(Exception):
    """A control-plane call failed: ``status`` is Google's status name (``NOT_FOUND``),
    ``code`` its HTTP code when known, ``hint`` what to do about it."""

    def __init__(self, message: str, status: str = "", code: Optional[int] = None,
                 hint: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.hint = hint


class NotFoundError(SeamError):
    pass


class AuthError(SeamError):
    """No usable credential (DefaultCredentialsError), Google refused it (UNAUTHENTICATED), or
    the identity lacks a role (PERMISSION_DENIED)."""


class QuotaError(SeamError):
    """RESOURCE_EXHAUSTED: a quota of the project in the region."""


class OperationFailed(SeamError):
    """A long-running operation Vertex accepted then failed (image pull, quota, a container
    that never became healthy): its error."""


class DeadlineExceeded(OperationFailed):
    """The operation was still running at its deadline (it goes on in Vertex)."""


@dataclasses.dataclass
class ModelInfo:
    name: str
    display_name: str
    labels: dict[str, str]
    artifact_uri: str


@dataclasses.dataclass
class DeployedModel:
    id: str
    #: the model's resource name
    model: str
    display_name: str
    #: its dedicated resources' replica range and request-count target (None: not set)
    min_replica_count: Optional[int] = None
    max_replica_count: Optional[int] = None
    request_count_target: Optional[int] = None
    #: replicas serving now (``status.available_replica_count``; None: Vertex did not say)
    available_replica_count: Optional[int] = None


@dataclasses.dataclass
class EndpointInfo:
    name: str
    display_name: str
    labels: dict[str, str]
    #: deployed model id -> percent of the requests
    traffic: dict[str, int]
    deployed: list[DeployedModel]
    predict_url: str


def label_filter(labels: dict[str, str]) -> str:
    """Vertex's list filter for resources carrying every label:
    ``labels.k="v" AND labels.k2="v2"``."""
    return " AND ".join(f'labels.{k}="{v}"' for k, v in sorted(labels.items()))


def allocate(split: dict[str, int], percentage: int) -> dict[str, int]:
    """The split of a deploy request: the new model (key ``"0"``) gets ``percentage``, the
    others share the rest in proportion (rounded down, the remainder one each in order), as
    the SDK's ``Endpoint.deploy`` does. On an endpoint with no traffic it takes all of it."""
    if not any(split.values()):
        return {DEPLOYING: 100}
    rest = 100 - percentage
    new = {k: (v * rest) // 100 for k, v in split.items()}
    _fill(new, rest)
    return {**new, DEPLOYING: percentage}


def unallocate(split: dict[str, int], deployed_id: str) -> dict[str, int]:
    """The split left once ``deployed_id`` is undeployed: its share goes to the others in
    proportion (empty when none is left), as the SDK's ``Endpoint.undeploy`` does."""
    share = split.get(deployed_id, 0)
    others = {k: v for k, v in split.items() if k != deployed_id}
    left = 100 - share
    if not others or not left:
        return {k: 0 for k in others}
    new = {k: (v * 100) // left for k, v in others.items()}
    _fill(new, 100)
    return new


def _fill(split: dict[str, int], total: int) -> None:
    missing = total - sum(split.values())
    for key in split:
        if missing <= 0:
            break
        split[key] += 1
        missing -= 1


class Seam:
    """What the Vertex target needs from the control plane.

    Public methods are the contract; a backend implements the ``_`` primitives below them."""

    project: str = ""
    region: str = "us-central1"
    #: seconds one deploy may take; ``connect`` sets it from the options
    deadline: float = DEADLINE

    def progress(self, line: str) -> None:
        pass

    def clock(self) -> float:
        """Monotonic seconds; the deadline and the progress lines are measured on it."""
        return time.monotonic()

    def resource(self, kind: str, name: str) -> str:
        """The full resource name of ``name`` (a bare id: in the seam's project and region)."""
        return name if "/" in name else \
            f"projects/{self.project}/locations/{self.region}/{kind}/{name}"

    # -- the contract ------------------------------------------------------------------------
    def check(self) -> None:
        """One cheap read of the project's Vertex resources (the first call of a deploy): no
        credential, no role or the API disabled fails here, before anything is created."""
        with self.call(f"reading Vertex AI in project {self.project} ({self.region})"):
            self._check()

    def upload_model(self, display_name: str, artifact_uri: str, container: dict,
                     labels: dict[str, str], label: Optional[str] = None) -> ModelInfo:
        """Upload (register) a model: ``container`` is spec.container_spec's dict. Reported
        as a wait called ``label`` (the SDK waits on its operation itself)."""
        with progress.waiting(self.progress, label or f"  uploading model {display_name}"), \
                self.call(f"uploading model {display_name}"):
            return _model_info(self._upload_model(display_name, artifact_uri, dict(container),
                                                  dict(labels)))

    def get_model(self, name: str) -> Optional[ModelInfo]:
        try:
            with self.call(f"model {name}"):
                return _model_info(self._model(self.resource("models", name)))
        except NotFoundError:
            return None

    def delete_model(self, name: str) -> bool:
        """Delete a model; False when it was gone already."""
        try:
            with self.call(f"deleting model {name}"):
                self._delete_model(self.resource("models", name))
        except NotFoundError:
            return False
        return True

    def find_models(self, labels: dict[str, str]) -> list[ModelInfo]:
        """The models carrying every label of ``labels``."""
        with self.call("listing models"):
            return [_model_info(m) for m in self._models(label_filter(labels))]

    def create_endpoint(self, display_name: str, labels: dict[str, str]) -> EndpointInfo:
        with self.call(f"creating endpoint {display_name}"):
            return self._endpoint_info(self._create_endpoint(display_name, dict(labels)))

    def get_endpoint(self, name: str) -> Optional[EndpointInfo]:
        try:
            with self.call(f"endpoint {name}"):
                return self._endpoint_info(self._endpoint(self.resource("endpoints", name)))
        except NotFoundError:
            return None

    def find_endpoints(self, labels: dict[str, str]) -> list[EndpointInfo]:
        """The endpoints carrying every label of ``labels``."""
        with self.call("listing endpoints"):
            return [self._endpoint_info(e) for e in self._endpoints(label_filter(labels))]

    def deploy_model(self, endpoint: str, model: str, display_name: str, machine: dict,
                     traffic_percentage: int, timeout: Optional[float] = None,
                     label: Optional[str] = None) -> str:
        """Deploy ``model`` on ``endpoint`` (``machine``: spec.machine's dict, named as
        ``Endpoint.deploy``'s arguments: machine, accelerator, replica range, the
        request-count target) with
        ``traffic_percentage`` of the requests (the others scaled down; all of them on an
        endpoint with no traffic) and wait for the operation, at most ``timeout`` (else the
        seam's deadline), reported as a wait called ``label`` (see _wait). Returns the
        deployed model's id. A refused request fails as its status says; an operation that
        failed is OperationFailed with its error; DeadlineExceeded when still running at the
        deadline."""
        endpoint = self.resource("endpoints", endpoint)
        model = self.resource("models", model)
        what = f"deploying {display_name} on {endpoint}"
        with self.call(what):
            current = dict(self._endpoint(endpoint).traffic_split)
            operation = self._begin_deploy(endpoint, model, display_name, dict(machine),
                                           allocate(current, int(traffic_percentage)))
        response = self._wait(operation, what, float(timeout or self.deadline),
                              machine=machine, label=label)
        return str(response.deployed_model.id)

    def set_traffic(self, endpoint: str, split: dict[str, int]) -> EndpointInfo:
        """Set the endpoint's traffic split (deployed model id -> percent; sums to 100, or
        0 for no traffic)."""
        with self.call(f"setting the traffic of {endpoint}"):
            return self._endpoint_info(self._set_traffic(
                self.resource("endpoints", endpoint), {k: int(v) for k, v in split.items()}))

    def undeploy_model(self, endpoint: str, deployed_id: str) -> bool:
        """Undeploy a deployed model, its traffic given to the others in proportion; False
        when it (or the endpoint) was gone already."""
        endpoint = self.resource("endpoints", endpoint)
        try:
            with self.call(f"undeploying {deployed_id} from {endpoint}"):
                info = self._endpoint(endpoint)
                if deployed_id not in {d.id for d in info.deployed_models}:
                    return False
                split = dict(info.traffic_split)
                given = unallocate(split, deployed_id) if split.get(deployed_id) else None
                with progress.waiting(self.progress, f"  undeploying {deployed_id} from "
                                      f"{endpoint}"):
                    self._undeploy(endpoint, deployed_id, given)
        except NotFoundError:
            return False
        return True

    def delete_endpoint(self, name: str) -> bool:
        """Undeploy what it still serves, then delete it (Vertex refuses to delete an endpoint
        with deployed models); False when it was gone already."""
        name = self.resource("endpoints", name)
        try:
            with self.call(f"deleting endpoint {name}"):
                info = self._endpoint(name)
            for deployed in list(info.deployed_models):
                self.undeploy_model(name, deployed.id)
            with progress.waiting(self.progress, f"  deleting endpoint {name}"), \
                    self.call(f"deleting endpoint {name}"):
                self._delete_endpoint(name)
        except NotFoundError:
            return False
        return True

    def credential(self) -> Credential:
        """A fresh access token (scope cloud-platform) and its expiry. Never log it."""
        with self.call("getting an access token"):
            token, expiry = self._token()
        return Credential(token, float(expiry) if expiry else time.time() + 3600.0)

    def logs(self, endpoint: str, lines: int = 100) -> str:
        """The endpoint's last ``lines`` container log lines (Cloud Logging), oldest first."""
        endpoint = self.resource("endpoints", endpoint)
        try:
            with self.call(f"logs of {endpoint}"):
                return "\n".join(self._logs(endpoint, int(lines)))
        except SeamError as exc:
            return f"(no container logs: {exc})"

    def predict_url(self, endpoint: str) -> str:
        return self._predict_url(self.resource("endpoints", endpoint))

    # -- errors and waiting ------------------------------------------------------------------
    @contextlib.contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Run control-plane calls with their exceptions turned into ours."""
        try:
            yield
        except SeamError:
            raise
        except Exception as exc:  # noqa: BLE001 - google-auth errors share no base with api_core's
            if not type(exc).__module__.startswith("google."):
                raise
            raise translate(exc, what, self.project, self.region) from None

    def _wait(self, operation, what: str, deadline: float, machine: Optional[dict] = None,
              label: Optional[str] = None):
        """The operation's result, waited for as a ``deployer.progress`` wait (``label``,
        else ``what``) that hears the operation's deployment stage every STATE_EVERY seconds;
        OperationFailed with its error, DeadlineExceeded past ``deadline``."""
        from google.api_core import exceptions

        started = self.clock()
        with progress.waiting(self.progress, label or f"  {what}") as wait:
            while True:
                left = started + deadline - self.clock()
                try:
                    response = operation.result(timeout=max(0.001, min(STATE_EVERY, left)))
                except concurrent.futures.TimeoutError:
                    current = stage(operation)
                    wait.state(current)
                    if self.clock() - started >= deadline:
                        raise DeadlineExceeded(
                            f"{what}: still {current} after "
                            f"{progress.elapsed(self.clock() - started)}, past its deadline "
                            f"(startup_timeout={deadline:g}s); it goes on in Vertex",
                            "DEADLINE_EXCEEDED",
                            hint="raise -o startup_timeout=SECONDS if it only needs longer") \
                            from None
                except exceptions.GoogleAPICallError as exc:
                    raise self._failed(exc, what, machine) from None
                else:
                    wait.end(stage(operation, "done"))
                    return response

    def _failed(self, exc, what: str, machine: Optional[dict]) -> OperationFailed:
        from google.api_core import exceptions

        status, code = _status(exc), getattr(exc, "code", None)
        message = _first_line(getattr(exc, "message", "") or str(exc))
        if isinstance(exc, exceptions.ResourceExhausted):
            hint = quota_hint(machine, self.region)
        elif _image_problem(message):
            hint = IMAGE_HINT
        else:
            hint = LOG_HINT
        return OperationFailed(f"{what}: the operation failed: {status}: {message}", status,
                               code if isinstance(code, int) else None, hint)

    def _endpoint_info(self, endpoint) -> EndpointInfo:
        return EndpointInfo(
            name=endpoint.name, display_name=endpoint.display_name,
            labels=dict(endpoint.labels), traffic={k: int(v) for k, v in
                                                   endpoint.traffic_split.items()},
            deployed=[_deployed_model(d) for d in endpoint.deployed_models],
            predict_url=self._predict_url(endpoint.name))

    # -- primitives: a backend implements these as google-cloud-aiplatform does -------------
    def _check(self) -> None:
        raise NotImplementedError

    def _upload_model(self, display_name: str, artifact_uri: str, container: dict,
                      labels: dict):
        """An ``aiplatform_v1.Model`` (after the upload operation)."""
        raise NotImplementedError

    def _model(self, name: str):
        raise NotImplementedError

    def _models(self, filter: str) -> list:
        raise NotImplementedError

    def _delete_model(self, name: str) -> None:
        raise NotImplementedError

    def _create_endpoint(self, display_name: str, labels: dict):
        """An ``aiplatform_v1.Endpoint`` (after the create operation)."""
        raise NotImplementedError

    def _endpoint(self, name: str):
        raise NotImplementedError

    def _endpoints(self, filter: str) -> list:
        raise NotImplementedError

    def _begin_deploy(self, endpoint: str, model: str, display_name: str, machine: dict,
                      traffic_split: dict):
        """Start a DeployModel operation (``traffic_split``: key ``"0"`` is the new model);
        a ``google.api_core.operation.Operation`` whose result is a DeployModelResponse."""
        raise NotImplementedError

    def _set_traffic(self, endpoint: str, split: dict):
        raise NotImplementedError

    def _undeploy(self, endpoint: str, deployed_id: str, traffic_split: Optional[dict]) -> None:
        """UndeployModel and wait; ``traffic_split`` the split after it (None: leave it to
        Vertex, which refuses when the model still holds traffic)."""
        raise NotImplementedError

    def _delete_endpoint(self, name: str) -> None:
        raise NotImplementedError

    def _token(self) -> tuple[str, Optional[float]]:
        raise NotImplementedError

    def _logs(self, endpoint: str, lines: int) -> list[str]:
        raise NotImplementedError

    def _predict_url(self, endpoint: str) -> str:
        return f"https://{self.region}-aiplatform.googleapis.com/v1/{endpoint}:rawPredict"


def stage(operation, otherwise: str = "running") -> str:
    """A deploy operation's deployment stage as Vertex names it (``STARTING_MODEL_SERVER``,
    ``FINISHING_UP``...: DeployModelOperationMetadata.deployment_stage), ``otherwise`` when
    its metadata names none."""
    try:
        metadata = operation.metadata
    except Exception:  # noqa: BLE001 - metadata of another type: no stage to show
        return otherwise
    value = getattr(metadata, "deployment_stage", None)
    name = str(getattr(value, "name", "") or "")
    return name if name and name != "DEPLOYMENT_STAGE_UNSPECIFIED" else otherwise


def _deployed_model(item) -> DeployedModel:
    """A v1 ``DeployedModel`` message as the seam answers it."""
    from .spec import REQUEST_COUNT_METRIC

    found = DeployedModel(str(item.id), item.model, item.display_name)
    if "dedicated_resources" in item:
        resources = item.dedicated_resources
        found.min_replica_count = int(resources.min_replica_count)
        found.max_replica_count = int(resources.max_replica_count) or found.min_replica_count
        found.request_count_target = next((int(m.target) for m in
                                           resources.autoscaling_metric_specs
                                           if m.metric_name == REQUEST_COUNT_METRIC), None)
    if "status" in item:
        found.available_replica_count = int(item.status.available_replica_count)
    return found


def _model_info(model) -> ModelInfo:
    return ModelInfo(model.name, model.display_name, dict(model.labels), model.artifact_uri)


def _first_line(text: str) -> str:
    return " ".join((str(text).strip().splitlines() or [""])[0].split())[:400]


def _status(exc) -> str:
    """Google's status name (PERMISSION_DENIED) of an api_core exception."""
    grpc = getattr(exc, "grpc_status_code", None)
    if grpc is not None:
        return grpc.name
    return {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
            404: "NOT_FOUND", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED",
            500: "INTERNAL", 503: "UNAVAILABLE"}.get(getattr(exc, "code", None), "")


def _image_problem(message: str) -> bool:
    text = message.lower()
    return "image" in text and any(w in text for w in ("pull", "not found", "access",
                                                       "permission", "denied"))


def quota_hint(machine: Optional[dict], region: str) -> str:
    """Which quota to raise, named as the Quotas page of the console names it."""
    machine = machine or {}
    accelerator = machine.get("accelerator_type")
    if accelerator:
        what = f"'Custom model serving {accelerator} GPUs per region'"
    elif machine.get("machine_type"):
        family = str(machine["machine_type"]).split("-")[0].upper()
        what = f"'Custom model serving {family} CPUs per region'"
    else:
        what = "the Vertex AI quota named in the message"
    return (f"request more of {what} in {region} (console: IAM & Admin > Quotas, service "
            "aiplatform.googleapis.com), or pick another -o region or -o machine_type")


def translate(exc: Exception, what: str, project: str = "", region: str = "") -> SeamError:
    """The SeamError of a google.api_core (or google.auth) exception, read as the SDK raises
    it: ``code`` (HTTP), ``grpc_status_code`` and ``message`` from Google's error."""
    from google.api_core import exceptions
    from google.auth import exceptions as auth

    project = project or "PROJECT"
    if isinstance(exc, (auth.DefaultCredentialsError, auth.RefreshError)):
        return AuthError(f"{what}: no usable Google credentials: {_first_line(str(exc))}",
                         "UNAUTHENTICATED", 401, AUTH_HINT)
    if not isinstance(exc, exceptions.GoogleAPICallError):
        return SeamError(f"{what}: {_first_line(str(exc)) or type(exc).__name__}")
    status, code = _status(exc), exc.code if isinstance(exc.code, int) else None
    message = _first_line(exc.message or str(exc))
    line = f"{what}: {status} ({code}): {message}" if code else f"{what}: {status}: {message}"
    if isinstance(exc, exceptions.Unauthenticated):
        return AuthError(f"{line} (Google refused the credential)", status, code, AUTH_HINT)
    if isinstance(exc, exceptions.PermissionDenied):
        lowered = message.lower()
        if "has not been used" in lowered or "is disabled" in lowered or \
                "service_disabled" in lowered:
            return AuthError(line, status, code, API_HINT.format(project=project))
        return AuthError(line, status, code, ROLE_HINT.format(project=project))
    if isinstance(exc, exceptions.NotFound):
        return NotFoundError(f"{what}: not found", status, code)
    if isinstance(exc, exceptions.ResourceExhausted):
        return QuotaError(line, status, code, quota_hint(None, region or "the region"))
    return SeamError(line, status, code)


def _default_factory(settings, progress: Callable[[str], None]) -> Seam:
    from .spec import project

    return AiplatformSeam(project(settings), settings.region, progress=progress)


#: ``(settings, progress) -> Seam``: the real one; tests set it to their fake
factory: Callable[[Any, Callable[[str], None]], Seam] = _default_factory


def connect(settings, progress: Callable[[str], None]) -> Seam:
    seam = factory(settings, progress)
    seam.progress = progress
    from .spec import project

    seam.project = project(settings) or seam.project
    seam.region = getattr(settings, "region", None) or seam.region
    seam.deadline = float(getattr(settings, "startup_timeout", None) or DEADLINE)
    return seam


def _quiet_sdk() -> None:
    """The SDK's loggers print every action at INFO on stdout (a StreamHandler made on
    sys.stdout when imported): warnings and up only, and on stderr."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not name.startswith("google.cloud.aiplatform") or not isinstance(logger,
                                                                              logging.Logger):
            continue
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and \
                    handler.stream in (sys.stdout, sys.__stdout__):
                handler.setStream(sys.stderr)
    logging.getLogger("google.cloud.aiplatform").setLevel(logging.WARNING)


class AiplatformSeam(Seam):
    """The real control plane: google-cloud-aiplatform's resource classes (and its GAPIC
    clients where the classes wait without a deadline). Nothing is called until a method is:
    the credentials are google.auth's default ones, found on first use."""

    def __init__(self, project: str, region: str, credentials=None,
                 progress: Callable[[str], None] = lambda _: None):
        self.project, self.region = project or "", region or "us-central1"
        self._credentials = credentials
        self.progress = progress

    def _creds(self):
        if self._credentials is None:
            import google.auth

            self._credentials, _ = google.auth.default(scopes=[SCOPE])
        return self._credentials

    def _scope(self) -> dict:
        from google.cloud import aiplatform  # noqa: F401 - imported once, then quieted

        _quiet_sdk()
        return {"project": self.project, "location": self.region,
                "credentials": self._creds()}

    def _get_endpoint(self, name: str):
        from google.cloud import aiplatform

        return aiplatform.Endpoint(name, **self._scope())

    # -- models ------------------------------------------------------------------------------
    def _check(self):
        from google.cloud.aiplatform import initializer
        from google.cloud.aiplatform.utils import EndpointClientWithOverride

        scope = self._scope()
        client = initializer.global_config.create_client(
            client_class=EndpointClientWithOverride, credentials=scope["credentials"],
            location_override=self.region)
        parent = f"projects/{self.project}/locations/{self.region}"
        next(iter(client.list_endpoints(request={"parent": parent, "page_size": 1})), None)

    def _upload_model(self, display_name, artifact_uri, container, labels):
        from google.cloud import aiplatform

        model = aiplatform.Model.upload(
            display_name=display_name, artifact_uri=artifact_uri,
            serving_container_image_uri=container["image_uri"],
            serving_container_args=list(container.get("args") or []),
            serving_container_environment_variables=dict(container.get("env") or {}),
            serving_container_ports=list(container.get("ports") or []) or None,
            labels=labels, sync=True, **self._scope())
        return model.gca_resource

    def _model(self, name):
        from google.cloud import aiplatform

        return aiplatform.Model(name, **self._scope()).gca_resource

    def _models(self, filter):
        from google.cloud import aiplatform

        return [m.gca_resource for m in aiplatform.Model.list(filter=filter, **self._scope())]

    def _delete_model(self, name):
        from google.cloud import aiplatform

        aiplatform.Model(name, **self._scope()).delete(sync=True)

    # -- endpoints ---------------------------------------------------------------------------
    def _create_endpoint(self, display_name, labels):
        from google.cloud import aiplatform

        return aiplatform.Endpoint.create(display_name=display_name, labels=labels, sync=True,
                                          **self._scope()).gca_resource

    def _endpoint(self, name):
        return self._get_endpoint(name).gca_resource

    def _endpoints(self, filter):
        from google.cloud import aiplatform

        return [e.gca_resource for e in aiplatform.Endpoint.list(filter=filter,
                                                                 **self._scope())]

    def _begin_deploy(self, endpoint, model, display_name, machine, traffic_split):
        # Endpoint.deploy waits on the operation with no timeout: the same request through its
        # GAPIC client, and the operation handed back to wait on with the deadline
        from google.cloud.aiplatform.compat.types import endpoint as gca_endpoint
        from google.cloud.aiplatform.compat.types import machine_resources as gca_machine

        from .spec import REQUEST_COUNT_METRIC, TARGET_KEY

        spec = gca_machine.MachineSpec(machine_type=machine["machine_type"])
        if machine.get("accelerator_type"):
            spec.accelerator_type = machine["accelerator_type"]
            spec.accelerator_count = int(machine.get("accelerator_count") or 1)
        resources = gca_machine.DedicatedResources(
            machine_spec=spec, min_replica_count=int(machine.get("min_replica_count") or 1),
            max_replica_count=int(machine.get("max_replica_count") or 1))
        target = machine.get(TARGET_KEY)
        if target is not None:  # as Endpoint.deploy builds its request-count argument
            resources.autoscaling_metric_specs.append(gca_machine.AutoscalingMetricSpec(
                metric_name=REQUEST_COUNT_METRIC, target=int(target)))
        deployed = gca_endpoint.DeployedModel(model=model, display_name=display_name,
                                              dedicated_resources=resources)
        return self._get_endpoint(endpoint).api_client.deploy_model(
            endpoint=endpoint, deployed_model=deployed, traffic_split=traffic_split)

    def _set_traffic(self, endpoint, split):
        return self._get_endpoint(endpoint).update(traffic_split=split).gca_resource

    def _undeploy(self, endpoint, deployed_id, traffic_split):
        current = self._get_endpoint(endpoint)
        split = traffic_split if traffic_split is not None else {
            k: v for k, v in current.gca_resource.traffic_split.items() if k != deployed_id}
        current.api_client.undeploy_model(endpoint=endpoint, deployed_model_id=deployed_id,
                                          traffic_split=split).result()

    def _delete_endpoint(self, name):
        self._get_endpoint(name).delete(force=False, sync=True)

    # -- reading -----------------------------------------------------------------------------
    def _token(self):
        import datetime

        from google.auth.transport.requests import Request

        credentials = self._creds()
        credentials.refresh(Request())
        expiry = getattr(credentials, "expiry", None)
        if expiry is None:
            return credentials.token, None
        if expiry.tzinfo is None:  # google.auth keeps naive UTC
            expiry = expiry.replace(tzinfo=datetime.timezone.utc)
        return credentials.token, expiry.timestamp()

    def _logs(self, endpoint, lines):
        from google.api_core import exceptions
        from google.auth.transport.requests import AuthorizedSession

        endpoint_id = endpoint.rsplit("/", 1)[-1]
        body = {"resourceNames": [f"projects/{self.project}"], "orderBy": "timestamp desc",
                "pageSize": max(1, min(int(lines), 1000)),
                "filter": ('resource.type="aiplatform.googleapis.com/Endpoint" AND '
                           f'resource.labels.endpoint_id="{endpoint_id}"')}
        answer = AuthorizedSession(self._creds()).post(LOGGING_URL, json=body, timeout=60)
        if answer.status_code >= 400:
            raise exceptions.from_http_response(answer)
        entries = answer.json().get("entries") or []
        return [_entry_text(e) for e in reversed(entries)]


def _entry_text(entry: dict) -> str:
    text = entry.get("textPayload")
    if text is None:
        payload = entry.get("jsonPayload") or {}
        text = payload.get("message") or payload.get("log") or str(payload)
    return str(text).rstrip("\n")
