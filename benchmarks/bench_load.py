"""Our load generator against wrk, on the same local Triton, the same request bytes, the same
concurrency, in one run (goal: ours reaches at least 1.0x wrk's throughput).

Ours is the engine (``load.run`` with ``KServeClient.load_request``: worker processes, one
event loop each); wrk (``-t2``, or one thread per connection below that) sends the very body
and headers that request carries. The two alternate, several rounds, and each side's median
round is kept: the machine's speed drifts, and neither side should get the quiet minute.

Run: python benchmarks/bench_load.py [--concurrency 4] [--requests 20000] [--seconds 5]
Needs wrk (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import wrk  # noqa: E402  (benchmarks/wrk.py)

GOAL = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians kept")
    parser.add_argument("--repository", type=Path, default=ROOT / "tests" / "repos" / "add_sub")
    args = parser.parse_args()
    if not wrk.available():
        sys.exit("wrk not found: apt-get install wrk")

    from deployer import load, samples
    from deployer.api import Deployer
    from deployer.client import KServeClient
    from deployer.repository import Repository

    repo = Repository.load(args.repository)
    model = repo.top_level()[0]
    inputs = samples.generated_inputs(repo.models[model])
    with tempfile.TemporaryDirectory() as state:
        core = Deployer(state_dir=state, progress=lambda _: None)
        deployment = core.deploy(repo.path, "local", "bench-load")
        try:
            url = deployment.endpoint["url"]
            request = KServeClient(url).load_request(model, inputs)
            body = request.body
            rounds_ours, rounds_wrk = [], []
            for _ in range(args.rounds):
                rounds_ours.append(load.run(model, request, args.requests, args.concurrency))
                rounds_wrk.append(wrk.run(request.url, body, request.headers,
                                          args.concurrency, args.seconds,
                                          threads=min(2, args.concurrency)))
            ours = sorted(rounds_ours, key=lambda r: r.throughput_rps)[len(rounds_ours) // 2]
            theirs = sorted(rounds_wrk, key=lambda r: r["throughput_rps"])[len(rounds_wrk) // 2]
        finally:
            core.teardown("bench-load")
    print(f"same local tritonserver, model {model}, the same {len(body)}-byte binary+JSON body, "
          f"concurrency {args.concurrency}, median of {args.rounds} alternating rounds")
    print("rounds, req/s: ours " + ", ".join(f"{r.throughput_rps:.0f}" for r in rounds_ours)
          + "; wrk " + ", ".join(f"{r['throughput_rps']:.0f}" for r in rounds_wrk))
    print(f"{'':<24}{'req/s':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'errors':>8}")
    print(f"{'wrk (baseline)':<24}{theirs['throughput_rps']:>10.0f}{theirs['p50']:>10.3f}"
          f"{theirs['p90']:>10.3f}{theirs['p99']:>10.3f}{theirs['errors']:>8}")
    lat = ours.latency_ms
    print(f"{f'deployer load ({ours.processes} proc)':<24}{ours.throughput_rps:>10.0f}"
          f"{lat['p50']:>10.3f}{lat['p90']:>10.3f}{lat['p99']:>10.3f}{ours.error_count:>8}")
    ratio = ours.throughput_rps / theirs["throughput_rps"]
    spread = ", ".join(f"{k} {v:.1%}" for k, v in ours.window_cv.items()) or "n/a"
    print(f"ours / wrk: {ratio:.2f}x (goal >= {GOAL:.1f}x: "
          f"{'met' if ratio >= GOAL else 'NOT met'}); ours: {ours.requests} requests in "
          f"{ours.windows} windows, stable={ours.stable}, window cv {spread}")


if __name__ == "__main__":
    main()
