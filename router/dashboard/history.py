"""The dashboard's last hour: one `Sample` every few seconds in a ring buffer (pure).

A sample is made from two readings of the same sources, `sample_s` apart: the router's
`TrafficTotals` (requests, cache misses and the time they waited), the copies that
instances started or stopped holding in between (`copy_churn`, counted from the watched
instance records as they change), and the fabric's `FabricStatus` at the end (memory, the
request rate instances publish). Nothing here reads etcd, a clock or a socket.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from mesh.domain.records import InstanceRecord
from protos import mesh_admin_pb2 as admin
from router.traffic import TrafficTotals

__all__ = ["History", "Sample", "copy_churn", "history_length", "make_sample"]


@dataclass(frozen=True)
class Sample:
    """What happened in the `sample_s` seconds before `time_ms`."""

    time_ms: int
    requests: int  # calls answered by this router
    requests_per_min: float  # the same, per minute
    errors_per_min: float  # of those, answered with an error
    fabric_rate_per_min: float  # request rate the instances publish, summed (every router's traffic)
    cache_misses: int  # calls of this router that waited for a load
    miss_delay_ms: float  # their mean wait; 0 without misses
    loads: int  # copies that became loaded anywhere in the fabric
    evictions: int  # loaded copies a live instance dropped while the model stayed registered
    used_bytes: int
    loading_bytes: int
    capacity_bytes: int

    def to_json(self) -> dict:
        return asdict(self)


def history_length(sample_s: float, window_s: float = 3600.0) -> int:
    """Samples that cover `window_s` at one per `sample_s` (10 s -> 360 for an hour)."""
    return max(2, math.ceil(window_s / sample_s))


class History:
    """The newest `length` samples, oldest first (each also kept as its JSON object, made
    once when it is added, since every pushed document carries the whole hour)."""

    def __init__(self, length: int) -> None:
        self._samples: deque[tuple[Sample, dict]] = deque(maxlen=length)

    @property
    def length(self) -> int:
        return self._samples.maxlen or 0

    def add(self, sample: Sample) -> None:
        self._samples.append((sample, sample.to_json()))

    def samples(self) -> list[Sample]:
        return [sample for sample, _ in self._samples]

    def as_json(self) -> list[dict]:
        return [document for _, document in self._samples]


def make_sample(time_ms: int, elapsed_s: float, status: admin.FabricStatus, before: TrafficTotals,
                after: TrafficTotals, loads: int, evictions: int) -> Sample:
    """The sample for the `elapsed_s` seconds between two traffic readings."""
    per_min = 60.0 / elapsed_s if elapsed_s > 0 else 0.0
    misses = after.cache_misses - before.cache_misses
    waited = after.miss_seconds - before.miss_seconds
    return Sample(
        time_ms=time_ms,
        requests=after.requests - before.requests,
        requests_per_min=(after.requests - before.requests) * per_min,
        errors_per_min=(after.errors - before.errors) * per_min,
        fabric_rate_per_min=sum(i.request_rate_per_min for i in status.instances),
        cache_misses=misses,
        miss_delay_ms=waited / misses * 1000 if misses else 0.0,
        loads=loads,
        evictions=evictions,
        used_bytes=status.used_bytes,
        loading_bytes=sum(i.loading_bytes for i in status.instances),
        capacity_bytes=status.capacity_bytes,
    )


def _loaded(record: InstanceRecord | None) -> set[str]:
    return {m for m, c in record.copies.items() if not c.loading} if record is not None else set()


def copy_churn(before: Mapping[str, InstanceRecord], after: Mapping[str, InstanceRecord],
               registered: Callable[[str], bool]) -> tuple[int, int]:
    """(loads, evictions) between two states of the instance records.

    A load is a copy loaded in `after` that was not loaded on that instance in `before`. An
    eviction is a loaded copy gone from an instance still there (not one whose record
    expired: its copies were lost, not evicted) while `registered(model_id)` (an unregistered
    model's copies are unloaded, not evicted). Records that are the same object are skipped,
    so a change of one instance costs its own copies, not the fabric's.
    """
    loads = evictions = 0
    for instance_id, record in after.items():
        old = before.get(instance_id)
        if old is record:
            continue
        was, now = _loaded(old), _loaded(record)
        loads += len(now - was)
        if old is not None:
            evictions += sum(1 for m in was - now if m not in record.copies and registered(m))
    return loads, evictions

