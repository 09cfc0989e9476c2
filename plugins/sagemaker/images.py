"""Where SageMaker's Triton image map and GPU table come from: the one place that knows.

sagemaker-core 2.x carries them as ``sagemaker.core.image_uris`` and
``sagemaker.core.instance_types_gpu_info``. The SageMaker Python SDK v2 pins sagemaker-core<2,
whose 1.x carries neither; the SDK itself has the same modules as ``sagemaker.image_uris`` and
``sagemaker.instance_types_gpu_info``, with the same ``sagemaker-tritonserver`` map. Both SDKs
are heavy: this module imports them only when a lookup is made.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from types import ModuleType

from deployer.errors import Unavailable

FRAMEWORK = "sagemaker-tritonserver"
#: the Triton image version a deploy uses unless ``-o image_version``/``-o image`` say
#: otherwise: the one we test (Triton 2.50; the twins run 2.51). Pinned, not "the newest the
#: installed SDK lists": that moves with every SDK upgrade, and newer images need newer
#: GPU drivers than older instance families have.
DEFAULT_VERSION = "24.09"
#: the Python each image's Python backend runs (its Ubuntu's: 22.04 → 3.10, 24.04 → 3.12),
#: per NVIDIA's release notes and compatibility matrix; versions not verified are absent
IMAGE_PYTHON = {"23.12": "3.10", "24.01": "3.10", "24.03": "3.10", "24.05": "3.10",
                "24.09": "3.10", "25.04": "3.12", "25.09": "3.12"}
#: where to look, first found wins: sagemaker-core 2.x, then the SageMaker Python SDK v2
PACKAGES = ("sagemaker.core", "sagemaker")
INSTALL = "pip install 'sagemaker-core>=2' (or the SageMaker Python SDK v2: 'sagemaker<3')"


def _find(name: str) -> ModuleType | None:
    """``<package>.<name>`` from the first package that has it; None when none does. A module
    that is there but fails to import (a broken install) is one line, exit 5."""
    # On import the SDK v2 gives its config logger a handler on stdout (which carries --json)
    # unless "sagemaker" has one, and warns (warning and log) that v2 is deprecated: about
    # its defaults files and its users' code, nothing we use. Our errors stay one line.
    sdk_log = logging.getLogger("sagemaker")
    if not sdk_log.handlers:
        sdk_log.addHandler(logging.NullHandler())
    warnings.filterwarnings("ignore", message="You are using the SageMaker Python SDK v2")
    for package in PACKAGES:
        module = f"{package}.{name}"
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            parts = module.split(".")
            if exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
                continue  # not installed here; try the next package
            raise Unavailable(f"{module} is installed but cannot be imported: {exc}",
                              hint=f"repair the install: {INSTALL}") from None
        except ImportError as exc:
            raise Unavailable(f"{module} is installed but cannot be imported: {exc}",
                              hint=f"repair the install: {INSTALL}") from None
    return None


def image_uris() -> ModuleType:
    """The module with ``config_for_framework`` and ``retrieve`` for the Triton image map."""
    module = _find("image_uris")
    if module is None:
        raise Unavailable(
            "no SageMaker Triton image map is installed (sagemaker-core 2.x and the SageMaker "
            "Python SDK v2 carry one; sagemaker-core 1.x does not)",
            hint=f"pass -o image=URI, or {INSTALL}")
    return module


def triton_config() -> dict:
    """The ``sagemaker-tritonserver`` image config: ``versions`` → ``registries`` by region."""
    return image_uris().config_for_framework(FRAMEWORK)


def ordered(versions) -> list[str]:
    """Image versions oldest first (``23.12`` < ``24.09`` < ``25.04``)."""
    return sorted(versions, key=_key)


def nearest(version: str, versions: list[str]) -> str:
    """The first of ``versions`` (ordered) at or above ``version``, else the newest."""
    return next((v for v in versions if _key(v) >= _key(version)), versions[-1])


def _key(version: str) -> list[int]:
    return [int(p) for p in version.split(".")]


def triton_uri(version: str, region: str, instance_type: str) -> str:
    """The image URI of a Triton version in a region; CPU instance types get the -cpu image."""
    return image_uris().retrieve(FRAMEWORK, region=region, version=version,
                                 instance_type=instance_type)


def gpu_table(region: str) -> dict[str, dict[str, int]] | None:
    """Instance type → ``{"Count": GPUs, ...}`` for a region; None when no SDK carries the
    table or it lacks the region."""
    module = _find("instance_types_gpu_info")
    if module is None:
        return None
    try:
        return module.retrieve(region) or None
    except ValueError:
        return None
