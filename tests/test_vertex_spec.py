"""Vertex's rules (plugins/vertex/spec.py): refusals are one line with a hint, labels fit
Vertex's rules, the container args name the default model, the plan lists what a deploy makes."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import REPOS

from deployer.errors import ValidationError
from deployer.repository import Repository
from deployer.target import Options
from deployer_plugins.vertex import spec

IMAGE = "us-central1-docker.pkg.dev/my-project/triton/tritonserver:24.09-py3"


def settings(**values):
    defaults = {o.name: o.default for o in spec.OPTIONS}
    return Options({**defaults, "project": "my-project", "bucket": "my-bucket",
                    "image": IMAGE, **values})


@pytest.fixture(scope="module")
def add_sub():
    return Repository.load(REPOS / "add_sub")


@pytest.fixture(scope="module")
def multi():
    return Repository.load(REPOS / "multi")


@pytest.fixture
def ensemble(tmp_path):
    """pipeline (an ensemble) and its step scale: two models, one top-level."""
    for name in ("pipeline", "scale"):
        shutil.copytree(REPOS / "multi" / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return Repository.load(tmp_path)


def refusal(repository, cloud=True, **values) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        spec.check_settings(settings(**values), repository, cloud=cloud)
    err = caught.value
    assert "\n" not in str(err) and err.hint, str(err)
    return err


def test_defaults_pass(add_sub, multi):
    spec.check_settings(settings(), add_sub, cloud=True)
    spec.check_settings(settings(image=None, project=None, bucket=None), add_sub, cloud=False)
    spec.check_settings(settings(default_model="text_len"), multi, cloud=True)


def test_image_refusals(add_sub):
    err = refusal(add_sub, image="nvcr.io/nvidia/tritonserver:24.09-py3")
    assert "nvcr.io" in err.message and "docker push" in err.hint
    err = refusal(add_sub, image="docker.io/library/tritonserver:24.09")
    assert "Artifact Registry" in err.message
    assert "docker.pkg.dev" in err.hint
    # the twin refuses the same images: it catches what Vertex would refuse
    refusal(add_sub, cloud=False, image="nvcr.io/nvidia/tritonserver:24.09-py3")
    # no image: plan says how to copy NVIDIA's there, and deploy refuses before any call
    spec.check_settings(settings(image=None), add_sub, cloud=True)
    with pytest.raises(ValidationError) as refused:
        spec.require_image(settings(image=None))
    assert "-o image=" in refused.value.hint and "deployer plan" in refused.value.hint
    for good in ("europe-docker.pkg.dev/p/r/tritonserver@sha256:" + "a" * 64,
                 "gcr.io/p/tritonserver:24.09-py3", "eu.gcr.io/p/triton"):
        spec.check_settings(settings(image=good), add_sub, cloud=True)


def test_project_and_bucket(add_sub, monkeypatch):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    assert "GOOGLE_CLOUD_PROJECT" in refusal(add_sub, project=None).hint
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    spec.check_settings(settings(project=None), add_sub, cloud=True)
    assert spec.project(settings(project=None)) == "from-env"
    assert "-o bucket=" in refusal(add_sub, bucket=None).hint
    assert "-o bucket=" in refusal(add_sub, bucket="gs://my-bucket").hint


def test_machine_refusals(add_sub):
    err = refusal(add_sub, machine_type="g2-standard-4")  # T4 by default
    assert "NVIDIA_L4" in err.message and "accelerator_type=NVIDIA_L4" in err.hint
    spec.check_settings(settings(machine_type="g2-standard-4", accelerator_type="NVIDIA_L4"),
                        add_sub, cloud=True)
    err = refusal(add_sub, machine_type="a2-highgpu-2g", accelerator_type="NVIDIA_TESLA_A100")
    assert "accelerator_count=2" in err.hint
    spec.check_settings(settings(machine_type="a3-highgpu-8g", accelerator_type="nvidia_h100_80gb",
                                 accelerator_count=8), add_sub, cloud=True)
    assert "retired" in refusal(add_sub, accelerator_type="NVIDIA_TESLA_K80").message
    assert "accelerator_count" in refusal(add_sub, accelerator_count=3).hint
    assert "NVIDIA_TESLA_T4" in refusal(add_sub, accelerator_type="NVIDIA_L4").hint
    err = refusal(add_sub, machine_type="e2-standard-4")
    assert "accelerator_type=none" in err.hint
    spec.check_settings(settings(machine_type="e2-standard-4", accelerator_type="none"),
                        add_sub, cloud=True)
    assert "machine_type" in refusal(add_sub, machine_type="N1 standard").hint


def test_replicas(add_sub):
    err = refusal(add_sub, min_replica_count=3, max_replica_count=2)
    assert "max_replica_count=3" in err.hint
    assert "min_replica_count=1" in refusal(add_sub, min_replica_count=0).hint


def test_label_refusals(add_sub):
    assert "team=ml" in refusal(add_sub, labels=["nolabel"]).hint
    err = refusal(add_sub, labels=["Team=ml"])
    assert "key" in err.message and "labels=team=ml" in err.hint
    err = refusal(add_sub, labels=["team=Data Science"])
    assert "labels=team=data-science" in err.hint
    assert "deployer" in refusal(add_sub, labels=[f"{spec.ID_LABEL}=x"]).message
    refusal(add_sub, labels=[f"k{i}=v" for i in range(63)])


def test_default_model_refusals(multi):
    err = refusal(multi)
    assert "3 top-level models" in err.message and "-o default_model=add_sub" in err.hint
    err = refusal(multi, default_model="nope")
    assert "'nope' is not a model" in err.message


def test_label_value_fits_rules():
    rule = re.compile(r"^[a-z0-9_-]{0,63}$")
    for text in ("My.Model v2", "x" * 200, "ÄÖ/ü", "add_sub-2024"):
        value = spec.label_value(text)
        assert rule.match(value), value
    assert spec.label_value("add_sub-2024") == "add_sub-2024"
    assert spec.label_value("My.Model v2") == "my-model-v2"
    assert spec.label_value("a" * 100) != spec.label_value("a" * 101)
    found = spec.labels(settings(labels=["team=ml"]), "My Deployment", "D-123")
    assert found == {"team": "ml", spec.NAME_LABEL: "my-deployment", spec.ID_LABEL: "d-123"}
    for key, value in found.items():
        assert re.match(r"^[a-z][a-z0-9_-]{0,62}$", key) and rule.match(value)


def test_default_model_and_container_spec(add_sub, ensemble, multi):
    assert spec.default_model(settings(), add_sub) is None
    assert spec.default_model(settings(), ensemble) == "pipeline"
    assert spec.default_model(settings(default_model="scale"), ensemble) == "scale"
    container = spec.container_spec(settings(), ensemble)
    assert container == {"image_uri": IMAGE, "env": {}, "ports": [8080],
                         "args": ["--model-repository=$(AIP_STORAGE_URI)",
                                  "--vertex-ai-default-model=pipeline"]}
    assert spec.container_spec(settings(), add_sub)["args"] == [
        "--model-repository=$(AIP_STORAGE_URI)"]
    assert spec.container_spec(settings(image=None), add_sub)["image_uri"] == \
        spec.REHEARSAL_IMAGE
    assert spec.container_spec(settings(default_model="text_len"), multi)["args"][-1] == \
        "--vertex-ai-default-model=text_len"


def test_machine_and_instances():
    assert spec.machine(settings()) == {
        "machine_type": "n1-standard-4", "accelerator_type": "NVIDIA_TESLA_T4",
        "accelerator_count": 1, "min_replica_count": 1, "max_replica_count": 1}
    cpu = settings(machine_type="e2-standard-4", accelerator_type="none", min_replica_count=2,
                   max_replica_count=4)
    assert spec.machine(cpu)["accelerator_type"] is None
    assert spec.instances(cpu) == [("e2-standard-4", 2)]
    gpu = settings(machine_type="g2-standard-24", accelerator_type="NVIDIA_L4",
                   accelerator_count=2, min_replica_count=3, max_replica_count=3)
    assert spec.instances(gpu) == [("g2-standard-24", 3), ("NVIDIA_L4", 6)]


def test_warn_machine():
    lines: list[str] = []
    spec.warn_machine(settings(), lines.append)
    assert lines == []
    spec.warn_machine(settings(machine_type="n1-standard-3"), lines.append)
    assert len(lines) == 1 and "n1-standard-3" in lines[0] and "n1-standard-2" in lines[0]


def test_names():
    names = spec.Names(settings(), "shop")
    assert (names.endpoint, names.model, names.deployed) == ("shop", "shop", "shop")
    assert spec.Names(settings(endpoint="front"), "shop").endpoint == "front"
    assert spec.Names(settings(), "shop", 2).model == "shop-r2"


def test_plan(ensemble):
    from deployer_plugins.vertex import storage

    lines: list[str] = []
    resources = spec.plan(settings(), ensemble, "shop", lines.append, cloud=True)
    assert [r.kind for r in resources] == ["artefact", "model", "endpoint", "deployed-model"]
    digest = storage.layout(ensemble).digest
    assert resources[0].name == f"gs://my-bucket/triton-deployer/{digest}/"
    model = resources[1].details
    assert model["artifact_uri"] == resources[0].name
    assert model["container_spec"]["args"][-1] == "--vertex-ai-default-model=pipeline"
    assert model["labels"] == {spec.NAME_LABEL: "shop"}
    assert resources[3].details["machine_type"] == "n1-standard-4"
    assert resources[3].details["endpoint"] == "shop"
    assert lines == []  # the image is in Artifact Registry: nothing to copy
    # without a usable image, the plan says how to copy NVIDIA's
    resources = spec.plan(settings(image="nvcr.io/nvidia/tritonserver:24.09-py3"), ensemble,
                          "shop", lines.append, cloud=True)
    assert any(line.strip().startswith("docker pull nvcr.io/nvidia/tritonserver:24.09-py3")
               for line in lines)
    assert any("docker push us-central1-docker.pkg.dev/my-project/" in line for line in lines)
    assert resources[1].details["copy_image"]
    twin = spec.plan(settings(image=None, bucket=None), ensemble, "shop", lines.append,
                     cloud=False)
    assert twin[1].details["container_spec"]["image_uri"] == spec.REHEARSAL_IMAGE
    assert twin[0].name.startswith("gs://rehearsal/triton-deployer/")
