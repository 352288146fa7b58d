"""What one dashboard document costs the router, against one `fabricStatus` reply.

The router builds a document (`router.dashboard`) after each batch of fabric changes while
a page is open, at most four a second. This measures, in one run and in memory (no etcd, no
sockets; a stand-in view holds generated records):
- baseline: `MeshAdminServicer.fabric_status()`, what one `meshserve top` frame costs the server;
- document: `Dashboard.current()`, i.e. fabricStatus and listModels from one view state,
  regrouped into the JSON document with a full hour of samples, and encoded;
for a few fabric sizes, printing milliseconds (median of repeats), the ratio to the
baseline, and the document's size.

    python bench/dashboard_document.py [--sizes 100,1000,10000] [--instances 20] [--repeats 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.api.mesh_admin import MeshAdminServicer  # noqa: E402
from mesh.domain.records import HeldCopy, InstanceRecord, ModelRecord  # noqa: E402
from router.dashboard.history import Sample  # noqa: E402
from router.dashboard.service import Dashboard  # noqa: E402
from router.traffic import TrafficCounters  # noqa: E402

MIB = 1 << 20


class StandInView:
    """The reads `MeshAdminServicer` and `Dashboard` make of a `FabricView`, over fixed records."""

    in_sync = True

    def __init__(self, models: dict[str, ModelRecord], instances: dict[str, InstanceRecord]) -> None:
        self._models, self._instances = models, instances

    def is_ready(self) -> bool:
        return True

    def model_ids(self):
        return list(self._models)

    def model(self, model_id):
        return self._models.get(model_id)

    def vmodel_ids(self):
        return []

    def vmodel(self, vmodel_id):
        return None

    def all_instances(self):
        return dict(self._instances)

    def subscribe(self, listener):
        return lambda: None

    async def wait_ready(self, timeout):
        return None


def fabric(models: int, instances: int, rng: random.Random) -> StandInView:
    now = int(time.time() * 1000)
    records = {f"model-{i:05d}": ModelRecord(f"model-{i:05d}", "onnx", f"s3://models/m{i}", registered_ms=1,
                                             last_used_ms=now - rng.randrange(10**6), size_estimate_bytes=MIB)
               for i in range(models)}
    ids = list(records)
    held = {}
    for i in range(instances):
        copies = {m: HeldCopy(MIB, now - rng.randrange(10**6), rate_per_min=rng.random() * 10)
                  for m in rng.sample(ids, min(len(ids), max(1, models // instances * 2)))}
        held[f"inst-{i:02d}"] = InstanceRecord(f"inst-{i:02d}", f"10.0.0.{i}:8085", capacity_bytes=len(copies) * MIB * 2,
                                               used_bytes=len(copies) * MIB, copies=copies)
    return StandInView(records, held)


def median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"{'models':>7} {'fabricStatus ms':>16} {'document ms':>12} {'ratio':>6} {'document KiB':>13}")
    for models in (int(s) for s in args.sizes.split(",")):
        view = fabric(models, args.instances, rng)
        admin = MeshAdminServicer(view)
        dashboard = Dashboard(view, admin, TrafficCounters(), sample_s=10)
        for t in range(dashboard.history.length):  # a full hour of samples
            dashboard.history.add(Sample(t, 10, 600.0, 0.0, 600.0, 1, 120.0, 1, 0, 100 * MIB, 0, 200 * MIB))
        baseline = median_ms(admin.fabric_status, args.repeats)
        document = median_ms(dashboard.current, args.repeats)
        size_kib = len(dashboard.current()[1]) / 1024
        print(f"{models:>7} {baseline:>16.2f} {document:>12.2f} {document / baseline:>6.2f} {size_kib:>13.1f}")


if __name__ == "__main__":
    asyncio.run(main())
