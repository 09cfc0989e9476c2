"""The load generator behind ``deployer test --requests`` and ``deployer compare``.

C worker threads, each on its own persistent connection, send a request encoded once. After an
untimed warm-up, requests are measured in windows; like Triton's perf_analyzer, windows repeat
until the last three agree on throughput within 10 % (or a cap is hit, then ``stable`` is
False). Percentiles are exact (nearest rank) over the stable windows; errors are counted by kind.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import threading
import time
from collections import Counter
from typing import Callable

from .client import EndpointError

STABLE_WINDOWS = 3
TOLERANCE = 0.10


@dataclasses.dataclass
class LoadResult:
    model: str
    #: requests measured (the stable windows), at least what was asked for unless capped
    requests: int
    concurrency: int
    seconds: float
    throughput_rps: float
    #: p50, p90, p95, p99, mean, max of successful requests, in milliseconds
    latency_ms: dict[str, float]
    #: count of failed requests by kind (``http-500``, ``connection``, ...)
    errors: dict[str, int]
    #: whether the last windows agreed within 10 %; windows measured in all
    stable: bool = True
    windows: int = 1
    #: a stateful model's load (each request a whole sequence): step (1-based, as text) →
    #: p50, p90, p99, mean (ms) of that step's requests; {} otherwise
    latency_by_step: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    #: a decoupled model's load (each request one stream): ``responses``, ``responses_per_s``,
    #: ``first_ms`` (time to the first response) and ``between_ms`` (between responses), each
    #: p50, p90, p99, mean; {} otherwise
    stream: dict[str, object] = dataclasses.field(default_factory=dict)
    #: where the time went by Triton's own counters over the measured windows (see
    #: deployer.servertime.split: ``server_ms``, ``queue_ms``, ..., ``outside_server_ms``,
    #: ``server_share``, ``batch_size``); None when not read, ``server_time_note`` says why
    server_time: dict[str, object] | None = None
    server_time_note: str = ""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class _Workers:
    """C threads that live across windows, so their connections do too."""

    def __init__(self, send: Callable[[], None], concurrency: int,
                 clock: Callable[[], float] = time.perf_counter):
        self.send = send
        self.clock = clock
        self.concurrency = concurrency
        self.start = threading.Barrier(concurrency + 1)
        self.end = threading.Barrier(concurrency + 1)
        # next() on a count is atomic under the GIL: no lock per request
        self.counter = itertools.count()
        self.limit = 0
        self.stop = False
        self.latencies: list[list[float]] = [[] for _ in range(concurrency)]
        #: the per-step seconds ``send`` returned (a sequence's steps), when it returns them
        self.labels: list[list] = [[] for _ in range(concurrency)]
        self.errors: list[Counter] = [Counter() for _ in range(concurrency)]
        self.threads = [threading.Thread(target=self._work, args=(i,), daemon=True)
                        for i in range(concurrency)]
        for thread in self.threads:
            thread.start()

    def _work(self, slot: int) -> None:
        send, clock = self.send, self.clock
        while True:
            try:
                self.start.wait()
            except threading.BrokenBarrierError:
                return
            if self.stop:
                return
            mine, failed, labels = self.latencies[slot], self.errors[slot], self.labels[slot]
            counter = self.counter
            while next(counter) < self.limit:
                began = clock()
                try:
                    label = send()
                except EndpointError as exc:
                    failed[exc.kind] += 1
                    continue
                except Exception as exc:  # noqa: BLE001 - counted, never fatal
                    failed[type(exc).__name__] += 1
                    continue
                mine.append(clock() - began)
                if label is not None:
                    labels.append(label)
            try:
                self.end.wait()
            except threading.BrokenBarrierError:
                return

    def window(self, count: int) -> tuple[list[float], Counter, float, list]:
        self.latencies = [[] for _ in range(self.concurrency)]
        self.labels = [[] for _ in range(self.concurrency)]
        self.errors = [Counter() for _ in range(self.concurrency)]
        self.counter, self.limit = itertools.count(), count
        began = self.clock()
        self.start.wait()
        self.end.wait()
        seconds = self.clock() - began
        steps = [took for part in self.labels for took in part]
        return ([x for part in self.latencies for x in part], sum(self.errors, Counter()),
                seconds, steps)

    def close(self) -> None:
        """Stop the workers, also mid-window (Ctrl-C): each ends after its current request."""
        self.limit = 0
        self.stop = True
        self.start.abort()
        self.end.abort()
        for thread in self.threads:
            thread.join()


def run(model: str, send: Callable[[], object], requests: int, concurrency: int,
        warmup: int | None = None, max_windows: int = 10,
        clock: Callable[[], float] = time.perf_counter, kind: str = "request",
        between: Callable[[int], None] | None = None) -> LoadResult:
    """Measure ``send`` at ``concurrency`` with at least ``requests`` requests (``clock``
    reads seconds; tests pass one they control). ``kind`` says what ``send`` returns:
    ``request`` (nothing), ``sequence`` (each step's seconds: latencies are also reported per
    step) or ``stream`` (the seconds to each response: time to first response, time between
    responses and responses per second are reported). ``between``, when given, is called with
    the workers idle after the warm-up and after each measured window, with the requests that
    succeeded since the warm-up began; the time it takes is in no window."""
    concurrency = max(1, min(concurrency, requests))
    size = max(concurrency, math.ceil(requests / STABLE_WINDOWS))
    workers = _Workers(send, concurrency, clock)
    try:
        done = len(workers.window(min(size, 50 * concurrency) if warmup is None else warmup)[0])
        if between is not None:
            between(done)
        measured: list[tuple[list[float], Counter, float, list]] = []
        stable = False
        while len(measured) < max_windows:
            measured.append(workers.window(size))
            if between is not None:
                done += len(measured[-1][0])
                between(done)
            if len(measured) >= STABLE_WINDOWS:
                rates = [len(lat) / sec if sec else 0.0 for lat, _, sec, _ in
                         measured[-STABLE_WINDOWS:]]
                mean = statistics.fmean(rates)
                if mean and all(abs(r - mean) <= TOLERANCE * mean for r in rates):
                    stable = True
                    break
    finally:
        workers.close()
    kept = measured[-STABLE_WINDOWS:]
    ordered = sorted(x * 1000 for lat, _, _, _ in kept for x in lat)
    seconds = sum(sec for _, _, sec, _ in kept)
    errors = sum((err for _, err, _, _ in kept), Counter())
    returned = [took for _, _, _, calls in kept for took in calls]
    by_step: dict[str, dict[str, float]] = {}
    stream: dict[str, object] = {}
    if kind == "sequence":
        steps: dict[int, list[float]] = {}
        for took in returned:
            for index, step_seconds in enumerate(took, 1):
                steps.setdefault(index, []).append(step_seconds * 1000)
        by_step = {str(index): _summary(values) for index, values in sorted(steps.items())}
    elif kind == "stream":
        first = [times[0] * 1000 for times in returned if times]
        between = [(b - a) * 1000 for times in returned for a, b in zip(times, times[1:])]
        count = sum(len(times) for times in returned)
        stream = {"responses": count,
                  "responses_per_s": round(count / seconds, 1) if seconds else 0.0,
                  "first_ms": _summary(first), "between_ms": _summary(between)}
    latency = {f"p{p}": percentile(ordered, p) for p in (50, 90, 95, 99)}
    latency["mean"] = statistics.fmean(ordered) if ordered else float("nan")
    latency["max"] = ordered[-1] if ordered else float("nan")
    return LoadResult(model=model, requests=len(ordered) + sum(errors.values()),
                      concurrency=concurrency, seconds=round(seconds, 4),
                      throughput_rps=round(len(ordered) / seconds, 1) if seconds else 0.0,
                      latency_ms={k: round(v, 3) for k, v in latency.items()},
                      errors=dict(errors), stable=stable, windows=len(measured),
                      latency_by_step=by_step, stream=stream)


def _summary(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and mean of milliseconds (NaN when there are none)."""
    ordered = sorted(values)
    return {**{f"p{p}": round(percentile(ordered, p), 3) for p in (50, 90, 99)},
            "mean": round(statistics.fmean(ordered), 3) if ordered else float("nan")}
