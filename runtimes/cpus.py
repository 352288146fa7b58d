"""How many CPU cores this process may really use: its affinity, capped by its cgroup's quota.

`os.cpu_count()` is the node's count. A pod limited to 2 CPUs on a 64-core node still sees 64
there, and sized by it a runtime would start 64 inference threads and run as many batches at
once, each getting a sliver of the quota. The affinity mask (taskset, a CPU manager's
exclusive cores) and the CFS quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
`cpu.cfs_period_us`, a Kubernetes CPU limit) are what bound the cores it gets.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_quota", "usable_cpus"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use at once (at least 1): its affinity, capped by its CPU quota rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(cores, 1)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in cores (1.5: a limit of 1500m), or None when there is none or none can be read."""
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, _, period = (cgroup_root / "cpu.max").read_text().strip().partition(" ")
        return None if quota == "max" else _cores(int(quota), int(period or 100_000))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: a quota of -1 is none
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us < 0 else _cores(quota_us, period_us)
    except (OSError, ValueError):
        return None


def _cores(quota_us: int, period_us: int) -> float | None:
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
