"""One hardware vocabulary (``-o gpu=``, ``deployer targets --gpus``): the table checked against
the SDKs' and the targets' own lists, and the option driven through real deploys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from azure_support import fake, run_cli  # noqa: F401 (fixtures)
from deployer import hardware, plugins
from deployer.errors import UsageError

HERE = Path(__file__).parent
ADD_SUB = HERE / "repos" / "add_sub"


def _entries(cloud: str):
    return [(accelerator, entry) for accelerator, entries in hardware.types(cloud).items()
            for entry in entries]


def test_each_list_is_smallest_first_and_names_known_accelerators():
    for cloud in hardware.vocabulary()["clouds"]:
        for accelerator, entries in hardware.types(cloud).items():
            assert accelerator in hardware.accelerators()
            counts = [e["gpus"] for e in entries]
            assert counts == sorted(set(counts)), (cloud, accelerator, counts)
            assert (counts == [0]) == (accelerator == "cpu"), (cloud, accelerator)


def test_sagemaker_types_agree_with_the_sdks_gpu_table():
    """Every type the SDK's GPU table lists has the GPU count the vocabulary says; the ones it
    does not list are the newer families it lacks (named here, so a change shows)."""
    from deployer_plugins.sagemaker import images

    table = images.gpu_table("us-east-1")
    assert table, "no SageMaker SDK GPU table installed"
    checked, unlisted = 0, set()
    for accelerator, entry in _entries("sagemaker"):
        kind = entry["options"]["instance_type"]
        if kind in table:
            assert table[kind]["Count"] == entry["gpus"], kind
            checked += 1
        else:
            unlisted.add(kind)
    assert checked >= 6
    assert unlisted == {"ml.m5.xlarge", "ml.g5.xlarge", "ml.g6.xlarge", "ml.g6.12xlarge",
                        "ml.g6.48xlarge"}


def test_azure_types_are_managed_endpoint_skus_of_that_gpu():
    from deployer_plugins.azure import spec

    for accelerator, entry in _entries("azure"):
        kind = entry["options"]["instance_type"]
        assert spec.instance_type(kind) == kind            # in the managed-endpoint SKU list
        assert kind.lower() in {t.lower() for t in spec.INSTANCE_TYPES}
        if accelerator not in ("cpu",) and kind != "Standard_ND96asr_v4":   # ND: A100 40 GB
            assert f"_{accelerator}_".lower() in kind.lower(), kind


def test_vertex_choices_pass_the_targets_own_machine_rules():
    from deployer.target import Options
    from deployer_plugins.vertex import spec

    defaults = {o.name: o.default for o in spec.OPTIONS}
    for accelerator, entry in _entries("vertex"):
        settings = Options({**defaults, **entry["options"]})
        assert entry["options"]["machine_type"] in spec.MACHINE_TYPES
        spec.check_machine(settings)   # raises for a machine/GPU pair Vertex refuses
        if accelerator != "cpu":
            assert entry["gpus"] == entry["options"]["accelerator_count"]


@pytest.mark.parametrize("target,gpu,expected", [
    ("sagemaker", "t4", {"instance_type": "ml.g4dn.xlarge", "gpu": "T4"}),
    ("sagemaker", "A100", {"instance_type": "ml.p4d.24xlarge"}),
    ("sagemaker-twin", "cpu", {"instance_type": "ml.m5.xlarge"}),
    ("azure", "H100:2", {"instance_type": "Standard_NC80adis_H100_v5", "gpu": "H100:2"}),
    ("azure-twin", "A10", {"instance_type": "Standard_NV36ads_A10_v5"}),
    ("vertex", "L4:2", {"machine_type": "g2-standard-24", "accelerator_type": "NVIDIA_L4",
                        "accelerator_count": 2}),
    ("vertex-twin", "t4", {"machine_type": "n1-standard-4",
                           "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1}),
])
def test_gpu_sets_the_clouds_own_options(target, gpu, expected, monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    cls = plugins.load().get(target)
    settings = plugins.parse_options(cls, {"gpu": gpu, "region": "us-central1"}
                                     if target.startswith("vertex") else {"gpu": gpu})
    assert {key: settings[key] for key in expected} == expected
    # an instance type given by hand wins
    mine = {"machine_type": "n1-standard-8"} if target.startswith("vertex") else {
        "instance_type": "Standard_F4s_v2" if target.startswith("azure") else "ml.c5.xlarge"}
    assert {k: plugins.parse_options(cls, {"gpu": gpu, **mine})[k] for k in mine} == mine


@pytest.mark.parametrize("target,options,message", [
    ("sagemaker", {"gpu": "A10"}, "SageMaker has no A10 instance; the nearest it has: A10G "
                                  "(ml.g5.xlarge) (pass -o gpu=A10G, or -o instance_type=TYPE)"),
    ("sagemaker", {"gpu": "A100", "mode": "multi"},
     "SageMaker has no A100 instance with a single GPU, which a GPU multi-model endpoint "
     "needs; the nearest it has: A10G (ml.g5.xlarge)"),
    ("sagemaker", {"gpu": "T4:8"}, "SageMaker has no instance with 8 T4 GPUs (at most 4: "
                                   "ml.g4dn.12xlarge) (pass -o gpu=T4:4, or -o gpu=T4)"),
    ("azure", {"gpu": "L4"}, "Azure ML has no L4 instance; the nearest it has: T4 "
                             "(Standard_NC4as_T4_v3)"),
    ("vertex", {"gpu": "A10G"}, "Vertex AI has no A10G instance; the nearest it has: L4 "
                                "(g2-standard-4)"),
    ("azure", {"gpu": "B200"}, "gpu 'B200' is not one of cpu, T4, L4, A10G, A10, A100, H100"),
    ("vertex", {"gpu": "T4:x"}, "the count after ':' must be a whole number >= 1"),
])
def test_no_such_hardware_is_one_line_naming_the_nearest(target, options, message, monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(UsageError) as caught:   # its ValidationError too: exit 2
        plugins.parse_options(plugins.load().get(target), options)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("target", ["local", "docker"])
def test_targets_on_this_machine_refuse_gpu(run_cli, target):
    code, out, err = run_cli("plan", str(ADD_SUB), "-t", target, "-o", "gpu=T4")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: target {target!r} runs on this machine's own hardware: 'gpu' is for the cloud "
        "targets (drop -o gpu, or deploy to sagemaker, azure or vertex)"]


def test_gpu_on_azure_deploys_that_sku_and_a_new_gpu_moves_an_update(fake, run_cli):
    """The option through a real deploy on the fake workspace: the deployment gets the T4 SKU
    and the record keeps it; an update with another gpu replaces the recorded type (blue/green:
    the new SKU in a new deployment); an update without one keeps it."""
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "hw",
                             "-o", "endpoint=ep-hw", "-o", "gpu=t4", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["options"]["instance_type"] == "Standard_NC4as_T4_v3"
    assert record["options"]["gpu"] == "T4"
    assert fake.endpoints["ep-hw"].deployments["blue"].instance_type == "Standard_NC4as_T4_v3"

    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "hw", "--update",
                             "-o", "gpu=A100", "-o", "blue_green=true", "--json")
    assert code == 0, err
    assert json.loads(out)["options"]["instance_type"] == "Standard_NC24ads_A100_v4"
    assert list(fake.endpoints["ep-hw"].deployments) == ["green"]
    assert fake.endpoints["ep-hw"].deployments["green"].instance_type == \
        "Standard_NC24ads_A100_v4"

    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "hw", "--update",
                             "-o", "blue_green=true", "--json")
    assert code == 0, err
    assert fake.endpoints["ep-hw"].deployments["blue"].instance_type == \
        "Standard_NC24ads_A100_v4"
    assert run_cli("teardown", "hw")[0] == 0 and fake.endpoints == {}


def test_refused_gpu_creates_nothing(fake, run_cli):
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", "hw",
                             "-o", "gpu=L4")
    assert code == 2 and "Azure ML has no L4 instance; the nearest it has: T4" in err
    assert "Traceback" not in err and fake.calls == [] and fake.endpoints == {}
    assert run_cli("list", "--json")[1].strip() == "[]"


def test_targets_gpus_prints_the_vocabulary_with_prices(run_cli):
    code, out, err = run_cli("targets", "--gpus", "--json")
    assert code == 0, err
    rows = {row["accelerator"]: row for row in json.loads(out)}
    assert list(rows) == hardware.accelerators()
    t4 = rows["T4"]["clouds"]
    assert [e["name"] for e in t4["sagemaker"]] == ["ml.g4dn.xlarge", "ml.g4dn.12xlarge"]
    assert t4["vertex"][0]["options"]["accelerator_type"] == "NVIDIA_TESLA_T4"
    assert rows["A10G"]["clouds"]["azure"] == [] and rows["A10"]["clouds"]["sagemaker"] == []
    priced = t4["sagemaker"][0]
    assert priced["usd_per_hour"] is not None and priced["sources"][0]["date"]

    code, out, err = run_cli("targets", "--gpus")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["gpu", "SageMaker", "Azure", "ML", "Vertex", "AI"]
    assert any(line.startswith("T4 ") and "ml.g4dn.xlarge" in line
               and "Standard_NC4as_T4_v3" in line for line in lines)
    assert run_cli("targets", "local", "--gpus")[0] == 2


def test_compare_gpu_refusals_come_before_anything_is_created(run_cli):
    code, _, err = run_cli("compare", str(ADD_SUB), "-t", "sagemaker-twin", "--gpu", "T4",
                           "-o", "sagemaker-twin.instance_type=ml.m5.large")
    assert code == 2
    assert "-o sagemaker-twin.instance_type and --gpu both name the hardware" in err
    code, _, err = run_cli("compare", str(ADD_SUB), "-t", "local", "-t", "azure-twin",
                           "--gpu", "T4", "--gpu", "L4")
    assert code == 2 and "Azure ML has no L4 instance; the nearest it has: T4" in err
    assert "Traceback" not in err and run_cli("list", "--json")[1].strip() == "[]"
