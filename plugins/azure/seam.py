"""The one place that calls Azure ML's ``MLClient``. Everything else talks to a ``Seam``.

Tests replace the control plane by setting :data:`factory` (a callable ``(settings, progress)
-> Seam``), or by naming one in ``$DEPLOYER_AZURE_SEAM`` (``module:callable``), never by patching
the SDK. Answers are plain values; failures are the exceptions below, whatever the SDK raised.
The SDK prints ``.`` on stdout while it polls: every call runs with stdout sent to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
import threading
from typing import Any, Callable, Iterator, Optional

SEAM_ENV = "DEPLOYER_AZURE_SEAM"
LOG_CONTAINERS = ("inference-server", "storage-initializer")


class SeamError(Exception):
    """A control-plane call failed; ``code`` is Azure's error code when known."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class NotFoundError(SeamError):
    pass


class ConflictError(SeamError):
    pass


class AuthError(SeamError):
    """No usable Azure credential."""


class ProvisioningFailed(SeamError):
    """A create finished in a state other than Succeeded; ``state`` is that state."""

    def __init__(self, message: str, state: str, code: str = ""):
        super().__init__(message, code)
        self.state = state


@dataclasses.dataclass
class EndpointInfo:
    name: str
    provisioning_state: str
    scoring_uri: str
    traffic: dict[str, int]
    tags: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Credential:
    """What the scoring URI wants after ``Bearer``: a key (``expires_on`` None, never
    refreshed) or a token with its expiry (seconds since the epoch). Its repr hides it."""

    secret: str = dataclasses.field(repr=False)
    expires_on: Optional[float] = None

    @property
    def is_token(self) -> bool:
        return self.expires_on is not None


class Seam:
    """What the Azure target needs from the control plane. Entities are azure-ai-ml objects."""

    def get_endpoint(self, name: str) -> Optional[EndpointInfo]:
        raise NotImplementedError

    def create_or_update_endpoint(self, endpoint) -> EndpointInfo:
        raise NotImplementedError

    def register_model(self, model) -> tuple[str, str]:
        """Register (upload) a model; return its (name, version)."""
        raise NotImplementedError

    def model_active(self, name: str, version: str) -> bool:
        raise NotImplementedError

    def archive_model(self, name: str, version: str) -> bool:
        raise NotImplementedError

    def create_or_update_deployment(self, deployment) -> str:
        """Create and wait; return the provisioning state or raise ProvisioningFailed."""
        raise NotImplementedError

    def get_deployment_state(self, endpoint: str, name: str) -> Optional[str]:
        raise NotImplementedError

    def delete_deployment(self, endpoint: str, name: str) -> bool:
        raise NotImplementedError

    def set_traffic(self, endpoint: str, traffic: dict[str, int]) -> EndpointInfo:
        raise NotImplementedError

    def credential(self, endpoint: str, auth_mode: str) -> Credential:
        """The key, or a fresh token and its expiry (``aml_token``, ``aad_token``), the
        scoring URI wants after ``Bearer``. Never log it."""
        raise NotImplementedError

    def logs(self, endpoint: str, deployment: str, lines: int, container_type: str) -> str:
        raise NotImplementedError

    def delete_endpoint(self, name: str) -> bool:
        raise NotImplementedError


def _default_factory(settings, progress: Callable[[str], None]) -> Seam:
    return MLSeam.connect(settings, progress)


#: ``(settings, progress) -> Seam``; tests set it (see the module docstring)
factory: Callable[[Any, Callable[[str], None]], Seam] = _default_factory


def connect(settings, progress: Callable[[str], None]) -> Seam:
    named = os.environ.get(SEAM_ENV)
    if named:
        module, _, attr = named.partition(":")
        return getattr(importlib.import_module(module), attr or "factory")(settings, progress)
    return factory(settings, progress)


AUTH_HINT = ("run 'az login', or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET "
             "for a service principal")


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
    """Run an SDK call with its stdout on stderr and its exceptions turned into ours."""
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                       ResourceExistsError, ResourceNotFoundError)

    try:
        with stdout_to_stderr():
            yield
    except ResourceNotFoundError as exc:
        raise NotFoundError(f"{what}: not found", _code(exc)) from None
    except ResourceExistsError as exc:
        raise ConflictError(f"{what}: {_message(exc)}", _code(exc)) from None
    except ClientAuthenticationError as exc:
        raise AuthError(f"{what}: Azure authentication failed ({_first_line(exc)})") from None
    except HttpResponseError as exc:
        if exc.status_code == 404:
            raise NotFoundError(f"{what}: not found", _code(exc)) from None
        if exc.status_code == 409:
            raise ConflictError(f"{what}: {_message(exc)}", _code(exc)) from None
        if exc.status_code in (401, 403):
            raise AuthError(f"{what}: {_message(exc)}", _code(exc)) from None
        raise SeamError(f"{what}: {_message(exc)}", _code(exc)) from None
    except Exception as exc:  # noqa: BLE001 - credential errors have no common base
        if type(exc).__module__.startswith("azure."):
            raise SeamError(f"{what}: {_first_line(exc)}") from None
        raise


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _code(exc) -> str:
    error = getattr(exc, "error", None)
    return getattr(error, "code", None) or ""


def _message(exc) -> str:
    code = _code(exc)
    return f"{code}: {_first_line(exc)}" if code else _first_line(exc)


class MLSeam(Seam):
    """The real control plane: one ``MLClient``."""

    def __init__(self, ml_client, progress: Callable[[str], None] = lambda _: None):
        self.ml = ml_client
        self.progress = progress

    @classmethod
    def connect(cls, settings, progress: Callable[[str], None]) -> MLSeam:
        with stdout_to_stderr():
            from azure.ai.ml import MLClient
            from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
        with sdk_call("connecting to the Azure ML workspace"):
            if settings.workspace_config or not (settings.subscription and
                                                 settings.resource_group and settings.workspace):
                client = MLClient.from_config(credential, path=settings.workspace_config)
            else:
                client = MLClient(credential, settings.subscription, settings.resource_group,
                                  settings.workspace)
        return cls(client, progress)

    @staticmethod
    def _info(endpoint) -> EndpointInfo:
        return EndpointInfo(name=endpoint.name,
                            provisioning_state=str(endpoint.provisioning_state or ""),
                            scoring_uri=endpoint.scoring_uri or "",
                            traffic=dict(endpoint.traffic or {}), tags=dict(endpoint.tags or {}))

    def get_endpoint(self, name):
        try:
            with sdk_call(f"endpoint {name}"):
                return self._info(self.ml.online_endpoints.get(name))
        except NotFoundError:
            return None

    def create_or_update_endpoint(self, endpoint):
        with sdk_call(f"creating endpoint {endpoint.name}"):
            result = self.ml.online_endpoints.begin_create_or_update(endpoint).result()
        info = self._info(result)
        if info.provisioning_state.lower() not in ("succeeded", ""):
            raise ProvisioningFailed(f"endpoint {endpoint.name} is {info.provisioning_state}",
                                     info.provisioning_state)
        return info

    def register_model(self, model):
        with sdk_call(f"registering model {model.name}"):
            registered = self.ml.models.create_or_update(model)
        return registered.name, str(registered.version)

    def model_active(self, name, version):
        try:
            with sdk_call(f"model {name}:{version}"):
                model = self.ml.models.get(name, version=version)
        except NotFoundError:
            return False
        stage = str(getattr(model, "stage", "") or "")
        return stage.lower() != "archived"

    def archive_model(self, name, version):
        if not self.model_active(name, version):
            return False
        with sdk_call(f"archiving model {name}:{version}"):
            self.ml.models.archive(name, version=version)
        return True

    def create_or_update_deployment(self, deployment):
        what = f"creating deployment {deployment.endpoint_name}/{deployment.name}"
        try:
            with sdk_call(what):
                result = self.ml.online_deployments.begin_create_or_update(deployment).result()
        except SeamError as exc:
            state = self.get_deployment_state(deployment.endpoint_name, deployment.name)
            raise ProvisioningFailed(str(exc), state or "Failed", exc.code) from None
        state = str(result.provisioning_state or "")
        if state.lower() != "succeeded":
            raise ProvisioningFailed(f"{what}: provisioning state {state}", state)
        return state

    def get_deployment_state(self, endpoint, name):
        try:
            with sdk_call(f"deployment {endpoint}/{name}"):
                return str(self.ml.online_deployments.get(name, endpoint).provisioning_state)
        except NotFoundError:
            return None

    def delete_deployment(self, endpoint, name):
        try:
            with sdk_call(f"deleting deployment {endpoint}/{name}"):
                self.ml.online_deployments.begin_delete(name, endpoint).result()
        except NotFoundError:
            return False
        return True

    def set_traffic(self, endpoint, traffic):
        with sdk_call(f"endpoint {endpoint}"):
            current = self.ml.online_endpoints.get(endpoint)
        current.traffic = dict(traffic)
        with sdk_call(f"setting traffic on {endpoint}"):
            return self._info(self.ml.online_endpoints.begin_create_or_update(current).result())

    def credential(self, endpoint, auth_mode):
        # get_keys answers by the endpoint's auth mode: EndpointAuthKeys (primary_key),
        # EndpointAuthToken (aml_token: access_token, expiry_time_utc from the service) or
        # EndpointAadToken (aad_token: the credential's get_token(scope) .token, .expires_on)
        with sdk_call(f"credentials of endpoint {endpoint}"):
            answer = self.ml.online_endpoints.get_keys(endpoint)
        key = getattr(answer, "primary_key", None)
        if key:
            return Credential(key)
        token = getattr(answer, "access_token", None)
        if not token:
            raise AuthError(f"endpoint {endpoint} handed out no key or token")
        expiry = getattr(answer, "expiry_time_utc", None)
        return Credential(token, float(expiry) if expiry else float("inf"))

    def logs(self, endpoint, deployment, lines, container_type):
        try:
            with sdk_call(f"logs of {endpoint}/{deployment}"):
                return self.ml.online_deployments.get_logs(
                    deployment, endpoint, lines, container_type=container_type) or ""
        except SeamError as exc:
            return f"(no {container_type} logs: {exc})"

    def delete_endpoint(self, name):
        try:
            with sdk_call(f"deleting endpoint {name}"):
                self.ml.online_endpoints.begin_delete(name).result()
        except NotFoundError:
            return False
        return True
