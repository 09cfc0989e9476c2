"""A small load generator: N requests over C threads, each on its own persistent connection,
with the request encoded once. Exact percentiles, errors counted by kind."""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
import time
from collections import Counter
from typing import Callable

from .client import EndpointError


@dataclasses.dataclass
class LoadResult:
    model: str
    requests: int
    concurrency: int
    seconds: float
    throughput_rps: float
    #: p50, p90, p99, mean, max of successful requests, in milliseconds
    latency_ms: dict[str, float]
    #: count of failed requests by kind (``http-500``, ``connection``, ...)
    errors: dict[str, int]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def run(model: str, send: Callable[[], None], requests: int, concurrency: int,
        warmup: int | None = None) -> LoadResult:
    """Send ``requests`` requests from ``concurrency`` threads, after an untimed warm-up."""
    concurrency = max(1, min(concurrency, requests))
    warmup = min(50, max(concurrency, requests // 10)) if warmup is None else warmup
    for _ in range(warmup):
        try:
            send()
        except EndpointError:
            break
    counter = itertools.count()
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[Counter] = [Counter() for _ in range(concurrency)]

    def worker(slot: int) -> None:
        mine, failed = latencies[slot], errors[slot]
        clock = time.perf_counter
        while next(counter) < requests:
            began = clock()
            try:
                send()
            except EndpointError as exc:
                failed[exc.kind] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - counted, never fatal
                failed[type(exc).__name__] += 1
                continue
            mine.append(clock() - began)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    ordered = sorted(itertools.chain.from_iterable(latencies))
    total_errors = sum(errors, Counter())
    ms = [x * 1000 for x in ordered]
    latency = {"p50": percentile(ms, 50), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
               "mean": (sum(ms) / len(ms)) if ms else float("nan"),
               "max": ms[-1] if ms else float("nan")}
    return LoadResult(model=model, requests=requests, concurrency=concurrency,
                      seconds=round(seconds, 4),
                      throughput_rps=round(len(ordered) / seconds, 1) if seconds else 0.0,
                      latency_ms={k: round(v, 3) for k, v in latency.items()},
                      errors=dict(total_errors))
