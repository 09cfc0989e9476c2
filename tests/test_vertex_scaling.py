"""Issue 14 on Vertex AI: the shared scaling options (and Vertex's own min/max_replica_count)
become the deployed model's replica range and request-count target, which Vertex scales on by
itself (nothing else is created). Checked at the SDK boundary (the real seam builds what
``Endpoint.deploy`` builds), through the real flow on the fake control plane (what reached the
deploy call, status's counts, update keeping them), in plan, in the twin, and every refusal
one line, exit 2, before anything is created."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from azure_support import run_cli  # noqa: F401 (fixture)
from deployer.errors import UsageError, ValidationError
from deployer.target import Options
from gcs_support import gcs  # noqa: F401 (fixture)
from vertex_support import fake  # noqa: F401 (fixture)
from deployer_plugins.vertex import seam, spec

HERE = Path(__file__).parent
ADD_SUB = HERE / "repos" / "add_sub"
MULTI = HERE / "repos" / "multi"
IMAGE = "us-central1-docker.pkg.dev/fake-project/triton/tritonserver:24.09-py3"
SCALE = ("-o", "min_instances=1", "-o", "max_instances=3", "-o", "target_requests_per_minute=600")
RULE = "Vertex autoscaling: 600 requests/minute per replica (prediction/online/request_count)"


def settings(**values):
    defaults = {o.name: o.default for o in spec.OPTIONS}
    return Options({**defaults, "project": "fake-project", "bucket": "my-bucket", "image": IMAGE,
                    **values})


# -- the options ---------------------------------------------------------------------------------
def test_shared_options_are_endpoint_deploy_arguments():
    """min/max_instances and the target become Endpoint.deploy's own argument names."""
    import inspect

    from google.cloud import aiplatform

    machine = spec.machine(settings(min_instances=1, max_instances=3,
                                    target_requests_per_minute=600))
    assert machine == {"machine_type": "n1-standard-4", "accelerator_type": "NVIDIA_TESLA_T4",
                       "accelerator_count": 1, "min_replica_count": 1, "max_replica_count": 3,
                       "autoscaling_target_request_count_per_minute": 600}
    assert set(machine) <= set(inspect.signature(aiplatform.Endpoint.deploy).parameters)
    # Vertex's own options say the same; both given and equal is fine
    same = spec.machine(settings(min_replica_count=1, max_instances=3, max_replica_count=3,
                                 target_requests_per_minute=600))
    assert same == machine


def test_without_shared_options_nothing_changes():
    """Existing users: 1/1 by default, the own options as before (max defaults to min, as
    the API does), Vertex's default metrics when they give a range."""
    assert spec.replicas(settings()) == spec.Replicas(1, 1, None)
    assert spec.replicas(settings()).rule == ""
    assert spec.replicas(settings(min_replica_count=2)) == spec.Replicas(2, 2, None)
    ranged = spec.replicas(settings(min_replica_count=2, max_replica_count=4))
    assert ranged == spec.Replicas(2, 4, None) and "CPU utilization" in ranged.rule
    assert spec.TARGET_KEY not in spec.machine(settings(min_replica_count=2,
                                                        max_replica_count=4))
    # a target with no range: Vertex takes it (one replica, nothing to scale)
    assert spec.replicas(settings(target_requests_per_minute=100)) == spec.Replicas(1, 1, 100)


@pytest.mark.parametrize("values, words", [
    ({"min_instances": 0, "max_instances": 2, "target_requests_per_minute": 60},
     "min_instances=0 (scale to zero) is a Preview of API v1beta1 only"),
    ({"min_replica_count": 0, "max_instances": 2, "target_requests_per_minute": 60},
     "min_replica_count must be at least 1"),
    ({"max_instances": 3, "target_requests_per_minute": 60, "scale_in_cooldown": 300},
     "Vertex AI has no scale in cooldown setting"),
    ({"max_instances": 3, "target_requests_per_minute": 60, "scale_out_cooldown": 60},
     "Vertex AI has no scale out cooldown setting"),
    ({"min_instances": 2, "min_replica_count": 1}, "min_instances=2 and min_replica_count=1 "
                                                   "disagree"),
    ({"max_instances": 3, "max_replica_count": 2, "target_requests_per_minute": 60},
     "max_instances=3 and max_replica_count=2 disagree"),
    ({"min_instances": 3, "max_instances": 2, "target_requests_per_minute": 60},
     "min_instances 3 is above max_instances 2"),
    ({"max_instances": 3, "target_requests_per_minute": 0}, "must be a positive number"),
    ({"max_instances": 3, "target_requests_per_minute": -5}, "must be a positive number"),
    ({"max_instances": 3}, "needs a target to scale on"),
    ({"max_instances": 2**31, "target_requests_per_minute": 60}, "the most Vertex's API takes"),
])
def test_refusals_are_one_line(values, words):
    repository = _repository()
    with pytest.raises(UsageError) as caught:
        spec.check_settings(settings(**values), repository, cloud=True)
    assert words in caught.value.message and "\n" not in str(caught.value), caught.value
    if isinstance(caught.value, ValidationError):
        assert caught.value.hint


def test_a_conflict_says_how_to_agree():
    """A record made before the shared options holds max_replica_count=1: an update giving
    max_instances=3 is told to give max_replica_count=3 too."""
    with pytest.raises(ValidationError) as caught:
        spec.replicas(settings(min_replica_count=1, max_replica_count=1, max_instances=3,
                               target_requests_per_minute=60))
    assert "-o max_replica_count=3" in caught.value.hint
    assert spec.replicas(settings(min_replica_count=1, max_replica_count=3, max_instances=3,
                                  target_requests_per_minute=60)) == spec.Replicas(1, 3, 60)


def _repository():
    from deployer.repository import Repository

    return Repository.load(ADD_SUB)


def test_plan_shows_the_range_the_target_and_the_quota_it_takes():
    lines: list[str] = []
    resources = spec.plan(settings(min_instances=1, max_instances=3,
                                   target_requests_per_minute=600), _repository(), "demo",
                          lines.append, cloud=True)
    deployed = resources[-1]
    assert deployed.kind == "deployed-model"
    assert (deployed.details["min_replica_count"], deployed.details["max_replica_count"],
            deployed.details[spec.TARGET_KEY]) == (1, 3, 600)
    assert ("note: Vertex charges the project's quota for max_replica_count: 3 x n1-standard-4 "
            "CPUs and 3 NVIDIA_TESLA_T4 GPUs, however many replicas run") in lines, lines
    lines.clear()
    spec.plan(settings(), _repository(), "demo", lines.append, cloud=True)
    assert not any("quota" in line for line in lines)


# -- the SDK boundary ------------------------------------------------------------------------------
def test_real_seam_sends_what_endpoint_deploy_sends(monkeypatch):
    """The real seam's DeployModel request (it calls the GAPIC client itself, to wait with a
    deadline) equals the one google-cloud-aiplatform's Endpoint.deploy builds from the same
    arguments: replica range and the request_count metric spec."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from google.cloud.aiplatform.compat.types import model as gca_model

    sent: dict[str, dict] = {}

    def client(key):
        def deploy_model(**kwargs):
            sent[key] = kwargs
            return types.SimpleNamespace(result=lambda timeout=None: None,
                                         operation=types.SimpleNamespace(name="op"))
        return types.SimpleNamespace(deploy_model=deploy_model)

    endpoint = "projects/fake-project/locations/us-central1/endpoints/2"
    model = "projects/fake-project/locations/us-central1/models/1"
    machine = spec.machine(settings(min_instances=1, max_instances=3,
                                    target_requests_per_minute=600))
    real = seam.AiplatformSeam("fake-project", "us-central1",
                               credentials=AnonymousCredentials())
    monkeypatch.setattr(real, "_get_endpoint",
                        lambda name: types.SimpleNamespace(api_client=client("seam")))
    real._begin_deploy(endpoint, model, "demo", machine, {"0": 100})

    aiplatform.Endpoint._deploy_call(
        api_client=client("sdk"), endpoint_resource_name=endpoint,
        model=types.SimpleNamespace(
            versioned_resource_name=model,
            supported_deployment_resources_types=[
                gca_model.Model.DeploymentResourcesType.DEDICATED_RESOURCES]),
        endpoint_resource_traffic_split={}, deployed_model_display_name="demo",
        traffic_percentage=100, **machine)
    ours, theirs = sent["seam"]["deployed_model"], sent["sdk"]["deployed_model"]
    assert ours == theirs, (ours, theirs)
    resources = ours.dedicated_resources
    assert (resources.min_replica_count, resources.max_replica_count) == (1, 3)
    assert [(m.metric_name, m.target) for m in resources.autoscaling_metric_specs] == [
        ("aiplatform.googleapis.com/prediction/online/request_count", 600)]
    assert sent["seam"]["traffic_split"] == sent["sdk"]["traffic_split"] == {"0": 100}

    # no target: no metric spec (Vertex's defaults), as the SDK
    plain = spec.machine(settings())
    real._begin_deploy(endpoint, model, "demo", plain, {"0": 100})
    assert list(sent["seam"]["deployed_model"].dedicated_resources
                .autoscaling_metric_specs) == []


def test_seam_reads_the_range_and_the_replicas_serving():
    from google.cloud.aiplatform_v1.types import (AutoscalingMetricSpec, DedicatedResources,
                                                  DeployedModel)

    item = seam._deployed_model(DeployedModel(
        id="7", model="m", display_name="d",
        dedicated_resources=DedicatedResources(
            min_replica_count=1, max_replica_count=3, autoscaling_metric_specs=[
                AutoscalingMetricSpec(metric_name="aiplatform.googleapis.com/prediction/"
                                                  "online/cpu/utilization", target=70),
                AutoscalingMetricSpec(metric_name=spec.REQUEST_COUNT_METRIC, target=600)]),
        status=DeployedModel.Status(available_replica_count=2)))
    assert (item.min_replica_count, item.max_replica_count, item.request_count_target,
            item.available_replica_count) == (1, 3, 600, 2)
    bare = seam._deployed_model(DeployedModel(id="8", model="m", display_name="d"))
    assert (bare.min_replica_count, bare.available_replica_count) == (None, None)


# -- through the CLI -------------------------------------------------------------------------------
def cloud(bucket: str, *more: str) -> tuple[str, ...]:
    return ("-o", f"bucket={bucket}", "-o", "project=fake-project", "-o", f"image={IMAGE}",
            *more)


@pytest.mark.parametrize("options, words", [
    (("-o", "min_instances=0", "-o", "max_instances=2", "-o", "target_requests_per_minute=60"),
     "scale to zero"),
    ((*SCALE, "-o", "scale_in_cooldown=300"), "no scale in cooldown"),
    ((*SCALE, "-o", "scale_out_cooldown=60"), "no scale out cooldown"),
    ((*SCALE, "-o", "max_replica_count=2"), "max_instances=3 and max_replica_count=2 disagree"),
    (("-o", "min_instances=3", "-o", "max_instances=2", "-o", "target_requests_per_minute=6"),
     "above max_instances"),
    (("-o", "max_instances=3", "-o", "target_requests_per_minute=0"), "positive number"),
])
def test_cli_refusals_exit_2_with_nothing_created(fake, run_cli, options, words):
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "no",
                             *cloud("any-bucket", *options))
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert words in lines[0] and "Traceback" not in err, err
    assert fake.calls == [] and fake.deploys == []
    assert json.loads(run_cli("list", "--json")[1]) == []
    # the twin refuses the same (it rehearses what vertex takes)
    code, _, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex-twin", "--name", "no",
                           *options)
    assert code == 2 and words in err, err
    assert json.loads(run_cli("list", "--json")[1]) == []


def test_cli_plan_shows_the_scaling(run_cli):
    code, out, err = run_cli("plan", str(ADD_SUB), "-t", "vertex", *cloud("my-bucket", *SCALE),
                             "--json")
    assert code == 0, err
    details = json.loads(out)["resources"][-1]["details"]
    assert (details["min_replica_count"], details["max_replica_count"],
            details[spec.TARGET_KEY]) == (1, 3, 600), details
    assert "quota for max_replica_count: 3 x n1-standard-4 CPUs and 3 NVIDIA_TESLA_T4" in err


@pytest.mark.server
def test_cloud_deploy_status_update_keep_the_scaling(fake, gcs, run_cli, tmp_path):  # noqa: F811
    """What reached the deploy call, the counts status reports (Vertex's available replicas),
    and an update that deploys the new model with the same range and target."""
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "sc",
                             *cloud(gcs.bucket, *SCALE), "--json")
    assert code == 0, err
    assert "1-3 replicas, 600 requests/minute per replica" in err, err
    assert "quota for max_replica_count: 3 x n1-standard-4" in err, err
    expected = {"machine_type": "n1-standard-4", "accelerator_type": "NVIDIA_TESLA_T4",
                "accelerator_count": 1, "min_replica_count": 1, "max_replica_count": 3,
                "autoscaling_target_request_count_per_minute": 600}
    assert [d["machine"] for d in fake.deploys] == [expected], fake.deploys
    record = json.loads(out)
    deployed = record["resources"][-1]
    assert deployed["kind"] == "deployed-model"
    assert {k: deployed["data"][k] for k in expected} == expected
    try:
        code, out, err = run_cli("status", "sc", "--json")
        assert code == 0, err
        assert json.loads(out)["fleet"] == {"minimum": 1, "maximum": 3, "desired": None,
                                            "current": 1, "rule": RULE}
        fake.available(record["endpoint"]["deployed_id"], 2)  # Vertex scaled out
        code, out, err = run_cli("status", "sc")
        assert code == 0, err
        assert f"instances: 2 now, ? desired, range 1-3; {RULE}" in out, out

        # the update: a new model, with the recorded scaling (no option given again)
        code, out, err = run_cli("deploy", str(MULTI), "-t", "vertex", "--name", "sc",
                                 "--update", "-o", "default_model=add_sub", "--json")
        assert code == 0, err
        assert [d["machine"] for d in fake.deploys] == [expected, expected], fake.deploys
        updated = json.loads(out)
        assert updated["endpoint"]["deployed_id"] != record["endpoint"]["deployed_id"]
        code, out, err = run_cli("status", "sc", "--json")
        assert json.loads(out)["fleet"] == {"minimum": 1, "maximum": 3, "desired": None,
                                            "current": 1, "rule": RULE}
    finally:
        assert run_cli("teardown", "sc")[0] == 0
    assert fake.endpoints == {} and fake.models == {}


@pytest.mark.server
def test_cloud_without_scaling_options_reports_a_fixed_fleet(fake, gcs, run_cli):  # noqa: F811
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex", "--name", "fixed",
                             *cloud(gcs.bucket), "--json")
    assert code == 0, err
    try:
        assert fake.deploys[0]["machine"]["min_replica_count"] == 1
        assert spec.TARGET_KEY not in fake.deploys[0]["machine"]
        code, out, err = run_cli("status", "fixed", "--json")
        assert json.loads(out)["fleet"] == {"minimum": 1, "maximum": 1, "desired": None,
                                            "current": 1, "rule": ""}
    finally:
        assert run_cli("teardown", "fixed")[0] == 0


@pytest.mark.server
def test_twin_records_the_range_and_does_not_scale(run_cli):
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "vertex-twin", "--name", "tw",
                             *SCALE, "--json")
    assert code == 0, err
    record = json.loads(out)
    try:
        work = Path(record["endpoint"]["work"])
        entries = [d for e in json.loads((work / "vertex.json").read_text())["endpoints"]
                   .values() for d in e["deployed"].values()]
        assert [d["machine"][spec.TARGET_KEY] for d in entries] == [600]
        assert [d["machine"]["max_replica_count"] for d in entries] == [3]
        code, out, err = run_cli("status", "tw", "--json")
        assert code == 0, err
        assert json.loads(out)["fleet"] == {
            "minimum": 1, "maximum": 3, "desired": 1, "current": 1,
            "rule": f"{RULE} (recorded; the twin runs one instance and does not scale)"}
        code, out, _ = run_cli("status", "tw")
        assert "instances: 1 now, 1 desired, range 1-3" in out, out
    finally:
        assert run_cli("teardown", "tw")[0] == 0
