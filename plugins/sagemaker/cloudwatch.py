"""The endpoint's own latency metrics in CloudWatch (``AWS/SageMaker``) over a load's window.

SageMaker publishes, per endpoint and variant (dimensions ``EndpointName``, ``VariantName``),
at a 1-minute frequency and a minute or more late: ``OverheadLatency`` (from when SageMaker
receives the request until it returns the response, minus ``ModelLatency``) and
``ModelLatency`` (the container's answer as SageMaker sees it, the local hop to the container
included), both in microseconds, and ``Invocations`` (a count). A multi-model endpoint has the
same metrics with the same dimensions: CloudWatch has no per-model figures.

One GetMetricData call reads the Sum and SampleCount of both latencies per minute: their
totals over the window give the mean per request (not a mean of per-minute means).
"""

from __future__ import annotations

import datetime
import math
import time
from typing import Callable

from deployer.target import CloudTime, wait_for_metrics

NAMESPACE = "AWS/SageMaker"
#: the parts of a request's time in the endpoint, outside in: (metric, figure's name)
PARTS = (("OverheadLatency", "overhead_latency_ms"), ("ModelLatency", "model_latency_ms"))
PERIOD = 60
#: seconds between reads while waiting; the first read is at once
POLL = 15.0
#: seconds between progress lines while waiting, at most
PROGRESS_EVERY = 30.0
#: the window's last minute with requests is the one ``GRACE`` s before its end: the load's
#: end (when the window closes) follows its last request by less than that
GRACE = 5.0
PERMISSION = "cloudwatch:GetMetricData"


def window(start: float, end: float) -> tuple[int, int]:
    """The minute-aligned ``[first, last)`` (Unix seconds) of 60 s periods covering
    ``[start, end]``."""
    first = int(math.floor(start / PERIOD) * PERIOD)
    last = max(int(math.ceil(end / PERIOD) * PERIOD), first + PERIOD)
    return first, last


def source(endpoint: str, variant: str) -> str:
    return (f"CloudWatch {NAMESPACE} OverheadLatency, ModelLatency (Average, per request), "
            f"Invocations (Sum), EndpointName={endpoint}, VariantName={variant}, "
            f"{PERIOD} s periods")


def _queries(endpoint: str, variant: str) -> list[dict]:
    dimensions = [{"Name": "EndpointName", "Value": endpoint},
                  {"Name": "VariantName", "Value": variant}]
    wanted = [(metric, stat) for metric, _ in PARTS for stat in ("Sum", "SampleCount")]
    wanted.append(("Invocations", "Sum"))
    return [{"Id": f"q{n}", "Label": f"{metric} {stat}", "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dimensions},
        "Period": PERIOD, "Stat": stat}} for n, (metric, stat) in enumerate(wanted)]


def read(cloudwatch, endpoint: str, variant: str, first: int,
         last: int) -> dict[tuple[str, str], dict[int, float]]:
    """``{(metric, stat): {minute (Unix s): value}}`` from GetMetricData over
    ``[first, last)``; every page."""
    queries = _queries(endpoint, variant)
    labels = {q["Id"]: tuple(q["Label"].split(" ")) for q in queries}
    found: dict[tuple[str, str], dict[int, float]] = {key: {} for key in labels.values()}
    utc = datetime.timezone.utc
    args = {"MetricDataQueries": queries, "ScanBy": "TimestampAscending",
            "StartTime": datetime.datetime.fromtimestamp(first, utc),
            "EndTime": datetime.datetime.fromtimestamp(last, utc)}
    while True:
        page = cloudwatch.get_metric_data(**args)
        for result in page.get("MetricDataResults", []):
            series = found[labels[result["Id"]]]
            for stamp, value in zip(result.get("Timestamps", []), result.get("Values", [])):
                minute = int(stamp.timestamp()) // PERIOD * PERIOD
                series[minute] = series.get(minute, 0.0) + float(value)
        if not page.get("NextToken"):
            return found
        args["NextToken"] = page["NextToken"]


def _mean_ms(found, metric: str) -> float | None:
    total = sum(found[(metric, "Sum")].values())
    count = sum(found[(metric, "SampleCount")].values())
    return round(total / count / 1000.0, 3) if count else None   # microseconds → ms


def _covered(found, minute: int) -> bool:
    """Both latencies have a datapoint in ``minute``, the window's last with requests."""
    return all(found[(metric, "SampleCount")].get(minute) for metric, _ in PARTS)


def _hhmm(minute: int) -> str:
    return datetime.datetime.fromtimestamp(minute, datetime.timezone.utc).strftime("%H:%M")


def cloud_time(cloudwatch, endpoint: str, variant: str, start: float, end: float, *,
               wait: float, progress: Callable[[str], None], explain,
               sleep: Callable[[float], None] = time.sleep) -> CloudTime:
    """Poll until both latencies have a datapoint in the window's last minute with requests,
    or ``wait`` seconds pass; figures from what is there then. ``explain(exc)`` gives the
    one line of a failed AWS call: it becomes the note."""
    first, last = window(start, end)
    needed = int(max(start, end - GRACE)) // PERIOD * PERIOD
    said = source(endpoint, variant)
    names = " and ".join(sorted(metric for metric, _ in PARTS))

    def waiting(waited: float) -> None:
        progress(f"waiting for CloudWatch's {names} (published a minute or more late): "
                 f"{waited:.0f}s of {wait:g}")

    try:
        found = wait_for_metrics(lambda: read(cloudwatch, endpoint, variant, first, last),
                                 lambda found: _covered(found, needed), wait=wait,
                                 progress=waiting, poll=POLL, every=PROGRESS_EVERY,
                                 sleep=sleep)
    except Exception as exc:  # noqa: BLE001 - a service error is a note, never a failure
        from .aws import is_cloud_error

        if not is_cloud_error(exc):
            raise
        return CloudTime({}, None, said, note=explain(exc))
    figures = {name: mean for metric, name in PARTS
               if (mean := _mean_ms(found, metric)) is not None}
    missing = [metric for metric, name in PARTS if name not in figures]
    requests = found[("Invocations", "Sum")]
    note = ""
    if missing:
        note = f"{' and '.join(missing)} not yet published after {wait:g} s"
    elif not _covered(found, needed):
        latest = min(max(found[(metric, "SampleCount")]) for metric, _ in PARTS)
        note = (f"published only up to the minute {_hhmm(latest)} UTC after {wait:g} s, the "
                f"load ran into {_hhmm(needed)}: its later requests are left out")
    endpoint_ms = round(sum(figures.values()), 3) if not missing else None
    return CloudTime(figures, endpoint_ms, said, note=note,
                     requests=int(round(sum(requests.values()))) if requests else None)
