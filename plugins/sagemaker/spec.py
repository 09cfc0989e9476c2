"""What a SageMaker deploy is made of, shared by the cloud target and its twin.

Plain functions of ``(settings, repository)``: the options both targets accept, the artefact
layout and archives, the container environment, the default model and the repository checks.
The ``sagemaker`` target uploads what these build; ``sagemaker-twin`` serves it here. Cheap to
import: the CLI loads every plugin.
"""

from __future__ import annotations

import os

from deployer.target import GPU, SCALING, Option

from .images import DEFAULT_VERSION

#: the options of ``sagemaker`` and, unchanged, of ``sagemaker-twin`` (the shared autoscaling
#: options last: Application Auto Scaling on the cloud, recorded only by the twin)
OPTIONS = (
    Option("region", str, None, "AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / "
                                "the profile's)"),
    Option("role", str, None, "execution role ARN SageMaker assumes to read the artefacts "
                              "(required)"),
    Option("bucket", str, None, "S3 bucket for the artefacts (required)"),
    Option("prefix", str, "triton-deployer", "S3 key prefix; artefacts go under "
                                             "PREFIX/<sha256 of their content>/"),
    Option("instance_type", str, "ml.g4dn.xlarge", "instance type; CPU families (ml.m5, "
           "ml.c5...) get the -cpu image"),
    GPU,
    Option("instance_count", int, 1, "initial instance count"),
    Option("image_version", str, None, f"Triton image version (default: {DEFAULT_VERSION}, "
           "pinned: the one we test; any other the SDK's image map lists for the region)"),
    Option("image", str, None, "explicit container image URI (overrides image_version)"),
    Option("mode", str, "single", "single: one model.tar.gz, one default model; multi: one "
           "<model>.tar.gz per top-level model, invoked with TargetModel",
           choices=("single", "multi")),
    Option("default_model", str, None, "model served by /invocations in single mode "
           "(SAGEMAKER_TRITON_DEFAULT_MODEL_NAME); needed with several top-level models"),
    Option("env", list, [], "extra container environment, SAGEMAKER_TRITON_NAME=VALUE "
                            "items, comma-separated"),
    Option("startup_timeout", int, 600, "container start-up health check timeout, "
                                        "60-3600 seconds"),
    Option("uncompressed", bool, False, "single mode: upload the repository as an "
           "uncompressed S3 prefix instead of model.tar.gz"),
    Option("wait", bool, True, "wait until the endpoint is InService"),
    Option("tags", list, [], "extra resource tags, KEY=VALUE items, comma-separated"),
    Option("keep_artifacts", bool, False, "leave the uploaded artefacts in S3 on teardown"),
    Option("delete_logs", bool, False, "remove the endpoint's CloudWatch log group "
           "(/aws/sagemaker/Endpoints/NAME) on teardown; by default it stays"),
    *SCALING,
)


def choose_hardware(gpu: str, settings):
    """``-o gpu`` on SageMaker: the vocabulary's smallest type, offered in the region (when
    its price list was fetched for it); a multi-model endpoint also needs a single GPU."""
    from deployer import hardware

    region = (settings.region or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION"))
    offered, where = hardware.offered("sagemaker", region)
    choice = hardware.choose("sagemaker", gpu, allowed=offered, why_not=where)
    if settings.mode == "multi" and choice.gpus > 1:
        return hardware.choose("sagemaker", gpu, allowed=lambda e: e["gpus"] <= 1 and offered(e),
                               why_not=" with a single GPU, which a GPU multi-model endpoint "
                                       "needs" + (f",{where}" if where else ""))
    return choice


def layout(settings, repository):
    """``(layout, artefacts)``: ``single`` (one model.tar.gz), ``uncompressed`` (the same
    members as an S3 prefix) or ``multi`` (one ``<model>.tar.gz`` per top-level model)."""
    from . import artefacts

    if settings.mode == "multi":
        return "multi", artefacts.multi(repository)
    return ("uncompressed" if settings.uncompressed else "single",
            [artefacts.single(repository)])


def digest(layout_name: str, items) -> str:
    """The content address of the artefacts (the S3 folder, the twin's store folder)."""
    from . import artefacts

    return artefacts.listing_digest(items, layout_name)


def objects(layout_name: str, items) -> list[tuple[str, object]]:
    """``(relative key, artefact or file)`` for every object of the artefacts."""
    if layout_name == "uncompressed":
        return list(items[0].members)
    return [(artefact.name, artefact) for artefact in items]


def container_env(settings, repository) -> dict[str, str]:
    """The container's environment: ``-o env`` items, and the default model in single mode."""
    from . import rules

    env = rules.env(settings)
    if settings.mode == "single":
        env["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] = rules.default_model(repository, settings)
    return env


def check_repository(settings, repository) -> None:
    """The options and the repository rules of the mode (ValidationError / UsageError)."""
    from deployer.errors import ValidationError

    from . import rules

    rules.options(settings)
    rules.decoupled(repository)
    if settings.mode == "multi":
        rules.multi_models(repository)
        return
    rules.default_model(repository, settings)
    if not settings.uncompressed:
        return
    for model in repository.models.values():
        for version in model.versions:
            folder = model.path / str(version)
            if not any(p.is_file() for p in folder.rglob("*")):
                raise ValidationError(
                    f"version folder {model.name}/{version} has no file: an uncompressed S3 "
                    "prefix cannot carry an empty folder", path=str(folder),
                    hint="add a file to it (e.g. .gitkeep), or drop -o uncompressed")


def models_served(settings, repository) -> list[str]:
    """What the endpoint answers for: every top-level model (multi), or the default one."""
    from . import rules

    if settings.mode == "multi":
        return repository.top_level()
    return [rules.default_model(repository, settings)]
