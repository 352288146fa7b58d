"""The fixed memory cost of one model, per backend, measured by the runtime itself before the
backend's first load.

A model costs the process more than its weights: an ONNX Runtime session, a scikit-learn
estimator's Python objects, the buffers of its first run, the runtime's own records. For
tiny models that fixed part is nearly everything (an ONNX session that has run once holds
~110 KiB for a 32-byte initializer), and charging file size instead under-counts by 10-20x,
which is how a "full" runtime runs out of memory.

So when a backend that can write a probe model (`Backend.write_probe`) is first used (ONNX at
start-up, the others at their first load: `runtimes.backend_setup`), the runtime loads probes
through a model manager of its own (the path a real model takes: puller, backend, records;
it holds nothing else, its capacity refuses no probe, no observer hears of them) and runs
each once through a V2 inference service on it (the signature index of a first request),
and reads its resident memory (/proc/self/statm):

- warm-up: two probes first. The first pays the backend's one-time setup (ONNX Runtime's
  environment and thread pools, ~10 MiB; torch's JIT), once, not per model
  (`BackendCost.one_time_bytes`: with the import, the backend's overhead, which
  `runtimes.backend_setup` charges to the runtime's used bytes). The second gives a first figure of
  the cost per model, which sets how many probes follow: enough for `TARGET_GROWTH` bytes
  (page-sized readings are then ~1% apart), between MIN_PROBES and `count`. Memory a probe
  leaves behind is reused by later models, so fewer probes of a costly backend (LightGBM,
  ~650 KiB) mean less of it.
- then those probes, kept loaded together, so freed memory cannot be reused between them:
  their growth, less the bytes their backend measured for them, divided by their number, is
  the fixed cost of each model (`BackendCost.per_model_bytes`), added to every model's size.
- glibc's malloc keeps freed memory mapped: `malloc_trim(0)` before each reading returns it
  to the system, so the readings count live memory, and after the probes are unloaded, so
  their freed pages do not hide the first real models' growth.
- Python's own allocator cannot give back the pools the imports left partly free, and a
  backend whose models are mostly Python objects (scikit-learn: ~5 KiB each) fills them
  first, so its probes grow RSS by less than real models later do. A few more probes run
  under `tracemalloc`, and the cost per model is never less than the Python bytes each
  allocated (`BackendCost.python_bytes`).

It runs with the runtime's other loads and unloads held back (`runtimes.load_gate`: they
would show in the readings) and takes a fraction of a second per backend (the backend's
import, before it, takes longer: seconds for torch or scikit-learn). Off (`model_fixed_cost`
set) or impossible (no /proc, a GPU device, whose memory is not the host's RSS), models of a
backend are charged `model_fixed_cost` (default 0); a backend whose probe fails is charged it
too.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from runtimes.backends.base import Backend, Probe
from runtimes.dataplane import InferenceService, InferInput, InferRequest
from runtimes.datatypes import v2_datatype_of
from runtimes.memory import STATM, release_free_memory, resident_bytes
from runtimes.model_manager import ModelManager
from runtimes.sizes import format_size

__all__ = ["BackendCost", "PROBE_PREFIX", "calibrate_backend", "settled_rss"]

log = logging.getLogger(__name__)

#: Model ids of the probes, which no client sees (they live in a model manager of their own).
PROBE_PREFIX = "__size_probe__"
WARM_UPS = 2
PROBES = 24
TARGET_GROWTH = 2 << 20
#: A probe that grew memory by this much more than most did paid a one-off (see _split_one_offs).
ONE_OFF_FLOOR = 256 << 10
#: Probes run under tracemalloc, after the others (it slows allocations and takes memory itself).
TRACED_PROBES = 8
#: A backend whose probes load slowly stops early, with no fewer than MIN_PROBES.
TIME_BUDGET_S = 1.0
MIN_PROBES = 4


@dataclass(frozen=True)
class BackendCost:
    """What calibration found for one backend."""

    backend: str
    per_model_bytes: int  # the fixed cost charged to each model of this backend
    one_time_bytes: int  # what its probes cost beyond that: the backend's setup, paid once
    python_bytes: int  # of each probe, the Python allocations (a floor of per_model_bytes)
    probes: int
    seconds: float


def settled_rss() -> int:
    """Resident memory once malloc's free memory is given back."""
    release_free_memory()
    return resident_bytes()


async def calibrate_backend(manager: ModelManager, service: InferenceService, backend: Backend,
                            count: int = PROBES) -> BackendCost | None:
    """Measure one backend's fixed cost per model (module docstring) through `manager` and
    `service`, which hold nothing else; None when the backend has no probe model or there is
    no /proc/self/statm. Raises whatever a probe's writing, loading or running raised."""
    if not STATM.exists():
        log.info("size calibration off: no /proc/self/statm to read resident memory from")
        return None
    with tempfile.TemporaryDirectory(prefix="meshserve-probes-") as folder:
        probe = await asyncio.to_thread(backend.write_probe, Path(folder))
        if probe is None:
            log.info("size calibration: backend %s has no probe model; its models are charged %s each",
                     backend.name, format_size(manager.config.model_fixed_cost))
            return None
        cost = await _calibrate_backend(manager, service, backend.name, probe, count)
    log.info("size calibration: backend %s costs %s per model (%d bytes, %d probes; %s of it Python "
             "objects), %s once, in %.2fs", cost.backend, format_size(cost.per_model_bytes),
             cost.per_model_bytes, cost.probes, format_size(cost.python_bytes),
             format_size(cost.one_time_bytes), cost.seconds)
    return cost


async def _calibrate_backend(manager: ModelManager, service: InferenceService, backend: str, probe: Probe,
                             count: int) -> BackendCost:
    started = time.perf_counter()
    ids: list[str] = []
    inputs = [InferInput(name, v2_datatype_of(array), list(array.shape), array) for name, array in probe.inputs.items()]

    async def load_and_run() -> int:
        model_id = f"{PROBE_PREFIX}{backend}/{len(ids)}"
        ids.append(model_id)
        size = await manager.load(model_id, backend, str(probe.model_file))
        await service.infer(InferRequest(model_id, inputs))
        return size

    steps: list[tuple[int, int]] = []  # (RSS growth, bytes the backend measured) of each probe
    try:
        before = settled_rss()
        for _ in range(WARM_UPS):
            await load_and_run()
        last = warm = settled_rss()
        deadline = started + TIME_BUDGET_S
        while len(steps) < count and (len(steps) < MIN_PROBES or (
                time.perf_counter() < deadline and last - warm < TARGET_GROWTH)):
            size = await load_and_run()
            now = settled_rss()
            steps.append((now - last, size))
            last = now
        python_bytes = await _traced_bytes_per_model(load_and_run)
    finally:
        for model_id in ids:
            await manager.unload(model_id)
        release_free_memory()
    usual, one_offs = _split_one_offs(steps)
    per_model = max(sum(grown - size for grown, size in usual) // len(usual), python_bytes, 0)
    one_time = max(warm - before - WARM_UPS * per_model, 0) + sum(max(grown - per_model, 0) for grown, _ in one_offs)
    return BackendCost(backend, per_model, one_time, python_bytes, len(usual), time.perf_counter() - started)


async def _traced_bytes_per_model(load_and_run) -> int:
    """Python bytes (numpy's included) that each of TRACED_PROBES probes allocated and kept,
    less what the backend measured for it."""
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        measured = [await load_and_run() for _ in range(TRACED_PROBES)]
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        if started_here:
            tracemalloc.stop()
    return max((kept - sum(measured)) // TRACED_PROBES, 0)


def _split_one_offs(steps: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The probes that grew memory as most did, and those that also paid a one-off: a library's
    setup for one more thread (LightGBM's first call on another worker thread: ~16 MiB)."""
    median = sorted(grown for grown, _ in steps)[len(steps) // 2]
    limit = median + max(3 * median, ONE_OFF_FLOOR)
    return [s for s in steps if s[0] <= limit], [s for s in steps if s[0] > limit]
