"""Puller throughput against plain boto3, in the same run, from the same moto S3 server.

Uploads one object (default 200 MB) to a moto server (its own process, on loopback), then
alternates: the puller pulling it into a fresh cache (ranged parallel GETs, sha256 of the
bytes, verification, rename into place) and boto3's ``download_file`` (its default
TransferConfig: 8 MB parts, 10 threads, no hashing). Prints each run, the median throughput
of each, and the ratio puller/boto3 (target: at least 0.9).

    .venv/bin/python bench/puller_throughput.py [--size-mb 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3.s3.transfer  # noqa: E402

from puller import Puller  # noqa: E402
from tests.support.moto_server import MotoServer  # noqa: E402

BUCKET = "bench-models"
KEY = "big/model.bin"


async def pull_once(work: Path, server: MotoServer, round_no: int) -> tuple[float, int, str]:
    cache = work / f"cache-{round_no}"
    env = {"AWS_ACCESS_KEY_ID": server.access_key_id, "AWS_SECRET_ACCESS_KEY": server.secret_access_key,
           "AWS_ENDPOINT_URL": server.endpoint_url, "AWS_REGION": server.region}
    puller = Puller(cache, env=env)
    try:
        start = time.perf_counter()
        pulled = await puller.pull("bench", f"s3://{BUCKET}/{KEY}")
        elapsed = time.perf_counter() - start
        await puller.release("bench")
    finally:
        await puller.aclose()
    shutil.rmtree(cache, ignore_errors=True)
    return elapsed, pulled.size_bytes, pulled.digest


def boto3_once(work: Path, server: MotoServer) -> float:
    client = server.client()
    dest = work / "boto3-model.bin"
    start = time.perf_counter()
    client.download_file(BUCKET, KEY, str(dest), Config=boto3.s3.transfer.TransferConfig())
    elapsed = time.perf_counter() - start
    assert dest.stat().st_size > 0
    dest.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = args.size_mb * 1024 * 1024
    mb = size / 1e6

    with MotoServer(auth=False) as server, tempfile.TemporaryDirectory(prefix="puller-bench-") as tmp:
        work = Path(tmp)
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        source = work / "source.bin"
        with open(source, "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(1024 * 1024))
        client.upload_file(str(source), BUCKET, KEY)
        source.unlink()
        print(f"object: s3://{BUCKET}/{KEY}, {args.size_mb} MiB, moto {server.endpoint_url}, "
              f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, boto3 {boto3.__version__}")

        # One warm-up of each (connection pools, moto's first-read costs), not counted.
        asyncio.run(pull_once(work, server, -1))
        boto3_once(work, server)

        puller_times: list[float] = []
        boto3_times: list[float] = []
        for i in range(args.rounds):
            elapsed, got, digest = asyncio.run(pull_once(work, server, i))
            assert got == size, (got, size)
            puller_times.append(elapsed)
            boto3_times.append(boto3_once(work, server))
            print(f"round {i + 1}: puller {elapsed:6.2f}s ({mb / elapsed:7.1f} MB/s)   "
                  f"boto3 download_file {boto3_times[-1]:6.2f}s ({mb / boto3_times[-1]:7.1f} MB/s)")

        p_med, b_med = statistics.median(puller_times), statistics.median(boto3_times)
        ratio = b_med / p_med
        print(f"median: puller {mb / p_med:.1f} MB/s, boto3 {mb / b_med:.1f} MB/s, "
              f"throughput ratio puller/boto3 = {ratio:.2f} (target >= 0.9) {'OK' if ratio >= 0.9 else 'BELOW TARGET'}")
        print(f"digest of the pulled model: {digest}")


if __name__ == "__main__":
    main()
