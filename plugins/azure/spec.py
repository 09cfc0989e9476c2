"""Azure's rules and the two documents a deploy sends: the endpoint and the deployment.

The builders here are plain functions of (settings, repository) that ``azure`` and its twin
``azure-twin`` share: the cloud sends what they build through the seam, the twin serves the
same folder behind its gateway.

The documents are Azure ML CLI v2 YAML (``managedOnlineEndpoint`` / ``managedOnlineDeployment``
schemas), so ``plan`` shows exactly what ``az ml online-endpoint create -f`` would take. The SDK
entities are built from the same values with the SDK's own classes and serialised offline by the
SDK before any call (``entities``), so a value the service would refuse fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from deployer.errors import ValidationError
from deployer.target import GPU, SCALING, Option, PlannedResource, Scaling, scaling

#: the modules the cloud target needs (the twin runs without them)
REQUIRES = ("azure.ai.ml", "azure.identity")
#: the header that routes a request to one deployment of an endpoint
DEPLOYMENT_HEADER = "azureml-model-deployment"
ENDPOINT_SCHEMA = "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json"
DEPLOYMENT_SCHEMA = ("https://azuremlschemas.azureedge.net/latest/"
                     "managedOnlineDeployment.schema.json")
#: tags every resource gets: the deployer's deployment name, and (at deploy) its id
NAME_TAG = "triton-deployer"
ID_TAG = "triton-deployer-id"

#: the options of ``azure``; ``azure-twin`` accepts the same (and its own ``server``)
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
    GPU,
    Option("instance_count", int, 1, "number of instances"),
    Option("auth_mode", str, "key", "how callers authenticate", choices=("key", "aml_token",
                                                                         "aad_token")),
    Option("traffic", int, 100, "percent of the endpoint's traffic for the new deployment: 100 "
           "or 0 (Azure wants an endpoint's shares to sum to 100, or 0, and the deployment is "
           "its only one with traffic; with 0 it answers only requests naming it in the "
           "azureml-model-deployment header)"),
    Option("request_timeout_ms", int, 60000, "request_settings.request_timeout_ms: past it the "
           "endpoint answers 408 (Azure: default 5000, at most 180000); a minute, for a slow "
           "first GPU inference (CUDA and cuDNN warm-up, TensorRT engines)"),
    Option("max_concurrent_requests_per_instance", int, 16, "request_settings."
           "max_concurrent_requests_per_instance: requests each instance serves at once; past "
           "it (times instance_count) requests queue, then get 429 (Azure: default 1). 16, "
           "because Triton queues and batches requests itself: the endpoint should pass them "
           "on, not throttle a load test of concurrency 4"),
    Option("max_queue_wait_ms", int, None, "request_settings.max_queue_wait_ms, deprecated by "
           "Azure for managed online endpoints (queued time counts against "
           "request_timeout_ms: raise that instead); sent only when set"),
    Option("liveness_probe", list, ["initial_delay=600", "period=10", "timeout=2",
                                    "failure_threshold=30", "success_threshold=1"],
           "liveness_probe KEY=SECONDS,... (initial_delay, period, timeout, failure_threshold, "
           "success_threshold; keys left out keep these values). initial_delay 600 rather than "
           "Azure's 10: Triton answers no health route until every model has loaded, and "
           "Azure restarts a container whose liveness probe fails 30 times"),
    Option("readiness_probe", list, ["initial_delay=10", "period=10", "timeout=2",
                                     "failure_threshold=30", "success_threshold=1"],
           "readiness_probe KEY=SECONDS,... (the same keys; Azure's defaults: an unready "
           "container only gets no traffic)"),
    Option("model_name", str, None, "registered model name (default: the deployment name)"),
    Option("model_version", str, None, "registered model version (default: the next one)"),
    Option("tags", list, [], "extra tags KEY=VALUE on endpoint, deployment and model"),
    Option("yaml_dir", str, None, "deprecated, writes nothing: use 'deployer plan --export "
           "DIR' (endpoint.yml and deployment.yml for 'az ml online-endpoint create -f')"),
    Option("blue_green", bool, False, "deploy --update: create a new deployment beside the old "
           "one (no traffic), smoke-test it, move the traffic, then delete the old one "
           "(default: update the deployment in place)"),
    Option("new_deployment", str, None, "deploy --update with blue_green: the new deployment's "
           "name (default: blue <-> green, else NAME-green)"),
    Option("startup_timeout", float, 1800.0, "seconds each long-running Azure operation "
           "(endpoint, deployment, traffic, delete) may take; past it the deploy stops (exit 3) "
           "with the provisioning state and the container logs. A state line every 30 s"),
    *SCALING,
    Option("instance_limit", int, 20, "autoscaling: the 'Number of instances per deployment' "
           "endpoint limit of the subscription (Azure's default 20, raised on request); "
           "max_instances above it is refused"),
)

#: endpoint and deployment names: 3-32 characters, a letter first, letters, digits, dashes
NAME_RE = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
#: registered model (asset) names
ASSET_RE = re.compile(r"^[a-zA-Z0-9_][-a-zA-Z0-9_.]{0,254}$")

#: VM sizes managed online endpoints accept, from Microsoft's "Managed online endpoints SKU
#: list" (reference-managed-online-endpoints-vm-sku-list). Compared case-insensitively. The
#: list informs: a well-formed size missing here is sent as given, with a warning.
INSTANCE_TYPES: tuple[str, ...] = (
    # general purpose
    "Standard_DS1_v2", "Standard_DS2_v2", "Standard_DS3_v2", "Standard_DS4_v2", "Standard_DS5_v2",
    "Standard_D2a_v4", "Standard_D4a_v4", "Standard_D8a_v4", "Standard_D16a_v4",
    "Standard_D32a_v4", "Standard_D48a_v4", "Standard_D64a_v4", "Standard_D96a_v4",
    "Standard_D2as_v4", "Standard_D4as_v4", "Standard_D8as_v4", "Standard_D16as_v4",
    "Standard_D32as_v4", "Standard_D48as_v4", "Standard_D64as_v4", "Standard_D96as_v4",
    # compute optimised
    "Standard_F2s_v2", "Standard_F4s_v2", "Standard_F8s_v2", "Standard_F16s_v2",
    "Standard_F32s_v2", "Standard_F48s_v2", "Standard_F64s_v2", "Standard_F72s_v2",
    # memory optimised
    "Standard_E2s_v3", "Standard_E4s_v3", "Standard_E8s_v3", "Standard_E16s_v3",
    "Standard_E32s_v3", "Standard_E48s_v3", "Standard_E64s_v3",
    # GPU
    "Standard_NC4as_T4_v3", "Standard_NC8as_T4_v3", "Standard_NC16as_T4_v3",
    "Standard_NC64as_T4_v3", "Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3",
    "Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4",
    "Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4", "Standard_ND40rs_v2",
    "Standard_NC40ads_H100_v5", "Standard_NC80adis_H100_v5",
    "Standard_ND96is_H100_v5", "Standard_ND96isr_H100_v5",
    "Standard_NV6ads_A10_v5", "Standard_NV12ads_A10_v5", "Standard_NV18ads_A10_v5",
    "Standard_NV36ads_A10_v5", "Standard_NV36adms_A10_v5", "Standard_NV72ads_A10_v5",
)
#: what a VM size name looks like: Standard_ and underscore-separated letters and digits
SIZE_RE = re.compile(r"^Standard_[A-Za-z0-9]+(_[A-Za-z0-9]+)*$", re.IGNORECASE)
_KNOWN = {t.lower(): t for t in INSTANCE_TYPES}

#: the Python a no-code deployment's Triton image runs Python models with, and how messages
#: name that image (Azure does not document the image's version; NOT VERIFIED: Ubuntu 22.04's)
IMAGE_PYTHON, IMAGE_NAME = "3.10", "Azure's no-code Triton image"
#: backends NVIDIA's Triton image (the one a no-code deployment runs) carries
IMAGE_BACKENDS = frozenset({"python", "onnxruntime", "pytorch", "tensorflow", "tensorrt",
                            "openvino", "fil", "dali", "ensemble"})


def check_name(what: str, name: str, option: str) -> str:
    """Azure's endpoint/deployment name rule; raise one line saying which option to change."""
    problem = None
    if not 3 <= len(name) <= 32:
        problem = f"is {len(name)} characters long (3-32 allowed)"
    elif not NAME_RE.match(name):
        problem = ("must start with a letter and hold only letters, digits and dashes, "
                   "not ending with a dash")
    elif "--" in name:
        problem = "must not contain two dashes in a row"
    if problem:
        raise ValidationError(f"Azure {what} name {name!r} {problem}",
                              hint=f"pass -o {option}=NAME")
    return name


def endpoint_name_from(name: str) -> str:
    """A valid endpoint name derived from the deployer's deployment name."""
    cleaned = re.sub(r"-{2,}", "-", re.sub(r"[^a-zA-Z0-9-]", "-", name)).strip("-")
    if not cleaned[:1].isalpha():
        cleaned = f"ep-{cleaned}"
    cleaned = cleaned[:32].rstrip("-")
    return cleaned if len(cleaned) >= 3 else f"{cleaned}-ep"


def _close_to(value: str) -> list[str]:
    family = value.lower().split("_")[1][:2] if "_" in value else value.lower()[:2]
    return [t for t in INSTANCE_TYPES if t.lower().split("_")[1].startswith(family)]


def instance_type(value: str) -> str:
    """The canonical spelling of a listed VM size; a well-formed size not listed as given;
    a ValidationError for a value that is no VM size name at all."""
    known = _KNOWN.get(value.lower())
    if known is not None:
        return known
    if not SIZE_RE.match(value):
        raise ValidationError(
            f"instance type {value!r} is not a VM size name (Standard_<size>)",
            hint="use one of " + ", ".join(_close_to(value)[:8] or INSTANCE_TYPES[:8]) + " ..."
                 " (the list is INSTANCE_TYPES in deployer_plugins.azure.spec)")
    return value


def warn_instance_type(value: str, progress: Callable[[str], None]) -> None:
    """A warning for a well-formed VM size missing from INSTANCE_TYPES: Azure decides."""
    if value.lower() not in _KNOWN and SIZE_RE.match(value):
        close = _close_to(value)[:4]
        progress(f"warning: instance type {value} is not in our list of managed online "
                 "endpoint sizes; it is sent as given and Azure refuses it if it is not one"
                 + (f" (listed ones like it: {', '.join(close)})" if close else ""))


#: the quota (VM family) an instance type counts against, as Azure ML's Quota page names it;
#: sizes missing here get a generic hint
QUOTA_FAMILIES = (
    (r"Standard_DS\d+_v2", "Standard DSv2 Family vCPUs"),
    (r"Standard_D\d+a_v4", "Standard DAv4 Family vCPUs"),
    (r"Standard_D\d+as_v4", "Standard DASv4 Family vCPUs"),
    (r"Standard_F\d+s_v2", "Standard FSv2 Family vCPUs"),
    (r"Standard_E\d+s_v3", "Standard ESv3 Family vCPUs"),
    (r"Standard_NC\d+as_T4_v3", "Standard NCASv3_T4 Family vCPUs"),
    (r"Standard_NC\d+s_v3", "Standard NCSv3 Family vCPUs"),
    (r"Standard_NC\d+ads_A100_v4", "Standard NCADS_A100_v4 Family vCPUs"),
)


def quota_family(value: str) -> str | None:
    name = _KNOWN.get(str(value or "").lower(), value)
    return next((family for pattern, family in QUOTA_FAMILIES
                 if re.fullmatch(pattern, str(name or ""))), None)


def check_repository(repository,
                     image: str = "the Triton image of a no-code deployment") -> None:
    """The rules of NVIDIA's Triton ``image`` on top of the core's generic ones."""
    if not repository.models:
        raise ValidationError("the repository has no model", path=str(repository.path))
    for model in repository.models.values():
        if model.backend not in IMAGE_BACKENDS:
            raise ValidationError(
                f"model {model.name!r} uses the custom backend {model.backend!r}, which "
                f"{image} does not carry", path=str(model.config_path),
                hint="use a standard backend (" + ", ".join(sorted(IMAGE_BACKENDS)) + ")")
        if not model.versions:
            raise ValidationError(f"model {model.name!r} has no numeric version folder",
                                  path=str(model.path), hint="add e.g. 1/ with the model file")
        if model.decoupled:
            # only HTTP reaches the deployment: a stream is Triton's generate_stream route,
            # which takes scalar or 1-D inputs and carries no sequence id
            shaped = [s.name for s in model.inputs if len(s.dims) > 1]
            if model.stateful or shaped:
                raise ValidationError(
                    f"model {model.name!r} is decoupled and "
                    + ("stateful" if model.stateful else
                       f"has inputs of more than one dimension ({', '.join(shaped)})")
                    + ": an Azure endpoint is reached over HTTP only, where a stream is "
                    "Triton's generate_stream route, which "
                    + ("carries no sequence id" if model.stateful else
                       "takes scalars and flat lists only"),
                    path=str(model.config_path),
                    hint="stream it on --target local or docker (gRPC)")
        for version in model.versions:
            # azure-ai-ml uploads the files it walks: a folder without one never arrives
            folder = model.path / str(version)
            if not any(p.is_file() for p in folder.rglob("*")):
                raise ValidationError(
                    f"version folder {model.name}/{version} has no file: Azure uploads files, "
                    "not folders, so the deployment would see no version of it",
                    path=str(folder), hint="add a file to it, e.g. an empty .gitkeep")


def warn_sequences(settings, repository, progress) -> None:
    """Several instances behind the endpoint split a sequence (no sticky routing)."""
    stateful = [m.name for m in repository.models.values() if m.stateful]
    if stateful and settings.instance_count > 1:
        progress(f"warning: {', '.join(stateful)} keep(s) state per sequence, and with "
                 f"instance_count {settings.instance_count} the endpoint may send a "
                 "sequence's requests to different instances; use instance_count=1")


def parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValidationError(f"tag {item!r} is not KEY=VALUE", hint="-o tags=team=ml,env=dev")
        tags[key.strip()] = value.strip()
    return tags


#: Azure's request_settings defaults (what a deployment sent without them gets) and limits,
#: from the managed online deployment YAML reference (RequestSettings)
AZURE_REQUEST_DEFAULTS = {"request_timeout_ms": 5000, "max_concurrent_requests_per_instance": 1,
                          "max_queue_wait_ms": 500}
MAX_REQUEST_TIMEOUT_MS = 180000
#: the keys of a probe (ProbeSettings), all seconds or counts of at least 1
PROBE_KEYS = ("initial_delay", "period", "timeout", "failure_threshold", "success_threshold")


def request_settings(settings) -> dict[str, int]:
    """The deployment's ``request_settings`` (max_queue_wait_ms only when set), checked
    against Azure's limits."""
    values = {"request_timeout_ms": settings.request_timeout_ms,
              "max_concurrent_requests_per_instance":
                  settings.max_concurrent_requests_per_instance}
    if settings.max_queue_wait_ms is not None:
        values["max_queue_wait_ms"] = settings.max_queue_wait_ms
    for key, value in values.items():
        if value < 1:
            raise ValidationError(f"{key} must be at least 1, got {value}",
                                  hint=f"pass -o {key}=N")
    if values["request_timeout_ms"] > MAX_REQUEST_TIMEOUT_MS:
        raise ValidationError(f"request_timeout_ms {values['request_timeout_ms']} is above "
                              f"Azure's maximum of {MAX_REQUEST_TIMEOUT_MS} (3 minutes)",
                              hint=f"pass -o request_timeout_ms={MAX_REQUEST_TIMEOUT_MS} or less")
    return values


def probe(option: str, items: list[str], default: list[str]) -> dict[str, int]:
    """A probe's settings from ``KEY=VALUE`` items over ``default``; keys and values checked
    (whole numbers of at least 1; a liveness probe's success_threshold is 1)."""
    values: dict[str, int] = {}
    for item in [*default, *items]:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in PROBE_KEYS:
            raise ValidationError(f"{option} item {item!r} is not KEY=SECONDS with KEY one of "
                                  + ", ".join(PROBE_KEYS),
                                  hint=f"-o {option}=initial_delay=600,period=10")
        try:
            value = int(raw.strip())
        except ValueError:
            value = 0
        if value < 1:
            raise ValidationError(f"{option} {key} must be a whole number of at least 1, got "
                                  f"{raw.strip()!r}", hint=f"-o {option}={key}=N")
        values[key] = value
    if option == "liveness_probe" and values.get("success_threshold", 1) != 1:
        raise ValidationError("liveness_probe success_threshold must be 1 (Azure fixes it)",
                              hint="leave it out, or pass success_threshold=1")
    return values


def probes(settings) -> dict[str, dict[str, int]]:
    """``{"liveness_probe": {...}, "readiness_probe": {...}}`` of the deployment."""
    defaults = {o.name: o.default for o in OPTIONS}
    return {name: probe(name, getattr(settings, name) or [], defaults[name])
            for name in ("liveness_probe", "readiness_probe")}


def check_traffic(split: dict[str, int]) -> None:
    """Azure's rule: every share 0-100, and together 100 or 0."""
    bad = {d: p for d, p in split.items() if not 0 <= p <= 100}
    total = sum(split.values())
    if bad or total not in (0, 100):
        shares = ", ".join(f"{d} {p}%" for d, p in split.items())
        raise ValidationError(f"an endpoint's traffic shares must sum to 100 or 0, and "
                              f"these ({shares}) sum to {total}",
                              hint="pass -o traffic=100 (or 0: only requests naming the "
                                   "deployment in the azureml-model-deployment header)")


def sent_limits(deployment_doc: dict[str, Any]) -> dict[str, Any]:
    """What a deployment's record keeps of its document for :func:`limits`."""
    return {"request_settings": dict(deployment_doc.get("request_settings") or {}),
            "instance_count": deployment_doc["instance_count"]}


def limits(data: dict):
    """The RequestLimits of a deployment from what its record keeps (``request_settings``,
    ``instance_count``); None without them."""
    from deployer.target import RequestLimits

    request = data.get("request_settings")
    if not request:
        return None
    per = int(request["max_concurrent_requests_per_instance"])
    count = int(data.get("instance_count") or 1)
    return RequestLimits(concurrency=per * count, timeout_ms=int(request["request_timeout_ms"]),
                         source=f"max_concurrent_requests_per_instance {per} x {count} "
                                f"instance{'s' if count != 1 else ''}, request_timeout_ms "
                                f"{request['request_timeout_ms']}")


def endpoint_yaml(name: str, auth_mode: str, tags: dict[str, str]) -> dict[str, Any]:
    return {"$schema": ENDPOINT_SCHEMA, "name": name, "auth_mode": auth_mode, "tags": tags}


def deployment_yaml(name: str, endpoint: str, model: dict[str, Any], instance_type_: str,
                    instance_count: int, tags: dict[str, str],
                    request: dict[str, int] | None = None,
                    probes_: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """``model`` is ``{"name", "version"?, "path", "type": "triton_model"}`` (inline, as the
    azureml-examples Triton YAML has it) or ``"azureml:NAME:VERSION"`` once registered;
    ``request`` the ``request_settings``, ``probes_`` the liveness and readiness probes."""
    doc = {"$schema": DEPLOYMENT_SCHEMA, "name": name, "endpoint_name": endpoint,
           "model": model, "instance_type": instance_type_, "instance_count": instance_count,
           "tags": tags}
    if request:
        doc["request_settings"] = dict(request)
    for key, values in (probes_ or {}).items():
        doc[key] = dict(values)
    return doc


def entities(endpoint_doc: dict[str, Any], deployment_doc: dict[str, Any],
             location: str = "westeurope"):
    """The SDK entities for the two documents, serialised offline by the SDK as a check.

    Returns ``(ManagedOnlineEndpoint, Model | None, ManagedOnlineDeployment)``; the Model is the
    inline model to register (None when the deployment names a registered one). Raises
    ValidationError with the SDK's own complaint.
    """
    import io
    import json

    from azure.ai.ml import load_online_deployment, load_online_endpoint
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import (ManagedOnlineDeployment, ManagedOnlineEndpoint, Model,
                                      OnlineRequestSettings, ProbeSettings)

    try:
        # the CLI v2 schema check, as 'az ml ... create -f' would do on the same documents
        load_online_endpoint(io.StringIO(json.dumps(endpoint_doc)))
        load_online_deployment(io.StringIO(json.dumps(deployment_doc)))
        endpoint = ManagedOnlineEndpoint(name=endpoint_doc["name"],
                                         auth_mode=endpoint_doc["auth_mode"],
                                         tags=dict(endpoint_doc["tags"]))
        endpoint._to_rest_online_endpoint(location)
        spec = deployment_doc["model"]
        model = None
        if isinstance(spec, dict):
            model = Model(name=spec["name"], version=spec.get("version"), path=spec["path"],
                          type=AssetTypes.TRITON_MODEL, tags=dict(deployment_doc["tags"]))
            reference = f"azureml:{spec['name']}:{spec.get('version') or 1}"
        else:
            reference = spec
        request = deployment_doc.get("request_settings")
        probes_ = {key: ProbeSettings(**deployment_doc[key])
                   for key in ("liveness_probe", "readiness_probe") if key in deployment_doc}
        deployment = ManagedOnlineDeployment(
            name=deployment_doc["name"], endpoint_name=deployment_doc["endpoint_name"],
            model=reference, instance_type=deployment_doc["instance_type"],
            instance_count=deployment_doc["instance_count"], tags=dict(deployment_doc["tags"]),
            request_settings=OnlineRequestSettings(**request) if request else None, **probes_)
        deployment._to_rest_object(location=location)
    except Exception as exc:  # noqa: BLE001 - the SDK's validation errors have no common base
        if not (isinstance(exc, (ValueError, TypeError, KeyError))
                or type(exc).__module__.startswith(("azure.", "marshmallow"))):
            raise
        text = " ".join(str(exc).split()).split(" Visit this link")[0]
        raise ValidationError(f"azure-ai-ml refused the entities: {text[:400]}") from None
    return endpoint, model, deployment


#: the module the autoscale setting needs
MONITOR = ("azure.mgmt.monitor",)


def sdk_installed(modules: tuple[str, ...] = REQUIRES) -> bool:
    """Whether ``modules`` (default: REQUIRES) can be imported (checked without importing
    them)."""
    import importlib.util

    def importable(module: str) -> bool:
        try:  # find_spec imports the parents: find_spec("azure.ai.ml") raises without azure
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    return all(importable(m) for m in modules)


def python_imports(repository) -> None:
    """Every Python model imports only what the image has, or brings it in an
    EXECUTION_ENV_PATH archive (:func:`deployer.pyimports.check`)."""
    from deployer import pyimports

    pyimports.check(repository, IMAGE_PYTHON, IMAGE_NAME)


def check_settings(settings, repository) -> None:
    """The repository and option rules a deploy checks before any call."""
    check_repository(repository)
    python_imports(repository)
    instance_type(settings.instance_type)
    if settings.instance_count < 1:
        raise ValidationError("instance_count must be at least 1")
    # the deployment is the only one of the endpoint with traffic (blue/green: the old one
    # goes to 0), so its share is the endpoint's sum
    check_traffic({settings.new_deployment or settings.deployment: settings.traffic})
    request_settings(settings)
    probes(settings)
    parse_tags(settings.tags)
    if settings.endpoint:
        check_name("endpoint", settings.endpoint, "endpoint")
    check_name("deployment", settings.deployment, "deployment")
    if settings.new_deployment:
        check_name("deployment", settings.new_deployment, "new_deployment")
    if not settings.startup_timeout > 0:
        raise ValidationError(f"startup_timeout must be positive (seconds), got "
                              f"{settings.startup_timeout}")
    check_scaling(settings)


class Names:
    """The endpoint, deployment and model names of deployment ``name`` under ``settings``."""

    def __init__(self, settings, name: str):
        self.endpoint = check_name("endpoint", settings.endpoint or endpoint_name_from(name),
                                   "endpoint")
        self.deployment = check_name("deployment", settings.deployment, "deployment")
        self.model = settings.model_name or name
        if not ASSET_RE.match(self.model):
            raise ValidationError(f"model name {self.model!r} is not a valid Azure asset name",
                                  hint="pass -o model_name= with letters, digits, -, _ or .")


def documents(settings, repository, name: str, deployment_id: str | None = None,
              endpoint: str | None = None, deployment: str | None = None):
    """``(Names, endpoint document, deployment document)`` for deployment ``name``;
    ``endpoint``/``deployment`` override the names the options give (an update keeps the
    recorded endpoint)."""
    names = Names(settings, name)
    names.endpoint = endpoint or names.endpoint
    names.deployment = deployment or names.deployment
    tags = {**parse_tags(settings.tags), NAME_TAG: name}
    if deployment_id:
        tags[ID_TAG] = deployment_id
    model: dict[str, Any] = {"name": names.model, "path": str(repository.path),
                             "type": "triton_model"}
    if settings.model_version:
        model["version"] = settings.model_version
    endpoint_doc = endpoint_yaml(names.endpoint, settings.auth_mode, tags)
    deployment_doc = deployment_yaml(names.deployment, names.endpoint, model,
                                     instance_type(settings.instance_type),
                                     initial_count(settings), tags,
                                     request_settings(settings), probes(settings))
    return names, endpoint_doc, deployment_doc


def checked_entities(endpoint_doc: dict[str, Any], deployment_doc: dict[str, Any]):
    """:func:`entities`, with whatever the SDK prints kept off stdout (it may carry JSON)."""
    from .seam import stdout_to_stderr

    with stdout_to_stderr():
        return entities(endpoint_doc, deployment_doc)


def checked_documents(settings, repository, name: str, sdk_required: bool = True):
    """:func:`documents`, checked offline by the SDK (:func:`checked_entities`); with
    ``sdk_required`` False (the twin, which runs without the SDK) only when it is installed."""
    names, endpoint_doc, deployment_doc = documents(settings, repository, name)
    if sdk_required or sdk_installed():
        checked_entities(endpoint_doc, deployment_doc)
    return names, endpoint_doc, deployment_doc


def plan(settings, repository, name: str, progress: Callable[[str], None],
         sdk_required: bool = True) -> list[PlannedResource]:
    """``Target.plan`` of azure and its twin: the checked documents, as planned resources."""
    names, endpoint_doc, deployment_doc = checked_documents(settings, repository, name,
                                                            sdk_required)
    if settings.yaml_dir:  # deprecated: plan writes nothing (Target.plan's contract)
        progress(f"warning: -o yaml_dir is deprecated and plan no longer writes files; "
                 f"use 'deployer plan ... --export {settings.yaml_dir}'")
    return planned(settings, names, endpoint_doc, deployment_doc)


def export(settings, repository, name: str, directory, progress: Callable[[str], None],
           sdk_required: bool = True) -> list[Path]:
    """``Target.export`` of azure and its twin: endpoint.yml and deployment.yml, for
    'az ml online-endpoint create -f'."""
    names, endpoint_doc, deployment_doc = checked_documents(settings, repository, name,
                                                            sdk_required)
    written = write_yaml(Path(directory), endpoint_doc, deployment_doc, progress)
    for resource in planned_autoscale(settings, names, deployment_doc):
        import json

        document = {k: v for k, v in resource.details.items() if k != "note"}
        path = Path(directory) / "autoscale.json"
        path.write_text(json.dumps(document, indent=2) + "\n")
        progress(f"wrote {path} (az rest --method put --url 'https://management.azure.com"
                 f"/subscriptions/SUB/resourceGroups/RG/providers/microsoft.insights/"
                 f"autoscalesettings/{resource.name}?api-version={AUTOSCALE_API}' --body "
                 f"@{path.name}; set location and the ids first)")
        written.append(path)
    return written


def planned(settings, names: Names, endpoint_doc: dict[str, Any],
            deployment_doc: dict[str, Any]) -> list[PlannedResource]:
    """What a deploy creates, in order: endpoint, model, deployment, traffic, and the
    autoscale setting when the options scale."""
    where = f"{names.endpoint}/{names.deployment}"
    return [PlannedResource("endpoint", names.endpoint, endpoint_doc),
            PlannedResource("model", names.model, deployment_doc["model"]),
            PlannedResource("deployment", where, deployment_doc),
            PlannedResource("traffic", where, {names.deployment: settings.traffic}),
            *planned_autoscale(settings, names, deployment_doc)]


def write_yaml(folder: Path, endpoint_doc: dict[str, Any], deployment_doc: dict[str, Any],
               progress: Callable[[str], None]) -> list[Path]:
    """endpoint.yml and deployment.yml in ``folder`` (for 'az ml online-endpoint create -f');
    returns the files written."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    # JSON is YAML: no YAML library needed, and the SDK's loaders read it as such
    for file_name, doc in (("endpoint.yml", endpoint_doc), ("deployment.yml", deployment_doc)):
        (folder / file_name).write_text(json.dumps(doc, indent=2) + "\n")
        progress(f"wrote {folder / file_name}")
        written.append(folder / file_name)
    return written


# -- autoscaling: an Azure Monitor autoscale setting on the deployment ---------------------------
#: the endpoint's metric the rules watch, split by its ``deployment`` dimension (Azure ML
#: "Monitor online endpoints": RequestsPerMinute is at endpoint scope; the deployment scope has
#: CpuUtilizationPercentage, GpuUtilizationPercentage, DeploymentCapacity, ...)
AUTOSCALE_METRIC = "RequestsPerMinute"
AUTOSCALE_DIMENSION = "deployment"
#: the scale-in rule fires below this share of the target (rules, not target tracking: a gap
#: between the two thresholds keeps the count from flapping)
SCALE_IN_SHARE = 0.5
#: the cooldown when none is given: 'az monitor autoscale rule create --cooldown' defaults to
#: 5 minutes; Azure takes 1 minute to 1 week (ScaleAction.cooldown)
DEFAULT_COOLDOWN, MIN_COOLDOWN, MAX_COOLDOWN = 300, 60, 7 * 24 * 3600
#: the metric's grain and the window the rules average it over (Azure: 1 minute to 12 hours,
#: a window of at least 5 minutes)
TIME_GRAIN, TIME_WINDOW = "PT1M", "PT5M"
PROFILE = "triton-deployer"
#: the API version the setting's ARM document is for (azure-mgmt-monitor 7.0's)
AUTOSCALE_API = "2022-10-01"
ARM_WORKSPACE = ("/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
                 "Microsoft.MachineLearningServices/workspaces/{workspace}")


def check_scaling(settings) -> Scaling | None:
    """The scaling options checked (:func:`deployer.target.scaling`) against Azure's rules:
    no scale to zero, at most ``instance_limit`` instances, cooldowns of 1 minute to 1 week."""
    fleet = scaling(settings, instance_count=settings.instance_count)
    if fleet is None:
        return None
    if fleet.minimum < 1:
        raise ValidationError("min_instances=0: an Azure ML managed online deployment cannot "
                              "scale to zero (it keeps at least one instance running)",
                              hint="pass -o min_instances=1 or more")
    limit = settings.instance_limit
    if fleet.maximum > limit:
        raise ValidationError(f"max_instances {fleet.maximum} is above the endpoint limit of "
                              f"{limit} instances per deployment",
                              hint="lower -o max_instances, or have Azure raise the limit "
                                   "(quota type 'Machine Learning Service: Endpoint Limits') "
                                   "and pass -o instance_limit=N")
    for name in ("scale_in_cooldown", "scale_out_cooldown"):
        seconds = settings.get(name)
        if seconds is not None and not MIN_COOLDOWN <= seconds <= MAX_COOLDOWN:
            raise ValidationError(f"{name} {seconds} is outside Azure's range of "
                                  f"{MIN_COOLDOWN} seconds to 1 week ({MAX_COOLDOWN})",
                                  hint=f"pass -o {name}=SECONDS between {MIN_COOLDOWN} and "
                                       f"{MAX_COOLDOWN}")
    return fleet


def initial_count(settings) -> int:
    """The instance count a deploy sends: ``instance_count`` raised to ``min_instances``."""
    fleet = check_scaling(settings)
    return fleet.initial if fleet else settings.instance_count


def autoscales(settings) -> Scaling | None:
    """The Scaling when Azure is asked to scale (an autoscale setting is made), else None."""
    fleet = check_scaling(settings)
    return fleet if fleet is not None and fleet.scales else None


def autoscale_name(endpoint: str, deployment: str) -> str:
    """The setting's name, one per deployment (unique in the resource group)."""
    return f"autoscale-{endpoint}-{deployment}"


def duration(seconds: int) -> str:
    """ISO 8601 duration as the SDK writes a timedelta (isodate): PT5M, PT1M30S, P7D."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(f"{v}{u}" for v, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if v)
    text = (f"{days}D" if days else "") + (f"T{time}" if time else "")
    return "P" + (text or "T0S")


def arm_ids(settings, endpoint: str, deployment: str) -> tuple[str, str]:
    """(endpoint, deployment) ARM ids as the options give them; ``{subscription}`` and the
    like where an option is not set (a plan; a deploy asks Azure for the ids)."""
    workspace = ARM_WORKSPACE.format(
        subscription=settings.subscription or "{subscription}",
        resource_group=settings.resource_group or "{resource_group}",
        workspace=settings.workspace or "{workspace}")
    ep = f"{workspace}/onlineEndpoints/{endpoint}"
    return ep, f"{ep}/deployments/{deployment}"


def _rule(fleet: Scaling, endpoint_id: str, deployment: str, out: bool) -> dict[str, Any]:
    target = fleet.target_requests_per_minute
    threshold = float(target) if out else float(target) * SCALE_IN_SHARE
    cooldown = fleet.scale_out_cooldown if out else fleet.scale_in_cooldown
    return {"metricTrigger": {
                "metricName": AUTOSCALE_METRIC, "metricResourceUri": endpoint_id,
                "timeGrain": TIME_GRAIN, "statistic": "Average", "timeWindow": TIME_WINDOW,
                "timeAggregation": "Average",
                "operator": "GreaterThan" if out else "LessThan", "threshold": threshold,
                "dimensions": [{"DimensionName": AUTOSCALE_DIMENSION, "Operator": "Equals",
                                "Values": [deployment]}],
                "dividePerInstance": True},
            "scaleAction": {"direction": "Increase" if out else "Decrease",
                            "type": "ChangeCount", "value": "1",
                            "cooldown": duration(DEFAULT_COOLDOWN if cooldown is None
                                                 else cooldown)}}


def autoscale_document(fleet: Scaling, deployment: str, endpoint_id: str, deployment_id: str,
                       location: str, tags: dict[str, str]) -> dict[str, Any]:
    """The autoscale setting's ARM document (what the PUT sends): one profile with the range
    and two rules on the endpoint's RequestsPerMinute for this deployment, per instance."""
    count = str(fleet.initial)
    rules = [_rule(fleet, endpoint_id, deployment, out) for out in (True, False)]
    return {"location": location, "tags": dict(tags), "properties": {
        "profiles": [{"name": PROFILE, "capacity": {"minimum": str(fleet.minimum),
                                                    "maximum": str(fleet.maximum),
                                                    "default": count},
                      "rules": rules}],
        "enabled": True, "targetResourceUri": deployment_id}}


def autoscale_entity(document: dict[str, Any]):
    """The ``azure.mgmt.monitor.models.AutoscaleSettingResource`` of ``document``, built from
    its values with the SDK's classes; ValidationError unless the SDK writes it back as
    ``document`` (a field it does not know, a wrong type or format)."""
    import datetime

    from azure.mgmt.monitor.models import (AutoscaleProfile, AutoscaleSettingResource,
                                           MetricTrigger, ScaleAction, ScaleCapacity, ScaleRule,
                                           ScaleRuleMetricDimension)

    def seconds(text: str) -> datetime.timedelta:
        found = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text)
        if not found:
            raise ValidationError(f"{text!r} is not an ISO 8601 duration")
        d, h, m, s = (int(v or 0) for v in found.groups())
        return datetime.timedelta(days=d, hours=h, minutes=m, seconds=s)

    def rule(doc):
        trigger, action = doc["metricTrigger"], doc["scaleAction"]
        return ScaleRule(
            metric_trigger=MetricTrigger(
                metric_name=trigger["metricName"],
                metric_resource_uri=trigger["metricResourceUri"],
                time_grain=seconds(trigger["timeGrain"]), statistic=trigger["statistic"],
                time_window=seconds(trigger["timeWindow"]),
                time_aggregation=trigger["timeAggregation"], operator=trigger["operator"],
                threshold=trigger["threshold"],
                dimensions=[ScaleRuleMetricDimension(dimension_name=d["DimensionName"],
                                                     operator=d["Operator"],
                                                     values=list(d["Values"]))
                            for d in trigger["dimensions"]],
                divide_per_instance=trigger["dividePerInstance"]),
            scale_action=ScaleAction(direction=action["direction"], type=action["type"],
                                     value=action["value"],
                                     cooldown=seconds(action["cooldown"])))

    try:
        properties = document["properties"]
        entity = AutoscaleSettingResource(
            location=document["location"], tags=dict(document["tags"]),
            profiles=[AutoscaleProfile(name=p["name"], capacity=ScaleCapacity(**p["capacity"]),
                                       rules=[rule(r) for r in p["rules"]])
                      for p in properties["profiles"]],
            enabled=properties["enabled"], target_resource_uri=properties["targetResourceUri"])
        sent = entity.serialize()
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"azure-mgmt-monitor refused the autoscale setting: {exc}") \
            from None
    if sent != document:
        raise ValidationError("azure-mgmt-monitor writes the autoscale setting otherwise than "
                              f"planned: {sent} != {document}")
    return entity


def autoscale_rule(document: dict[str, Any]) -> str:
    """How the setting scales, in Azure's words: its rules, one after the other."""
    parts = []
    for profile in document["properties"]["profiles"]:
        for rule in profile["rules"]:
            trigger, action = rule["metricTrigger"], rule["scaleAction"]
            per = " per instance" if trigger.get("dividePerInstance") else ""
            sign = {"GreaterThan": ">", "LessThan": "<"}.get(trigger["operator"],
                                                              trigger["operator"])
            parts.append(f"{trigger['metricName']}{per} {sign} {trigger['threshold']:g} over "
                         f"{trigger['timeWindow']}: {action['direction']} by {action['value']} "
                         f"(cooldown {action['cooldown']})")
    return "; ".join(parts)


def planned_autoscale(settings, names: Names, deployment_doc: dict[str, Any],
                      location: str = "{workspace region}") -> list[PlannedResource]:
    """The autoscale setting a deploy creates (after the traffic), when the options scale;
    its details are the ARM document and a ``note`` for people."""
    fleet = autoscales(settings)
    if fleet is None:
        return []
    endpoint_id, deployment_id = arm_ids(settings, names.endpoint, names.deployment)
    document = autoscale_document(fleet, names.deployment, endpoint_id, deployment_id,
                                  location, deployment_doc["tags"])
    if sdk_installed(MONITOR):
        autoscale_entity(document)
    surge = -(-fleet.maximum * 6 // 5)  # Azure reserves 20% more for upgrades
    note = (f"Azure autoscale is rule-based, not target tracking: {autoscale_rule(document)}. "
            f"The VM quota must hold {surge} x {deployment_doc['instance_type']} (max_instances "
            "plus the 20% Azure reserves for upgrades)")
    return [PlannedResource("autoscale", autoscale_name(names.endpoint, names.deployment),
                            {**document, "note": note})]
