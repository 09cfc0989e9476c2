"""Our load generator against wrk, on the same local Triton, the same request bytes, the same
concurrency, in one run (goal: ours reaches at least 70 % of wrk's throughput).

Run: python benchmarks/bench_load.py [--concurrency 4] [--requests 20000] [--seconds 5]
Needs wrk (Debian package ``wrk``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LUA = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
{headers}
"""


def wrk(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: int,
        threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        body_path = Path(tmp) / "body.bin"
        body_path.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(LUA.format(body=body_path, headers="\n".join(
            f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())))
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s",
                              "--latency", "-s", str(script), url], capture_output=True,
                             text=True, check=True).stdout
    figures = {"throughput_rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "90", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M).groups()
        figures[f"p{pct}"] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["errors"] = int(errors.group(1)) if errors else 0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians kept")
    parser.add_argument("--repository", type=Path, default=ROOT / "tests" / "repos" / "add_sub")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")

    import tritonclient.http as httpclient

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
            client = KServeClient(url)
            body, json_size = httpclient.InferenceServerClient.generate_request_body(
                client._inputs(inputs))
            # alternate the two, several rounds, and keep each one's median round: the
            # machine's speed drifts, and neither side should get the quiet minute
            rounds_ours, rounds_wrk = [], []
            for _ in range(args.rounds):
                rounds_ours.append(load.run(model, client.sender(model, inputs),
                                            args.requests, args.concurrency))
                rounds_wrk.append(wrk(f"{url}/v2/models/{model}/infer", body,
                                      {"Inference-Header-Content-Length": str(json_size)},
                                      args.concurrency, args.seconds,
                                      threads=min(2, args.concurrency)))
            ours = sorted(rounds_ours, key=lambda r: r.throughput_rps)[len(rounds_ours) // 2]
            theirs = sorted(rounds_wrk, key=lambda r: r["throughput_rps"])[len(rounds_wrk) // 2]
        finally:
            core.teardown("bench-load")
    print(f"same local tritonserver, model {model}, {len(body)}-byte binary+JSON body, "
          f"concurrency {args.concurrency}, median of {args.rounds} alternating rounds")
    print(f"{'':<24}{'req/s':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'errors':>8}")
    print(f"{'wrk (baseline)':<24}{theirs['throughput_rps']:>10.0f}{theirs['p50']:>10.3f}"
          f"{theirs['p90']:>10.3f}{theirs['p99']:>10.3f}{theirs['errors']:>8}")
    lat = ours.latency_ms
    print(f"{'deployer load':<24}{ours.throughput_rps:>10.0f}{lat['p50']:>10.3f}"
          f"{lat['p90']:>10.3f}{lat['p99']:>10.3f}{ours.error_count:>8}")
    ratio = ours.throughput_rps / theirs["throughput_rps"]
    print(f"ours / wrk: {ratio:.0%} (goal >= 70%: {'met' if ratio >= 0.7 else 'NOT met'}); "
          f"{ours.requests} requests in {ours.windows} windows, stable={ours.stable}")


if __name__ == "__main__":
    main()
