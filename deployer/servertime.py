"""Where a load level's time goes: Triton's own counters, read around the measured windows.

Triton counts every request on its metrics port (Prometheus text): successes, the cumulative
microseconds each spent in the queue, gathering its inputs, in the model and returning its
outputs, the whole request, and the inferences and executions (inferences ÷ executions is the
batch size Triton formed). The counters only grow, so the difference of two readings taken
with no request in flight is exactly what the requests between them cost the server. The rest
of what the client measured is outside the server: network, gateway, HTTP.

:func:`timed_load` is :func:`deployer.load.run` with a reading after the warm-up and after
each measured window (the workers wait at that point anyway); the figures cover the windows
the load kept. A reading that fails says why in ``server_time_note``; no figure is ever made
up (a missing one is None, never 0).
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .load import LoadResult

#: our name → Triton's counter (cumulative, per model and version)
COUNTERS = {
    "success": "nv_inference_request_success",
    "inferences": "nv_inference_count",
    "executions": "nv_inference_exec_count",
    "request_us": "nv_inference_request_duration_us",
    "queue_us": "nv_inference_queue_duration_us",
    "compute_input_us": "nv_inference_compute_input_duration_us",
    "compute_infer_us": "nv_inference_compute_infer_duration_us",
    "compute_output_us": "nv_inference_compute_output_duration_us",
}
_BY_FAMILY = {family: ours for ours, family in COUNTERS.items()}
#: the parts of a request's time in the server, in the order a request goes through them
PARTS = ("queue", "compute_input", "compute_infer", "compute_output")

#: a reading that takes longer says the metrics cannot be read
READ_TIMEOUT = 2.0
#: how long a reading waits for Triton to count the requests that were just answered
SETTLE_SECONDS = 0.5
#: how long the first reading of a level retries a metrics port that does not answer yet
STARTING_SECONDS = 1.0

Snapshot = dict  # model → our counter name → cumulative value, the versions summed


class Unreadable(Exception):
    """The metrics could not be read or parsed; the message says why."""


def _ours(text: str) -> str:
    """The lines of our counters' families (their samples, HELP and TYPE), for the parser:
    Triton's page also carries per-reason failures, pending counts and CPU/GPU gauges, which
    would double the parse for nothing."""
    starts = tuple(f"{family}{end}" for family in COUNTERS.values() for end in ("{", " "))
    notes = tuple(f"# {kind} {family} " for family in COUNTERS.values()
                  for kind in ("HELP", "TYPE"))
    return "".join(line for line in text.splitlines(keepends=True)
                   if line.startswith(starts) or line.startswith(notes))


def parse(text: str) -> Snapshot:
    """Triton's Prometheus text → {model: {counter: value}}, versions summed (prometheus_client's
    parser: it names a counter's samples ``<family>_total``, so families are matched)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: Snapshot = {}
    try:
        for family in text_string_to_metric_families(_ours(text)):
            ours = _BY_FAMILY.get(family.name)
            if ours is None:
                continue
            for sample in family.samples:
                model = sample.labels.get("model")
                if model is not None and sample.name in (family.name, family.name + "_total"):
                    counters = found.setdefault(model, dict.fromkeys(COUNTERS, 0.0))
                    counters[ours] += float(sample.value)
    except ValueError as exc:
        raise Unreadable(f"the metrics are not Prometheus text: {exc}") from None
    if not found:
        raise Unreadable("the metrics carry no nv_inference_* counters per model (is it "
                         "Triton's metrics port?)")
    return found


class Reader:
    """Reads one metrics URL over one kept-alive connection (a new one after a failure);
    ``Reader()(url)`` is a :data:`Snapshot` or Unreadable with the reason."""

    def __init__(self, timeout: float = READ_TIMEOUT):
        self.timeout = timeout
        self.connection: http.client.HTTPConnection | None = None

    def __call__(self, url: str) -> Snapshot:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise Unreadable(f"{url} is no http:// URL")
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection(
                    parts.hostname, parts.port or 80, timeout=self.timeout)
            self.connection.request("GET", parts.path or "/")
            answer = self.connection.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Unreadable(f"{url} cannot be read: {exc or type(exc).__name__}") from None
        if answer.status != 200:
            raise Unreadable(f"{url} answered HTTP {answer.status}")
        return parse(body.decode("utf-8", "replace"))

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def read(url: str, timeout: float = READ_TIMEOUT) -> Snapshot:
    """One reading of ``url`` (``http://HOST:PORT/metrics``); Unreadable with the reason."""
    reader = Reader(timeout)
    try:
        return reader(url)
    finally:
        reader.close()


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    """What the requests between two readings added, per model (models absent before start
    at 0: a model loaded in between)."""
    zero = dict.fromkeys(COUNTERS, 0.0)
    return {model: {k: v - before.get(model, zero)[k] for k, v in counters.items()}
            for model, counters in after.items()}


def _ms(microseconds: float, count: float) -> float:
    return round(microseconds / count / 1000, 4)


def model_figures(counters: dict[str, float], per: float | None = None) -> dict:
    """One model's figures from its counters' deltas: milliseconds per request (``per``: the
    requests to divide by, default the model's own successes), the batch size formed."""
    per = per or counters["success"]
    figures = {"requests": int(counters["success"]), "executions": int(counters["executions"]),
               "inferences": int(counters["inferences"]),
               "server_ms": _ms(counters["request_us"], per)}
    for part in PARTS:
        figures[f"{part}_ms"] = _ms(counters[f"{part}_us"], per)
    figures["compute_ms"] = round(sum(figures[f"{p}_ms"] for p in PARTS[1:]), 4)
    # an ensemble's own queue leaves out its steps' queues: the server's time in neither
    figures["server_other_ms"] = round(max(
        0.0, figures["server_ms"] - figures["queue_ms"] - figures["compute_ms"]), 4)
    figures["batch_size"] = (round(counters["inferences"] / counters["executions"], 3)
                             if counters["executions"] else None)
    return figures


def split(change: Snapshot, model: str, client_requests: int, client_mean_ms: float,
          per_request: int = 1) -> tuple[dict | None, str]:
    """The split of one level from the counters' deltas over its measured windows: the
    loaded ``model``'s figures per request the load sent (a stateful model's request is its
    whole sequence of ``per_request`` steps), the client's mean beside them, the server's
    share of it and what was outside the server; ``models``: each model that served requests
    meanwhile (an ensemble's steps), per its own request. (None, why) when there is nothing
    to split."""
    counters = change.get(model)
    if counters is None:
        return None, f"the server's metrics name no model {model!r}"
    if not counters["success"] or not client_requests:
        return None, (f"the server counted no successful request of {model} in the "
                      "measured windows")
    figures = model_figures(counters, client_requests)
    figures["requests"] = int(counters["success"])
    figures["client_requests"] = client_requests
    figures["client_mean_ms"] = round(client_mean_ms, 4)
    figures["outside_server_ms"] = round(client_mean_ms - figures["server_ms"], 4)
    figures["server_share"] = (round(figures["server_ms"] / client_mean_ms, 4)
                               if client_mean_ms > 0 else None)
    figures["models"] = {name: model_figures(c) for name, c in sorted(change.items())
                         if c["success"] > 0}
    note = ""
    expected = client_requests * per_request
    if figures["requests"] != expected:
        note = (f"the server counted {figures['requests']} requests of {model}, the load "
                f"sent {expected} that succeeded: other traffic, or requests still being "
                "counted, blur the split")
    return figures, note


class Watch:
    """Readings around one load level (``load.run``'s ``between``): one before the load, then
    one after the warm-up and after each window, each taken once Triton has counted the
    requests just answered (up to :data:`SETTLE_SECONDS`). After the first failed reading it
    reads no more: the level's note says why."""

    def __init__(self, url: str, model: str, per_request: int = 1,
                 reader: Callable[[str], Snapshot] | None = None):
        self.url, self.model, self.per_request = url, model, per_request
        self.reader = reader or Reader()
        self.marks: list[Snapshot] = []
        self.problem = ""
        # Triton opens its metrics port after its HTTP port: just after a deploy it may
        # not listen yet
        deadline = time.monotonic() + STARTING_SECONDS
        self.base = self._read()
        while self.base is None and time.monotonic() < deadline:
            time.sleep(0.05)
            self.problem = ""
            self.base = self._read()

    def close(self) -> None:
        if isinstance(self.reader, Reader):
            self.reader.close()

    def _read(self) -> Snapshot | None:
        if self.problem:
            return None
        try:
            return self.reader(self.url)
        except Unreadable as exc:
            self.problem = str(exc)
            return None

    def _counted(self, snapshot: Snapshot) -> float:
        zero = {"success": 0.0}
        return (snapshot.get(self.model, zero)["success"]
                - (self.base or {}).get(self.model, zero)["success"])

    def mark(self, successes: int) -> None:
        """After ``successes`` requests have succeeded since the load began."""
        snapshot = self._read()
        deadline = time.monotonic() + SETTLE_SECONDS
        while snapshot is not None and self._counted(snapshot) < successes * self.per_request \
                and time.monotonic() < deadline:
            time.sleep(0.002)
            snapshot = self._read()
        if snapshot is not None:
            self.marks.append(snapshot)

    def figures(self, result: LoadResult) -> tuple[dict | None, str]:
        """The split over the windows ``result`` kept, or (None, why)."""
        from .load import STABLE_WINDOWS

        if self.problem:
            return None, f"Triton's metrics could not be read: {self.problem}"
        kept = min(STABLE_WINDOWS, result.windows)
        if len(self.marks) != result.windows + 1:
            return None, "the load ended before its windows were read"
        successes = result.requests - result.error_count
        return split(delta(self.marks[result.windows - kept], self.marks[-1]), self.model,
                     successes, result.latency_ms.get("mean", float("nan")), self.per_request)


def timed_load(metrics: str | None, model: str, send: Callable[[], object], requests: int,
               concurrency: int, *, kind: str = "request", per_request: int = 1,
               reader: Callable[[str], Snapshot] | None = None, **run_options) -> LoadResult:
    """:func:`deployer.load.run`, and when ``metrics`` (Triton's metrics URL) is given, the
    split of its time in ``server_time`` (see :func:`split`) or why not in
    ``server_time_note``. ``per_request``: Triton requests per request sent (a sequence's
    steps). Without ``metrics`` the note says the target exposes none. ``run_options`` go to
    ``load.run`` (``max_windows``, ...)."""
    from . import load

    if not metrics:
        result = load.run(model, send, requests, concurrency, kind=kind, **run_options)
        result.server_time_note = "the target exposes no Triton metrics (Target.server_metrics)"
        return result
    watch = Watch(metrics, model, per_request, reader)
    try:
        result = load.run(model, send, requests, concurrency, kind=kind,
                          between=None if watch.problem else watch.mark, **run_options)
    finally:
        watch.close()
    result.server_time, result.server_time_note = watch.figures(result)
    return result
