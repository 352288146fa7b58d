"""etcd writes of a whole fabric: idle, idle with models loaded, hit traffic, miss traffic.

Counts writes from etcd's own revision counter: every put, delete or transaction that
changes data bumps the store revision by one (lease grants and keepalives do not), so the
revisions a phase spans are the writes the fabric made in it, whoever made them. After
each phase the same revisions are replayed through a watch from the phase's first
revision, and each is attributed to the key it wrote (`instances/`, `models/`, `leader`,
...), so a per-request write would show up with its key prefix.

Setup, all real processes on loopback (`tests.support.fabric.Fabric`): a private etcd,
3 runtimes with their instance agents (room for `--room` of the tests' small ONNX models
each, `add_onnx(weights=4096)`, ~16 KiB), 1 controller, 1 router; `--models` models
registered through the router's management API (16 in parallel).

Phases, each `--seconds` long:
1. idle, nothing loaded;
2. idle with 30 models loaded (loaded first through the router by one call each; the
   phase starts once no load has happened for 7 s, i.e. the controller has settled);
3. hit traffic: 8 client threads (tritonclient gRPC through the router) calling the 30
   loaded models uniformly at random, as fast as they can;
4. miss traffic: 8 client threads calling uniformly random models among all of them
   (loads and LRU evictions on the runtimes).
Traffic phases run 2 s of warm-up before the window; calls completing in the window count.
Loads are the runtimes' `modelmesh_loadmodel_milliseconds_count` (successful loads); router misses (calls
that waited for a load) the router's `modelmesh_cache_miss_milliseconds_count`.

The verdict: a load's cost is miss traffic's writes beyond the idle rate of phase 2, per
load; per-request writes are hit traffic's writes beyond that idle rate and beyond its own
loads (the controller adds copies of models over its per-copy rate) times that cost, per
1,000 requests; "no per-request writes" when that is under 0.1 and no call missed.

    python bench/fabric_writes.py [--models 100] [--seconds 20] [--room 12] [--hot 30]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import sys
import tempfile
import threading
import re
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from protos import model_mesh_pb2 as mm  # noqa: E402
from tests.support.fabric import Fabric  # noqa: E402
from tests.support.models import add_onnx  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

CALLERS = 8
RUNTIMES = 3
WARMUP_S = 2.0
SETTLE_S = 7.0  # longer than the controller's 5 s round interval and the agents' 5 s publish


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- etcd, through its JSON gateway -----------------------------------------------------------
def etcd_revision(client_url: str) -> int:
    """The store's current revision (`header.revision` of any range read)."""
    body = json.dumps({"key": _b64(b"\0"), "count_only": True}).encode()
    request = urllib.request.Request(f"{client_url}/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.loads(response.read())["header"]["revision"])


def writes_by_key(client_url: str, prefix: str, first: int, last: int) -> Counter:
    """Revisions first..last replayed through a watch on the whole keyspace, each counted
    once under the key prefix(es) it wrote (`models/ put`, `instances/ put`, ...)."""
    kinds: dict[int, set[str]] = {}
    if last < first:
        return Counter()
    body = json.dumps({"create_request": {"key": _b64(b"\0"), "range_end": _b64(b"\0"),
                                          "start_revision": str(first)}}).encode()
    request = urllib.request.Request(f"{client_url}/v3/watch", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        highest = first - 1
        while highest < last:
            line = response.readline()
            if not line:
                break
            result = json.loads(line).get("result", {})
            for event in result.get("events", []):
                kv = event["kv"]
                revision = int(kv["mod_revision"])
                highest = max(highest, revision)
                if revision > last:
                    continue
                key = base64.b64decode(kv["key"]).decode(errors="replace")
                if key.startswith(prefix):
                    rest = key[len(prefix):]
                    where = rest.split("/", 1)[0] + ("/" if "/" in rest else "")
                else:
                    where = "(outside the fabric prefix)"
                kinds.setdefault(revision, set()).add(f"{where} {event.get('type', 'PUT').lower()}")
    return Counter(" + ".join(sorted(k)) for k in kinds.values())


# -- traffic -------------------------------------------------------------------------------
@dataclass
class Traffic:
    """CALLERS threads calling `pick()`'s models through the router until stopped."""

    address: str
    models: list[str]
    seed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    answered: list[int] = field(default_factory=lambda: [0] * CALLERS)
    errors: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._caller, args=(i,), daemon=True) for i in range(CALLERS)]
        for thread in self.threads:
            thread.start()

    def _caller(self, index: int) -> None:
        rng = random.Random(self.seed * 100 + index)
        x = np.ones((1, 4), dtype=np.float32)
        with triton.InferenceServerClient(self.address) as client:
            while not self.stop.is_set():
                tensor = triton.InferInput("x", [1, 4], "FP32")
                tensor.set_data_from_numpy(x)
                model_id = rng.choice(self.models)
                try:
                    client.infer(model_id, [tensor], client_timeout=60)
                except InferenceServerException as error:
                    self.errors.append(f"{model_id}: {error.status()} {error.message()}")
                    continue
                self.answered[index] += 1

    def total(self) -> int:
        return sum(self.answered)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)


@dataclass
class Phase:
    name: str
    seconds: float
    writes: int
    loads: float
    misses: float
    requests: int | None
    errors: int
    copies: int
    by_key: Counter

    @property
    def writes_per_s(self) -> float:
        return self.writes / self.seconds

    @property
    def loads_per_s(self) -> float:
        return self.loads / self.seconds

    @property
    def requests_per_s(self) -> float | None:
        return None if self.requests is None else self.requests / self.seconds


def held_models(fabric: Fabric) -> set[str]:
    return {m for record in fabric.instances().values() for m, c in record.copies.items() if not c.loading}


def copies_held(fabric: Fabric) -> int:
    return sum(not c.loading for record in fabric.instances().values() for c in record.copies.values())


def router_misses(metrics_port: int) -> float:
    """Calls the router had to wait on a load for (`modelmesh_cache_miss_milliseconds_count`)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    match = re.search(r"^modelmesh_cache_miss_milliseconds_count(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def measure(fabric: Fabric, metrics_port: int, name: str, seconds: float, traffic: Traffic | None = None) -> Phase:
    if traffic is not None:
        traffic.start()
        time.sleep(WARMUP_S)
    first = etcd_revision(fabric.etcd.client_url) + 1
    loads0, misses0 = fabric.loads_done(), router_misses(metrics_port)
    requests0, errors0 = (traffic.total(), len(traffic.errors)) if traffic else (0, 0)
    t0 = time.monotonic()
    time.sleep(seconds)
    last = etcd_revision(fabric.etcd.client_url)
    loads1, misses1 = fabric.loads_done(), router_misses(metrics_port)
    requests1, errors1 = (traffic.total(), len(traffic.errors)) if traffic else (0, 0)
    elapsed = time.monotonic() - t0
    if traffic is not None:
        traffic.finish()
    by_key = writes_by_key(fabric.etcd.client_url, fabric.keys.prefix, first, last)
    return Phase(name, elapsed, last - first + 1, loads1 - loads0, misses1 - misses0,
                 (requests1 - requests0) if traffic else None, errors1 - errors0, copies_held(fabric), by_key)


def wait_for_no_loads(fabric: Fabric, quiet_s: float, timeout: float) -> None:
    """Until no load has finished for `quiet_s` (the controller's follow-up copies are done)."""
    deadline = time.monotonic() + timeout
    loads, since = fabric.loads_done(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        if time.monotonic() > deadline:
            raise SystemExit(f"loads did not settle within {timeout:.0f} s")
        time.sleep(0.5)
        now = fabric.loads_done()
        if now != loads:
            loads, since = now, time.monotonic()


# -- the run -------------------------------------------------------------------------------
def run(args: argparse.Namespace, workdir: Path) -> None:
    model_ids = [f"m{n:04d}" for n in range(args.models)]
    store = workdir / "store"
    started = time.monotonic()
    fabric = Fabric(workdir, lease_ttl_s=3)
    try:
        fabric.start_etcd()
        probe = add_onnx(workdir / "probe" / "model.onnx", offset=0.0, weights=4096).parent
        size = int(sum(f.stat().st_size for f in probe.iterdir()) * 1.25) + 1
        for n in range(RUNTIMES):
            fabric.add_runtime(f"rt{n}", str(args.room * size + 1024))
        fabric.add_controller()
        metrics_port = free_port()
        router = fabric.add_router("--metrics-port", str(metrics_port))  # the last flag wins

        def register(n: int) -> None:
            path = add_onnx(store / model_ids[n] / "model.onnx", offset=float(n), weights=4096).parent
            info = mm.ModelInfo(type="onnx", path=str(path))
            router.mesh.registerModel(mm.RegisterModelRequest(modelId=model_ids[n], modelInfo=info), timeout=60)

        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(register, range(args.models)))
        register_s = time.monotonic() - t0
        print(f"fabric up and {args.models:,} models registered in {time.monotonic() - started:.1f} s "
              f"(registration {register_s:.1f} s)", file=sys.stderr, flush=True)
        time.sleep(1.0)  # the controller's round after the registration burst

        address = f"127.0.0.1:{router.port}"
        phases = [measure(fabric, metrics_port, "1. idle, nothing loaded", args.seconds)]
        print(f"phase 1 done: {phases[-1].writes} writes", file=sys.stderr, flush=True)

        hot = model_ids[:args.hot]
        x = np.ones((1, 4), dtype=np.float32)

        def first_call(model_id: str) -> None:
            with triton.InferenceServerClient(address) as client:
                tensor = triton.InferInput("x", [1, 4], "FP32")
                tensor.set_data_from_numpy(x)
                client.infer(model_id, [tensor], client_timeout=120)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(first_call, hot))
        wait_for_no_loads(fabric, SETTLE_S, 120)
        missing = set(hot) - held_models(fabric)
        if missing:
            raise SystemExit(f"hot models not all loaded after settling: {sorted(missing)} "
                             f"(raise --room above {args.room})")
        phases.append(measure(fabric, metrics_port, f"2. idle, {args.hot} loaded", args.seconds))
        print(f"phase 2 done: {phases[-1].writes} writes", file=sys.stderr, flush=True)

        phases.append(measure(fabric, metrics_port, f"3. hit traffic ({args.hot} loaded models)", args.seconds,
                              Traffic(address, hot, seed=1)))
        print(f"phase 3 done: {phases[-1].writes} writes", file=sys.stderr, flush=True)
        wait_for_no_loads(fabric, 3.0, 60)  # the controller's reaction to the traffic, if any

        phases.append(measure(fabric, metrics_port, f"4. miss traffic (all {args.models:,} models)", args.seconds,
                              Traffic(address, model_ids, seed=2)))
        print(f"phase 4 done: {phases[-1].writes} writes", file=sys.stderr, flush=True)
        report(args, phases, size)
        failed = [p for p in phases if p.errors]
        if failed:
            print(f"\n(calls that failed: {', '.join(f'{p.name}: {p.errors}' for p in failed)})")
    finally:
        fabric.close()
        _kill_leftover_children()


def _kill_leftover_children() -> None:
    """SIGKILL any process this script started that is still alive (a start cut short by
    Ctrl-C before the fabric recorded it); only direct children of this process, by pid."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                os.waitpid(int(entry.name), 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def report(args: argparse.Namespace, phases: list[Phase], size: int) -> None:
    idle, loaded, hit, miss = phases
    print(f"## etcd writes: {args.models:,} models, {RUNTIMES} runtimes (room for {args.room} x ~{size // 1024} KiB "
          f"each), 1 controller, 1 router; {args.seconds:g} s per phase, {CALLERS} callers, {os.cpu_count()} cores\n")
    print("| phase | requests/s | router misses | loads/s | copies at end | etcd writes/s "
          "| writes per 1k requests | writes per load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for p in phases:
        rps = "-" if p.requests_per_s is None else f"{p.requests_per_s:,.0f}"
        misses = "-" if p.requests is None else f"{p.misses:,.0f}"
        per_k = "-" if not p.requests else f"{1000 * p.writes / p.requests:.2f}"
        per_load = "-" if not p.loads else f"{p.writes / p.loads:.1f}"
        print(f"| {p.name} | {rps} | {misses} | {p.loads_per_s:.2f} | {p.copies} | {p.writes_per_s:.2f} | {per_k} "
              f"| {per_load} |")

    print("\nWrites (etcd revisions) in each phase's window, by the key they wrote:\n")
    kinds = sorted({k for p in phases for k in p.by_key})
    print("| key written | " + " | ".join(p.name.split(" ", 1)[0].rstrip(".") for p in phases) + " |")
    print("|---|" + "---:|" * len(phases))
    for kind in kinds:
        print(f"| `{kind}` | " + " | ".join(str(p.by_key.get(kind, 0)) for p in phases) + " |")
    print("| total | " + " | ".join(str(p.writes) for p in phases) + " |")

    # What a load costs: miss traffic's writes over the idle rate (same models loaded), per load.
    nan = float("nan")
    cost = (miss.writes - loaded.writes_per_s * miss.seconds) / miss.loads if miss.loads else nan
    # Per-request writes: hit traffic's writes beyond the idle rate and its loads (the
    # controller's scale-up copies of models over its per-copy rate), per 1,000 requests.
    unexplained = hit.writes - loaded.writes_per_s * hit.seconds - (hit.loads * cost if hit.loads else 0.0)
    per_k = 1000 * unexplained / hit.requests if hit.requests else nan
    clean = hit.misses == 0 and per_k < 0.1
    loads_note = (f", {hit.loads:.0f} of them the controller's scale-up loads (~{hit.loads * cost:.0f} writes)"
                  if hit.loads else "")
    print(f"\nVerdict: hit traffic ({hit.requests_per_s:,.0f} requests/s, {hit.misses:.0f} router misses) made "
          f"{hit.writes} writes in {hit.seconds:.0f} s against {loaded.writes_per_s * hit.seconds:.0f} at the idle rate"
          f"{loads_note}; {unexplained:+.0f} unexplained = {per_k:+.3f} per 1k requests: "
          + ("no per-request writes" if clean else "PER-REQUEST WRITES, see the key table")
          + f". A load costs {cost:.1f} writes ({miss.loads_per_s:.1f} loads/s under miss traffic).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=100, help="models registered")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--room", type=int, default=12, help="models each of the 3 runtimes has room for")
    parser.add_argument("--hot", type=int, default=30, help="models loaded for phases 2 and 3")
    args = parser.parse_args()
    if args.hot > args.models or args.hot > RUNTIMES * args.room:
        parser.error("--hot must fit in --models and in the runtimes' room (3 x --room)")

    def interrupted(signum, frame):  # SIGTERM ends the run the way Ctrl-C does: through finally
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the shell ignored it (`cmd &`)
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="meshserve-fabric-writes-", dir=base) as workdir:
        try:
            run(args, Path(workdir))
        except KeyboardInterrupt:
            print("interrupted; the fabric's processes were stopped", file=sys.stderr)
            raise SystemExit(130)


if __name__ == "__main__":
    main()
