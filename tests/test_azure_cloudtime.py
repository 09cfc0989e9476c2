"""Issue 15 on azure: the endpoint's own metrics (Azure Monitor's RequestLatency and
RequestsPerMinute) beside the client's latency, in the test step and in compare. The fake
workspace serves the metrics from what its real gateway measured per request."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import pytest

from azure_support import (WORKSPACE_ID, _response, azure_error, fake,  # noqa: F401
                           monitor_seam, run_cli)
from deployer_plugins.azure import seam

pytestmark = pytest.mark.server
ADD_SUB = Path(__file__).parent / "repos" / "add_sub"


def _deploy(run_cli, name: str) -> dict:
    code, out, err = run_cli("deploy", str(ADD_SUB), "-t", "azure", "--name", name, "--json")
    assert code == 0, err
    return json.loads(out)["endpoint"]


def _test(run_cli, name: str, *args: str) -> tuple[dict, str]:
    code, out, err = run_cli("test", name, "--json", *args)
    assert code == 0, out + err
    assert "Traceback" not in err
    return json.loads(out), err


def _minutes(timespan: str) -> tuple[float, float]:
    first, last = (datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
                   for t in timespan.split("/"))
    return first, last


def test_the_test_step_gives_the_endpoints_latency_and_requests(fake, run_cli):
    """The figures are what the gateway measured: its requests to the deployment in the
    query's whole minutes, their mean time (weighed per request, not a mean of minutes);
    outside the endpoint is the client's mean less the endpoint's."""
    endpoint = _deploy(run_cli, "ct")
    ep, dep = endpoint["endpoint"], endpoint["deployment"]
    report, err = _test(run_cli, "ct", "--requests", "200", "--concurrency", "2")
    cloud = report["cloud_time"]
    # complete (a note could only say the minutes' other requests outweigh the load's)
    assert cloud["parts"] == ["request_latency_ms"] and "published" not in cloud["note"], cloud
    assert cloud["request_latency_ms"] > 0 and cloud["endpoint_ms"] == cloud[
        "request_latency_ms"]
    assert cloud["outside_endpoint_ms"] == round(cloud["client_mean_ms"] - cloud["endpoint_ms"],
                                                 3)
    query = fake.metric_queries[-1]
    assert query == {"resource": f"{WORKSPACE_ID}/onlineEndpoints/{ep}",
                     "timespan": query["timespan"], "interval": "PT1M",
                     "metricnames": "RequestLatency,RequestsPerMinute",
                     "aggregation": "Average,Count,Total", "filter": f"deployment eq '{dep}'"}
    first, last = _minutes(query["timespan"])
    start, end = cloud["window"]
    assert first <= start < first + 60 and last - 60 < end <= last
    counted = [r for r in fake.gateway_requests(ep, dep) if first <= r["t"] < last]
    in_window = [r for r in counted if start <= r["t"] <= end]
    assert len(in_window) >= 200  # the load, and the test step's checks
    assert cloud["requests"] == len(counted)
    mean = sum(r["ms"] for r in counted) / len(counted)
    assert cloud["request_latency_ms"] == pytest.approx(mean, abs=0.002)
    assert query["filter"] in cloud["source"] and "RequestLatency" in cloud["source"]
    assert f"onlineEndpoints/{ep}" in cloud["source"]
    assert "waiting up to" not in err  # published at once: no wait
    # the text report has the line too
    code, out, err = run_cli("test", "ct", "--requests", "20")
    assert code == 0 and "request_latency" in out + err, out + err
    assert run_cli("teardown", "ct")[0] == 0


def test_not_yet_published_is_a_note_and_no_figure(fake, run_cli):
    """Nothing published within the wait: a note, no figure (never 0), exit 0; a progress
    line at most every 30 s of the (fake) clock while it waits."""
    _deploy(run_cli, "late")
    fake.metrics_delay = math.inf
    report, err = _test(run_cli, "late", "--requests", "10", "--cloud-metrics-wait", "100")
    cloud = report["cloud_time"]
    assert cloud["note"] == "not yet published after 100 s", cloud
    assert "request_latency_ms" not in cloud and cloud["parts"] == []
    assert cloud["endpoint_ms"] is None and cloud["outside_endpoint_ms"] is None
    assert cloud["requests"] is None
    waits = [line for line in err.splitlines() if "waiting up to 100 s" in line]
    assert len(waits) == 4, err  # at 0, 30, 60 and 90 s
    assert len(fake.metric_queries) == 8  # every 15 s, and once at the end
    assert "warning: the cloud's metrics: not yet published after 100 s" in err
    report, err = _test(run_cli, "late", "--requests", "5", "--cloud-metrics-wait", "0")
    assert report["cloud_time"]["note"] == "not yet published after 0 s"
    assert "waiting up to" not in err
    assert run_cli("teardown", "late")[0] == 0


def test_published_late_is_waited_for(fake, run_cli):
    """Published 40 s after the requests: asked again until then, then complete."""
    _deploy(run_cli, "slow")
    fake.metrics_delay = 40.0
    report, err = _test(run_cli, "slow", "--requests", "20", "--cloud-metrics-wait", "300")
    cloud = report["cloud_time"]
    # complete: no "not yet published" (with only 20 requests the checks' slower minutes may
    # put the cloud's mean above the client's, which the note then says)
    assert "published" not in cloud["note"] and cloud["request_latency_ms"] > 0, cloud
    assert cloud["requests"] >= 20
    assert len(fake.metric_queries) == 4  # at 0, 15, 30 s: none yet; at 45 s: all
    assert len([line for line in err.splitlines() if "waiting up to 300 s" in line]) == 2
    assert run_cli("teardown", "slow")[0] == 0


def _metrics_forbidden(ep: str):
    scope = f"{WORKSPACE_ID}/onlineEndpoints/{ep}/providers/microsoft.insights"
    return azure_error(403, "AuthorizationFailed", (
        "The client 'ci@example.com' with object id '1' does not have authorization to "
        f"perform action 'microsoft.insights/metrics/read' over scope '{scope}' or the scope "
        "is invalid."))


@pytest.mark.parametrize("status", [403, 429, 500])
def test_a_refused_metrics_query_is_a_note(fake, run_cli, status):
    """Azure refuses the query: one line with the status and what to do, no figure, the test
    step still passes (exit 0)."""
    endpoint = _deploy(run_cli, f"no{status}")
    error = {403: lambda: _metrics_forbidden(endpoint["endpoint"]),
             429: lambda: azure_error(429, "TooManyRequests", "The request is being throttled."),
             500: lambda: azure_error(500, "InternalServerError", "Something went wrong.")}
    fake.fail("read_metrics", error[status]())
    report, err = _test(run_cli, f"no{status}", "--requests", "5")
    cloud = report["cloud_time"]
    note = cloud["note"]
    assert f"(HTTP {status}" in note and "\n" not in note, note
    assert "request_latency_ms" not in cloud and cloud["endpoint_ms"] is None
    if status == 403:
        assert "AuthorizationFailed" in note and "'Monitoring Reader' role" in note
        assert f"--scope {WORKSPACE_ID}/onlineEndpoints/{endpoint['endpoint']})" in note
    elif status == 429:
        assert "throttled" in note and "wait a few minutes" in note
    else:
        assert "InternalServerError" in note and "'Monitoring Reader'" in note
    assert f"warning: the cloud's metrics: {note}" in err
    assert run_cli("teardown", f"no{status}")[0] == 0


def test_compare_gives_the_clouds_time(fake, run_cli):
    """compare puts the endpoint's figures beside the client's mean for azure."""
    code, out, err = run_cli("compare", str(ADD_SUB), "--target", "azure",
                             "-o", "azure.endpoint=ep-ctc", "--requests", "40",
                             "--concurrency", "1", "--concurrency", "2", "--json",
                             "--cloud-metrics-wait", "0")
    assert code == 0, out + err
    result = json.loads(out)["targets"][0]
    cloud = result["cloud_time"]
    assert result["passed"] and "published" not in cloud["note"], cloud
    assert cloud["request_latency_ms"] > 0 and cloud["requests"] >= 80
    assert fake.metric_queries[-1]["filter"] == "deployment eq 'blue'"
    assert fake.endpoints == {}


# -- the real SDK: MonitorManagementClient.metrics.list over a stand-in transport ---------------
def _point(minute: str, **values) -> dict:
    return {"timeStamp": f"2025-01-02T10:{minute}:00Z", **values}


RESOURCE = ("/subscriptions/sub/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
            "workspaces/ws/onlineEndpoints/ep")


def test_the_real_monitor_client_sends_the_query_and_its_answer_is_parsed():
    """What the SDK sends (URL, api-version, the query) and how its answer becomes the
    figures: minutes weighed by their Count (10 ms x 1 and 20 ms x 3 -> 17.5, not 15), a
    minute without data left out, the requests the Totals of every series."""
    import urllib.parse

    from deployer_plugins.azure import _cloud_figures

    body = {"cost": 3, "timespan": "2025-01-02T10:00:00Z/2025-01-02T10:03:00Z",
            "interval": "PT1M", "namespace": "Microsoft.MachineLearningServices/workspaces/"
            "onlineEndpoints", "resourceregion": "westeurope", "value": [
                {"id": RESOURCE + "/providers/Microsoft.Insights/metrics/RequestLatency",
                 "type": "Microsoft.Insights/metrics",
                 "name": {"value": "RequestLatency", "localizedValue": "Request Latency"},
                 "unit": "MilliSeconds", "errorCode": "Success", "timeseries": [{
                     "metadatavalues": [{"name": {"value": "deployment"}, "value": "blue"}],
                     "data": [_point("00", average=10.0, count=1.0, total=10.0),
                              _point("01", average=20.0, count=3.0, total=60.0),
                              _point("02")]}]},
                {"id": RESOURCE + "/providers/Microsoft.Insights/metrics/RequestsPerMinute",
                 "type": "Microsoft.Insights/metrics",
                 "name": {"value": "RequestsPerMinute", "localizedValue": "Requests"},
                 "unit": "Count", "errorCode": "Success", "timeseries": [
                     {"metadatavalues": [], "data": [
                         _point("00", average=1.0, count=1.0, total=1.0),
                         _point("01", average=1.5, count=2.0, total=3.0), _point("02")]}]}]}
    real, arm = monitor_seam(lambda request: _response(200, body, "GET", request.url))
    start = datetime.datetime(2025, 1, 2, 10, 0, 20, tzinfo=datetime.timezone.utc).timestamp()
    found = real.endpoint_metrics(RESOURCE, "blue", start, start + 110)
    url = urllib.parse.urlsplit(arm.sent[0].url)
    assert (arm.sent[0].method, url.netloc, url.path) == (
        "GET", "management.azure.com", RESOURCE + "/providers/Microsoft.Insights/metrics")
    assert dict(urllib.parse.parse_qsl(url.query)) == {
        "api-version": "2024-02-01", "timespan": "2025-01-02T10:00:00Z/2025-01-02T10:03:00Z",
        "interval": "PT1M", "metricnames": "RequestLatency,RequestsPerMinute",
        "aggregation": "Average,Count,Total", "$filter": "deployment eq 'blue'"}
    assert [m.minute - start for m in found.minutes["RequestLatency"]] == [-20, 40]
    figures = _cloud_figures(found, start + 70, 0, "src")
    assert figures.figures == {"request_latency_ms": 17.5} and figures.endpoint_ms == 17.5
    assert figures.requests == 4 and figures.note == ""
    # the window's last minute (10:02) not published: the figures say so
    figures = _cloud_figures(found, start + 110, 30, "src")
    assert figures.figures == {"request_latency_ms": 17.5}
    assert figures.note.startswith("the minute 10:02 UTC not yet published after 30 s")


def test_the_real_monitor_client_refused():
    """A 403 from ARM through the real client: a SeamError with the status and the role."""
    from deployer_plugins.azure import _metrics_refused

    scope = RESOURCE + "/providers/microsoft.insights"
    refused = {"error": {"code": "AuthorizationFailed", "message": (
        "The client 'x' does not have authorization to perform action "
        f"'microsoft.insights/metrics/read' over scope '{scope}' or the scope is invalid.")}}
    real, _ = monitor_seam(lambda request: _response(403, refused, "GET", request.url))
    with pytest.raises(seam.ForbiddenError) as caught:
        real.endpoint_metrics(RESOURCE, "blue", 0.0, 60.0)
    assert caught.value.status == 403 and "'Monitoring Reader' role" in caught.value.hint
    note = _metrics_refused(caught.value)
    assert note.startswith("Azure Monitor's metrics could not be read (HTTP 403): reading "
                           "Azure Monitor metrics of ep: AuthorizationFailed"), note
    assert f"--scope {RESOURCE})" in note
