"""The load generator behind ``deployer test --requests`` and ``deployer compare``.

A request the client describes as plain HTTP (:class:`deployer.loadgen.HttpRequest`) is sent
by worker processes, each one event loop with its share of the keep-alive connections
(:mod:`deployer.loadgen`): closed-loop at ``concurrency`` requests in flight, or open-loop at a
fixed ``rate``, latency then measured from each request's intended send time. Anything else
(a whole sequence, a stream, a client without a plain-HTTP request) is sent by ``concurrency``
threads of this process calling ``send``, closed-loop.

After an untimed warm-up, requests are measured in windows; like Triton's perf_analyzer,
windows repeat until the last three agree on throughput within 10 % (or a cap is hit, then
``stable`` is False). Percentiles are exact (nearest rank) over every raw latency of the stable
windows, from every process; errors are counted by kind; the coefficient of variation between
those windows says how far to trust a figure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import statistics
import threading
import time
from collections import Counter
from typing import Callable

from .client import EndpointError
from .errors import DeployerError, Unavailable
from .loadgen import TIMEOUT, HttpRequest

STABLE_WINDOWS = 3
TOLERANCE = 0.10
#: connections one worker process holds before another is started (closed-loop), and the
#: rate one sends (open-loop); never more processes than CPUs
PER_PROCESS = 128
RATE_PER_PROCESS = 3000.0
#: the cap on requests in flight of a fixed-rate load when none is given
RATE_CAP = 512


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
    #: open-loop: the offered rate (requests/s); None for a closed loop (then ``concurrency``
    #: is the requests in flight; open-loop it is the cap on them)
    rate: float | None = None
    #: sends per second as they left (open-loop; None otherwise)
    sent_rps: float | None = None
    #: open-loop: intended sends that found ``concurrency`` requests in flight (not sent), and
    #: sends that left more than loadgen.LATE seconds after their intended time
    dropped: int = 0
    late: int = 0
    #: coefficient of variation (stdev / mean) between the kept windows of ``throughput``
    #: and of ``p50``
    window_cv: dict[str, float] = dataclasses.field(default_factory=dict)
    #: worker processes (0: threads of the calling process)
    processes: int = 0

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
        self.finished = 0   # requests of the windows before this one
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
        self.finished += sum(len(part) for part in self.latencies) + \
            sum(sum(kinds.values()) for kinds in self.errors)
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


class _Engine:
    """Worker processes of :mod:`deployer.loadgen` sending one :class:`HttpRequest`."""

    def __init__(self, request: HttpRequest, processes: int,
                 done: Callable[[int], None] | None = None):
        import os
        import queue
        import subprocess
        import sys
        import tempfile
        from pathlib import Path

        self.request, self.done = request, done
        self.inbox: queue.Queue = queue.Queue()
        self.ticks = [0] * processes
        self.locks = [threading.Lock() for _ in range(processes)]
        self.procs: list[subprocess.Popen] = []
        self.logs = []
        self.stopping = threading.Event()
        self.pushing = threading.Lock()
        self.refresher: threading.Thread | None = None
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        try:
            for number in range(processes):
                log = tempfile.TemporaryFile()
                self.logs.append(log)
                proc = subprocess.Popen([sys.executable, "-m", "deployer.loadgen"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=log)
                self.procs.append(proc)
                threading.Thread(target=self._read, args=(number, proc), daemon=True).start()
            headers = self.sent = self._first_headers()
            for number in range(processes):
                self._tell(number, ("setup", {
                    "url": request.url, "body": request.body, "headers": headers,
                    "timeout": TIMEOUT, "tick": 0.25 if done else 0,
                    "retry": request.fresh is not None, "error_header": request.error_header}))
            self._collect("ready", processes)
            if request.fresh is not None:
                self.refresher = threading.Thread(target=self._refresh, daemon=True)
                self.refresher.start()
        except BaseException:
            self.close()
            raise

    def _headers(self) -> dict:
        return {**self.request.headers, **(self.request.fresh() if self.request.fresh else {})}

    def _first_headers(self) -> dict:
        try:
            return self._headers()
        except EndpointError as exc:
            raise Unavailable(f"the load cannot get its credentials: {exc}") from None

    def _read(self, number: int, proc) -> None:
        from .loadgen import _read_message

        while True:
            try:
                message = _read_message(proc.stdout)
            except (OSError, ValueError, EOFError):
                message = None
            self.inbox.put((number, message))
            if message is None:
                return

    def _tell(self, number: int, message) -> None:
        from .loadgen import framed

        with self.locks[number]:
            self.procs[number].stdin.write(framed(message))
            self.procs[number].stdin.flush()

    def _refresh(self) -> None:
        """Fresh headers (a token, a signature) to every worker every ``refresh`` seconds,
        when they changed."""
        while not self.stopping.wait(self.request.refresh):
            self._push()

    def _push(self, always: bool = False) -> None:
        """The headers to every worker when they changed, or ``always`` (after a 401: the
        workers send the refused requests again with what they get, once). One at a time:
        the refresh thread and a 401 never interleave."""
        with self.pushing:
            if self.stopping.is_set():
                return
            try:
                headers = self._headers()
            except Exception:  # noqa: BLE001 - the requests with the old header fail, counted
                headers = self.sent
            if headers == self.sent and not always:
                return
            self.sent = headers
            for number in range(len(self.procs)):
                with contextlib.suppress(OSError, ValueError):   # a worker gone: the rest
                    self._tell(number, ("headers", headers))

    def _collect(self, kind: str, count: int) -> list:
        """The next ``count`` messages of ``kind``, ticks passed on to ``done`` meanwhile."""
        found = []
        while len(found) < count:
            number, message = self.inbox.get()
            if message is None:
                self.logs[number].seek(0)
                tail = self.logs[number].read()[-400:].decode("utf-8", "replace").strip()
                raise Unavailable(f"a load worker process stopped: "
                                  f"{tail.splitlines()[-1] if tail else 'no output'}")
            if message[0] == "refused":   # a 401: a new credential, then every worker
                if self.request.refused is not None:
                    self.request.refused()
                self._push(always=True)
            elif message[0] == "tick":
                self.ticks[number] = message[1]
                if self.done is not None:
                    self.done(sum(self.ticks))
            elif message[0] == kind:
                found.append(message[1])
                if kind == "window":
                    self.ticks[number] = message[1]["completed"]
                    if self.done is not None:
                        self.done(sum(self.ticks))
        return found

    def window(self, count: int, connections: int) -> tuple[list[float], Counter, float, list]:
        """``count`` requests over ``connections`` connections, closed-loop, split between
        the processes."""
        procs = len(self.procs)
        shares = [connections // procs + (n < connections % procs) for n in range(procs)]
        counts = [count * share // connections for share in shares]
        counts[0] += count - sum(counts)
        busy = [n for n in range(procs) if counts[n] and shares[n]]
        for number in busy:
            self._tell(number, ("closed", {"count": counts[number],
                                           "connections": shares[number]}))
        reports = self._collect("window", len(busy))
        latencies, errors, counts = _merged(reports)
        seconds = counts["ended"] - counts["first"] if counts["first"] else 0.0
        return latencies, errors, seconds, []

    def open_loop(self, rate: float, cap: int, warm: int, size: int,
                  enough: Callable[[list[dict]], bool]) -> list[dict]:
        """Requests at ``rate`` from every process (process n sends every P-th from n), until
        ``enough(windows so far)``: the measured windows, merged, in order."""
        import time

        procs = len(self.procs)
        t0 = time.monotonic() + 0.05
        for number in range(procs):
            self._tell(number, ("open", {
                "rate": rate, "t0": t0, "first": number, "step": procs,
                "cap": max(1, cap // procs + (number < cap % procs)), "warm": warm,
                "size": size}))
        pending: dict[int, list[dict]] = {}
        measured: list[dict] = []
        following = 0
        try:
            while True:
                report = self._collect("window", 1)[0]
                pending.setdefault(report["window"], []).append(report)
                while len(pending.get(following, ())) == procs:
                    reports = pending.pop(following)
                    latencies, errors, counts = _merged(reports)
                    window = {"latencies": latencies, "errors": errors, **counts,
                              "seconds": (warm if following == 0 else size) / rate}
                    if following:
                        measured.append(window)
                    following += 1
                    if enough(measured if following > 1 else []):
                        return measured
        finally:   # never in place of what is on its way out (Ctrl-C, a worker gone)
            with contextlib.suppress(OSError, ValueError, DeployerError):
                for number in range(procs):
                    self._tell(number, ("stop", None))
                self._collect("stopped", procs)

    def close(self) -> None:
        self.stopping.set()
        with self.pushing:   # no push is half-written when the pipes close
            for number, proc in enumerate(self.procs):
                with self.locks[number], contextlib.suppress(OSError):
                    proc.stdin.close()
        if self.refresher is not None:
            self.refresher.join()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - whatever it was doing, it goes
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


def _merged(reports: list[dict]) -> tuple[list[float], Counter, dict]:
    """One window from the processes' reports: every latency, errors by kind, the sums of
    late, dropped and sent, the first send (0 when none), the last send and the last end."""
    import array

    latencies: list[float] = []
    errors: Counter = Counter()
    counts = {"late": 0, "dropped": 0, "sent": 0}
    for report in reports:
        values = array.array("d")
        values.frombytes(report["latencies"])
        latencies.extend(values)
        errors.update(report["errors"])
        for key in counts:
            counts[key] += report[key]
    firsts = [r["first"] for r in reports if r["first"]]   # a process may have sent nothing
    return latencies, errors, {**counts, "first": min(firsts, default=0.0),
                               "last": max((r["last"] for r in reports), default=0.0),
                               "ended": max((r["ended"] for r in reports), default=0.0)}


def processes_for(concurrency: int, rate: float | None = None) -> int:
    """Worker processes for a load: one per PER_PROCESS connections (or RATE_PER_PROCESS
    requests/s), at most one per CPU."""
    import os

    wanted = math.ceil(rate / RATE_PER_PROCESS) if rate else math.ceil(concurrency /
                                                                          PER_PROCESS)
    return max(1, min(wanted, os.cpu_count() or 1))


def run(model: str, send: Callable[[], object] | HttpRequest, requests: int, concurrency: int,
        warmup: int | None = None, max_windows: int = 10,
        clock: Callable[[], float] = time.perf_counter, kind: str = "request",
        between: Callable[[int], None] | None = None, *, rate: float | None = None,
        processes: int | None = None, done: Callable[[int], None] | None = None) -> LoadResult:
    """Measure ``send`` at ``concurrency`` with at least ``requests`` requests.

    ``send`` is an :class:`HttpRequest` (sent by worker processes, see the module's doc;
    ``processes`` of them, by default :func:`processes_for`) or a callable, called from
    ``concurrency`` threads (``clock`` reads their seconds; tests pass one they control).
    ``kind`` says what a callable returns: ``request`` (nothing), ``sequence`` (each step's
    seconds: latencies are also reported per step) or ``stream`` (the seconds to each
    response: time to first response, time between responses and responses per second are
    reported). ``rate`` (requests per second, an HttpRequest only) sends open-loop on that
    schedule with at most ``concurrency`` requests in flight. ``between``, when given, is
    called after the warm-up and after each measured window with the requests that succeeded
    since the warm-up began: closed-loop with the senders idle (its time is in no window),
    open-loop while the schedule goes on. ``done``, when given, is called about every 0.25 s
    with the requests finished so far (for progress)."""
    engine = isinstance(send, HttpRequest)
    if rate is not None:
        if not engine or kind != "request":
            raise ValueError("a fixed rate needs a request the client describes as plain HTTP")
        if rate <= 0:
            raise ValueError("the rate must be above 0")
        return _open(model, send, requests, concurrency, rate, warmup, max_windows, between,
                     processes or processes_for(concurrency, rate), done)
    concurrency = max(1, min(concurrency, requests))
    size = max(concurrency, math.ceil(requests / STABLE_WINDOWS))
    if engine:
        workers = _Engine(send, min(processes or processes_for(concurrency), concurrency),
                          done)
        window = lambda count: workers.window(count, concurrency)  # noqa: E731
    else:
        workers = _Workers(send, concurrency, clock)
        window = workers.window
        ticker = _Ticker(workers, done) if done else None
    try:
        done_ok = len(window(min(size, 50 * concurrency) if warmup is None else warmup)[0])
        if between is not None:
            between(done_ok)
        measured: list[tuple[list[float], Counter, float, list]] = []
        stable = False
        while len(measured) < max_windows:
            measured.append(window(size))
            if between is not None:
                done_ok += len(measured[-1][0])
                between(done_ok)
            if len(measured) >= STABLE_WINDOWS:
                if _steady([len(lat) / sec if sec else 0.0 for lat, _, sec, _ in
                            measured[-STABLE_WINDOWS:]]):
                    stable = True
                    break
    finally:
        if not engine and ticker is not None:
            ticker.stop()
        workers.close()
    kept = measured[-STABLE_WINDOWS:]
    result = _result(model, concurrency, [lat for lat, _, _, _ in kept],
                     [sec for _, _, sec, _ in kept], sum((e for _, e, _, _ in kept), Counter()),
                     [took for _, _, _, calls in kept for took in calls], kind)
    result.stable, result.windows = stable, len(measured)
    result.processes = len(workers.procs) if engine else 0
    return result


def _steady(rates: list[float]) -> bool:
    mean = statistics.fmean(rates)
    return bool(mean) and all(abs(r - mean) <= TOLERANCE * mean for r in rates)


def _open(model: str, request: HttpRequest, requests: int, cap: int, rate: float,
          warmup: int | None, max_windows: int, between: Callable[[int], None] | None,
          processes: int, done: Callable[[int], None] | None) -> LoadResult:
    """The open-loop run behind :func:`run`: windows of at least a second of the schedule."""
    processes = max(1, min(processes, cap))
    size = max(math.ceil(requests / STABLE_WINDOWS), math.ceil(rate), processes)
    warm = max(processes, min(size, math.ceil(rate)) if warmup is None else warmup)
    succeeded = [0]
    verdict = [False]

    def enough(measured: list[dict]) -> bool:
        if between is not None:
            succeeded[0] += len(measured[-1]["latencies"]) if measured else 0
            between(succeeded[0])
        if len(measured) >= STABLE_WINDOWS and _steady(
                [len(w["latencies"]) / w["seconds"] for w in measured[-STABLE_WINDOWS:]]):
            verdict[0] = True
            return True
        return len(measured) >= max_windows

    engine = _Engine(request, processes, done)
    try:
        measured = engine.open_loop(rate, cap, warm, size, enough)
    finally:
        engine.close()
    kept = measured[-STABLE_WINDOWS:]
    result = _result(model, cap, [w["latencies"] for w in kept], [w["seconds"] for w in kept],
                     sum((w["errors"] for w in kept), Counter()), [], "request")
    sent = sum(w["sent"] for w in kept)
    firsts = [w["first"] for w in kept if w["first"]]   # a window may have sent nothing
    span = max(w["last"] for w in kept) - min(firsts) if firsts else 0.0
    result.rate = rate
    result.sent_rps = round((sent - 1) / span, 1) if span > 0 and sent > 1 else None
    result.dropped = sum(w["dropped"] for w in kept)
    result.late = sum(w["late"] for w in kept)
    result.requests += result.dropped
    result.stable, result.windows, result.processes = verdict[0], len(measured), processes
    return result


class _Ticker:
    """``done`` with the thread workers' finished requests, every 0.25 s."""

    def __init__(self, workers: "_Workers", done: Callable[[int], None]):
        self.workers, self.done = workers, done
        self.before = 0
        self.event = threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)
        self.thread.start()

    def _count(self) -> int:
        return self.workers.finished + sum(len(part) for part in self.workers.latencies) + \
            sum(sum(c.values()) for c in self.workers.errors)

    def _tick(self) -> None:
        while not self.event.wait(0.25):
            self.done(self._count())

    def stop(self) -> None:
        self.event.set()
        self.thread.join()
        self.done(self._count())


def _result(model: str, concurrency: int, windows: list[list[float]], seconds: list[float],
            errors: Counter, returned: list, kind: str) -> LoadResult:
    """The figures of the kept windows: exact percentiles over every latency (seconds)."""
    ordered = sorted(x * 1000 for lat in windows for x in lat)
    total = sum(seconds)
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
        gaps = [(b - a) * 1000 for times in returned for a, b in zip(times, times[1:])]
        count = sum(len(times) for times in returned)
        stream = {"responses": count,
                  "responses_per_s": round(count / total, 1) if total else 0.0,
                  "first_ms": _summary(first), "between_ms": _summary(gaps)}
    latency = {f"p{p}": percentile(ordered, p) for p in (50, 90, 95, 99)}
    latency["mean"] = statistics.fmean(ordered) if ordered else float("nan")
    latency["max"] = ordered[-1] if ordered else float("nan")
    rates = [len(lat) / sec for lat, sec in zip(windows, seconds) if sec]
    medians = [percentile(sorted(lat), 50) for lat in windows if lat]
    return LoadResult(model=model, requests=len(ordered) + sum(errors.values()),
                      concurrency=concurrency, seconds=round(total, 4),
                      throughput_rps=round(len(ordered) / total, 1) if total else 0.0,
                      latency_ms={k: round(v, 3) for k, v in latency.items()},
                      errors=dict(errors), latency_by_step=by_step, stream=stream,
                      window_cv={"throughput": _cv(rates), "p50": _cv(medians)})


def _cv(values: list[float]) -> float:
    """Standard deviation over mean (0 for fewer than two values or a mean of 0)."""
    if len(values) < 2 or not statistics.fmean(values):
        return 0.0
    return round(statistics.pstdev(values) / statistics.fmean(values), 4)


def _summary(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and mean of milliseconds (NaN when there are none)."""
    ordered = sorted(values)
    return {**{f"p{p}": round(percentile(ordered, p), 3) for p in (50, 90, 99)},
            "mean": round(statistics.fmean(ordered), 3) if ordered else float("nan")}
