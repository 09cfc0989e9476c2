"""Vertex AI's rules and what a deploy sends: the container spec, the machine, the labels.

Plain functions of (settings, repository) that ``vertex`` and its twin ``vertex-twin`` share:
the cloud sends what they build through the seam, the twin serves the same artefact with the
same container args. No google.* import here: the CLI reads the options without the SDK.

Facts the code follows (issue 13; Google's Vertex AI and NVIDIA's Triton documentation):

- Vertex pulls custom-container images only from Artifact Registry
  (``REGION-docker.pkg.dev/PROJECT/REPO/IMAGE``) or Container Registry
  (``[REGION.]gcr.io/PROJECT/IMAGE``), never from ``nvcr.io``.
- Vertex copies ``artifact_uri`` to ``AIP_STORAGE_URI`` and expands ``$(VAR)`` in the container
  args; NVIDIA's image runs ``tritonserver "$@"`` when ``AIP_MODE`` is set, with its Vertex
  frontend on ``AIP_HTTP_PORT`` (8080). Triton's Vertex frontend needs
  ``--vertex-ai-default-model`` unless exactly one model is loaded.
- Labels: keys and values at most 63 characters of lowercase letters, digits, ``_`` and ``-``;
  a key starts with a lowercase letter; at most 64 labels on a resource.
- Autoscaling (issue 14; Google's "Scale inference nodes by using autoscaling" and the v1
  ``DedicatedResources`` reference): a deployed model runs ``min_replica_count`` to
  ``max_replica_count`` replicas; v1 needs ``min_replica_count`` >= 1 (scale to zero is a
  Preview of v1beta1 only). ``autoscaling_metric_specs`` with
  ``aiplatform.googleapis.com/prediction/online/request_count`` sets the requests per minute per
  replica to hold (what the SDK's ``autoscaling_target_request_count_per_minute`` builds); v1
  has no cooldown setting. Quota is charged for ``max_replica_count`` x the machine's CPUs and
  x its GPUs, whatever runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Callable

from deployer.errors import ValidationError
from deployer.target import GPU, SCALING, Option, PlannedResource, scaling

#: the labels every resource gets: the deployment's id (set at deploy) and its name
ID_LABEL = "deployer-id"
NAME_LABEL = "deployer-name"
#: the Python of NVIDIA's 24.09 image (Ubuntu 22.04; see plugins/sagemaker/images.py) and how
#: messages name the image
IMAGE_PYTHON = "3.10"
IMAGE_NAME = "NVIDIA Triton image on Vertex AI"
#: the image the twin names when none is given (it is never pulled: the twin runs the embedded
#: tritonserver), in Artifact Registry's form
REHEARSAL_IMAGE = "us-central1-docker.pkg.dev/rehearsal/triton/tritonserver:24.09-py3"
#: NVIDIA's image and the tag we test
NVIDIA_IMAGE = "nvcr.io/nvidia/tritonserver:24.09-py3"
#: the port NVIDIA's image serves the Vertex frontend on (AIP_HTTP_PORT's default)
PORT = 8080
#: the metric Vertex scales a deployed model on to hold requests per minute per replica, and
#: the Endpoint.deploy argument (and key of :func:`machine`) that sets its target
REQUEST_COUNT_METRIC = "aiplatform.googleapis.com/prediction/online/request_count"
TARGET_KEY = "autoscaling_target_request_count_per_minute"
#: replica counts and metric targets are int32 fields of Vertex's API
INT32 = 2**31 - 1

OPTIONS = (
    Option("project", str, None, "Google Cloud project id (default: $GOOGLE_CLOUD_PROJECT)"),
    Option("region", str, "us-central1", "Vertex AI region (location) of model and endpoint"),
    Option("bucket", str, None, "Cloud Storage bucket the repository is uploaded to (in the "
           "region; create it first)"),
    Option("prefix", str, "triton-deployer", "folder in the bucket: the artefact is "
           "gs://BUCKET/PREFIX/<content digest>/"),
    Option("image", str, None, "the Triton image, in Artifact Registry "
           "(REGION-docker.pkg.dev/PROJECT/REPO/tritonserver:24.09-py3) or Container Registry; "
           "Vertex does not pull from nvcr.io ('deployer plan' shows how to copy it)"),
    Option("machine_type", str, "n1-standard-4", "Compute Engine machine type of each replica"),
    Option("accelerator_type", str, "NVIDIA_TESLA_T4", "GPU type (NVIDIA_TESLA_T4, NVIDIA_L4, "
           "NVIDIA_TESLA_A100, ...), or none for CPU only"),
    Option("accelerator_count", int, 1, "GPUs per replica"),
    GPU,
    Option("min_replica_count", int, None, "replicas always running (default 1; the same as "
           "min_instances)"),
    Option("max_replica_count", int, None, "replicas Vertex may scale up to (default "
           "min_replica_count; the same as max_instances)"),
    Option("default_model", str, None, "the model rawPredict reaches without the redirect "
           "header (--vertex-ai-default-model; default: the single top-level model)"),
    Option("endpoint", str, None, "endpoint display name (default: the deployment name)"),
    Option("labels", list, [], "extra labels KEY=VALUE on model and endpoint (lowercase "
           "letters, digits, _ and -, at most 63 characters)"),
    Option("startup_timeout", float, 1800.0, "seconds the deploy of the model on the endpoint "
           "may take (Vertex often needs 10-30 minutes); past it the deploy stops (exit 3)"),
    *SCALING,
)

#: Artifact Registry (regional or multi-regional) and Container Registry image references
ARTIFACT_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*-docker\.pkg\.dev/[a-z0-9][-a-z0-9.:]*"
                         r"/[a-z0-9][-a-z0-9_.]*/[^\s]+$")
GCR_RE = re.compile(r"^([a-z]+\.)?gcr\.io/[a-z0-9][-a-z0-9.:]*/[^\s]+$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
MAX_LABELS = 64
#: what a machine type name looks like: family-kind[-size]
MACHINE_RE = re.compile(r"^[a-z][a-z0-9]*-[a-z0-9]+(-[a-z0-9]+)*$")
CPU = "none"


def _sizes(family: str, sizes) -> tuple[str, ...]:
    return tuple(f"{family}-{size}" for size in sizes)


#: machine types Vertex online prediction lists (Google's "Configure compute resources for
#: inference"); informative: a well-formed type missing here is sent with a warning
MACHINE_TYPES: tuple[str, ...] = (
    *_sizes("n1-standard", (2, 4, 8, 16, 32, 64, 96)),
    *_sizes("n1-highmem", (2, 4, 8, 16, 32, 64, 96)),
    *_sizes("n1-highcpu", (4, 8, 16, 32, 64, 96)),
    *_sizes("e2-standard", (2, 4, 8, 16, 32)),
    *_sizes("e2-highmem", (2, 4, 8, 16)),
    *_sizes("e2-highcpu", (2, 4, 8, 16, 32)),
    *_sizes("n2-standard", (2, 4, 8, 16, 32, 48, 64, 80)),
    *_sizes("n2-highmem", (2, 4, 8, 16, 32, 48, 64, 80)),
    *_sizes("n2-highcpu", (2, 4, 8, 16, 32, 48, 64, 80)),
    *_sizes("n2d-standard", (2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224)),
    *_sizes("c2-standard", (4, 8, 16, 30, 60)),
    *_sizes("c2d-standard", (2, 4, 8, 16, 32, 56, 112)),
    *_sizes("g2-standard", (4, 8, 12, 16, 24, 32, 48, 96)),
    *_sizes("a2-highgpu", ("1g", "2g", "4g", "8g")), "a2-megagpu-16g",
    *_sizes("a2-ultragpu", ("1g", "2g", "4g", "8g")),
    "a3-highgpu-8g",
)
#: GPUs that come with a g2 machine (NVIDIA_L4, a fixed count)
G2_L4 = {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1,
         "g2-standard-32": 1, "g2-standard-24": 2, "g2-standard-48": 4, "g2-standard-96": 8}
#: the accelerators an n1 machine takes, with the counts Vertex accepts
N1_GPUS = {"NVIDIA_TESLA_T4": (1, 2, 4), "NVIDIA_TESLA_P4": (1, 2, 4),
           "NVIDIA_TESLA_P100": (1, 2, 4), "NVIDIA_TESLA_V100": (1, 2, 4, 8)}
#: retired by Google: Vertex no longer serves on them
RETIRED_GPUS = {"NVIDIA_TESLA_K80"}


def choose_hardware(gpu: str, settings):
    """``-o gpu`` on Vertex: the vocabulary's machine (and accelerator), offered in the region
    when its price list was fetched for it."""
    from deployer import hardware

    offered, where = hardware.offered("vertex", settings.region)
    return hardware.choose("vertex", gpu, allowed=offered, why_not=where)


def project(settings) -> str | None:
    """The project: ``-o project``, else $GOOGLE_CLOUD_PROJECT."""
    return settings.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None


def _accelerator(settings) -> str | None:
    value = (settings.accelerator_type or "").strip()
    return None if value.lower() in ("", CPU) else value.upper()


@dataclasses.dataclass(frozen=True)
class Replicas:
    """A deployed model's replica range and the requests per minute per replica Vertex
    scales on (None: Vertex's own default, CPU and GPU duty cycle at 60%)."""

    minimum: int
    maximum: int
    target: int | None = None

    @property
    def rule(self) -> str:
        """How Vertex scales, in its words ('' when it does not)."""
        if self.target is not None:
            return (f"Vertex autoscaling: {self.target} requests/minute per replica "
                    "(prediction/online/request_count)")
        if self.maximum > self.minimum:
            return "Vertex autoscaling on CPU utilization and GPU duty cycle (60% targets)"
        return ""


def _option(settings, name: str):
    return getattr(settings, name, None)


def replicas(settings) -> Replicas:
    """The replica range and target of ``settings``: the shared scaling options
    (:data:`deployer.target.SCALING`) and Vertex's own ``min_replica_count`` /
    ``max_replica_count`` (the same settings: both given must agree). Without a shared
    option, as before them: 1 replica unless the own options say otherwise, Vertex's default
    metrics. Raises ValidationError (one line) for what Vertex refuses: cooldowns (v1 has
    none), fewer than 1 replica (scale to zero is v1beta1's Preview), counts out of range."""
    for name in ("scale_in_cooldown", "scale_out_cooldown"):
        if _option(settings, name) is not None:
            raise ValidationError(
                f"Vertex AI has no {name.replace('_', ' ')} setting (its API v1 takes only the "
                "replica range and the metric targets; it picks when to scale)",
                hint=f"drop -o {name}")
    if _option(settings, "min_instances") == 0:
        raise ValidationError(
            "Vertex AI needs at least 1 replica per deployed model: min_instances=0 (scale "
            "to zero) is a Preview of API v1beta1 only; v1's min_replica_count must be >= 1",
            hint="pass -o min_instances=1")
    for shared, own in (("min_instances", "min_replica_count"),
                        ("max_instances", "max_replica_count")):
        one, other = _option(settings, shared), _option(settings, own)
        if one is not None and other is not None and one != other:
            raise ValidationError(f"{shared}={one} and {own}={other} disagree (both set "
                                  "the same Vertex setting)",
                                  hint=f"give one of them, or both the same: -o {own}={one} "
                                       "(an update keeps the options recorded at deploy)")
    low = _option(settings, "min_instances")
    low = _option(settings, "min_replica_count") if low is None else low
    high = _option(settings, "max_instances")
    high = _option(settings, "max_replica_count") if high is None else high
    names = [opt.name for opt in SCALING]
    if any(_option(settings, name) is not None for name in names):
        shared = scaling({**{name: _option(settings, name) for name in names},
                          "min_instances": low, "max_instances": high}, instance_count=1)
        found = Replicas(shared.minimum, shared.maximum, shared.target_requests_per_minute)
    else:
        minimum = 1 if low is None else int(low)
        found = Replicas(minimum, minimum if high is None else int(high))
    if found.minimum < 1:
        raise ValidationError(f"min_replica_count must be at least 1, got {found.minimum} "
                              "(scale to zero is a Preview of Vertex's API v1beta1 only)",
                              hint="pass -o min_replica_count=1")
    if found.maximum < found.minimum:
        raise ValidationError(f"max_replica_count {found.maximum} is below min_replica_count "
                              f"{found.minimum}", hint=f"pass -o max_replica_count="
                                                       f"{found.minimum} or more")
    for what, value in (("max_replica_count", found.maximum),
                        ("target_requests_per_minute", found.target)):
        if value is not None and value > INT32:
            raise ValidationError(f"{what} {value} is above {INT32}, the most Vertex's API "
                                  "takes", hint=f"pass a smaller -o {what}")
    return found


def machine(settings) -> dict:
    """What ``Endpoint.deploy`` takes (its argument names): machine, accelerator (None for
    CPU), replicas, and the request-count target when one is set."""
    accelerator = _accelerator(settings)
    scale = replicas(settings)
    found = {"machine_type": settings.machine_type,
             "accelerator_type": accelerator,
             "accelerator_count": int(settings.accelerator_count) if accelerator else 0,
             "min_replica_count": scale.minimum,
             "max_replica_count": scale.maximum}
    if scale.target is not None:
        found[TARGET_KEY] = scale.target
    return found


def quota_note(settings) -> str | None:
    """What a range costs in quota before it scales (None for a fixed count)."""
    m = machine(settings)
    top = m["max_replica_count"]
    if top <= m["min_replica_count"]:
        return None
    gpus = (f" and {top * m['accelerator_count']} {m['accelerator_type']} GPUs"
            if m["accelerator_type"] else "")
    return (f"note: Vertex charges the project's quota for max_replica_count: {top} x "
            f"{m['machine_type']} CPUs{gpus}, however many replicas run")


def _fixed_gpus(machine_type: str) -> tuple[str, int] | None:
    """The (accelerator, count) a GPU machine family comes with; None for n1 and CPU families."""
    if machine_type in G2_L4:
        return "NVIDIA_L4", G2_L4[machine_type]
    found = re.fullmatch(r"(a2-highgpu|a2-megagpu|a2-ultragpu|a3-highgpu)-(\d+)g", machine_type)
    if found:
        kind = {"a2-highgpu": "NVIDIA_TESLA_A100", "a2-megagpu": "NVIDIA_TESLA_A100",
                "a2-ultragpu": "NVIDIA_A100_80GB", "a3-highgpu": "NVIDIA_H100_80GB"}
        return kind[found.group(1)], int(found.group(2))
    return None


def check_machine(settings) -> None:
    """Machine and accelerator combinations Vertex refuses, and the replica counts."""
    kind, accelerator = settings.machine_type, _accelerator(settings)
    count = int(settings.accelerator_count) if accelerator else 0
    if not MACHINE_RE.match(kind or ""):
        raise ValidationError(f"machine type {kind!r} is not a Compute Engine machine type name",
                              hint="pass e.g. -o machine_type=n1-standard-4")
    if accelerator in RETIRED_GPUS:
        raise ValidationError(f"accelerator {accelerator} is retired: Vertex no longer "
                              "serves on it", hint="pass -o accelerator_type=NVIDIA_TESLA_T4")
    fixed = _fixed_gpus(kind)
    if fixed:
        gpu, number = fixed
        if (accelerator, count) != (gpu, number):
            given = f"{accelerator} x{count}" if accelerator else "no accelerator"
            raise ValidationError(f"machine type {kind} comes with {gpu} x{number}, not "
                                  f"{given}", hint=f"pass -o accelerator_type={gpu} "
                                  f"-o accelerator_count={number}")
    elif kind.startswith("n1-"):
        if accelerator and accelerator not in N1_GPUS:
            raise ValidationError(
                f"machine type {kind} takes no {accelerator} (n1 machines take "
                f"{', '.join(N1_GPUS)})",
                hint="pass -o accelerator_type=NVIDIA_TESLA_T4, or a g2/a2/a3 machine type")
        if accelerator and count not in N1_GPUS[accelerator]:
            counts = ", ".join(map(str, N1_GPUS[accelerator]))
            raise ValidationError(f"{accelerator} on {kind} comes {counts} at a time, not "
                                  f"{count}", hint="pass -o accelerator_count=1")
    elif accelerator:
        raise ValidationError(f"machine type {kind} takes no accelerator",
                              hint=f"pass -o accelerator_type={CPU}, or an n1 machine type "
                                   "with NVIDIA_TESLA_T4, or g2-standard-4 with NVIDIA_L4")
    replicas(settings)


def warn_machine(settings, progress: Callable[[str], None]) -> None:
    """One warning line for a well-formed machine type missing from MACHINE_TYPES."""
    kind = settings.machine_type or ""
    if kind not in MACHINE_TYPES and MACHINE_RE.match(kind):
        family = kind.split("-")[0]
        close = [t for t in MACHINE_TYPES if t.split("-")[0] == family][:4]
        progress(f"warning: machine type {kind} is not in our list of Vertex prediction "
                 "machine types; it is sent as given and Vertex refuses it if it is not one"
                 + (f" (listed ones like it: {', '.join(close)})" if close else ""))


def check_image(image: str) -> None:
    """Vertex pulls only from Artifact Registry or Container Registry."""
    copy = (f"docker pull {NVIDIA_IMAGE}; docker tag {NVIDIA_IMAGE} "
            "REGION-docker.pkg.dev/PROJECT/REPO/tritonserver:24.09-py3; docker push that tag; "
            "then -o image=REGION-docker.pkg.dev/PROJECT/REPO/tritonserver:24.09-py3")
    if image.split("/", 1)[0] == "nvcr.io":
        raise ValidationError(f"image {image} is on nvcr.io, which Vertex does not pull from",
                              hint=f"copy it into Artifact Registry: {copy}")
    if not (ARTIFACT_RE.match(image) or GCR_RE.match(image)):
        raise ValidationError(
            f"image {image} is not in Artifact Registry or Container Registry, the only "
            "registries Vertex pulls from",
            hint="push it to REGION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG and pass that "
                 "as -o image")


def label_value(text: str) -> str:
    """``text`` as a label value: lowercase letters, digits, ``_`` and ``-``, at most 63
    characters (a longer one ends with a hash of the whole, so it stays distinct)."""
    value = re.sub(r"[^a-z0-9_-]", "-", str(text).lower())
    if len(value) > 63:
        value = value[:54] + "-" + hashlib.sha256(str(text).encode()).hexdigest()[:8]
    return value


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``-o labels`` items ``KEY=VALUE``, checked against Vertex's label rules."""
    found: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ValidationError(f"label {item!r} is not KEY=VALUE",
                                  hint="pass -o labels=team=ml,env=dev")
        if not LABEL_KEY_RE.match(key):
            raise ValidationError(
                f"label key {key!r} does not fit Vertex's rules (a lowercase letter, then "
                "lowercase letters, digits, _ or -, at most 63 characters)",
                hint=f"pass e.g. -o labels={label_value(key).lstrip('0123456789_-') or 'key'}"
                     f"={label_value(value)}")
        if not LABEL_VALUE_RE.match(value):
            raise ValidationError(
                f"label value {value!r} of {key} does not fit Vertex's rules (lowercase "
                "letters, digits, _ or -, at most 63 characters)",
                hint=f"pass e.g. -o labels={key}={label_value(value)}")
        if key in (ID_LABEL, NAME_LABEL):
            raise ValidationError(f"label {key} is set by the deployer",
                                  hint="use another key")
        found[key] = value
    if len(found) + 2 > MAX_LABELS:
        raise ValidationError(f"{len(found)} labels and the deployer's 2 are more than "
                              f"Vertex's {MAX_LABELS}", hint="pass fewer -o labels")
    return found


def labels(settings, name: str, deployment_id: str | None) -> dict[str, str]:
    """The labels of every resource: ``-o labels``, the deployment's name and id."""
    found = {**parse_labels(settings.labels), NAME_LABEL: label_value(name)}
    if deployment_id:
        found[ID_LABEL] = label_value(deployment_id)
    return found


def _default_model(settings, repository) -> str | None:
    """:func:`default_model`, raising ValidationError where Triton's Vertex frontend would
    refuse to start."""
    models = list(repository.models)
    wanted = settings.default_model
    if wanted:
        if wanted not in repository.models:
            raise ValidationError(
                f"default_model {wanted!r} is not a model of the repository (Triton would "
                f"stop: 'Expect the default model '{wanted}' is loaded'); its models: "
                f"{', '.join(models)}", hint=f"pass -o default_model={repository.top_level()[0]}")
        return wanted
    if len(models) <= 1:
        return None  # Triton's frontend takes the only model
    top = repository.top_level()
    if len(top) != 1:
        raise ValidationError(
            f"the repository has {len(top)} top-level models ({', '.join(top)}) and no default "
            "model (Triton would stop: 'Expect the model repository contains only a single "
            "model if default model is not specified')",
            hint=f"pass -o default_model={top[0]} (rawPredict reaches the others with the "
                 "X-Vertex-Ai-Triton-Redirect header)")
    return top[0]


def default_model(settings, repository) -> str | None:
    """The model ``--vertex-ai-default-model`` names: the option; else, when the repository
    holds several models, its single top-level one (an ensemble and its steps); else None
    (one model: Triton picks it)."""
    return _default_model(settings, repository)


def check_repository(repository) -> None:
    """The rules of NVIDIA's image on top of the core's generic ones (as Azure's no-code
    deployment, which runs the same image)."""
    from ..azure.spec import check_repository as check

    check(repository, "NVIDIA's Triton image")


def check_settings(settings, repository, cloud: bool) -> None:
    """Every rule a deploy checks before any call; one ValidationError line with a hint.
    ``cloud`` False is the twin: no project, bucket or image needed (it names
    REHEARSAL_IMAGE)."""
    from deployer import pyimports

    check_repository(repository)
    pyimports.check(repository, IMAGE_PYTHON, IMAGE_NAME)
    if settings.image:
        check_image(settings.image)
    if cloud and not project(settings):
        raise ValidationError("vertex needs a Google Cloud project",
                              hint="pass -o project=PROJECT_ID or set GOOGLE_CLOUD_PROJECT")
    if cloud and not settings.bucket:
        raise ValidationError("vertex needs a Cloud Storage bucket for the repository",
                              hint=f"create one in {settings.region} (gcloud storage buckets "
                                   f"create gs://NAME --location={settings.region}) and pass "
                                   "-o bucket=NAME")
    if settings.bucket and not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]",
                                            settings.bucket):
        raise ValidationError(f"bucket {settings.bucket!r} is not a bucket name (no gs://, "
                              "lowercase letters, digits, -, _ and .)",
                              hint="pass -o bucket=NAME")
    if not str(settings.prefix or "").strip("/"):
        raise ValidationError("prefix must not be empty", hint="pass -o prefix=triton-deployer")
    check_machine(settings)
    parse_labels(settings.labels)
    _default_model(settings, repository)
    if not settings.startup_timeout > 0:
        raise ValidationError(f"startup_timeout must be positive (seconds), got "
                              f"{settings.startup_timeout}", hint="pass -o startup_timeout=1800")


def require_image(settings) -> None:
    """A deploy needs the image (a plan without one says how to copy NVIDIA's there)."""
    if not settings.image:
        raise ValidationError(
            "vertex needs the Triton image in Artifact Registry (Vertex does not pull from "
            "nvcr.io)", hint=f"copy {NVIDIA_IMAGE} there ('deployer plan REPO -t vertex' "
                             "shows how) and pass "
                             "-o image=REGION-docker.pkg.dev/PROJECT/REPO/tritonserver:24.09-py3")


def container_spec(settings, repository) -> dict:
    """The Model's container spec: the image, tritonserver's args (Vertex expands
    ``$(AIP_STORAGE_URI)``), no env, port 8080. No routes: Vertex sets AIP_PREDICT_ROUTE and
    AIP_HEALTH_ROUTE, which Triton's Vertex frontend serves."""
    args = ["--model-repository=$(AIP_STORAGE_URI)"]
    default = default_model(settings, repository)
    if default:
        args.append(f"--vertex-ai-default-model={default}")
    return {"image_uri": settings.image or REHEARSAL_IMAGE, "args": args, "env": {},
            "ports": [PORT]}


class Names:
    """The display names of deployment ``name``: endpoint, model and deployed model;
    ``revision`` (the update count) tells an update's model from the first one."""

    def __init__(self, settings, name: str, revision: int = 0):
        suffix = f"-r{revision}" if revision else ""
        # Vertex display names: up to 128 UTF-8 characters
        self.endpoint = (settings.endpoint or name)[:128]
        self.model = f"{name[:128 - len(suffix)]}{suffix}"
        self.deployed = self.model


def instances(settings) -> list[tuple[str, int]]:
    """What is paid for while the endpoint runs its minimum: the machines, and the GPUs
    (priced apart on Google Cloud)."""
    m = machine(settings)
    found = [(m["machine_type"], m["min_replica_count"])]
    if m["accelerator_type"]:
        found.append((m["accelerator_type"], m["accelerator_count"] * m["min_replica_count"]))
    return found


def copy_image_steps(settings) -> list[str]:
    """How to copy NVIDIA's image into Artifact Registry (the commands to run)."""
    region, proj = settings.region, project(settings) or "PROJECT"
    target = f"{region}-docker.pkg.dev/{proj}/REPO/tritonserver:24.09-py3"
    return [f"gcloud artifacts repositories create REPO --repository-format=docker "
            f"--location={region}",
            f"gcloud auth configure-docker {region}-docker.pkg.dev",
            f"docker pull {NVIDIA_IMAGE}",
            f"docker tag {NVIDIA_IMAGE} {target}",
            f"docker push {target}",
            f"then pass -o image={target}"]


def plan(settings, repository, name: str, progress: Callable[[str], None],
         cloud: bool) -> list[PlannedResource]:
    """What a deploy creates, in order: the artefact, the model, the endpoint, the deployed
    model. With ``cloud`` and no usable image, how to copy NVIDIA's image comes first."""
    from . import storage

    layout = storage.layout(repository)
    uri = storage.artefact_uri(settings.bucket or "rehearsal", settings.prefix, layout.digest)
    names = Names(settings, name)
    tags = labels(settings, name, None)
    container = container_spec(settings, repository)
    image = settings.image or ""
    steps = None
    note = quota_note(settings)
    if note:
        progress(note)
    if cloud and (not image or image.startswith("nvcr.io/")):
        steps = copy_image_steps(settings)
        progress("Vertex pulls images only from Artifact Registry or Container Registry; copy "
                 "NVIDIA's image there:")
        for step in steps:
            progress(f"  {step}")
        container["image_uri"] = steps[-1].split("=", 1)[1]
    model = {"artifact_uri": uri, "container_spec": container, "labels": tags,
             "default_model": default_model(settings, repository)}
    if steps:
        model["copy_image"] = steps
    return [
        PlannedResource("artefact", uri, {"objects": len(layout.objects),
                                          "bytes": layout.size, "digest": layout.digest}),
        PlannedResource("model", names.model, model),
        PlannedResource("endpoint", names.endpoint, {"region": settings.region,
                                                     "project": project(settings),
                                                     "labels": tags}),
        PlannedResource("deployed-model", names.deployed, {"endpoint": names.endpoint,
                                                           **machine(settings),
                                                           "traffic_percentage": 100}),
    ]
