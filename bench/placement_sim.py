"""Replay model-request workloads through the placement engine and LRU in simulated time.

What it measures: the hit ratio (share of requests that find a loaded copy) and the loads
per 1,000 requests of the meshserve fabric -- the real ``mesh.domain.placement`` and
``mesh.domain.lru`` code (the latter through ``bench/copy_lru.py``, a model of the
runtime's memory accounting) driving 4 simulated instances in 2 zones -- next to two
single-cache references of the same total capacity, computed on the same request sequence
in the same run:

* plain LRU (one cache, evict least recently used until the model fits), and
* Belady's MIN rule (one cache, evict the model whose next request is farthest in the
  future; offline, it sees the whole trace). With equal sizes this is the optimum; with
  unequal sizes (as here) optimal caching is NP-hard and MIN is the customary near-optimal
  offline reference, not a strict bound.

The fabric is simulated as follows. Time is simulated (nothing sleeps). On a request the
router looks for a loaded copy; on a hit it sends the request to the copy with the fewest
requests in flight (pinning it against eviction until it completes). On a miss it asks
``choose_instance`` over the instances' published views (a view is republished when the
instance's set of copies changes and otherwise at most every 5 s, like the real agent),
and the chosen instance makes room with ``CopyLru.plan_room`` on its own current state,
then loads. Loads complete instantly (load latency is not modelled: it does not change
which copies exist, only how long the first request waits). Every 10 s a controller runs
``plan_scaling`` on a snapshot with per-model rates over the last minute and applies it.
Loads per 1,000 requests count miss loads plus controller-added copies.

Workloads (all seeded, so every run prints the same figures):

* ``zipf-0.8`` / ``zipf-1.2``: 1,000 models, Zipf popularity with that exponent, Poisson
  arrivals at 500 requests/s, model sizes log-normal (median 64 MiB, sigma 1, clipped to
  [4 MiB, 1 GiB]) independent of popularity, 20 ms service time.
* ``bursty``: 1,000 models that switch on and off (exponential on-periods of mean 1 min,
  off-periods of mean 10 min, so about 1 model in 11 is on at a time); while on, a model
  receives Poisson requests at its own rate (log-uniform between 0.2 and 20 requests/s);
  same sizes and service time as above.
* ``azure-2019``: the real trace excerpt. Source: Azure Functions 2019 invocation trace
  (Shahrad et al., "Serverless in the Wild: Characterizing and Optimizing the Serverless
  Workload at a Large Cloud Provider", USENIX ATC 2020; github.com/Azure/AzurePublicDataset),
  licensed CC-BY 4.0; 500-function sample and minutes 480-959 as selected by the vHive
  "invitro" project (github.com/vhive-serverless/invitro, commit 163911a8,
  data/traces/500/; MIT, Copyright (c) 2023 EASL and the vHive community). Each function
  is a model; its size is ``AverageAllocatedMb`` from ``memory.csv``; its per-minute
  invocation counts are replayed as Poisson arrivals within each minute (given the count,
  arrival times are uniform in the minute; fixed seed); its service time is the
  ``Average`` from ``durations.csv`` capped at 5 s (some functions run for minutes, which
  is not what an inference call does, and would pin copies for no reason).

Capacity is 5%, 10% and 25% of the total bytes of all models of the workload, split evenly
over the 4 instances (the single-cache references get the whole amount).

Usage (from the repository root)::

    .venv/bin/python bench/placement_sim.py [DATA_DIR] [--quick] [--jobs N]

DATA_DIR defaults to ../shared/data/traces/azure2019_500fn relative to the repository
root. ``--quick`` replays 1/5 of the requests (the first 96 minutes of the Azure trace);
the default replays 400,000 requests of each synthetic workload and the full 8-hour Azure
excerpt (3.04 M requests) and takes about 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import math
import multiprocessing
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from bench.copy_lru import CopyLru  # noqa: E402
from mesh.domain.placement import (  # noqa: E402
    CopyView,
    InstanceView,
    ModelView,
    NoFit,
    PlacementConfig,
    Snapshot,
    choose_instance,
    plan_scaling,
)

MiB = 1 << 20
MODEL_TYPE = "onnx"
N_INSTANCES = 4
ZONES = ("zone-a", "zone-b")
PUBLISH_MS = 5_000  # how stale an instance's published view may get (agent publishes on change)
CONTROLLER_MS = 10_000  # controller cycle
RATE_WINDOW_BUCKETS = 6  # rate = requests over the last 6 controller cycles = 1 minute
CAPACITY_FRACTIONS = (0.05, 0.10, 0.25)
SEED = 20190701


@dataclass(frozen=True)
class Workload:
    name: str
    sizes: list[int]  # bytes, by model index
    service_ms: list[int]  # by model index
    times_ms: np.ndarray  # int64, sorted
    models: np.ndarray  # int32 model index per request


# ---------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------


def _synthetic_sizes(rng: np.random.Generator, n: int) -> list[int]:
    sizes = np.exp(rng.normal(math.log(64 * MiB), 1.0, n))
    return np.clip(sizes, 4 * MiB, 1024 * MiB).astype(np.int64).tolist()


def zipf_workload(exponent: float, n_requests: int, n_models: int = 1000,
                  rate_per_s: float = 500.0) -> Workload:
    rng = np.random.default_rng(SEED)
    sizes = _synthetic_sizes(rng, n_models)
    weights = 1.0 / np.arange(1, n_models + 1) ** exponent
    popularity = rng.permutation(n_models)  # popularity rank independent of size
    ranks = rng.choice(n_models, size=n_requests, p=weights / weights.sum())
    models = popularity[ranks].astype(np.int32)
    gaps = rng.exponential(1000.0 / rate_per_s, n_requests)
    times = np.cumsum(gaps).astype(np.int64)
    return Workload(f"zipf-{exponent}", sizes, [20] * n_models, times, models)


def bursty_workload(n_requests: int, n_models: int = 1000) -> Workload:
    rng = np.random.default_rng(SEED + 1)
    sizes = _synthetic_sizes(rng, n_models)
    on_mean_ms, off_mean_ms = 60_000, 10 * 60_000
    # While on, a model gets 0.2-20 requests/s (log-uniform); about 1 in 11 models is on.
    rates = np.exp(rng.uniform(math.log(0.2), math.log(20.0), n_models)) / 1000.0  # per ms
    mean_rate = float((rates * on_mean_ms / (on_mean_ms + off_mean_ms)).sum())
    horizon = int(n_requests / mean_rate * 1.2)
    all_t: list[np.ndarray] = []
    all_m: list[np.ndarray] = []
    for m in range(n_models):
        t = float(rng.uniform(0, off_mean_ms))  # random phase: start in an off-period
        while t < horizon:
            on = float(rng.exponential(on_mean_ms))
            k = int(rng.poisson(rates[m] * on))
            all_t.append(t + rng.uniform(0, on, k))
            all_m.append(np.full(k, m, np.int32))
            t += on + float(rng.exponential(off_mean_ms))
    times = np.concatenate(all_t)
    models = np.concatenate(all_m)
    order = np.argsort(times, kind="stable")[:n_requests]
    return Workload("bursty", sizes, [20] * n_models, times[order].astype(np.int64),
                    models[order])


def azure_workload(data_dir: Path, max_minutes: int | None = None) -> Workload:
    with open(data_dir / "memory.csv", newline="") as f:
        mem = {r["HashFunction"]: float(r["AverageAllocatedMb"]) for r in csv.DictReader(f)}
    with open(data_dir / "durations.csv", newline="") as f:
        dur = {r["HashFunction"]: float(r["Average"]) for r in csv.DictReader(f)}
    with open(data_dir / "invocations.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        minute_cols = [i for i, h in enumerate(header) if h.isdigit()]
        if max_minutes is not None:
            minute_cols = minute_cols[:max_minutes]
        fn_col = header.index("HashFunction")
        rows = list(reader)
    sizes = [max(1, int(mem[r[fn_col]] * MiB)) for r in rows]
    service = [int(min(5_000.0, max(1.0, dur.get(r[fn_col], 100.0)))) for r in rows]
    counts = np.array([[int(r[c]) for c in minute_cols] for r in rows], np.int64)  # fn x min
    rng = np.random.default_rng(SEED + 2)
    fn_idx, minute_idx = np.nonzero(counts)
    reps = counts[fn_idx, minute_idx]
    models = np.repeat(fn_idx.astype(np.int32), reps)
    minute_start = np.repeat(minute_idx.astype(np.int64) * 60_000, reps)
    times = minute_start + (rng.random(models.size) * 60_000).astype(np.int64)
    order = np.argsort(times, kind="stable")
    return Workload("azure-2019", sizes, service, times[order], models[order])


# ---------------------------------------------------------------------------------------
# References: one cache of the total capacity
# ---------------------------------------------------------------------------------------


def lru_single(seq: Sequence[int], sizes: Sequence[int], capacity: int) -> tuple[int, int]:
    """(hits, loads) of one LRU cache; a model larger than the cache is never cached."""
    cache: OrderedDict[int, None] = OrderedDict()
    used = hits = loads = 0
    for m in seq:
        if m in cache:
            hits += 1
            cache.move_to_end(m)
            continue
        s = sizes[m]
        if s > capacity:
            continue
        loads += 1
        while used + s > capacity:
            victim, _ = cache.popitem(last=False)
            used -= sizes[victim]
        cache[m] = None
        used += s
    return hits, loads


def belady_single(models: np.ndarray, sizes: Sequence[int], capacity: int) -> tuple[int, int]:
    """(hits, loads) of one cache that evicts the model requested farthest in the future."""
    n = models.size
    never = n + 1
    order = np.lexsort((np.arange(n), models))  # by model, then by position
    nxt = np.full(n, never, np.int64)
    same = models[order[1:]] == models[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    seq = models.tolist()
    nxt_l = nxt.tolist()
    cached: dict[int, int] = {}  # model -> position of its next request
    heap: list[tuple[int, int]] = []  # (-next request, model), with stale entries
    used = hits = loads = 0
    for m, nu in zip(seq, nxt_l):
        if m in cached:
            hits += 1
        else:
            s = sizes[m]
            if s > capacity:
                continue
            loads += 1
            while used + s > capacity:
                neg, victim = heapq.heappop(heap)
                if cached.get(victim) == -neg:  # skip entries made stale by a later use
                    del cached[victim]
                    used -= sizes[victim]
            used += s
        cached[m] = nu
        heapq.heappush(heap, (-nu, m))
        if len(heap) > 4 * len(cached) + 64:  # drop stale entries so memory stays bounded
            heap = [(-v, k) for k, v in cached.items()]
            heapq.heapify(heap)
    return hits, loads


# ---------------------------------------------------------------------------------------
# The fabric
# ---------------------------------------------------------------------------------------


class SimInstance:
    """One runtime instance: a real CopyLru plus a published (possibly stale) view."""

    def __init__(self, idx: int, capacity: int) -> None:
        self.idx = idx
        self.id = f"inst-{idx}"
        self.zone = ZONES[idx % len(ZONES)]
        self.lru = CopyLru(capacity)
        self.requests = 0  # since the last controller cycle
        self.rate = 0.0
        self._view: InstanceView | None = None
        self._view_at = -(10**18)
        self._copy_views: dict[str, tuple[int, int, bool, CopyView]] = {}

    def invalidate(self) -> None:
        self._view = None

    def view(self, now: int) -> InstanceView:
        """The view the agent would have published (republished on change or when old)."""
        if self._view is not None and now - self._view_at < PUBLISH_MS:
            return self._view
        copies: dict[str, CopyView] = {}
        cache = self._copy_views
        for mid, c in self.lru.copies().items():
            hit = cache.get(mid)
            if hit is not None and hit[0] == c.last_used_ms and hit[1] == c.in_flight \
                    and hit[2] == c.loading:
                copies[mid] = hit[3]
            else:
                cv = CopyView(c.size_bytes, c.last_used_ms, c.in_flight, c.loading)
                cache[mid] = (c.last_used_ms, c.in_flight, c.loading, cv)
                copies[mid] = cv
        for gone in cache.keys() - copies.keys():
            del cache[gone]
        self._view = InstanceView(self.id, self.lru.capacity_bytes, self.lru.used_bytes,
                                  self.lru.loading_bytes, self.zone, frozenset({f"mt:{MODEL_TYPE}"}),
                                  copies, self.rate, False)
        self._view_at = now
        return self._view


@dataclass
class FabricResult:
    hits: int = 0
    miss_loads: int = 0
    scale_loads: int = 0
    removes: int = 0
    waited: int = 0  # misses that had to wait for requests in flight to finish first
    unplaced: int = 0  # requests still waiting when the trace ended
    max_copies: int = 0


def fabric(w: Workload, capacity_total: int, config: PlacementConfig) -> FabricResult:
    names = [f"model-{i}" for i in range(len(w.sizes))]
    index = {n: i for i, n in enumerate(names)}
    sizes = w.sizes
    per_inst = capacity_total // N_INSTANCES
    insts = [SimInstance(i, per_inst) for i in range(N_INSTANCES)]
    by_id = {s.id: s for s in insts}
    holders: list[list[SimInstance]] = [[] for _ in names]  # instances with a loaded copy
    last_req = [-1] * len(names)
    counts = [0] * len(names)
    ring: list[list[int]] = []
    done: list[tuple[int, int, int, int]] = []  # (end ms, seq, instance idx, model idx)
    res = FabricResult()

    def load(inst: SimInstance, m: int, now: int) -> bool:
        """The instance makes room on its own state (LRU, in-flight aware) and loads."""
        victims = inst.lru.plan_room(sizes[m])
        if victims is None:
            return False
        for v in victims:
            inst.lru.remove(v)
            holders[index[v]].remove(inst)
        inst.lru.reserve(names[m], sizes[m], now)
        inst.lru.loaded(names[m])
        holders[m].append(inst)
        inst.invalidate()
        return True

    def controller(now: int) -> None:
        ring.append(counts.copy())
        if len(ring) > RATE_WINDOW_BUCKETS:
            ring.pop(0)
        counts[:] = [0] * len(counts)
        minutes = len(ring) * CONTROLLER_MS / 60_000
        for s in insts:
            s.rate = s.requests / (CONTROLLER_MS / 60_000)
            s.requests = 0
            s.invalidate()
        held = {m for m in range(len(names)) if holders[m]}
        models = {
            names[m]: ModelView(names[m], MODEL_TYPE, sizes[m],
                                last_req[m] if last_req[m] >= 0 else None,
                                sum(b[m] for b in ring) / minutes)
            for m in held
        }
        snap = Snapshot(now, tuple(s.view(now) for s in insts), models)
        plan = plan_scaling(snap, config)
        for add in plan.adds:
            inst, m = by_id[add.instance_id], index[add.model_id]
            if names[m] not in inst.lru and load(inst, m, now):
                res.scale_loads += 1
        for rm in plan.removes:
            inst, m = by_id[rm.instance_id], index[rm.model_id]
            c = inst.lru.get(rm.model_id)
            if c is not None and c.in_flight == 0:
                inst.lru.remove(rm.model_id)
                holders[m].remove(inst)
                inst.invalidate()
                res.removes += 1
        res.max_copies = max(res.max_copies, max((len(h) for h in holders), default=0))

    def place(m: int, now: int) -> SimInstance | None:
        """Cache miss: the engine picks on published views; the instance decides for real."""
        mv = ModelView(names[m], MODEL_TYPE, sizes[m], now, 0.0)
        choice = choose_instance(mv, [s.view(now) for s in insts], config)
        target: SimInstance | None = None
        if not isinstance(choice, NoFit) and load(by_id[choice.instance_id], m, now):
            target = by_id[choice.instance_id]
        else:  # no choice, or a stale view: the fresh state of each instance decides
            target = next((s for s in insts if load(s, m, now)), None)
        if target is not None:
            res.miss_loads += 1
        return target

    seq = 0

    def serve(target: SimInstance, m: int, now: int) -> None:
        nonlocal seq
        target.lru.begin_request(names[m], now)
        target.requests += 1
        seq += 1
        heapq.heappush(done, (now + w.service_ms[m], seq, target.idx, m))
        # Invariant 1 of the architecture, checked on the real bookkeeping as we go.
        assert target.lru.used_bytes + target.lru.loading_bytes <= target.lru.capacity_bytes

    # Misses that found every candidate copy pinned by requests in flight wait (as a real
    # request waits for its load, up to its deadline) and are retried as requests finish.
    waiting: dict[int, int] = {}  # model -> requests waiting
    next_tick = CONTROLLER_MS
    for t, m in zip(w.times_ms.tolist(), w.models.tolist()):
        finished = False
        while done and done[0][0] <= t:
            _, _, i, dm = heapq.heappop(done)
            insts[i].lru.end_request(names[dm])
            finished = True
        if finished and waiting:
            for wm in list(waiting):
                target = holders[wm][0] if holders[wm] else place(wm, t)
                if target is not None:
                    for _ in range(waiting.pop(wm)):
                        serve(target, wm, t)
        while t >= next_tick:
            controller(next_tick)
            next_tick += CONTROLLER_MS
        counts[m] += 1
        last_req[m] = t
        hs = holders[m]
        if hs:
            res.hits += 1
            target = hs[0] if len(hs) == 1 else min(
                hs, key=lambda s: (s.lru.get(names[m]).in_flight, s.idx))  # type: ignore[union-attr]
        elif m in waiting:
            waiting[m] += 1
            continue
        else:
            placed = place(m, t)
            if placed is None:
                res.waited += 1
                waiting[m] = 1
                continue
            target = placed
        serve(target, m, t)
    res.unplaced = sum(waiting.values())
    return res


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------

_WORKLOADS: dict[str, Workload] = {}


def run_one(task: tuple[str, float]) -> dict[str, object]:
    name, fraction = task
    w = _WORKLOADS[name]
    capacity = int(sum(w.sizes) * fraction)
    n = int(w.models.size)
    started = time.perf_counter()
    f = fabric(w, capacity, PlacementConfig())
    l_hits, l_loads = lru_single(w.models.tolist(), w.sizes, capacity)
    b_hits, b_loads = belady_single(w.models, w.sizes, capacity)
    return {
        "workload": name, "fraction": fraction, "requests": n,
        "fabric_hit": f.hits / n, "lru_hit": l_hits / n, "belady_hit": b_hits / n,
        "fabric_loads": 1000 * (f.miss_loads + f.scale_loads) / n,
        "scale_loads": 1000 * f.scale_loads / n,
        "lru_loads": 1000 * l_loads / n, "belady_loads": 1000 * b_loads / n,
        "max_copies": f.max_copies, "unplaced": f.unplaced, "waited": 1000 * f.waited / n,
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", nargs="?", type=Path,
                    default=REPO.parent / "shared" / "data" / "traces" / "azure2019_500fn",
                    help="Azure 2019 500-function excerpt (invocations/memory/durations.csv)")
    ap.add_argument("--quick", action="store_true", help="replay 1/5 of the requests")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = ap.parse_args(argv)

    started = time.perf_counter()
    synthetic_n = 80_000 if args.quick else 400_000
    for w in (zipf_workload(0.8, synthetic_n), zipf_workload(1.2, synthetic_n),
              bursty_workload(synthetic_n),
              azure_workload(args.data_dir, 96 if args.quick else None)):
        _WORKLOADS[w.name] = w
    tasks = [(name, f) for name in _WORKLOADS for f in CAPACITY_FRACTIONS]
    # Longest first, so two workers finish together.
    tasks.sort(key=lambda t: -_WORKLOADS[t[0]].models.size)
    if args.jobs > 1:
        ctx = multiprocessing.get_context("fork")  # workers inherit the generated workloads
        with ctx.Pool(args.jobs) as pool:
            rows = pool.map(run_one, tasks, chunksize=1)
    else:
        rows = [run_one(t) for t in tasks]
    order = {name: i for i, name in enumerate(_WORKLOADS)}
    rows.sort(key=lambda r: (order[str(r["workload"])], float(r["fraction"])))  # type: ignore[arg-type]

    print("4 instances in 2 zones; capacity as % of all models' bytes; "
          "LRU and Belady: one cache of the same total capacity.\n")
    print("| workload | capacity | requests | hit % fabric | hit % LRU | hit % Belady (MIN) "
          "| loads/1k fabric (of which scale-up) | loads/1k LRU | loads/1k Belady "
          "| misses that waited /1k | max copies | task s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workload']} | {float(r['fraction']):.0%} | {r['requests']:,} "  # type: ignore[arg-type]
              f"| {100 * r['fabric_hit']:.1f} | {100 * r['lru_hit']:.1f} "  # type: ignore[operator]
              f"| {100 * r['belady_hit']:.1f} "  # type: ignore[operator]
              f"| {r['fabric_loads']:.1f} ({r['scale_loads']:.1f}) | {r['lru_loads']:.1f} "
              f"| {r['belady_loads']:.1f} | {r['waited']:.1f} | {r['max_copies']} "
              f"| {r['seconds']:.0f} |")
    unplaced = sum(int(r["unplaced"]) for r in rows)  # type: ignore[call-overload]
    if unplaced:
        print(f"\n{unplaced} requests were still waiting for room when their trace ended.")
    print(f"\nTotal wall time {time.perf_counter() - started:.0f} s"
          f" ({'--quick' if args.quick else 'full'}, {args.jobs} jobs).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
