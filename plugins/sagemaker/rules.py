"""SageMaker's own rules, checked before any cloud call. Each failure is one line saying what to do."""

from __future__ import annotations

import re

from deployer.errors import UsageError, ValidationError

NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
ROLE_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
ENV_PREFIX = "SAGEMAKER_TRITON_"
#: instance families with GPUs (the rest get the -cpu image and may not host a GPU MME)
GPU_FAMILIES = ("ml.p", "ml.g")
#: AWS Inferentia and Trainium: the Triton image map has no image for their Neuron chips
NO_TRITON_FAMILIES = ("ml.inf", "ml.trn")


def check_name(kind: str, name: str) -> str:
    if len(name) > 63 or not NAME_RE.match(name):
        raise ValidationError(
            f"SageMaker {kind} name {name!r} is invalid: at most 63 letters, digits and dashes, "
            "starting and ending with a letter or digit", hint="pass another --name")
    return name


def default_model(repository, settings) -> str:
    """The model SAGEMAKER_TRITON_DEFAULT_MODEL_NAME names on a single-model endpoint."""
    if settings.default_model:
        if settings.default_model not in repository.models:
            raise ValidationError(
                f"default_model {settings.default_model!r} is not a model of the repository "
                f"(the container would stop: 'Directory with provided SAGEMAKER_TRITON_DEFAULT_"
                f"MODEL_NAME does not exist'); its models: {', '.join(repository.models)}",
                hint=f"pass -o default_model={repository.top_level()[0]}")
        return settings.default_model
    top = repository.top_level()
    if len(top) > 1:
        raise ValidationError(
            f"the repository has {len(top)} top-level models ({', '.join(top)}) and a "
            "single-model endpoint serves one (the container would stop: 'More than 1 model "
            "directory found')",
            hint=f"pass -o default_model={top[0]} (sets SAGEMAKER_TRITON_DEFAULT_MODEL_NAME), "
                 "or -o mode=multi for a multi-model endpoint")
    return top[0]


def multi_models(repository) -> None:
    """Every model lives in exactly one archive: Triton loads each under one name."""
    owner: dict[str, str] = {}
    for top in repository.top_level():
        for name in repository.dependencies(top):
            if name in owner and owner[name] != top:
                raise ValidationError(
                    f"model {name!r} would be in two archives ({owner[name]}.tar.gz and "
                    f"{top}.tar.gz): model names must be unique across a multi-model endpoint",
                    hint="deploy one of the ensembles separately, or copy the model under another "
                         "name")
            owner[name] = top


def env(settings) -> dict[str, str]:
    result = {}
    for item in settings.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith(ENV_PREFIX):
            raise UsageError(f"env item {item!r} is not {ENV_PREFIX}NAME=VALUE",
                             hint="e.g. -o env=SAGEMAKER_TRITON_LOG_VERBOSE=false")
        result[key] = value
    if "SAGEMAKER_TRITON_DEFAULT_MODEL_NAME" in result:
        raise UsageError("set the default model with -o default_model=NAME, not through env")
    return result


def tags(settings) -> list[dict[str, str]]:
    result = []
    for item in settings.tags:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"tag {item!r} is not KEY=VALUE", hint="e.g. -o tags=team=ml")
        result.append({"Key": key, "Value": value})
    return result


def options(settings) -> None:
    if not 60 <= settings.startup_timeout <= 3600:
        raise UsageError(f"startup_timeout must be 60-3600 seconds, got "
                         f"{settings.startup_timeout}")
    if settings.instance_count < 1:
        raise UsageError("instance_count must be at least 1")
    if settings.instance_type.startswith(NO_TRITON_FAMILIES):
        raise ValidationError(
            f"{settings.instance_type} is an AWS Inferentia/Trainium instance: SageMaker has no "
            "Triton image for it (the image map has cpu and gpu images only)",
            hint="pass -o instance_type= a GPU type (ml.g5.xlarge, ml.g4dn.xlarge) or a CPU "
                 "type (ml.m5.xlarge, ml.c5.xlarge)")
    if settings.uncompressed and settings.mode == "multi":
        raise UsageError("uncompressed applies to single-model endpoints only",
                         hint="drop -o uncompressed, or use -o mode=single")
    env(settings)
    tags(settings)


def is_gpu(instance_type: str) -> bool:
    return instance_type.startswith(GPU_FAMILIES)


def gpu_count(instance_type: str, region: str) -> int | None:
    """GPUs of an instance type from the SDK's GPU table; None when no table lists it."""
    from . import images

    entry = (images.gpu_table(region) or {}).get(instance_type)
    return entry["Count"] if entry else None


def multi_gpu(settings, region: str, progress) -> None:
    if settings.mode != "multi" or not is_gpu(settings.instance_type):
        return
    count = gpu_count(settings.instance_type, region)
    if count is None:
        progress(f"warning: cannot tell how many GPUs {settings.instance_type} has; a GPU "
                 "multi-model endpoint needs a single-GPU instance")
    elif count > 1:
        raise ValidationError(
            f"{settings.instance_type} has {count} GPUs: GPU multi-model endpoints run on "
            "single-GPU instances only",
            hint="pass -o instance_type=ml.g4dn.xlarge (or ml.g5.2xlarge...)")


def image(settings, region: str) -> str:
    """The Triton image URI: ``-o image``, else version ``-o image_version`` (default: the
    pinned :data:`images.DEFAULT_VERSION`) from the SDK's image map, if the map has it for the
    region. No map installed: one line, exit 5."""
    if settings.image:
        return settings.image
    from . import images

    known = images.triton_config()["versions"]
    version = settings.image_version or images.DEFAULT_VERSION
    which = "" if settings.image_version else " (the default)"
    if version not in known:
        raise ValidationError(
            f"no SageMaker Triton image version {version!r}{which} in the SDK's image map; "
            f"known: {', '.join(images.ordered(known))}",
            hint="pass another -o image_version, or -o image=URI")
    if region not in known[version].get("registries", {}):
        here = [v for v in images.ordered(known) if region in known[v].get("registries", {})]
        if not here:
            raise ValidationError(
                f"SageMaker has no Triton image in region {region!r} (per the SDK's image map)",
                hint="pass another -o region, or an explicit -o image=URI")
        raise ValidationError(
            f"SageMaker has no Triton image {version}{which} in {region}; it has "
            f"{', '.join(here)} there (per the SDK's image map)",
            hint=f"pass -o image_version={images.nearest(version, here)} (test it: newer "
                 "images need newer GPU drivers), or another -o region")
    return images.triton_uri(version, region, settings.instance_type)


def image_python(settings) -> tuple[str, str]:
    """(the Python the endpoint's Triton image runs Python models with, how messages name
    that image): from ``-o image_version`` (default: the pinned one), or the tag of ``-o
    image`` (``...:24.09-py3``). Images up to 24.10 are Ubuntu 22.04 (Python 3.10), 24.11 on
    are Ubuntu 24.04 (Python 3.12) (server build.py)."""
    from . import images

    version = settings.image_version or images.DEFAULT_VERSION
    if settings.image:
        tag = re.search(r":(\d\d\.\d\d)-", settings.image)
        if tag is None:
            return images.IMAGE_PYTHON[images.DEFAULT_VERSION], f"the image {settings.image}"
        version = tag.group(1)
    python = images.IMAGE_PYTHON.get(version) or (
        "3.10" if [int(p) for p in version.split(".")] < [24, 11] else "3.12")
    return python, f"SageMaker's Triton image {version}"


def python_imports(settings, repository) -> None:
    """Before any call: every Python model imports only what the image has, or brings it in
    an EXECUTION_ENV_PATH archive (:func:`deployer.pyimports.check`)."""
    from deployer import pyimports

    python, where = image_python(settings)
    pyimports.check(repository, python, where)


def cloud(settings, session) -> str:
    """Role, bucket, region and credentials; returns the region."""
    if not settings.role:
        raise ValidationError("no execution role: SageMaker needs one to read the artefacts",
                              hint="pass -o role=arn:aws:iam::ACCOUNT:role/NAME")
    if not ROLE_RE.match(settings.role):
        raise ValidationError(f"role {settings.role!r} is not an IAM role ARN",
                              hint="pass -o role=arn:aws:iam::ACCOUNT:role/NAME")
    if not settings.bucket:
        raise ValidationError("no S3 bucket for the artefacts", hint="pass -o bucket=NAME")
    region = settings.region or session.region_name
    if not region:
        raise ValidationError("no AWS region", hint="pass -o region=us-east-1, or set AWS_REGION")
    if session.get_credentials() is None:
        raise ValidationError(
            "no AWS credentials found",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run "
                 "'aws configure' / 'aws sso login'")
    return region


def decoupled(repository) -> None:
    """A decoupled model answers with a stream, which the image's SageMaker frontend cannot
    send before Triton 25.03 (501 on /invocations; a multi-model endpoint refuses it in
    every release); from 25.03 only a single-model endpoint in its generate_stream mode can,
    which this target does not drive."""
    for model in repository.models.values():
        if model.decoupled:
            raise ValidationError(
                f"model {model.name!r} is decoupled (it streams its responses): SageMaker's "
                "Triton container cannot answer it through InvokeEndpoint (HTTP 501), and this "
                "target does not drive the generate_stream mode of Triton 25.03 and later",
                path=str(model.config_path),
                hint="stream it on --target local, docker or azure")


def sequences(settings, repository, progress) -> None:
    """Several instances split a sequence: SageMaker pins requests to one only through
    stateful sessions, whose ids the container must issue, and Triton issues none. A fleet
    that may scale out to several is warned about as one that starts with several."""
    stateful = [m.name for m in repository.models.values() if m.stateful]
    fleet = scaling(settings)
    if stateful and fleet is not None and fleet.maximum > 1:
        progress(f"warning: {', '.join(stateful)} keep(s) state per sequence, and with "
                 f"max_instances {fleet.maximum} SageMaker may send a sequence's requests to "
                 "different instances once it scales out; use max_instances=1")
    elif stateful and settings.instance_count > 1:
        progress(f"warning: {', '.join(stateful)} keep(s) state per sequence, and with "
                 f"instance_count {settings.instance_count} SageMaker may send a sequence's "
                 "requests to different instances; use instance_count=1")


def scaling(settings):
    """The autoscaling options checked (:func:`deployer.target.scaling`) plus SageMaker's
    rules: a variant-based real-time endpoint never scales to zero (only endpoints hosting
    inference components do: "Scale an endpoint to zero instances"; a variant's MinCapacity
    is at least 1), and the target can be registered only on an InService endpoint, so a
    scaling deploy waits. None when no scaling option is set."""
    from deployer.target import scaling as checked

    if settings.get("min_instances") == 0:
        raise ValidationError(
            "min_instances=0: a SageMaker real-time endpoint on a production variant cannot "
            "scale to zero (only endpoints hosting inference components can)",
            hint="pass -o min_instances=1 or more")
    fleet = checked(settings, instance_count=settings.instance_count)
    if fleet is not None and fleet.scales and not settings.wait:
        raise UsageError("-o wait=false cannot be combined with autoscaling: Application Auto "
                         "Scaling registers only an InService endpoint",
                         hint="drop -o wait=false, or the scaling options")
    return fleet


def initial_count(settings) -> int:
    """The instances the endpoint config starts with: ``Scaling.initial``, or instance_count."""
    fleet = scaling(settings)
    return fleet.initial if fleet is not None else settings.instance_count


def quota_check(settings, session, region: str, progress) -> None:
    """max_instances within the account's quota '<type> for endpoint usage' (Service
    Quotas): past it no scale-out could ever succeed. An unreadable quota is a warning."""
    from . import aws

    fleet = scaling(settings)
    if fleet is None or not fleet.scales:
        return
    name = f"{settings.instance_type} for endpoint usage"
    value, why = aws.endpoint_quota(session, name)
    if value is None:
        progress(f"warning: cannot read the quota '{name}' in {region} ({why}); if "
                 f"max_instances {fleet.maximum} is above it, scale-outs past it fail")
    elif fleet.maximum > value:
        raise ValidationError(
            f"max_instances {fleet.maximum} is above the account's quota '{name}' "
            f"({value:g}) in {region}: SageMaker could never scale out that far",
            hint="lower max_instances, or raise the quota in the Service Quotas console "
                 f"(AWS services → Amazon SageMaker, region {region})")
