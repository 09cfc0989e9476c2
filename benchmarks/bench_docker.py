"""Deploy-to-ready on ``docker`` against ``local``, same repository, one run.

Both through the Python API (``Deployer.deploy``, then ``teardown``), alternating the targets
so that neither gets a warmer machine. ``docker`` uses the local CPU image built by
``plugins/docker/build_cpu_image.sh`` (the same tritonserver 2.51 as the managed runtime), so
the difference is the container: creating it (with the vfs storage driver, a full copy of the
image), starting it, the port proxy. Also reports teardown times.

Run: python benchmarks/bench_docker.py [--runs N] [--repository PATH] [--image TAG]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "triton-deployer/tritonserver-cpu:24.10-py3"


def line(label: str, figures: list[float]) -> str:
    return (f"{label:<36} min {min(figures):6.2f} s   median {statistics.median(figures):6.2f} s"
            f"   max {max(figures):6.2f} s")


def once(core, repository: Path, target: str, options: dict,
         index: int) -> tuple[float, float, float]:
    """Seconds to ready, of which the server's own start (after the container started), and
    seconds to tear down."""
    name = f"bench-{target}-{index}"
    began = time.perf_counter()
    try:
        deployment = core.deploy(repository, target, name, options)
        ready = time.perf_counter() - began
    finally:
        began = time.perf_counter()
        core.teardown(name)
    server = deployment.resources[-1].data.get("ready_seconds", ready)
    return ready, server, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repository", type=Path, default=ROOT / "tests" / "repos" / "multi")
    parser.add_argument("--image", default=IMAGE, help="image for the docker target")
    args = parser.parse_args()

    from deployer import runtime
    from deployer.api import Deployer

    runtime.find_server(progress=print)   # create the managed runtime first, not timed
    targets = {"local": {}, "docker": {"image": args.image, "pull": "never"}}
    ready: dict[str, list[float]] = {t: [] for t in targets}
    down: dict[str, list[float]] = {t: [] for t in targets}
    server: dict[str, list[float]] = {t: [] for t in targets}
    with tempfile.TemporaryDirectory() as state:
        core = Deployer(state_dir=state, progress=lambda _: None)
        for target, options in targets.items():   # warm-up: page cache, image layers
            once(core, args.repository, target, options, -1)
        for index in range(args.runs):
            order = list(targets) if index % 2 == 0 else list(reversed(targets))
            for target in order:
                up, own, gone = once(core, args.repository, target, targets[target], index)
                ready[target].append(up)
                server[target].append(own)
                down[target].append(gone)

    models = ", ".join(sorted(p.name for p in args.repository.iterdir() if p.is_dir()))
    print(f"deploy-to-ready, {args.runs} runs each, {args.repository} ({models})")
    for target in targets:
        print(line(f"{target} deploy", ready[target]))
    print(line("docker: server start to ready", server["docker"]))
    print(line("docker: image checks, create, start",
               [u - s for u, s in zip(ready["docker"], server["docker"])]))
    for target in targets:
        print(line(f"{target} teardown", down[target]))
    ratio = statistics.median(ready["docker"]) / statistics.median(ready["local"])
    extra = statistics.median(ready["docker"]) - statistics.median(ready["local"])
    print(f"docker overhead: {ratio:.2f}x the local median (+{extra:.2f} s to ready)")


if __name__ == "__main__":
    main()
