"""Target ``vertex``: a Vertex AI endpoint serving the repository with NVIDIA's Triton image
(a custom container), and its rehearsal ``vertex-twin``."""

from __future__ import annotations

from deployer import hookimpl


@hookimpl
def deployer_register_targets():
    return []
