"""Registry at scale: 100,000 registered models and 100 instances in a real etcd.

Measures, in one run:
- write time of the records (concurrent puts, for reference);
- mirror sync: time from start until a `Mirror` of `models/` holds every record
  (paged range reads), and the resident memory it added;
- placement decision time: `choose_instance` over the 100 instances (each holding
  copies, so the LRU part of the engine does real work) for 2,000 random models,
  p50/p99/max in ms against the 5 ms target.
Not yet measured (needs the instance agent and controller of issue 4): etcd writes
per second the fabric generates when idle and under load.

    python bench/registry_scale.py [--models 100000] [--instances 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.etcd.client import EtcdClient  # noqa: E402
from mesh.etcd.mirror import Mirror  # noqa: E402
from mesh.etcd.keys import Keys  # noqa: E402
from mesh.domain.placement import choose_instance  # noqa: E402
from mesh.domain.records import HeldCopy, InstanceRecord, ModelRecord, from_document, to_document  # noqa: E402
from tests.support.etcd_server import EtcdServer  # noqa: E402

MIB = 1 << 20


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_models(count: int, rng: random.Random) -> list[ModelRecord]:
    return [ModelRecord(f"model-{i:06d}", "onnx" if i % 3 else "pytorch", f"s3://models/m{i}",
                        registered_ms=1, last_used_ms=rng.randrange(1, 10**6),
                        size_estimate_bytes=rng.randrange(1, 200) * MIB) for i in range(count)]


def make_instances(count: int, models: list[ModelRecord], copies_each: int, rng: random.Random) -> list[InstanceRecord]:
    instances = []
    for i in range(count):
        held = {m.model_id: HeldCopy(m.size_estimate_bytes, rng.randrange(1, 10**6), in_flight=rng.choice((0, 0, 0, 1)))
                for m in rng.sample(models, copies_each)}
        used = sum(c.size_bytes for c in held.values())
        instances.append(InstanceRecord(f"inst-{i:03d}", f"10.0.{i // 250}.{i % 250}:8085", capacity_bytes=used + 64 * MIB,
                                        used_bytes=used, zone=f"zone-{i % 3}", model_types=("onnx", "pytorch"),
                                        copies=held))
    return instances


async def put_all(client: EtcdClient, items: list[tuple[str, dict]], parallel: int = 64) -> float:
    started = time.perf_counter()
    queue = iter(items)

    async def worker() -> None:
        for key, document in queue:
            await client.put(key, document)

    await asyncio.gather(*(worker() for _ in range(parallel)))
    return time.perf_counter() - started


async def run(models_count: int, instances_count: int) -> None:
    rng = random.Random(7)
    keys = Keys(fabric="scale")
    models = make_models(models_count, rng)
    instances = make_instances(instances_count, models, copies_each=max(1, models_count // (instances_count * 10)), rng=rng)
    with EtcdServer(name="scale") as server:
        async with EtcdClient([server.endpoint]) as client:
            write_s = await put_all(client, [(keys.model(m.model_id), to_document(m)) for m in models]
                                    + [(keys.instance(i.instance_id), to_document(i)) for i in instances])
            before = rss_bytes()
            started = time.perf_counter()
            async with Mirror(client, keys.models) as mirror:
                await mirror.wait_ready(timeout=300)
                sync_s = time.perf_counter() - started
                grown = rss_bytes() - before
                assert len(mirror) == models_count, f"mirror holds {len(mirror)} of {models_count}"
                async with Mirror(client, keys.instances) as instance_mirror:
                    await instance_mirror.wait_ready(timeout=60)
                    views = [from_document(InstanceRecord, e.value, k).to_view() for k, e in instance_mirror.items()]
                entries = list(mirror.items())  # once: a list per sample made 100k runs quadratic
                model_views = {name: from_document(ModelRecord, entry.value, name).to_view() for name, entry in
                               (rng.choice(entries) for _ in range(2000))}
    timings = []
    for view in model_views.values():
        t0 = time.perf_counter()
        choose_instance(view, views)
        timings.append((time.perf_counter() - t0) * 1000)
    timings.sort()
    p = lambda q: timings[min(len(timings) - 1, int(q * len(timings)))]  # noqa: E731
    print(f"## Registry scale: {models_count:,} models, {instances_count} instances "
          f"({sum(len(v.copies) for v in views):,} copies held)\n")
    print("| measure | value |\n|---|---:|")
    print(f"| write all records (64 concurrent puts) | {write_s:.1f} s ({(models_count + instances_count) / write_s:,.0f}/s) |")
    print(f"| mirror sync of models/ (paged range read) | {sync_s:.2f} s |")
    print(f"| memory added by the mirror | {grown / MIB:.0f} MiB ({grown / models_count:.0f} B/model) |")
    print(f"| placement decision p50 / p99 / max | {p(0.5):.2f} / {p(0.99):.2f} / {timings[-1]:.2f} ms |")
    print(f"| placement decision mean | {statistics.fmean(timings):.2f} ms (target < 5 ms) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args.models, args.instances))


if __name__ == "__main__":
    main()
