"""Soak: Zipf traffic over many models on a 3-instance fabric while processes are killed.

Setup, all real processes on loopback (`tests.support.fabric.Fabric`): a private etcd,
3 runtimes with their instance agents, 2 controllers (one leads), 1 router. `--models`
tiny ONNX models (`add_onnx(weights=4096)`, each measured at ~128 KiB by a runtime) are
registered through the router's management API; each runtime's capacity is `--room` slots
of `--slot-kib`, so 200 models over 3 x 20 slots keep the runtimes evicting (LRU) and loading.

Traffic: `--callers` threads (tritonclient gRPC through the router), each calling models
drawn from a Zipf law over the model ids (model k with weight 1 / k^`--zipf`, numpy), one
call at a time, for `--minutes`.

Chaos schedule (times from the start of traffic):
- every `--kill-every-s` a runtime is SIGKILLed (round robin); once the fabric has seen it
  go (its instance record expired with its lease) it is started again under its id;
- etcd is restarted once (SIGTERM, `--etcd-down-s` down, started on its data) at 45%;
- the controller holding leadership (the `leader` record names its address) is SIGKILLed
  once at 70%, and a new controller started so two run again;
- the operator is restarted if present: this fabric runs without Kubernetes, so there is
  none (reported as such).

Each event has a window: from its start until the fabric has recovered (the killed
runtime registered again; etcd answering again; the new controller answering). A failed
call is "in flight at a kill" when its own interval overlaps a window; the invariant is
that no other call fails.

Checked and reported:
- calls made, calls failed (by window), every failure with its time and message;
- registrations lost: models registered before traffic that are missing from etcd at the
  end (must be none);
- copies over capacity: every instance record sampled each second, `used_bytes <=
  capacity_bytes` (must always hold; the highest used + loading share is printed too);
- VmRSS of each process (from /proc/<pid>/status) at the start of traffic and at the end.
  Replaced processes (a killed runtime, the killed controller) show their successor's end.

Exit status 1 when an invariant broke. Not part of the test run.

    python bench/soak.py [--minutes 20] [--models 200] [--room 20] [--callers 8] [--kill-every-s 180]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from bench.fabric_run import run_in_scratch_dir  # noqa: E402
from protos import model_mesh_pb2 as mm  # noqa: E402
from tests.support.etcd_server import EtcdServerError  # noqa: E402
from tests.support.fabric import Fabric, MeshProcess  # noqa: E402
from tests.support.models import add_onnx  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

RUNTIMES = 3
CONTROLLERS = 2
LEASE_TTL_S = 3
SAMPLE_EVERY_S = 1.0
ETCD_START_ATTEMPTS = 3


# -- what happened --------------------------------------------------------------------------
@dataclass
class Window:
    """One chaos event, from when it started until the fabric had recovered."""

    what: str
    start: float
    end: float = float("inf")  # still open

    def overlaps(self, start: float, end: float) -> bool:
        return start <= self.end and end >= self.start


@dataclass
class Failure:
    start: float
    end: float
    model_id: str
    message: str
    window: str = ""  # the event it was in flight at; "" for none


@dataclass
class Record:
    """Everything the run observed, shared by the callers, the sampler and the chaos thread."""

    t0: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: int = 0
    failures: list[Failure] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    over_capacity: list[str] = field(default_factory=list)
    samples: int = 0
    sample_errors: int = 0
    highest_share: float = 0.0  # (used + loading) / capacity, the most seen
    loads_seen: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)  # what went wrong in the harness itself

    def at(self, moment: float) -> float:
        return moment - self.t0

    def classify(self) -> None:
        for failure in self.failures:
            window = next((w for w in self.windows if w.overlaps(failure.start, failure.end)), None)
            failure.window = window.what if window else ""


# -- traffic --------------------------------------------------------------------------------
def zipf_weights(count: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    return weights / weights.sum()


def caller(address: str, models: list[str], weights: np.ndarray, seed: int, stop: threading.Event,
           record: Record) -> None:
    rng = np.random.default_rng(seed)
    x = np.ones((1, 4), dtype=np.float32)
    with triton.InferenceServerClient(address) as client:
        while not stop.is_set():
            model_id = models[rng.choice(len(models), p=weights)]
            tensor = triton.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(x)
            started = time.monotonic()
            try:
                result = client.infer(model_id, [tensor], client_timeout=60)
                ok = result.as_numpy("y") is not None
                message = "" if ok else "no output y"
            except InferenceServerException as error:
                ok, message = False, f"{error.status()} {error.message()}"
            ended = time.monotonic()
            with record.lock:
                record.calls += 1
                if not ok:
                    record.failures.append(Failure(started, ended, model_id, message[:300]))


def sampler(fabric: Fabric, stop: threading.Event, record: Record) -> None:
    """Every instance record each second: used must never exceed capacity."""
    while not stop.wait(SAMPLE_EVERY_S):
        try:
            instances = fabric.instances()
        except Exception:  # etcd restarting
            record.sample_errors += 1
            continue
        record.samples += 1
        for instance_id, instance in instances.items():
            if instance.capacity_bytes <= 0:
                continue
            share = (instance.used_bytes + instance.loading_bytes) / instance.capacity_bytes
            record.highest_share = max(record.highest_share, share)
            record.loads_seen.update(instance.copies)
            if instance.used_bytes > instance.capacity_bytes:
                record.over_capacity.append(f"t={record.at(time.monotonic()):.0f}s {instance_id}: used "
                                            f"{instance.used_bytes} > capacity {instance.capacity_bytes}")


# -- processes and their memory ---------------------------------------------------------------
def vm_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def processes(fabric: Fabric) -> dict[str, int]:
    """Role -> pid of every process of the fabric that is running now."""
    found = {"etcd": fabric.etcd.pid}
    for instance_id, runtime in sorted(fabric.runtimes.items()):
        found[f"runtime {instance_id}"] = runtime.process.pid
    live = [c for c in fabric.controllers if c.process.poll() is None]
    for index, controller in enumerate(live):
        found[f"controller {index}"] = controller.process.pid
    for index, router in enumerate(fabric.routers):
        found[f"router {index}"] = router.process.pid
    return {role: pid for role, pid in found.items() if pid is not None}


def memory(fabric: Fabric) -> dict[str, tuple[int, int | None]]:
    return {role: (pid, vm_rss_kib(pid)) for role, pid in processes(fabric).items()}


# -- chaos ----------------------------------------------------------------------------------
def kill_runtime(fabric: Fabric, instance_id: str, capacity: str, record: Record) -> None:
    window = Window(f"runtime {instance_id} SIGKILL", time.monotonic())
    record.windows.append(window)
    runtime = fabric.runtimes[instance_id]
    runtime.process.send_signal(signal.SIGKILL)
    runtime.process.wait(10)
    wait_until(lambda: fabric.instance(instance_id) is None, LEASE_TTL_S + 30, f"{instance_id}'s record to expire")
    fabric.add_runtime(instance_id, capacity)  # returns once it is registered again
    window.end = time.monotonic()


def restart_etcd(fabric: Fabric, down_s: float, record: Record) -> None:
    window = Window("etcd restart", time.monotonic())
    record.windows.append(window)
    fabric.etcd.stop()
    time.sleep(down_s)  # the outage itself, not a synchronization
    for attempt in range(1, ETCD_START_ATTEMPTS + 1):
        try:
            fabric.etcd.start()  # returns once etcd is healthy
            break
        except EtcdServerError as error:
            # Seen once: the child died of SIGSEGV before etcd ran (its log has no line of it),
            # forked from this process with gRPC's threads busy; a second fork starts it.
            record.notes.append(f"etcd start attempt {attempt} failed: {str(error).splitlines()[0]}")
            if attempt == ETCD_START_ATTEMPTS:
                raise
    wait_until(lambda: set(fabric.instances()) == set(fabric.runtimes), 60, "every instance to register again")
    window.end = time.monotonic()


def leader_controller(fabric: Fabric) -> MeshProcess:
    port = int(fabric.leader()["address"].rsplit(":", 1)[1])
    return next(c for c in fabric.controllers if c.port == port)


def kill_leader(fabric: Fabric, record: Record) -> str:
    leader = wait_until(lambda: leader_controller(fabric), 30, "a controller to lead")
    window = Window(f"controller leader (pid {leader.process.pid}) SIGKILL", time.monotonic())
    record.windows.append(window)
    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait(10)
    fabric.controllers.remove(leader)
    leader.channel.close()
    wait_until(lambda: leader_controller(fabric).process.pid != leader.process.pid, LEASE_TTL_S + 30,
               "the other controller to take over")
    fabric.add_controller()
    window.end = time.monotonic()
    return window.what


def chaos(fabric: Fabric, args: argparse.Namespace, capacity: str, t_end: float, stop: threading.Event,
          record: Record, log) -> None:
    duration = t_end - record.t0
    events: list[tuple[float, str]] = []
    kill_at = args.kill_every_s
    while kill_at < duration - 20:
        events.append((kill_at, "runtime"))
        kill_at += args.kill_every_s
    events += [(0.45 * duration, "etcd"), (0.70 * duration, "leader")]
    events.sort()
    victims = sorted(fabric.runtimes)
    killed = 0
    for offset, kind in events:
        if stop.wait(max(0.0, record.t0 + offset - time.monotonic())):
            return
        if kind == "runtime":
            victim = victims[killed % len(victims)]
            killed += 1
            log(f"t={offset:.0f}s SIGKILL runtime {victim}")
            kill_runtime(fabric, victim, capacity, record)
        elif kind == "etcd":
            log(f"t={offset:.0f}s restarting etcd ({args.etcd_down_s:g} s down)")
            restart_etcd(fabric, args.etcd_down_s, record)
        else:
            log(f"t={offset:.0f}s SIGKILL the controller leader")
            kill_leader(fabric, record)
        window = record.windows[-1]
        log(f"   recovered after {window.end - window.start:.1f} s")


def report_progress(record: Record, stop: threading.Event, log) -> None:
    while not stop.wait(30.0):
        log(f"t={record.at(time.monotonic()):.0f}s calls {record.calls:,} failed {len(record.failures)}")


# -- the run --------------------------------------------------------------------------------
def run(args: argparse.Namespace, workdir: Path) -> int:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    model_ids = [f"m{n:04d}" for n in range(args.models)]
    fabric = Fabric(workdir, lease_ttl_s=LEASE_TTL_S)
    try:
        fabric.start_etcd()
        capacity = str(args.room * args.slot_kib * 1024)
        for n in range(RUNTIMES):
            fabric.add_runtime(f"rt{n}", capacity)
        for _ in range(CONTROLLERS):
            fabric.add_controller()
        router = fabric.add_router()

        def register(n: int) -> None:
            path = add_onnx(workdir / "store" / model_ids[n] / "model.onnx", offset=float(n), weights=4096).parent
            info = mm.ModelInfo(type="onnx", path=str(path))
            router.mesh.registerModel(mm.RegisterModelRequest(modelId=model_ids[n], modelInfo=info), timeout=60)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(register, range(args.models)))
        registered = set(fabric.models())
        if registered != set(model_ids):
            raise SystemExit(f"registration incomplete: {len(registered)} of {args.models} in etcd")
        log(f"fabric up, {len(registered)} models registered ({args.room} x {args.slot_kib} KiB room per runtime)")

        memory_start = memory(fabric)
        record = Record(t0=time.monotonic())
        t_end = record.t0 + args.minutes * 60
        stop = threading.Event()
        weights = zipf_weights(args.models, args.zipf)
        address = f"127.0.0.1:{router.port}"
        threads = [threading.Thread(target=caller, args=(address, model_ids, weights, args.seed * 1000 + i, stop, record),
                                    daemon=True) for i in range(args.callers)]
        threads.append(threading.Thread(target=sampler, args=(fabric, stop, record), daemon=True))
        for thread in threads:
            thread.start()
        progress = threading.Thread(target=report_progress, args=(record, stop, log), daemon=True)
        progress.start()
        chaos_error: list[BaseException] = []
        try:
            # In the main thread: etcd dies with the thread that started it (PR_SET_PDEATHSIG).
            chaos(fabric, args, capacity, t_end, stop, record, log)
            stop.wait(max(0.0, t_end - time.monotonic()))
        except Exception as error:  # reported as a broken run below
            log("the chaos schedule broke:\n" + traceback.format_exc())
            chaos_error.append(error)
        stop.set()
        for thread in [*threads, progress]:
            thread.join(90)
        memory_end = memory(fabric)
        try:
            present = set(fabric.models())
        except Exception as error:  # reported as every registration lost
            log(f"could not read the registrations at the end: {error}")
            present = set()
        record.classify()
        return report(args, record, registered, present, memory_start, memory_end, chaos_error)
    finally:
        fabric.close()
        if args.logs:
            keep_logs(workdir, Path(args.logs))


def keep_logs(workdir: Path, into: Path) -> None:
    """Every process's log (router, controllers, runtimes) copied out of the work directory."""
    into.mkdir(parents=True, exist_ok=True)
    for log_file in workdir.rglob("*.log"):
        shutil.copy(log_file, into / "-".join(log_file.relative_to(workdir).parts))


def report(args, record: Record, registered: set[str], present: set[str], memory_start, memory_end,
           chaos_error: list[BaseException]) -> int:
    lost = sorted(registered - present)
    outside = [f for f in record.failures if not f.window]
    print(f"## Soak: {args.minutes:g} min, {args.models} models (Zipf s={args.zipf:g}), {RUNTIMES} runtimes with room "
          f"for {args.room} x {args.slot_kib} KiB, {CONTROLLERS} controllers, 1 router, {args.callers} callers, "
          f"{os.cpu_count()} cores\n")
    print("Chaos events (start, recovery):\n")
    for window in record.windows:
        print(f"- t={record.at(window.start):.0f} s {window.what}: recovered in {window.end - window.start:.1f} s")
    print("- operator: none in this fabric (no Kubernetes), not restarted")
    for note in record.notes:
        print(f"- note: {note}")
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(f"| calls made | {record.calls:,} |")
    print(f"| calls failed | {len(record.failures)} |")
    print(f"| ... in flight during a kill window | {len(record.failures) - len(outside)} |")
    print(f"| ... outside every kill window (must be 0) | {len(outside)} |")
    print(f"| registrations before / after / lost (must be 0) | {len(registered)} / {len(present & registered)} / "
          f"{len(lost)} |")
    print(f"| instance samples (failed reads while etcd was down) | {record.samples} ({record.sample_errors}) |")
    print(f"| copies over capacity (must be 0) | {len(record.over_capacity)} |")
    print(f"| highest (used + loading) / capacity seen | {record.highest_share:.2f} |")
    print(f"| distinct models seen holding a copy | {len(record.loads_seen)} |")
    print("\n| process | VmRSS start (MiB) | VmRSS end (MiB) |")
    print("|---|---:|---:|")
    for role in sorted(set(memory_start) | set(memory_end)):
        start = memory_start.get(role, (None, None))
        end = memory_end.get(role, (None, None))
        replaced = " (replaced)" if start[0] is not None and end[0] is not None and start[0] != end[0] else ""
        print(f"| {role}{replaced} | {_mib(start[1])} | {_mib(end[1])} |")
    if record.failures:
        print("\nFailures (time from start, duration, model, window, message):\n")
        for failure in record.failures[:50]:
            print(f"- t={record.at(failure.start):.1f} s +{failure.end - failure.start:.1f} s {failure.model_id} "
                  f"[{failure.window or 'OUTSIDE every window'}] {failure.message}")
        if len(record.failures) > 50:
            print(f"- ... {len(record.failures) - 50} more")
    for line in record.over_capacity[:20]:
        print(f"- over capacity: {line}")
    broken = []
    if outside:
        broken.append(f"{len(outside)} calls failed outside the kill windows")
    if lost:
        broken.append(f"registrations lost: {', '.join(lost[:10])}")
    if record.over_capacity:
        broken.append(f"{len(record.over_capacity)} samples over capacity")
    if chaos_error:
        broken.append(f"the chaos schedule broke: {chaos_error[0]!r}")
    if not record.calls:
        broken.append("no calls were made")
    print("\nVerdict: " + ("every invariant held" if not broken else "BROKEN: " + "; ".join(broken)))
    return 1 if broken else 0


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the traffic")
    parser.add_argument("--models", type=int, default=200, help="models registered")
    parser.add_argument("--room", type=int, default=20, help="models each of the 3 runtimes has room for")
    parser.add_argument("--slot-kib", type=int, default=150,
                        help="capacity per model slot (a runtime measures each model at ~128 KiB)")
    parser.add_argument("--callers", type=int, default=8, help="concurrent tritonclient callers")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent over the model ids")
    parser.add_argument("--kill-every-s", type=float, default=180.0, help="seconds between runtime SIGKILLs")
    parser.add_argument("--etcd-down-s", type=float, default=5.0, help="how long etcd stays down at its restart")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logs", default="", help="a folder to copy every process's log into at the end")
    args = parser.parse_args()

    run_in_scratch_dir("meshserve-soak-", lambda workdir: run(args, workdir))


if __name__ == "__main__":
    main()
