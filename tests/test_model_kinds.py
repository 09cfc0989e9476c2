"""Every kind of Triton model in the test step, on every target that serves here: a stateful
model (sequences), a decoupled one (streams) and one that serves two versions. The repositories
are tests/repos/acc, stream and versions."""

from __future__ import annotations

import json
import math

import pytest

from conftest import REPOS, one_line_error

pytestmark = pytest.mark.usefixtures("tritonserver")

IMAGE = "triton-deployer/tritonserver-cpu:24.10-py3"


@pytest.fixture(scope="module")
def docker_image():
    """``-o image=...`` for the docker target; skips with the reason without an engine or the
    CPU image (CI has both)."""
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.images.get(IMAGE)
        client.close()
    except ImportError:
        reason = "the docker SDK is not installed (pip install 'triton-deployer[docker]')"
    except Exception as exc:  # noqa: BLE001 - no engine, or no image
        reason = (f"no Docker engine with {IMAGE} ({type(exc).__name__}); start one with "
                  ".ci/start-docker.sh and build the image with "
                  "plugins/docker/build_cpu_image.sh")
    else:
        return ["-o", f"image={IMAGE}"]
    print(reason)
    pytest.skip(reason)


def _target(name, request):
    if name == "docker":
        return ["-t", "docker", *request.getfixturevalue("docker_image")]
    return ["-t", name]


def _write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


# -- sequences -----------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["local", "docker", "sagemaker-twin", "azure-twin"])
def test_a_stateful_model_runs_sequences(cli, tmp_path, request, target):
    """The steps of a sample go under one correlation id (the running sum proves it), each
    step's outputs are checked, and load runs whole sequences at once, each with its own id
    (a step sent under another sequence's id would break the sums and fail the model)."""
    sample = _write(tmp_path, "sample.json", {"sequence": [{"INPUT": [5]}, {"INPUT": [3]},
                                                           {"INPUT": [2]}]})
    expect = _write(tmp_path, "expect.json", {"sequence": [{"OUTPUT": [5]}, None,
                                                           {"OUTPUT": [10]}]})
    result = cli("run", REPOS / "acc", *_target(target, request), "--sample", sample,
                 "--expect", expect, "--requests", "30", "--concurrency", "3", "--json")
    assert result.code == 0, result
    report = result.json()
    (model,) = report["models"]
    assert model["steps"] == 3
    assert {c["name"]: c["passed"] for c in model["checks"]} == {
        "metadata": True, "infer": True, "outputs": True, "expect": True}
    assert model["outputs"]["OUTPUT"]["first"] == [10]
    (load,) = report["test"]["load"]
    assert load["errors"] == {} and load["requests"] >= 30
    assert sorted(load["latency_by_step"]) == ["1", "2", "3"]


def test_a_wrong_step_fails_the_expect_check_with_its_step(cli, tmp_path):
    sample = _write(tmp_path, "sample.json", {"sequence": [{"INPUT": [5]}, {"INPUT": [3]}]})
    expect = _write(tmp_path, "expect.json", {"sequence": [{"OUTPUT": [5]}, {"OUTPUT": [3]}]})
    result = cli("run", REPOS / "acc", "--sample", sample, "--expect", expect, "--json")
    assert result.code == 1, result
    (model,) = result.json()["models"]
    failed = [c for c in model["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["expect"]
    assert failed[0]["message"].startswith("step 2: output 'OUTPUT'"), failed


def test_a_sequence_sample_must_match_its_expectations(cli, tmp_path):
    sample = _write(tmp_path, "sample.json", {"sequence": [{"INPUT": [5]}, {"INPUT": [3]}]})
    expect = _write(tmp_path, "expect.json", {"OUTPUT": [8]})
    result = cli("run", REPOS / "acc", "--sample", sample, "--expect", expect)
    assert result.code == 2, result
    assert "the sample is a sequence of 2 steps" in one_line_error(result)
    assert cli("list", "--json").json() == []   # refused before anything was created


# -- streams -------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, how", [("local", "grpc"), ("docker", "grpc"),
                                         ("azure-twin", "http")])
def test_a_decoupled_model_streams(cli, tmp_path, request, target, how):
    """gRPC stream_infer where Triton's gRPC port is reachable, else HTTP generate_stream
    (Server-Sent Events, through the rehearsal's gateway): every response arrives, the end is
    marked, and the concatenated outputs are compared with --expect."""
    sample = _write(tmp_path, "sample.json", {"N": [5]})
    expect = _write(tmp_path, "expect.json", {"OUT": [0, 1, 2, 3, 4]})
    result = cli("run", REPOS / "stream", *_target(target, request), "--sample", sample,
                 "--expect", expect, "--requests", "20", "--concurrency", "2", "--json")
    assert result.code == 0, result
    report = result.json()
    (model,) = report["models"]
    assert {c["name"]: c["passed"] for c in model["checks"]} == {
        "metadata": True, "stream": True, "outputs": True, "expect": True}
    assert model["responses"] == 5
    (load,) = report["test"]["load"]
    assert load["errors"] == {}
    stream = load["stream"]
    assert stream["responses"] == 5 * load["requests"]
    assert stream["first_ms"]["p50"] <= stream["first_ms"]["p99"]
    # measured (NaN when no gap was): 4 gaps in each stream
    assert all(math.isfinite(v) for v in stream["between_ms"].values()), stream


def test_a_decoupled_model_is_refused_where_it_cannot_stream(cli):
    for target in ("sagemaker", "sagemaker-twin"):
        result = cli("validate", REPOS / "stream", "-t", target)
        assert result.code == 2, result
        line = one_line_error(result)
        assert "is decoupled" in line and "local, docker or azure" in line


# -- versions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["local", "docker", "azure-twin"])
def test_every_version_the_policy_serves_is_checked(cli, tmp_path, request, target):
    sample = _write(tmp_path, "sample.json", {"IN": [3, 4]})
    result = cli("run", REPOS / "versions", *_target(target, request), "--sample", sample,
                 "--json")
    assert result.code == 0, result
    answers = {m["version"]: m["outputs"]["OUT"]["first"] for m in result.json()["models"]}
    assert answers == {"1": [3, 4], "2": [6, 8]}   # OUT = IN * version: each one answered
    one = cli("run", REPOS / "versions", *_target(target, request), "--sample", sample,
              "--model-version", "1", "--expect", _write(tmp_path, "one.json", {"OUT": [3, 4]}),
              "--json")
    assert one.code == 0, one
    assert [(m["model"], m["version"]) for m in one.json()["models"]] == [("twice", "1")]


def test_a_version_the_policy_does_not_serve_is_refused_first(cli):
    result = cli("run", REPOS / "versions", "--model-version", "3")
    assert result.code == 2, result
    assert "does not serve version 3: its version policy serves 1, 2" in one_line_error(result)
    assert cli("list", "--json").json() == []


def test_a_target_that_names_no_version_checks_the_one_it_serves(cli, tmp_path):
    sample = _write(tmp_path, "sample.json", {"IN": [3, 4]})
    result = cli("run", REPOS / "versions", "-t", "sagemaker-twin", "--sample", sample,
                 "--json")
    assert result.code == 0, result
    (model,) = result.json()["models"]
    assert model["version"] == "" and model["outputs"]["OUT"]["first"] == [6, 8]
    assert "names no version in its requests" in result.err


def test_sequences_on_several_cloud_instances_are_warned(cli):
    for target in ("sagemaker-twin", "azure-twin"):
        result = cli("validate", REPOS / "acc", "-t", target, "-o", "instance_count=2")
        assert result.code == 0, result
        assert "warning: acc keep(s) state per sequence" in result.err
        assert "use instance_count=1" in result.err


def test_compare_shows_what_the_streams_did(cli, tmp_path):
    report = tmp_path / "report.html"
    result = cli("compare", REPOS / "stream", "-t", "local", "-t", "sagemaker-twin",
                 "--requests", "20", "--concurrency", "2", "--report", report)
    assert result.code == 2, result   # refused for sagemaker before anything is deployed
    assert "is decoupled" in one_line_error(result)
    result = cli("compare", REPOS / "stream", "-t", "local", "-t", "azure-twin",
                 "--requests", "20", "--concurrency", "2", "--report", report, "--json")
    assert result.code == 0, result
    for target in result.json()["targets"]:
        stream = target["stream"]
        assert stream["responses"] > 0 and stream["responses_per_s"] > 0, target
        assert stream["first_ms"]["p50"] <= stream["first_ms"]["p99"]
    assert "<h2>Streams</h2>" in report.read_text()
    text = cli("compare", REPOS / "stream", "-t", "local", "--requests", "20",
               "--concurrency", "1")
    assert text.code == 0 and "first response ms p50" in text.out, text


def test_files_keyed_by_more_models_than_are_tested(cli, tmp_path):
    """A sample and expected outputs written for the whole repository also serve a run of one
    of its models (the others' entries are not read)."""
    sample = _write(tmp_path, "sample.json", {"scale": {"X": [[[1, 2, 3]]]},
                                              "text_len": ["hello"]})
    expect = _write(tmp_path, "expect.json", {"scale": {"Y": [[[2, 4, 6]]]},
                                              "text_len": {"LENGTH": [[5]]}})
    result = cli("run", REPOS / "multi", "--model", "scale", "--sample", sample, "--expect",
                 expect, "--json")
    assert result.code == 0, result
    (model,) = result.json()["models"]
    assert [c["name"] for c in model["checks"] if c["passed"]] == ["metadata", "infer", "outputs",
                                                                   "expect"]
