"""Core figures, measured in one run and compared against their baselines:

1. CLI start: ``deployer --help`` and ``deployer targets`` wall time against
   ``python -c "import azure.ai.ml"`` (goal: under 15 % of it).
2. Local deploy-to-ready (``Deployer.deploy`` on the local target) against starting the same
   ``tritonserver`` on the same repository by hand and polling it ready (goal: within 1.3x).

Run: python benchmarks/bench_core.py [--runs N] [--repository PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], runs: int) -> list[float]:
    figures = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        figures.append(time.perf_counter() - began)
    return figures


def line(label: str, figures: list[float]) -> str:
    return (f"{label:<42} min {min(figures) * 1000:8.1f} ms   median "
            f"{statistics.median(figures) * 1000:8.1f} ms")


def by_hand(repository: Path) -> float:
    """Start the managed tritonserver ourselves and poll /v2/health/ready."""
    from deployer import runtime, server

    found = runtime.find_server()
    port, grpc, metrics = server.free_ports(3)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        proc = subprocess.Popen(found.command(
            f"--model-repository={repository}", "--http-address=127.0.0.1",
            f"--http-port={port}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
            "--metrics-address=127.0.0.1", f"--metrics-port={metrics}"),
            env=found.process_env(), stdout=open(Path(tmp) / "log", "wb"),
            stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                                timeout=2) as answer:
                        if answer.status == 200:
                            return time.perf_counter() - began
                except OSError:
                    pass
                if proc.poll() is not None:
                    raise SystemExit("tritonserver exited; see its log")
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(30)


def with_deployer(repository: Path, state: Path, index: int) -> float:
    from deployer.api import Deployer

    core = Deployer(state_dir=state, progress=lambda _: None)
    began = time.perf_counter()
    core.deploy(repository, "local", f"bench-{index}")
    seconds = time.perf_counter() - began
    core.teardown(f"bench-{index}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repository", type=Path, default=ROOT / "tests" / "repos" / "multi")
    args = parser.parse_args()
    deployer = [sys.executable, "-m", "deployer"]

    print("1. CLI start (whole process)")
    azure = timed([sys.executable, "-c", "import azure.ai.ml"], args.runs)
    helps = timed([*deployer, "--help"], args.runs)
    targets = timed([*deployer, "targets"], args.runs)
    bare = timed([sys.executable, "-c", "pass"], args.runs)
    print(line("python -c pass (interpreter floor)", bare))
    print(line('python -c "import azure.ai.ml" (baseline)', azure))
    print(line("deployer --help", helps))
    print(line("deployer targets", targets))
    for label, figures in (("--help", helps), ("targets", targets)):
        ratio = statistics.median(figures) / statistics.median(azure)
        print(f"   deployer {label}: {ratio:.1%} of the azure.ai.ml import "
              f"(goal < 15%: {'met' if ratio < 0.15 else 'NOT met'})")

    print(f"\n2. deploy-to-ready on local, {args.repository}")
    by_hand(args.repository)  # warm the page cache for both sides
    hand = [by_hand(args.repository) for _ in range(args.runs)]
    with tempfile.TemporaryDirectory() as state:
        ours = [with_deployer(args.repository, Path(state), i) for i in range(args.runs)]
    print(line("tritonserver by hand, poll ready (baseline)", hand))
    print(line("deployer deploy --target local", ours))
    ratio = statistics.median(ours) / statistics.median(hand)
    print(f"   ratio {ratio:.2f}x (goal within 1.3x: {'met' if ratio <= 1.3 else 'NOT met'})")


if __name__ == "__main__":
    main()
