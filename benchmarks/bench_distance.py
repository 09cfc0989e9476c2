"""Load at a distance: our load generator and wrk against a Triton 20 ms away (RUNS AS ROOT).

Builds a network namespace with a veth pair (as root: ``ip netns``, ``ip link``, ``tc``),
serves the real tritonserver (the managed runtime, :func:`deployer.triton.find_server`) in the
far namespace and puts a 20 ms round trip between it and this one: ``tc qdisc netem delay
10ms`` on each end of the pair, or, on a kernel without netem, a user-space delay line
(``benchmarks/delayline.py``, a TCP relay in the far namespace holding each chunk 10 ms each
way, in front of Triton on the far side's loopback). Everything is torn down at the end, also
after a failure or Ctrl-C; nothing is sent outside this machine. Not a test: it prints figures
and which goals are met.

Figures, and how each is measured:
- RTT: p50 of ``GET /v2/health/live`` over one kept-alive connection through the delay.
- the server's own capacity at that distance: wrk at 4 × ``--concurrency`` connections through
  the delay (its ideal is 4 × C/RTT, so only the server, and the path's CPU, can bind it). Printed
  beside it: wrk at C with no delay (through a 0 ms delay line when the relay is used) and
  straight to Triton, what the relay costs; with no delay all C requests queue at Triton and
  its batcher forms larger batches, so that figure is not reachable 20 ms away.
- closed loop at C: ours and wrk (``-t2``) through the delay; goal: ours >= 90 % of
  min(C / RTT, capacity).
- open loop at 80 % of what ours reached (at most ``--rate-cap`` in flight): goals: requests
  answered per second within 1 % of the rate; p50 within 2 ms of RTT + the server's own
  time, which is Triton's own ``nv_inference_request_duration_us`` per request over that run
  (its metrics port; queue and compute at that very load). The unloaded time, wrk at 1
  connection without delay, is printed beside it.

Run (as root): python benchmarks/bench_distance.py [--concurrency 256] [--delay-ms 10]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import wrk  # noqa: E402  (benchmarks/wrk.py)

HTTP_PORT, METRICS_PORT = 8000, 8002
DELAYED_PORT, UNDELAYED_PORT = 9000, 9001  # the delay line's, when it is used


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(args)}: {(done.stderr or done.stdout).strip()}")
    return done


class FarSide:
    """A network namespace joined to this one by a veth pair, a delay on the way, and the
    processes we started in it. ``close`` undoes everything, whatever was built."""

    def __init__(self, delay_ms: float, subnet: int):
        tag = os.getpid() % 100000
        self.ns = f"bench-far-{tag}"
        self.near_if, self.far_if = f"bfn{tag}", f"bff{tag}"
        self.near, self.far = f"10.254.{subnet}.1", f"10.254.{subnet}.2"
        self.delay_ms = delay_ms
        self.mode = ""        # "netem" or "delay line"
        self.relays: list[subprocess.Popen] = []
        self.built = False

    def build(self) -> None:
        taken = sh("ip", "-4", "-o", "addr").stdout + sh("ip", "-4", "route").stdout
        if f"10.254.{self.near.split('.')[2]}." in taken:
            raise RuntimeError(f"{self.near}/30 is in use here: pass another --subnet")
        sh("ip", "netns", "add", self.ns)
        self.built = True
        sh("ip", "link", "add", self.near_if, "type", "veth", "peer", "name", self.far_if)
        sh("ip", "link", "set", self.far_if, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.near}/30", "dev", self.near_if)
        sh("ip", "link", "set", self.near_if, "up")
        self.inside("ip", "addr", "add", f"{self.far}/30", "dev", self.far_if)
        self.inside("ip", "link", "set", self.far_if, "up")
        self.inside("ip", "link", "set", "lo", "up")
        # netem at 0 first: the no-delay figures are measured before the delay is set
        tried = sh("tc", "qdisc", "add", "dev", self.near_if, "root", "netem", "delay", "0ms",
                   check=False)
        if tried.returncode == 0:
            self.inside("tc", "qdisc", "add", "dev", self.far_if, "root", "netem", "delay",
                        "0ms")
            self.mode = "netem"
        else:
            self.mode = "delay line"
            self.netem_error = tried.stderr.strip()

    def inside(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns, *args, check=check)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def server_host(self) -> str | None:
        """Where Triton listens: every address of the far namespace (its veth address, and its
        loopback for the delay line)."""
        return None

    def start_relays(self) -> None:
        if self.mode != "delay line":
            return
        for port, delay in ((DELAYED_PORT, self.delay_ms), (UNDELAYED_PORT, 0.0)):
            relay = subprocess.Popen(
                [*self.prefix(), sys.executable, str(HERE / "delayline.py"),
                 "--listen", f"{self.far}:{port}", "--to", f"127.0.0.1:{HTTP_PORT}",
                 "--delay-ms", str(delay)],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            self.relays.append(relay)
            if relay.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the delay line on port {port} did not start")

    def url(self, delayed: bool) -> str:
        """The server's URL from here, with or without the delay (netem: sets it)."""
        if self.mode == "netem":
            delay = f"{self.delay_ms if delayed else 0}ms"
            sh("tc", "qdisc", "change", "dev", self.near_if, "root", "netem", "delay", delay)
            self.inside("tc", "qdisc", "change", "dev", self.far_if, "root", "netem", "delay",
                        delay)
            return f"http://{self.far}:{HTTP_PORT}"
        return f"http://{self.far}:{DELAYED_PORT if delayed else UNDELAYED_PORT}"

    def relay_cpu(self) -> float:
        """CPU seconds the delay lines have used so far (0 under netem)."""
        return sum(cpu_seconds(relay.pid) for relay in self.relays)

    def direct_url(self) -> str:
        """Triton's own port, past the delay line (the same as :meth:`url` under netem)."""
        return f"http://{self.far}:{HTTP_PORT}"

    def close(self) -> None:
        for relay in self.relays:
            relay.terminate()
        for relay in self.relays:
            try:
                relay.wait(5)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
        if self.built:
            # deleting the namespace deletes the far end, and with it the pair
            sh("ip", "netns", "del", self.ns, check=False)
        sh("ip", "link", "del", self.near_if, check=False)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_rtt(url: str, count: int = 50) -> float:
    """p50 ms of ``GET /v2/health/live`` over one kept-alive connection."""
    host, port = url.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    took = []
    try:
        for _ in range(count + 3):
            began = time.perf_counter()
            connection.request("GET", "/v2/health/live")
            connection.getresponse().read()
            took.append((time.perf_counter() - began) * 1000)
    finally:
        connection.close()
    return statistics.median(took[3:])


def ping_rtt(far: FarSide) -> str:
    done = sh("ping", "-c", "10", "-i", "0.05", "-q", far.far, check=False)
    line = [x for x in done.stdout.splitlines() if "min/avg" in x]
    return line[0].split("=")[1].strip() if line else "no answer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="each way (RTT: twice)")
    parser.add_argument("--requests", type=int, default=30000, help="ours, closed loop")
    parser.add_argument("--rate-cap", type=int, default=1024,
                        help="open loop: the cap on requests in flight")
    parser.add_argument("--seconds", type=int, default=8, help="each wrk run")
    parser.add_argument("--subnet", type=int, default=20, help="the pair gets 10.254.N.0/30")
    parser.add_argument("--repository", type=Path, default=ROOT / "tests" / "repos" / "add_sub")
    parser.add_argument("--lab-only", action="store_true",
                        help="namespace, delay, server and wrk only (not our generator)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_distance needs root (it builds a network namespace): run it as root")
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install iproute2")
    if not wrk.available():
        sys.exit("wrk not found: apt-get install wrk")
    signal.signal(signal.SIGTERM, interrupted)

    from deployer import samples, servertime, triton
    from deployer.repository import Repository

    repo = Repository.load(args.repository)
    model = repo.top_level()[0]
    inputs = samples.generated_inputs(repo.models[model])
    server = triton.find_server(None, lambda line: print(f"  {line}"))
    tag = f"bench-distance-{os.getpid()}"
    far = FarSide(args.delay_ms, args.subnet)
    C = args.concurrency
    print(f"load at a distance, as root: network namespace {far.ns}, veth {far.near} <-> "
          f"{far.far}; everything stays on this machine and is removed at the end")
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as undo:
        undo.callback(far.close)
        undo.callback(lambda: triton.stop(tag, 10))
        far.build()
        if far.mode == "netem":
            print(f"delay: netem, {args.delay_ms:g} ms on each end of the pair")
        else:
            print(f"delay: netem unavailable ({far.netem_error}); user-space delay line in "
                  f"{far.ns}: {args.delay_ms:g} ms each way, in front of Triton on its loopback")
        folder, _ = triton.serve_folder(server, repo, Path(work) / "served", lambda _: None)
        command = triton.tritonserver_command(server, folder, host=far.server_host(),
                                              http_port=HTTP_PORT, grpc_port=None,
                                              metrics_port=METRICS_PORT)
        log = Path(work) / "tritonserver.log"
        pid = triton.start([*far.prefix(), *command], server.process_env(), log, tag)
        triton.wait_ready(far.direct_url(), pid, log, 120, lambda _: None)
        far.start_relays()

        from deployer.client import KServeClient

        def request(url: str):
            return KServeClient(url).load_request(model, inputs)

        sample = request(far.direct_url())
        body, headers = sample.body, dict(sample.headers)
        path = f"/v2/models/{model}/infer"

        def wrk_at(url: str, connections: int, threads: int = 2) -> dict:
            return wrk.run(url + path, body, headers, connections, args.seconds, threads)

        # -- no delay
        near_url = far.url(delayed=False)
        rtt0 = http_rtt(near_url)
        unloaded = wrk_at(near_url, 1, 1)
        capacity = wrk_at(near_url, C)
        direct = wrk_at(far.direct_url(), C) if far.mode == "delay line" else None
        # -- delayed
        url = far.url(delayed=True)
        rtt = http_rtt(url)
        pinged = ping_rtt(far)
        print(f"model {model}, {len(body)}-byte body; RTT (p50 of a health GET, one kept-alive "
              f"connection): {rtt:.2f} ms with the delay, {rtt0:.2f} ms without; ping: {pinged}")
        print(f"server's own capacity, wrk -t2 -c{C} without delay"
              f"{' (through a 0 ms delay line)' if direct else ''}: "
              f"{capacity['throughput_rps']:.0f} req/s"
              + (f"; straight to Triton: {direct['throughput_rps']:.0f} req/s (the delay line "
                 f"costs {1 - capacity['throughput_rps'] / direct['throughput_rps']:.0%})"
                 if direct else ""))
        print(f"unloaded, wrk -t1 -c1 without delay: p50 {unloaded['p50']:.3f} ms, "
              f"{unloaded['throughput_rps']:.0f} req/s")

        saturated = wrk_at(url, 4 * C)
        print(f"server's own capacity {rtt:.0f} ms away, wrk -t2 -c{4 * C} through the delay: "
              f"{saturated['throughput_rps']:.0f} req/s")
        relay_before, began = far.relay_cpu(), time.perf_counter()
        theirs = wrk_at(url, C)
        relay_share = (far.relay_cpu() - relay_before) / (time.perf_counter() - began)
        ideal = C / (rtt / 1000)
        bound = min(ideal, saturated["throughput_rps"])
        print(f"\nclosed loop, C={C}: ideal C/RTT {ideal:.0f} req/s, capacity at this distance "
              f"{saturated['throughput_rps']:.0f}: the bound is {bound:.0f}")
        print(f"{'':<24}{'req/s':>10}{'of bound':>10}{'p50 ms':>10}{'p90 ms':>10}"
              f"{'p99 ms':>10}{'errors':>8}")
        print(f"{'wrk -t2 (reference)':<24}{theirs['throughput_rps']:>10.0f}"
              f"{theirs['throughput_rps'] / bound:>10.0%}{theirs['p50']:>10.2f}"
              f"{theirs['p90']:>10.2f}{theirs['p99']:>10.2f}{theirs['errors']:>8}")
        if far.mode == "delay line":
            print(f"(the delay line used {relay_share:.0%} of a core during wrk's run)")
        if args.lab_only:
            return

        from deployer import load

        ours = load.run(model, request(url), args.requests, C)
        lat = ours.latency_ms
        print(f"{'deployer load':<24}{ours.throughput_rps:>10.0f}"
              f"{ours.throughput_rps / bound:>10.0%}{lat['p50']:>10.2f}{lat['p90']:>10.2f}"
              f"{lat['p99']:>10.2f}{ours.error_count:>8}")
        met = ours.throughput_rps >= 0.9 * bound
        print(f"ours: {ours.throughput_rps / bound:.1%} of the bound (goal >= 90%: "
              f"{'met' if met else 'NOT met'}); {ours.requests} requests in {ours.windows} "
              f"windows, stable={ours.stable}, window cv {cv(ours)}")

        rate = round(0.8 * ours.throughput_rps, 1)
        metrics = f"http://{far.far}:{METRICS_PORT}/metrics"
        before = servertime.read(metrics)
        paced = load.run(model, request(url), max(args.requests // 2, int(rate * 6)),
                         args.rate_cap, rate=rate)
        time.sleep(servertime.SETTLE_SECONDS)
        change = servertime.delta(before, servertime.read(metrics))
        own = servertime.model_figures(change[model])
        expected = rtt + own["server_ms"]
        p50 = paced.latency_ms["p50"]
        answered_off = paced.throughput_rps / rate - 1
        sent_off = (paced.sent_rps / rate - 1) if paced.sent_rps else float("nan")
        print(f"\nopen loop at {rate:.0f} req/s (80% of ours closed-loop), at most "
              f"{args.rate_cap} in flight, {paced.processes} processes:")
        print(f"  answered {paced.throughput_rps:.1f} req/s ({answered_off:+.2%}), sent "
              f"{paced.sent_rps:.1f} req/s ({sent_off:+.2%}); goal within 1%: "
              f"{'met' if abs(answered_off) <= 0.01 and abs(sent_off) <= 0.01 else 'NOT met'}"
              f"; dropped {paced.dropped}, late {paced.late}, errors {paced.error_count}")
        print(f"  p50 {p50:.2f} ms (p90 {paced.latency_ms['p90']:.2f}, p99 "
              f"{paced.latency_ms['p99']:.2f}); RTT {rtt:.2f} + server's own "
              f"{own['server_ms']:.2f} ms (Triton's request duration per request in this run; "
              f"queue {own['queue_ms']:.2f}, batch {own['batch_size']}) = {expected:.2f} ms; "
              f"goal within 2 ms: {'met' if abs(p50 - expected) <= 2 else 'NOT met'} "
              f"({p50 - expected:+.2f} ms)")
        print(f"  {paced.requests} requests in {paced.windows} windows, stable={paced.stable}, "
              f"window cv {cv(paced)}")


def interrupted(signum, frame) -> None:
    """SIGTERM tears down like Ctrl-C."""
    raise KeyboardInterrupt


def cv(result) -> str:
    spread = getattr(result, "window_cv", None) or {}
    return ", ".join(f"{k} {v:.1%}" for k, v in spread.items()) or "n/a"


if __name__ == "__main__":
    main()
