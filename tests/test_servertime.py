"""Where the time goes: Triton's own counters read around each load level, on the real
tritonserver (local and every twin), the split checked against the load's own counts, an
unreadable metrics port warned of (never a zero), and the report's bars drawn by headless
Chromium."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request

import numpy as np
import pytest

from deployer import servertime
from deployer.api import Deployer
from deployer.render import server_time_table
from deployer.report import SEGMENTS, render
from deployer.tester import TestOptions

from conftest import REPOS
from test_compare import CHROMIUM, headless_dom

PARTS_MS = ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms")


@pytest.fixture
def repo(tmp_path):
    copy = tmp_path / "st-repo"
    shutil.copytree(REPOS / "add_sub", copy)
    return copy


@pytest.fixture
def core(tmp_path):
    return Deployer(state_dir=tmp_path / "state", progress=lambda _: None)


def consistent(split: dict, successes: int, client_mean_ms: float) -> None:
    """The split agrees with the load that produced it."""
    assert split["requests"] == split["client_requests"] == successes, split
    assert split["client_mean_ms"] == round(client_mean_ms, 4)
    assert 0 < split["server_ms"] <= client_mean_ms, split
    parts = sum(split[k] for k in PARTS_MS)
    assert 0 < parts <= split["server_ms"] + 1e-3, split     # rounding of four parts
    assert all(split[k] >= 0 for k in PARTS_MS)
    assert split["outside_server_ms"] == pytest.approx(client_mean_ms - split["server_ms"],
                                                       abs=1e-3)
    assert split["server_share"] == pytest.approx(split["server_ms"] / client_mean_ms, abs=1e-3)
    assert split["batch_size"] >= 1 and split["executions"] <= split["inferences"]


def test_the_test_step_splits_its_load_by_tritons_counters(core, repo, tritonserver):
    core.deploy(repo, "local", "st-test")
    report = core.test("st-test", TestOptions(requests=600, concurrency=1))
    load = report.load[0]
    assert load.error_count == 0 and load.server_time_note == ""
    consistent(load.server_time, load.requests, load.latency_ms["mean"])
    assert set(load.server_time["models"]) == {"add_sub"}
    # the JSON says the units in its names
    data = report.to_dict()["load"][0]["server_time"]
    assert {"queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms",
            "server_ms", "outside_server_ms", "server_share", "batch_size",
            "requests"} <= set(data)
    core.teardown("st-test")


def test_the_text_of_the_test_step_says_where_the_time_went(cli, repo, tritonserver):
    assert cli("deploy", repo, "--name", "st-text").code == 0
    try:
        result = cli("test", "st-text", "--requests", "200")
        assert result.code == 0, result
        line = next(x for x in result.out.splitlines() if "in the server" in x)
        assert re.search(r"queue [\d.]+, compute input [\d.]+ infer [\d.]+ output [\d.]+; "
                         r"server [\d.]+ of the client's [\d.]+ \(\d+%\), outside the server "
                         r"-?[\d.]+; batch size [\d.]+", line), line
    finally:
        cli("teardown", "st-text")


def test_dynamic_batching_under_concurrency_forms_batches(core, repo, tritonserver):
    """add_sub batches dynamically on one instance: 16 clients at once queue, and Triton
    runs them together (inferences ÷ executions > 1)."""
    core.deploy(repo, "local", "st-batch")
    try:
        load = core.test("st-batch", TestOptions(requests=1500, concurrency=16)).load[0]
        split = load.server_time
        consistent(split, load.requests - load.error_count, load.latency_ms["mean"])
        assert split["inferences"] == split["requests"]      # one inference per request
        assert split["executions"] < split["inferences"] and split["batch_size"] > 1, split
    finally:
        core.teardown("st-batch")


def test_a_sequence_is_split_per_sequence(cli, tmp_path, tritonserver):
    """A stateful model's load request is a sequence of 3 steps: Triton counts each step, the
    figures are per sequence, beside the client's mean per sequence."""
    repo = tmp_path / "acc"
    shutil.copytree(REPOS / "acc", repo)
    result = cli("run", repo, "--requests", "90", "--concurrency", "2", "--json")
    assert result.code == 0, result
    load = result.json()["test"]["load"][0]
    split = load["server_time"]
    assert load["server_time_note"] == "" and len(load["latency_by_step"]) == 3
    assert split["requests"] == 3 * split["client_requests"] == 3 * load["requests"]
    assert 0 < split["server_ms"] <= load["latency_ms"]["mean"]
    assert split["outside_server_ms"] == pytest.approx(
        load["latency_ms"]["mean"] - split["server_ms"], abs=1e-3)


def test_counters_are_cumulative_and_versions_are_summed(core, tmp_path, tritonserver):
    """The real counters only grow; the two versions of one model add up under its name."""
    repo = tmp_path / "versions"
    shutil.copytree(REPOS / "versions", repo)
    deployment = core.deploy(repo, "local", "st-versions")
    try:
        url = deployment.endpoint["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        before = servertime.read(url)
        assert set(before) == {"twice"} and before["twice"]["success"] == 0
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert 'nv_inference_request_duration_us{model="twice",version="2"}' in text
        client = core.registry.create("local", deployment.options, print).client(deployment)
        try:
            for version, times in (("1", 3), ("2", 5)):
                for _ in range(times):
                    client.infer("twice", {"IN": np.array([1, 2], dtype=np.int32)},
                                 version=version)
        finally:
            client.close()
        after = servertime.read(url)
        change = servertime.delta(before, after)["twice"]
        assert change["success"] == change["inferences"] == change["executions"] == 8
        assert all(after["twice"][k] >= before["twice"][k] for k in servertime.COUNTERS)
        assert change["request_us"] >= change["queue_us"] + change["compute_infer_us"] > 0
        # what the HTTP port says at /metrics is no Triton metrics
        http = deployment.endpoint["url"] + "/metrics"
        with pytest.raises(servertime.Unreadable, match=r"answered HTTP 4\d\d"):
            servertime.read(http)
    finally:
        core.teardown("st-versions")


def test_text_that_is_not_tritons_metrics_is_refused():
    with pytest.raises(servertime.Unreadable, match="not Prometheus text"):
        servertime.parse("nv_inference_count{model=} what\n")
    with pytest.raises(servertime.Unreadable, match="no nv_inference_"):
        servertime.parse("# TYPE up gauge\nup 1\n")


def test_compare_splits_the_time_on_local_and_every_twin(cli, repo, tmp_path, tritonserver,
                                                         monkeypatch):
    for key in list(os.environ):   # the twins need no cloud at all
        if key.startswith(("AWS_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(key)
    targets = ["local", "sagemaker-twin", "azure-twin", "vertex-twin"]
    page = tmp_path / "r.html"
    result = cli("compare", repo, *[x for t in targets for x in ("--target", t)],
                 "--requests", "300", "--concurrency", "1", "--concurrency", "4", "--json",
                 "--report", page)
    assert result.code == 0, result
    data = result.json()
    for target in data["targets"]:
        assert target["passed"] and not target["warnings"], target
        for level in target["load"]:
            assert level["server_time_note"] == "", level
            measured = level["latency_ms"]["mean"]
            successes = 300  # 3 windows of 100, no errors
            consistent(level["server_time"], successes, measured)
    text = server_time_table([(t["target"], x) for t in data["targets"] for x in t["load"]])
    assert [line.split()[:2] for line in text.splitlines()[2:]] == [
        [t, c] for t in targets for c in ("1", "4")]
    html = page.read_text()
    assert "<h2>Where the time goes</h2>" in html and 'data-chart="servertime"' in html


def test_unreadable_metrics_are_a_warning_never_a_zero(cli, repo, tritonserver):
    """The server runs with its metrics off (the port recorded answers nothing): every level
    says why, no figure is made up, and the compare still passes."""
    result = cli("compare", repo, "--target", "local", "-o", "local.args=--allow-metrics=false",
                 "--requests", "100", "--concurrency", "1", "--concurrency", "2", "--json")
    assert result.code == 0, result
    local = result.json()["targets"][0]
    assert local["passed"]
    for level in local["load"]:
        assert level["server_time"] is None
        assert level["server_time_note"].startswith("Triton's metrics could not be read: "
                                                    "http://127.0.0.1:")
        assert "Connection refused" in level["server_time_note"]
    assert [w.split(":")[0] for w in local["warnings"]] == ["concurrency 1", "concurrency 2"]
    assert "warning: local: concurrency 1: Triton's metrics could not be read" in result.err
    text = server_time_table([("local", x) for x in local["load"]])
    assert text.startswith("local at concurrency 1: no server split: Triton's metrics")


# -- the report --------------------------------------------------------------------------------

def _split(outside: float, queue: float, compute: float, batch: float) -> dict:
    server = queue + compute
    return {"client_mean_ms": outside + server, "outside_server_ms": outside, "queue_ms": queue,
            "compute_input_ms": compute / 4, "compute_infer_ms": compute / 2,
            "compute_output_ms": compute / 4, "compute_ms": compute, "server_other_ms": 0.0,
            "server_ms": server, "server_share": server / (outside + server),
            "batch_size": batch, "requests": 100, "client_requests": 100, "executions": 50,
            "inferences": 100, "models": {}}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_stacked_bars_are_drawn_to_scale_in_headless_chromium(tmp_path):
    levels = {"local": [_split(0.2, 0.1, 0.3, 1.0), _split(0.4, 0.5, 0.6, 2.5)],
              "sagemaker": [_split(12.0, 0.2, 0.3, 1.0), None]}
    report = {
        "repository": "/r", "model": "m", "requests": 100, "concurrency": [1, 4],
        "parallel": ["sagemaker"], "sequential": ["local"], "price_note": "estimates",
        "interrupted": False, "passed": True,
        "targets": [
            {"target": name, "passed": True, "error": None, "deploy_seconds": 1.0,
             "cold_start_seconds": 0.1, "latency_ms": {"p50": 1.0}, "throughput_rps": 10.0,
             "errors": 0, "logs": "", "instances": [], "cost_per_hour": 0.0,
             "cost_per_million": 0.0, "cost_note": "",
             "load": [{"concurrency": c, "throughput_rps": 10.0, "latency_ms": {},
                       "errors": {}, "server_time": split,
                       "server_time_note": "" if split else "no metrics on this target"}
                      for c, split in zip((1, 4), splits)]}
            for name, splits in levels.items()]}
    page = tmp_path / "report.html"
    page.write_text(render(report))
    script = page.read_text().replace("document.body.setAttribute('data-rendered', 'yes');", """
document.querySelectorAll('svg[data-chart="servertime"] rect.mark').forEach(function (r) {
  r.setAttribute('data-drawn', String(r.getBBox().width));
});
document.body.setAttribute('data-rendered', 'yes');""")
    page.write_text(script)
    dom = headless_dom(page, tmp_path)
    assert 'data-rendered="yes"' in dom
    marks = dict(re.findall(r'data-chart="(\w+)"[^>]*data-marks="(\d+)"', dom))
    # three levels with figures, three non-zero segments each; batch: three bars
    assert marks["servertime"] == "9" and marks["batch"] == "3", marks
    drawn = [(part, float(ms), float(width)) for part, ms, width in re.findall(
        r'<rect class="mark" data-part="(\w+)" data-ms="([\d.e-]+)"[^>]*data-drawn="([\d.]+)"',
        dom)]
    assert len(drawn) == 9 and {p for p, _, _ in drawn} == {k for k, _, _ in SEGMENTS[:3]}
    # every segment as wide as its milliseconds, on one scale
    scale = drawn[0][2] / drawn[0][1]
    for part, ms, width in drawn:
        assert width > 0 and width == pytest.approx(ms * scale, rel=0.02, abs=0.05), part
    assert "sagemaker at concurrency 4: no metrics on this target" in dom
    assert "batch 2.5" in dom


def _docker_image() -> str:
    """NVIDIA's Triton in the CPU image the docker tests use, or skip saying why."""
    image = "triton-deployer/tritonserver-cpu:24.10-py3"
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
        client.images.get(image)
    except ImportError:
        pytest.skip("the docker SDK is not installed (pip install 'triton-deployer[docker]')")
    except Exception as exc:  # noqa: BLE001 - any engine or image problem skips, with it
        pytest.skip(f"no Docker engine with {image} ({exc}); see tests/test_docker.py")
    return image


def test_the_split_on_nvidias_triton_in_docker(cli, repo):
    """The same counters, the same split, from NVIDIA's own tritonserver in its container."""
    image = _docker_image()
    result = cli("run", repo, "--target", "docker", "-o", f"image={image}", "--json",
                 "--requests", "400", "--concurrency", "8")
    assert result.code == 0, result
    load = result.json()["test"]["load"][0]
    assert load["server_time_note"] == "", load
    consistent(load["server_time"], load["requests"] - sum(load["errors"].values()),
               load["latency_ms"]["mean"])
    assert load["server_time"]["batch_size"] >= 1


@pytest.mark.parametrize("target", ["sagemaker-twin", "azure-twin", "vertex-twin"])
def test_a_twin_records_its_new_servers_metrics_after_an_update(cli, repo, tritonserver,
                                                                 target, monkeypatch):
    """An update starts a new tritonserver: the deployment then points at its metrics, and
    the test step's load is split by them."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(key)
    first = cli("deploy", repo, "--target", target, "--name", "st-up", "--json")
    assert first.code == 0, first
    try:
        before = first.json()["endpoint"]["metrics"]
        assert before.startswith("http://127.0.0.1:") and servertime.read(before)
        second = cli("deploy", repo, "--target", target, "--name", "st-up", "--update",
                     "--json")
        assert second.code == 0, second
        after = second.json()["endpoint"]["metrics"]
        assert after != before and servertime.read(after)
        result = cli("test", "st-up", "--requests", "150", "--json")
        assert result.code == 0, result
        load = result.json()["load"][0]
        assert load["server_time_note"] == "", load
        consistent(load["server_time"], load["requests"], load["latency_ms"]["mean"])
    finally:
        assert cli("teardown", "st-up").code == 0
