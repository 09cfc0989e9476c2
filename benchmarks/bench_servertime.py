"""What reading Triton's metrics costs a load level: the same 2,000-request level on the local
target with and without the readings, alternating in one run (goal: at most 2 % more wall time).

A level's wall time also depends on how many windows the load needs before three agree, so
here every level runs exactly three windows (``max_windows=3``): the same requests with and
without, back to back, their order alternating. The overhead is the median over the rounds of
with ÷ without, so a busy moment of the machine falls on one pair; medians and fastest levels
are printed beside it, and the time spent in the readings themselves (timed directly: the
figure noise cannot blur).

Run: python benchmarks/bench_servertime.py [--requests 2000] [--concurrency 1 4] [--rounds 21]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL_PERCENT = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=21,
                        help="alternating rounds; medians kept")
    parser.add_argument("--control", action="store_true",
                        help="read no metrics in either slot: the noise floor of the comparison")
    parser.add_argument("--repository", type=Path, default=ROOT / "tests" / "repos" / "add_sub")
    args = parser.parse_args()

    from deployer import samples, servertime
    from deployer.api import Deployer
    from deployer.repository import Repository
    from deployer.tester import load_sender

    repo = Repository.load(args.repository)
    model = repo.top_level()[0]
    inputs = samples.generated_steps(repo.models[model])
    worst = 0.0
    with tempfile.TemporaryDirectory() as state:
        core = Deployer(state_dir=Path(state), progress=lambda _: None)
        deployment = core.deploy(repo.path, "local", "bench-servertime")
        impl = core.registry.create("local", deployment.options, lambda _: None)
        client = impl.client(deployment)
        metrics = deployment.endpoint["metrics"]
        print(f"local target, model {model}, {args.requests} requests per level, "
              f"{args.rounds} alternating rounds; metrics at {metrics}"
              + ("; CONTROL: no readings in either slot" if args.control else ""))
        try:
            for concurrency in args.concurrency:
                walls = {"with": [], "without": []}
                reading = []
                for round_ in range(args.rounds):
                    order = ("with", "without") if round_ % 2 == 0 else ("without", "with")
                    for mode in order:
                        send, kind = load_sender(client, repo.models[model], inputs)
                        sent = itertools.count()

                        def counted(send=send, sent=sent):
                            next(sent)
                            return send()

                        spent, reader = [0.0], servertime.Reader()

                        def timed_read(url, spent=spent, reader=reader):
                            began = time.perf_counter()
                            try:
                                return reader(url)
                            finally:
                                spent[0] += time.perf_counter() - began

                        began = time.perf_counter()
                        result = servertime.timed_load(
                            metrics if mode == "with" and not args.control else None, model,
                            counted,
                            args.requests, concurrency, kind=kind, reader=timed_read,
                            max_windows=3)
                        wall = time.perf_counter() - began
                        reader.close()
                        requests = next(sent)
                        walls[mode].append(wall)
                        if mode == "with":
                            assert args.control or result.server_time, result.server_time_note
                            reading.append(spent[0] / wall * 100)
                        print(f"  concurrency {concurrency} round {round_ + 1} {mode:7}: "
                              f"{wall:6.3f} s for {requests} requests "
                              f"({result.windows} windows)"
                              + (f", reading {spent[0] * 1000:.1f} ms" if spent[0] else ""))
                fastest = [min(walls[m]) * 1000 for m in ("with", "without")]
                medians = [statistics.median(walls[m]) * 1000 for m in ("with", "without")]
                overhead = statistics.median(
                    (a / b - 1) * 100 for a, b in zip(walls["with"], walls["without"]))
                worst = max(worst, overhead)
                print(f"concurrency {concurrency}: level wall time with the readings / without: "
                      f"median {medians[0]:.1f} / {medians[1]:.1f} ms, fastest {fastest[0]:.1f}"
                      f" / {fastest[1]:.1f} ms; overhead (median of the rounds' ratios) "
                      f"{overhead:+.2f} % (goal <= {GOAL_PERCENT} %); the readings themselves: "
                      f"median {statistics.median(reading):.2f} % of the level's wall time")
        finally:
            client.close()
            core.teardown("bench-servertime")
    print(f"{'MET' if worst <= GOAL_PERCENT else 'MISSED'}: worst overhead {worst:+.2f} % "
          f"(goal <= {GOAL_PERCENT} %)")


if __name__ == "__main__":
    main()
