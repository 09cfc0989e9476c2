"""The docker target's image pull as a transfer in bytes with one part per layer, from the
engine's own pull stream: a real Docker engine pulls an image from a tiny registry on
127.0.0.1 (tests/registry_support.py; the engine pulls from 127.0.0.0/8 over plain HTTP), built
here from scratch. A recording sink (tests/progress_support.py) stands in for the live view.

Skipped, with the reason, when no engine answers (CI starts one with .ci/start-docker.sh)."""

from __future__ import annotations

import pytest

from conftest import REPOS
from deployer.api import Deployer
from deployer.errors import DeployerError
from progress_support import RecordingSink, rises_to
from registry_support import Registry, tiny_image
from test_docker import ENGINE   # skips, with the reason, when no engine answers

docker = pytest.importorskip("docker", reason="the docker SDK is not installed")

#: two layers of random bytes: 4 MiB and 3 MiB (the registry sends them in slices)
SIZES = (4 << 20, 3 << 20)



@pytest.fixture(scope="module")
def registry():
    config, layers = tiny_image(ENGINE, "triton-deployer-test/progress-tiny:build", SIZES)
    served = Registry("progress/tiny", "1", config, layers)
    yield served
    served.close()


@pytest.fixture
def fresh(registry):
    """The registry's image, absent from the engine before and after the test."""
    def remove():
        try:
            ENGINE.images.remove(registry.image, force=True)
        except docker.errors.ImageNotFound:
            pass

    remove()
    yield registry.image
    remove()


def test_a_pull_is_a_transfer_with_a_part_per_layer(registry, fresh):
    from deployer_plugins.docker import engine

    sink = RecordingSink()
    engine.ensure_image(ENGINE, fresh, "missing", sink)
    [pull] = sink.transfers()
    assert pull.what == f"  pulling {fresh}" and pull.unit == "bytes"
    assert pull.exited and pull.error is None
    # one part per layer, each ending whole at the size the registry sent for it
    assert len(pull.parts) == len(SIZES), pull.parts
    assert sorted(steps[-1] for steps in pull.parts.values()) == sorted(
        (size, size) for size in registry.layer_sizes)
    assert rises_to(pull, sum(registry.layer_sizes)), pull.history
    # bytes counted while each layer came in, not only at its end
    assert any(0 < done < size for steps in pull.parts.values() for done, size in steps
               if size), pull.parts
    assert sum(1 for method, path in registry.requests if "/blobs/" in path) == 3

    # pulled again: the engine has every layer, so there is nothing to count
    again = RecordingSink()
    engine.ensure_image(ENGINE, fresh, "always", again)
    [repeat] = again.transfers()
    assert repeat.parts == {} and repeat.done == 0 and repeat.error is None


def test_the_docker_target_pulls_through_the_transfer(registry, fresh, tmp_path):
    """A deploy with -o pull=missing pulls the image it lacks (the image then cannot serve: it
    holds no tritonserver; the pull is what this test is about)."""
    sink = RecordingSink()
    deployer = Deployer(state_dir=tmp_path / "state", progress=sink)
    try:
        deployer.deploy(REPOS / "add_sub", "docker", "pulled", {
            "image": fresh, "stop_timeout": 1, "startup_timeout": 20})
    except DeployerError:
        pass
    finally:
        if deployer.store.exists("pulled"):
            deployer.teardown("pulled")
    [pull] = sink.transfers()
    assert pull.what == f"  pulling {fresh}"
    assert pull.done == pull.total == sum(registry.layer_sizes) and pull.error is None
