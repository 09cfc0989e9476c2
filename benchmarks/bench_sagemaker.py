"""SageMaker artefact benchmark: packaging throughput against ``tar -czf``, and the whole
artefact step (package + upload to moto's S3) with and without ``uncompressed``.

    python benchmarks/bench_sagemaker.py [--size-mb 1024]

The repository is one Python-backend model with a weight file of --size-mb: float32 values of
a smooth signal plus noise, made with numpy in a few seconds (compressible like real weights,
somewhat; pure random bytes would not be).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ADD_SUB = HERE.parent / "tests" / "repos" / "add_sub" / "add_sub"


def make_repository(root: Path, size_mb: int) -> Path:
    import numpy as np

    repo = root / "repo"
    shutil.copytree(ADD_SUB, repo / "add_sub", ignore=shutil.ignore_patterns("__pycache__"))
    rng = np.random.default_rng(0)
    block = (np.sin(np.arange(1 << 20, dtype=np.float32) / 97.0)
             + rng.standard_normal(1 << 20, dtype=np.float32) * 0.01).astype(np.float16)
    with open(repo / "add_sub" / "1" / "weights.bin", "wb") as handle:
        for _ in range(size_mb // 2):  # 2 MiB per block
            handle.write(block.tobytes())
    return repo


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="weight file size (MiB)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    import logging

    import boto3

    from deployer.repository import Repository
    from deployer_plugins.sagemaker import artefacts, aws
    from moto.server import ThreadedMotoServer

    work = Path(tempfile.mkdtemp(prefix="bench-sagemaker-"))
    try:
        seconds, repo_path = timed(lambda: make_repository(work, args.size_mb))
        size = sum(p.stat().st_size for p in repo_path.rglob("*") if p.is_file())
        mb = size / 1e6
        print(f"repository: {mb:,.0f} MB in {seconds:.1f}s to make ({os.cpu_count()} cores)")
        repository = Repository.load(repo_path)
        artefact = artefacts.single(repository)

        tar_s, _ = timed(lambda: subprocess.run(
            ["tar", "-czf", str(work / "tar.tar.gz"), "-C", str(repo_path), "."], check=True))
        tar_size = (work / "tar.tar.gz").stat().st_size
        (work / "tar.tar.gz").unlink()

        def ours():
            with open(work / "ours.tar.gz", "wb") as sink:
                return artefacts.write_tar_gz(artefact, sink)

        ours_s, ours_size = timed(ours)
        (work / "ours.tar.gz").unlink()
        hash_s, _ = timed(lambda: artefacts.listing_digest([artefact], "single"))
        print(f"packaging   tar -czf: {tar_s:6.1f}s {mb / tar_s:7.1f} MB/s -> {tar_size:,} B")
        print(f"packaging   ours    : {ours_s:6.1f}s {mb / ours_s:7.1f} MB/s -> {ours_size:,} B"
              f"  ({ours_s / tar_s:.2f}x tar's time; goal <= 1.10x)")
        print(f"content key (sha256): {hash_s:6.1f}s {mb / hash_s:7.1f} MB/s")

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"})
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        config = aws.transfer_config()
        try:
            def compressed():
                digest = artefacts.listing_digest([artefact], "single")
                return artefacts.upload_tar_gz(artefact, s3, "bench", f"c/{digest}/model.tar.gz",
                                               config)

            def uncompressed():
                digest = artefacts.listing_digest([artefact], "uncompressed")
                return aws.upload_files(s3, "bench", [(f"u/{digest}/{rel}", path) for rel, path
                                                      in artefact.members], config)

            for label, fn in (("model.tar.gz (streamed)", compressed),
                              ("uncompressed prefix   ", uncompressed)):
                step_s, sent = timed(fn)
                print(f"artefact step {label}: {step_s:6.1f}s {mb / step_s:7.1f} MB/s "
                      f"({sent:,} B uploaded)")
        finally:
            server.stop()
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
