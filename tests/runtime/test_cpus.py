"""runtimes.cpus: the cores a runtime may use, from its affinity and a cgroup's CPU quota.

The cgroup files are written into a temporary folder laid out as /sys/fs/cgroup is (v2 and v1):
this machine's own cgroup may have no quota, so the quota cases cannot be read from it."""

import os

import pytest

from runtimes.cpus import cgroup_cpu_quota, usable_cpus
from runtimes.settings import RuntimeSettings


def affinity() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("cpu_max", "cores"), [("150000 100000", 1.5), ("50000 100000", 0.5), ("200000", 2.0)])
def test_a_cgroup_v2_quota_in_cores(tmp_path, cpu_max, cores):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert cgroup_cpu_quota(tmp_path) == cores


def test_no_quota_in_v2_or_v1_or_no_files(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None  # nothing to read
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) is None


def test_a_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("250000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.5


def test_garbage_in_the_files_is_no_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("lots of cpu\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota_rounded_up(tmp_path):
    assert usable_cpus(tmp_path) == affinity()  # no quota: the affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert usable_cpus(tmp_path) == 1  # half a core still runs one thing at a time
    (tmp_path / "cpu.max").write_text(f"{(affinity() + 8) * 100000} 100000\n")
    assert usable_cpus(tmp_path) == affinity()  # a quota above the affinity does not add cores


def test_the_runtime_sizes_threads_and_batches_by_its_affinity():
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        settings = RuntimeSettings()
    finally:
        os.sched_setaffinity(0, before)
    assert settings.max_batches_at_once == 1
    assert settings.infer_threads == 2  # at least two, so one slow model does not hold every request
