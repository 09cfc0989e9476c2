"""The endpoint's own latency metrics beside the client's: the sagemaker target reads CloudWatch
``AWS/SageMaker`` OverheadLatency, ModelLatency and Invocations after the test step's load and
compare's, through real boto3, from moto, where the runtime emulator publishes them as
SageMaker does (tests/sagemaker_support.py).

CloudWatch is reached through the fault proxy (tests/aws_faults.py): before each GetMetricData
it has the emulator publish what it holds, so what the target reads is exactly what the
emulator measured (its ``records``), and a test can have CloudWatch refuse."""

from __future__ import annotations

import pytest

from aws_faults import proxy  # noqa: F401 - a fixture
from conftest import REPOS
from sagemaker_support import RuntimeEmulator, aws_environment, leftovers
from sagemaker_support import moto_url  # noqa: F401 - a fixture

pytest.importorskip("moto.server", reason="moto[server] is needed for the SageMaker tests")

ADD_SUB = REPOS / "add_sub"
MULTI = REPOS / "multi"
READ = "GraniteServiceVersion20100801.GetMetricData"
PARTS = ["overhead_latency_ms", "model_latency_ms"]
DENIED = ("User: arn:aws:sts::123456789012:assumed-role/Deployer/ci is not authorized to "
          "perform: cloudwatch:GetMetricData because no identity-based policy allows the "
          "cloudwatch:GetMetricData action")


@pytest.fixture(scope="module")
def emulator(moto_url, tritonserver):
    emulator = RuntimeEmulator()
    yield emulator
    emulator.close()


@pytest.fixture
def aws(moto_url, proxy, emulator):
    """Every AWS endpoint at moto but CloudWatch, at the proxy, which has the emulator
    publish before each read; publishing on; a fresh bucket."""
    proxy.clear()
    emulator.faults.clear()
    emulator.publishing = True
    proxy.before(READ, emulator.flush)
    with aws_environment(moto_url, emulator.url,
                         AWS_ENDPOINT_URL_CLOUDWATCH=proxy.url) as env:
        yield env
    proxy.clear()
    emulator.publishing = True
    assert proxy.errors == [] and emulator.faults == []


def deploy(cli, aws, name: str, repo=ADD_SUB, *extra: str) -> None:
    options = [f"role={aws['role']}", f"bucket={aws['bucket']}", *extra]
    result = cli("deploy", repo, "--target", "sagemaker", "--name", name,
                 *[arg for item in options for arg in ("-o", item)])
    assert result.code == 0, result


def teardown(cli, aws, name: str) -> None:
    result = cli("teardown", name)
    assert result.code == 0, result
    assert leftovers(aws["bucket"]) == {"endpoints": [], "configs": [], "models": [],
                                        "objects": []}


def measured(emulator, endpoint: str, cloud: dict) -> dict:
    """What the emulator measured in the minute-aligned periods the target read: the
    requests, and the means per request in ms, as CloudWatch would give them."""
    from deployer_plugins.sagemaker.cloudwatch import window

    first, last = window(*cloud["window"])
    records = emulator.in_window(endpoint, first, last)
    count = len(records)
    return {"requests": count,
            "overhead_latency_ms": sum(r["overhead_us"] for r in records) / count / 1000,
            "model_latency_ms": sum(r["model_us"] for r in records) / count / 1000}


def check_figures(cloud: dict, expected: dict) -> None:
    assert cloud["parts"] == PARTS, cloud
    # complete: nothing left unpublished (the minutes also hold the test step's checks, which
    # may put the cloud's mean above the client's: then the note says so)
    assert "published" not in cloud["note"], cloud
    for part in PARTS:
        assert cloud[part] > 0
        assert cloud[part] == pytest.approx(expected[part], abs=0.0015), (part, cloud)
    assert cloud["endpoint_ms"] == round(cloud["overhead_latency_ms"]
                                         + cloud["model_latency_ms"], 3)
    assert cloud["requests"] == expected["requests"]
    assert cloud["outside_endpoint_ms"] == round(cloud["client_mean_ms"]
                                                 - cloud["endpoint_ms"], 3)
    assert cloud["source"] == (
        "CloudWatch AWS/SageMaker OverheadLatency, ModelLatency (Average, per request), "
        f"Invocations (Sum), EndpointName={cloud['endpoint']}, VariantName=AllTraffic, "
        "60 s periods")


def test_the_test_step_sets_cloudwatch_beside_the_client(cli, aws, proxy, emulator):
    deploy(cli, aws, "sm-ct")
    before = len(emulator.records)
    result = cli("test", "sm-ct", "--requests", "200", "--json", "--cloud-metrics-wait", "30")
    assert result.code == 0, result
    report = result.json()
    cloud = report["cloud_time"]
    made = len(emulator.records) - before
    assert made >= 200 + 1, "the load's requests and the checks' inference"
    expected = measured(emulator, "sm-ct", cloud)
    # the window is the load's; its whole minutes may also hold the checks' requests
    assert made >= expected["requests"] >= 200
    check_figures({**cloud, "endpoint": "sm-ct"}, expected)
    assert proxy.seen[READ] == 1, "published when read: no wait"
    assert "waiting for CloudWatch" not in result.err
    teardown(cli, aws, "sm-ct")


def test_a_multi_model_endpoint_has_the_same_metrics(cli, aws, proxy, emulator, tmp_path):
    """CloudWatch has no per-model metrics for a multi-model endpoint: the same ones, the
    same dimensions; a cold model's ModelNotReady answers never reached the container."""
    import shutil

    repo = tmp_path / "two"
    for name in ("add_sub", "text_len"):
        shutil.copytree(MULTI / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    deploy(cli, aws, "sm-ct-mme", repo, "mode=multi")
    result = cli("test", "sm-ct-mme", "--requests", "100", "--json",
                 "--cloud-metrics-wait", "30")
    assert result.code == 0, result
    cloud = result.json()["cloud_time"]
    check_figures({**cloud, "endpoint": "sm-ct-mme"}, measured(emulator, "sm-ct-mme", cloud))
    teardown(cli, aws, "sm-ct-mme")


def test_compare_reports_cloudwatch_per_target(cli, aws, proxy, emulator, tmp_path):
    page = tmp_path / "report.html"
    result = cli("compare", ADD_SUB, "--target", "sagemaker",
                 "-o", f"sagemaker.role={aws['role']}", "-o", f"sagemaker.bucket={aws['bucket']}",
                 "--requests", "100", "--concurrency", "1", "--concurrency", "2",
                 "--cloud-metrics-wait", "30", "--report", page, "--json")
    assert result.code == 0, result
    target = result.json()["targets"][0]
    assert target["passed"] and target["torn_down"], target
    cloud = target["cloud_time"]
    endpoint = target["name"]
    expected = measured(emulator, endpoint, cloud)
    assert expected["requests"] >= 200   # both levels' requests, and any in the same minutes
    check_figures({**cloud, "endpoint": endpoint}, expected)
    html = page.read_text()
    assert 'data-chart="cloudtime"' in html
    assert 'data-part="overhead_latency_ms"' in html and 'data-part="model_latency_ms"' in html
    assert f"EndpointName={endpoint}" in html
    assert leftovers(aws["bucket"])["endpoints"] == []


def test_figures_not_yet_published_are_absent_with_a_note(cli, aws, proxy, emulator):
    deploy(cli, aws, "sm-ct-late")
    emulator.publishing = False
    result = cli("test", "sm-ct-late", "--requests", "10", "--json",
                 "--cloud-metrics-wait", "0")
    assert result.code == 0, result
    cloud = result.json()["cloud_time"]
    assert cloud["parts"] == [] and cloud["endpoint_ms"] is None, cloud
    assert not any(key.endswith("_latency_ms") for key in cloud), cloud
    assert cloud["requests"] is None and cloud["outside_endpoint_ms"] is None
    assert cloud["note"] == "OverheadLatency and ModelLatency not yet published after 0 s"
    assert "warning: the cloud's metrics: OverheadLatency and ModelLatency not yet published" \
        in result.err
    assert proxy.seen[READ] == 1

    # with a wait: a progress line, a second read, then the same note
    result = cli("test", "sm-ct-late", "--requests", "5", "--json",
                 "--cloud-metrics-wait", "1")
    assert result.code == 0, result
    assert result.json()["cloud_time"]["note"] == (
        "OverheadLatency and ModelLatency not yet published after 1 s")
    assert ("waiting for CloudWatch's ModelLatency and OverheadLatency (published a minute or "
            "more late): 0s of 1") in result.err
    assert proxy.seen[READ] == 3
    teardown(cli, aws, "sm-ct-late")


def test_the_target_waits_for_figures_published_late(cli, aws, proxy, emulator):
    """Nothing at the first read; published before the second (15 s later): the figures are
    complete, after one progress line."""
    deploy(cli, aws, "sm-ct-wait")
    emulator.publishing = False
    reads = []

    def late():
        reads.append(1)
        if len(reads) == 2:
            emulator.release()
            emulator.flush()

    proxy.before(READ, late)
    result = cli("test", "sm-ct-wait", "--requests", "100", "--json",
                 "--cloud-metrics-wait", "60")
    assert result.code == 0, result
    cloud = result.json()["cloud_time"]
    check_figures({**cloud, "endpoint": "sm-ct-wait"}, measured(emulator, "sm-ct-wait", cloud))
    assert proxy.seen[READ] == 2
    assert result.err.count("waiting for CloudWatch's ModelLatency and OverheadLatency") == 1
    teardown(cli, aws, "sm-ct-wait")


def test_cloudwatch_refusing_is_a_note_with_its_code(cli, aws, proxy, emulator):
    deploy(cli, aws, "sm-ct-denied")
    proxy.json_error(READ, "AccessDenied", DENIED, status=403, version="1.0",
                     headers={"x-amzn-query-error": "AccessDenied;Sender"})
    result = cli("test", "sm-ct-denied", "--requests", "10", "--json",
                 "--cloud-metrics-wait", "30")
    assert result.code == 0, result
    assert "Traceback" not in result.err
    report = result.json()
    assert report["passed"]
    cloud = report["cloud_time"]
    assert cloud["parts"] == [] and cloud["endpoint_ms"] is None
    assert cloud["note"].startswith("GetMetricData failed: AccessDenied: User: "), cloud
    assert cloud["note"].endswith("(the caller needs cloudwatch:GetMetricData (an IAM policy "
                                  "statement: Action cloudwatch:GetMetricData, Resource *))")
    assert "\n" not in cloud["note"]
    assert proxy.seen[READ] == 1, "an error is not waited out"
    teardown(cli, aws, "sm-ct-denied")
