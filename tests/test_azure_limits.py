"""Azure's request settings, probes and traffic rule: sent in the deployment, kept by the fake
workspace as the service keeps them, enforced by the twin's gateway in front of a real
tritonserver (429 past the concurrency, 408 past the timeout), and reported by
``request_limits`` from the settings the deployment was made with.

The slow model waits for a gate file the test creates: what the tests wait on is an event (a
429 in the gateway's log, the gate), never a length of time."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from azure_support import fake, run_cli  # noqa: F401 (fixtures)
from conftest import Worker, wait_for
from deployer import load
from deployer.api import Deployer
from deployer_plugins.azure import seam, spec

pytestmark = pytest.mark.server
ADD_SUB = Path(__file__).parent / "repos" / "add_sub"

CONFIG = """name: "gate"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
MODEL = '''"""OUTPUT0 = INPUT0, once the gate file exists (at most two minutes later)."""

import os
import time

import triton_python_backend_utils as pb_utils

GATE = {gate!r}


class TritonPythonModel:
    def execute(self, requests):
        give_up = time.monotonic() + 120
        while not os.path.exists(GATE) and time.monotonic() < give_up:
            time.sleep(0.01)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(
            "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())])
            for r in requests]
'''
INPUTS = {"INPUT0": np.arange(4, dtype=np.float32)}


def _gated(tmp_path: Path) -> tuple[Path, Path]:
    repo, gate = tmp_path / "gated", tmp_path / "gate"
    (repo / "gate" / "1").mkdir(parents=True)
    (repo / "gate" / "config.pbtxt").write_text(CONFIG)
    (repo / "gate" / "1" / "model.py").write_text(MODEL.format(gate=str(gate)))
    return repo, gate


def _open_on_429(log: Path, gate: Path, client) -> Worker:
    """Open the gate once the gateway has answered a 429 (its log says so); first ask for
    readiness, which the throttle must let through while the queue is full. The worker's
    result is that readiness; it fails when no 429 comes."""
    def watch():
        try:
            wait_for("a 429 in the gateway's log",
                     lambda: '" 429 ' in log.read_text(errors="replace"))
            return client.ready()
        finally:
            gate.touch()

    return Worker(watch)


def test_twin_throttles_past_the_concurrency_and_times_out(tmp_path):
    repo, gate = _gated(tmp_path)
    deployer = Deployer(state_dir=tmp_path / "state", progress=lambda _: None)
    record = deployer.deploy(str(repo), "azure-twin", "slow", {
        "max_concurrent_requests_per_instance": 1, "request_timeout_ms": 120000})
    target = deployer.registry.create("azure-twin", record.options, lambda _: None)
    try:
        limits = target.request_limits(record)
        assert (limits.concurrency, limits.timeout_ms) == (1, 120000)
        assert limits.source.startswith("max_concurrent_requests_per_instance 1 x 1 instance")

        # three at once on one slot: one at the model (held by the gate), one queued, one
        # refused with 429; the gate opens on that 429 and the other two are answered
        client = target.client(record)
        log = Path(next(r.data["log"] for r in record.resources if r.kind == "endpoint"))
        watcher = _open_on_429(log, gate, client)
        watcher.start()
        result = load.run("gate", client.sender("gate", INPUTS), requests=9, concurrency=3,
                          warmup=0, max_windows=3)
        assert watcher.result() is True, "readiness was refused while the queue was full"
        client.close()
        assert set(result.errors) == {"http-429"} and result.errors["http-429"] >= 1
        assert result.requests > result.error_count

        # an update in place with a 1 s timeout: a request the model holds gets 408
        gate.unlink()
        record = deployer.deploy(str(repo), "azure-twin", "slow",
                                 {"request_timeout_ms": 1000}, update=True)
        target = deployer.registry.create("azure-twin", record.options, lambda _: None)
        limits = target.request_limits(record)
        assert (limits.concurrency, limits.timeout_ms) == (1, 1000)
        client = target.client(record)
        result = load.run("gate", client.sender("gate", INPUTS), requests=6, concurrency=1,
                          warmup=0, max_windows=1)
        client.close()
        assert result.errors == {"http-408": 2} and result.requests == 2  # none answered
    finally:
        gate.touch()
        deployer.teardown("slow")


def test_fake_workspace_keeps_the_settings_and_throttles(fake, run_cli, tmp_path):
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "lim",
                           "-o", "endpoint=ep-lim", "-o", "instance_count=2",
                           "-o", "max_concurrent_requests_per_instance=3",
                           "-o", "liveness_probe=initial_delay=900,failure_threshold=5")
    assert code == 0, err
    kept = fake.endpoints["ep-lim"].deployments["blue"]
    assert kept.request == {"request_timeout_ms": 60000,
                            "max_concurrent_requests_per_instance": 3,
                            "max_queue_wait_ms": 500}  # the service's default, unused
    assert kept.probes["liveness_probe"] == {"initial_delay": 900, "period": 10, "timeout": 2,
                                             "failure_threshold": 5, "success_threshold": 1}
    assert kept.probes["readiness_probe"]["initial_delay"] == 10
    # what the service answers for the deployment carries them too
    entity = fake._deployment(  # noqa: SLF001 - the primitive the seam reads
        "ep-lim", "blue")
    assert entity.request_settings.max_concurrent_requests_per_instance == 3
    assert entity.liveness_probe.initial_delay == 900

    deployer = Deployer(state_dir=tmp_path / "state", progress=lambda _: None)
    record = deployer.store.load("lim")
    limits = deployer.registry.create("azure", record.options, lambda _: None) \
        .request_limits(record)
    assert (limits.concurrency, limits.timeout_ms) == (6, 60000)
    assert limits.source == ("max_concurrent_requests_per_instance 3 x 2 instances, "
                             "request_timeout_ms 60000")
    # a record made before the settings were sent: Azure's defaults applied
    for resource in record.resources:
        resource.data.pop("request_settings", None)
    limits = deployer.registry.create("azure", record.options, lambda _: None) \
        .request_limits(record)
    assert (limits.concurrency, limits.timeout_ms) == (2, 5000)

    # the service's own refusals, past our validation
    with pytest.raises(seam.SeamError, match="BadArgument.*sum to 100 or 0"):
        fake.set_traffic("ep-lim", {"blue": 50})
    _, _, deployment = spec.entities(
        spec.endpoint_yaml("ep-lim", "key", {}),
        spec.deployment_yaml("blue", "ep-lim", "azureml:lim:1", "Standard_DS3_v2", 1, {},
                             {"request_timeout_ms": 200000,
                              "max_concurrent_requests_per_instance": 1}))
    with pytest.raises(seam.SeamError, match="BadArgument.*request_timeout_ms 200000 exceeds"):
        fake.create_or_update_deployment(deployment)

    # blue/green wants 100 or 0 too: refused before any call
    calls = len(fake.calls)
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "lim", "--update",
                           "-o", "blue_green=true", "-o", "traffic=60")
    assert code == 2 and "traffic shares must sum to 100 or 0, and these" in err, err
    assert len(fake.calls) == calls
    assert run_cli("teardown", "lim")[0] == 0


def test_update_records_the_new_settings(fake, run_cli, tmp_path):
    """In place and blue/green, request_limits follows the deployment that serves."""
    assert run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "upd",
                   "-o", "endpoint=ep-upd")[0] == 0
    deployer = Deployer(state_dir=tmp_path / "state", progress=lambda _: None)

    def limits():
        record = deployer.store.load("upd")
        impl = deployer.registry.create("azure", record.options, lambda _: None)
        found = impl.request_limits(record)
        return found.concurrency, found.timeout_ms

    assert limits() == (16, 60000)  # the Triton defaults
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "upd", "--update",
                           "-o", "request_timeout_ms=90000")
    assert code == 0, err
    assert limits() == (16, 90000)
    assert fake.endpoints["ep-upd"].deployments["blue"].request["request_timeout_ms"] == 90000
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "upd", "--update",
                           "-o", "blue_green=true", "-o", "max_concurrent_requests_per_instance=5",
                           "-o", "instance_count=2")
    assert code == 0, err
    assert limits() == (10, 90000)  # green's settings: 5 x 2 instances
    assert fake.endpoints["ep-upd"].deployments["green"].request[
        "max_concurrent_requests_per_instance"] == 5
    assert run_cli("teardown", "upd")[0] == 0


def test_throttle_queue_rules():
    """One slot: a second request waits (the queue is as deep as the slots), a third is
    refused at once; a wait ends in 429 at the deprecated max_queue_wait_ms when it was sent,
    else in 408 at the request's deadline; a freed slot goes to the waiting request."""
    from deployer_plugins.azure.gateway import Throttle

    far = time.monotonic() + 300
    throttle = Throttle(1, None)
    assert throttle.enter(far) is None
    assert throttle.enter(time.monotonic()) == 408  # queued until its deadline, which passed
    second = Worker(throttle.enter, far)
    second.start()
    wait_for("the second request in the queue", lambda: throttle.waiting)
    assert throttle.enter(far) == 429  # the queue is full
    throttle.leave()
    assert second.result() is None and throttle.active == 1

    queued = Throttle(1, queue_ms=1)
    assert queued.enter(far) is None
    assert queued.enter(far) == 429  # waited max_queue_wait_ms for a slot
