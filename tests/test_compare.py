"""deployer compare: real local targets, a failing one, Ctrl-C, cost, and the HTML report
rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployer.api import Deployer
from deployer.compare import compare, price_table
from deployer.report import render
from deployer.testing import FakePlugin, FakeWorld

from conftest import REPOS, like_a_background_job, one_line_error
from test_local import processes_with

FIELDS = {"deploy_seconds", "cold_start_seconds", "latency_ms", "throughput_rps", "errors",
          "cost_per_hour", "cost_per_million"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def repo(tmp_path):
    copy = tmp_path / "cmp-repo"
    shutil.copytree(REPOS / "add_sub", copy)
    return copy


def test_local_against_the_azure_twin_json_and_report(cli, tmp_path, repo, tritonserver):
    report_file = tmp_path / "r.html"
    result = cli("compare", repo, "--target", "local", "--target", "azure-twin", "--requests",
                 "300", "--concurrency", "1", "--concurrency", "2", "--json", "--report",
                 report_file)
    assert result.code == 0, result
    data = result.json()
    assert data["passed"] and data["sequential"] == ["local", "azure-twin"]
    for target in data["targets"]:
        assert FIELDS <= set(target), target
        assert target["passed"] and target["torn_down"] and target["errors"] == 0
        assert set(target["latency_ms"]) >= {"p50", "p90", "p95", "p99"}
        assert [x["concurrency"] for x in target["load"]] == [1, 2]
        assert target["deploy_seconds"] > 0 and target["cold_start_seconds"] > 0
        assert target["throughput_rps"] == max(x["throughput_rps"] for x in target["load"])
        assert target["cost_per_hour"] == 0.0
    assert processes_with(str(repo)) == []
    assert cli("list", "--json").json() == []
    assert report_file.read_text().startswith("<!doctype html>")


def test_compare_at_fixed_rates_offers_every_level_the_same_load(cli, tmp_path, repo,
                                                                  tritonserver):
    """--rate: one open-loop level per rate, at most --concurrency in flight; the JSON, the
    text and the report say rates, not concurrency; two caps with --rate are refused."""
    report_file = tmp_path / "rates.html"
    result = cli("compare", repo, "--target", "local", "--requests", "300", "--rate", "150",
                 "--rate", "300", "--concurrency", "64", "--json", "--report", report_file)
    assert result.code == 0, result
    data = result.json()
    assert data["rates"] == [150.0, 300.0] and data["concurrency"] == [64]
    (local,) = data["targets"]
    assert [(x["rate"], x["concurrency"]) for x in local["load"]] == [(150.0, 64), (300.0, 64)]
    for level in local["load"]:
        assert level["errors"] == {} and level["dropped"] == 0 and level["requests"] >= 300
        assert level["sent_rps"] and set(level["window_cv"]) == {"throughput", "p50"}
    page = report_file.read_text()
    assert "offered requests/s" in page and "150/s" in page
    text = cli("compare", repo, "--target", "local", "--requests", "150", "--rate", "150")
    assert text.code == 0, text
    assert "local at 150/s: " in text.out and "sent " in text.out
    two = cli("compare", repo, "--target", "local", "--rate", "100", "--concurrency", "1",
              "--concurrency", "2")
    assert two.code == 2 and "give it once" in two.err and "Traceback" not in two.err
    assert cli("list", "--json").json() == []


def test_a_failing_target_is_reported_and_the_others_torn_down(tmp_path, repo, tritonserver):
    world = FakeWorld(tmp_path / "world.json")
    core = Deployer(state_dir=tmp_path / "s", plugins=[FakePlugin()], progress=lambda _: None)
    report = compare(core, repo, ["fake", "local"],
                     {"fake": {"world": str(world.path), "fail_deploy": True}},
                     requests=100, concurrency=[1])
    results = {t.target: t for t in report.targets}
    assert not report.passed
    assert not results["fake"].passed and "did not become ready" in results["fake"].error
    assert results["fake"].torn_down and world.read() == {"buckets": [], "servers": []}
    assert results["local"].passed and results["local"].torn_down
    assert report.parallel == ["fake"] and report.sequential == ["local"]
    assert core.list() == [] and processes_with(str(repo)) == []
    page = render(report.to_dict())
    assert "did not become ready" in page and "failed" in page


def test_cost_uses_the_table_and_overrides(tmp_path, repo):
    world = FakeWorld(tmp_path / "world.json")
    core = Deployer(state_dir=tmp_path / "s", plugins=[FakePlugin()], progress=lambda _: None)
    report = compare(core, repo, ["fake"], {"fake": {"world": str(world.path),
                                                     "instance_type": "ml.g4dn.xlarge"}},
                     requests=60, concurrency=[1], prices={"ML.G4DN.XLARGE": 0.5})
    fake = report.targets[0]
    assert fake.passed, fake.error
    assert fake.cost_per_hour == 1.0  # two instances at the overridden 0.5
    assert fake.cost_per_million == round(1.0 / (fake.throughput_rps * 3600) * 1e6, 4)
    table = price_table()
    assert table["prices"]["ml.g4dn.xlarge"]["source"]["date"]
    unknown = compare(core, repo, ["fake"], {"fake": {"world": str(world.path),
                                                      "instance_type": "ml.unknown"}},
                      requests=30, concurrency=[1]).targets[0]
    assert unknown.cost_per_hour is None and "--price ml.unknown=" in unknown.cost_note


def test_a_fleet_that_scales_is_priced_at_its_minimum_and_its_maximum_noted(tmp_path, repo):
    world = FakeWorld(tmp_path / "world.json")
    core = Deployer(state_dir=tmp_path / "s", plugins=[FakePlugin()], progress=lambda _: None)
    options = {"world": str(world.path), "instance_type": "ml.g4dn.xlarge",
               "min_instances": "1", "max_instances": "5", "target_requests_per_minute": "600"}
    fake = compare(core, repo, ["fake"], {"fake": options}, requests=30, concurrency=[1],
                   prices={"ml.g4dn.xlarge": 0.5}).targets[0]
    assert fake.passed, fake.error
    assert fake.instances[0]["count"] == 1 and fake.cost_per_hour == 0.5
    assert fake.max_cost_per_hour == 2.5
    assert "scales to 5: up to 2.5 USD/h" in fake.cost_note
    assert "scales to 5" in render(report_of(fake, repo))


def test_the_clouds_own_view_of_the_load_is_set_beside_the_clients(tmp_path, repo):
    world = FakeWorld(tmp_path / "world.json")
    said = []
    core = Deployer(state_dir=tmp_path / "s", plugins=[FakePlugin()], progress=said.append)
    options = {"world": str(world.path), "instance_type": "ml.g4dn.xlarge",
               "cloud_ms": "overhead=0.01,model=0.02"}
    fake = compare(core, repo, ["fake"], {"fake": options}, requests=200, concurrency=[1, 2],
                   progress=said.append).targets[0]
    assert fake.passed, fake.error
    cloud = fake.cloud_time
    assert cloud["parts"] == ["overhead_latency_ms", "model_latency_ms"]
    assert cloud["overhead_latency_ms"] == 0.01 and cloud["endpoint_ms"] == 0.03
    weighted = (sum(x["latency_ms"]["mean"] * x["requests"] for x in fake.load)
                / sum(x["requests"] for x in fake.load))
    assert cloud["client_mean_ms"] == round(weighted, 3)
    assert cloud["outside_endpoint_ms"] == round(cloud["client_mean_ms"] - 0.03, 3)
    assert cloud["window"][0] < cloud["window"][1]
    assert (cloud["note"] == "") == (cloud["outside_endpoint_ms"] >= 0), cloud
    page = render(report_of(fake, repo))
    assert 'data-chart="cloudtime"' in page and 'data-part="model_latency_ms"' in page

    above = compare(core, repo, ["fake"], {"fake": {**options, "cloud_ms": "model=60000"}},
                    requests=30, concurrency=[1]).targets[0]
    assert above.cloud_time["outside_endpoint_ms"] < 0   # a minute of others' requests
    assert "its periods also hold requests from outside the load" in above.cloud_time["note"]

    late = compare(core, repo, ["fake"], {"fake": {**options, "cloud_ms": ""}},
                   requests=60, concurrency=[1], cloud_wait=0,
                   progress=said.append).targets[0]
    assert late.passed and late.cloud_time["endpoint_ms"] is None
    assert late.cloud_time["note"] == "not yet published after 0 s"
    assert "the cloud's metrics: not yet published after 0 s" in late.warnings
    assert not any(k.endswith("_latency_ms") for k in late.cloud_time), late.cloud_time
    assert any("waiting up to 0 s for the fake cloud's metrics" in line for line in said)


def report_of(target, repo):
    from deployer.compare import CompareReport

    return CompareReport(str(repo), "add_sub", 30, [x["concurrency"] for x in target.load],
                         [target], [target.target], [], "estimates").to_dict()


def test_the_endpoints_own_refusals_are_counted_apart_and_warned_of(tmp_path, repo):
    world = FakeWorld(tmp_path / "world.json")
    said = []
    core = Deployer(state_dir=tmp_path / "s", plugins=[FakePlugin()], progress=said.append)
    report = compare(core, repo, ["fake"], {"fake": {"world": str(world.path),
                                                     "max_concurrent": "1"}},
                     requests=200, concurrency=[1, 4], progress=said.append)
    fake = report.to_dict()["targets"][0]
    assert fake["limits"] == {"concurrency": 1, "timeout_ms": None,
                              "source": "max_concurrent 1"}
    assert [w for w in said if w.startswith("warning: fake: concurrency 4 is above the 1 ")]
    assert fake["warnings"] and "expect HTTP 429" in fake["warnings"][0]
    one, four = fake["load"]
    assert one["throttled"] == 0 and four["throttled"] > 0, fake["load"]
    assert "http-429" not in four["errors"] and fake["errors"] == 0
    assert fake["throttled"] == four["throttled"] and fake["timed_out"] == 0
    assert not fake["passed"] and fake["error"] == (
        f"under load, {four['throttled']} requests were throttled (HTTP 429) by its request "
        "settings (max_concurrent 1)")
    page = render(report.to_dict())
    assert "<h2>Warnings</h2>" in page and f"<td>{four['throttled']}</td>" in page
    assert fake["torn_down"] and world.read() == {"buckets": [], "servers": []}


def test_bad_compare_input_creates_nothing(cli, repo):
    result = cli("compare", repo, "--target", "local", "--target", "nope")
    assert result.code == 2 and "unknown target 'nope'" in one_line_error(result)
    result = cli("compare", repo, "--target", "local", "-o", "http_port=1")
    assert result.code == 2 and "-o TARGET.http_port=VALUE" in one_line_error(result)
    assert cli("list", "--json").json() == []


def test_ctrl_c_in_the_middle_leaves_nothing_running(tmp_path, repo, tritonserver):
    state = Path(os.environ["DEPLOYER_STATE_DIR"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployer", "compare", str(repo), "--target", "local",
         "--target", "azure-twin", "--requests", "5000000", "--concurrency", "2"],
        env={**os.environ, "DEPLOYER_STATE_DIR": str(state)}, stderr=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, preexec_fn=like_a_background_job)
    seen = ""
    while "cold start, test step and load" not in seen:  # a hang ends at pytest's timeout
        line = proc.stderr.readline()
        if not line:
            proc.kill()
            pytest.fail(f"compare ended before its load; it said: {seen}")
        seen += line
    time.sleep(1.0)  # inside the load
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + err
    assert "torn down" in err and "Traceback" not in err
    assert processes_with(str(repo)) == []
    assert not list((state / "deployments").glob("*.json"))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_report_charts_render_in_headless_chromium(tmp_path):
    report = {
        "repository": "/r", "model": "m", "requests": 100, "concurrency": [1, 4, 8],
        "parallel": ["sagemaker"], "sequential": ["local"], "price_note": "estimates",
        "interrupted": False, "passed": True,
        "targets": [
            {"target": "local", "passed": True, "error": None, "deploy_seconds": 1.5,
             "cold_start_seconds": 0.05, "latency_ms": {"p50": 0.2, "p90": 0.3, "p95": 0.35,
                                                        "p99": 0.5},
             "throughput_rps": 8000.0, "errors": 0, "logs": "", "instances": [],
             "cost_per_hour": 0.0, "cost_per_million": 0.0, "cost_note": "free",
             "load": [{"concurrency": c, "throughput_rps": r, "latency_ms": {}, "errors": {}}
                      for c, r in ((1, 3000.0), (4, 7000.0), (8, 8000.0))]},
            {"target": "sagemaker", "passed": False, "error": "ping health check failed",
             "deploy_seconds": 600.0, "cold_start_seconds": 12.0,
             "latency_ms": {"p50": 20.0, "p90": 30.0, "p95": 35.0, "p99": 80.0},
             "throughput_rps": 400.0, "errors": 3, "logs": "E1122 ... failed", "instances": [],
             "cost_per_hour": 0.7364, "cost_per_million": 0.511, "cost_note": "estimate",
             "load": [{"concurrency": c, "throughput_rps": r, "latency_ms": {}, "errors": {}}
                      for c, r in ((1, 100.0), (4, 350.0), (8, 400.0))]},
        ]}
    page = tmp_path / "report.html"
    page.write_text(render(report))
    dom = headless_dom(page, tmp_path)
    assert 'data-rendered="yes"' in dom
    marks = dict(re.findall(r'data-chart="(\w+)"[^>]*data-marks="(\d+)"', dom))
    # latency: 2 targets x 4 percentiles; throughput: 2 lines + 6 points; timing: 2 x 2 bars
    assert marks == {"latency": "8", "throughput": "8", "timing": "4"}, marks
    assert "ping health check failed" in dom


def headless_dom(page: Path, tmp_path: Path) -> str:
    """The DOM of ``page`` once headless Chromium has run its scripts (a fresh profile)."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120).stdout
