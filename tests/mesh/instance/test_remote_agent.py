"""`meshserve agent` end to end, with real processes: etcd, a plain `meshserve runtime` (no
`--etcd`: it stands in for a foreign runtime container that speaks the model-runtime SPI and V2),
a `meshserve agent` process beside it, the real router and cache miss in-process, tritonclient
as the client.

Held here: a model registered in the fabric loads on the runtime through the agent (the
fabric calls the agent's SPI; the router calls the runtime's V2 endpoint) and answers by
name; the runtime's statistics reach the published record; a type no instance has the labels
for is refused at once; LRU room is made over the SPI when the runtime is full; SIGTERM
unloads the runtime and removes the instance; a killed runtime or a killed agent takes the
instance out within the lease TTL; an agent started again beside a runtime purges what it
held from before; a copy the runtime drops by itself leaves the record; an agent waits for
its runtime to be READY, and says so when it gives up; its grpc.health.v1 answers SERVING
once it is seated and stops doing so when its runtime is gone.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from mesh.control.cache_miss import CacheMiss
from mesh.control.runtime_client import RuntimeClients
from mesh.domain.records import InstanceRecord, ModelRecord
from mesh.state.fabric_view import FabricView
from mesh.state.registry import Registry
from protos import grpc_service_pb2 as pb
from protos import model_runtime_pb2 as rt
from protos import model_runtime_pb2_grpc as rt_grpc
from router.server import RunningRouter, start_router
from router.settings import RouterSettings
from runtimes.backends.onnx_tensors import constant_tensor_bytes
from tests.support import models
from tests.support.agent_process import AgentProcess, start_agent_process
from tests.support.ports import free_port
from tests.support.runtime_process import RuntimeProcess, start_runtime_process
from tests.support.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

TTL = 3  # the lease TTL of the agents here (seconds)
EXPIRY = TTL + 3  # TTL plus etcd's expiry sweep
WAIT = 30.0
LABELS = "mt:onnx,pv:grpc-v2,rt:plain-runtime"


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory) -> dict[str, Path]:
    """Four ONNX models of one size (~1 MB on disk each); model i adds i + 1."""
    root = tmp_path_factory.mktemp("remote-agent-models")
    return {f"m{i}": models.add_onnx(root / f"m{i}" / "model.onnx", offset=float(i + 1), weights=250_000).parent
            for i in range(4)}


#: What each model is charged besides its tensors: fixed here (not calibrated at start-up),
#: so that a model's size is known before the runtime starts.
FIXED_COST = 64 << 10


def charged(path: Path) -> int:
    """What the runtime charges for one of these models: the fixed cost and its tensors' bytes."""
    return FIXED_COST + constant_tensor_bytes(path / "model.onnx")


@dataclass
class Seats:
    """Starts runtime and agent processes for one test, and ends them at its end."""

    workdir: Path
    fabric_flags: list[str]
    runtimes: list[RuntimeProcess] = field(default_factory=list)
    agents: list[AgentProcess] = field(default_factory=list)

    def runtime(self, capacity: int) -> RuntimeProcess:
        """A plain runtime: no etcd, no agent inside."""
        runtime = start_runtime_process(self.workdir / f"runtime-{len(self.runtimes)}",
                                        "--model-fixed-cost", str(FIXED_COST), capacity=str(capacity))
        self.runtimes.append(runtime)
        return runtime

    def agent(self, runtime: RuntimeProcess, instance_id: str = "a1") -> AgentProcess:
        agent = start_agent_process(self.workdir / f"agent-{len(self.agents)}", runtime.address, *self.fabric_flags,
                                    "--instance-id", instance_id, "--labels", LABELS, "--health-interval-s", "0.2",
                                    "--health-failures", "2", "--publish-min-interval-s", "0.02",
                                    "--publish-max-interval-s", "0.3", metrics=True)
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        for process in [a.process for a in self.agents] + [r.process for r in self.runtimes]:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def seats(tmp_path, etcd_server, keys) -> Iterator[Seats]:
    made = Seats(tmp_path, ["--etcd", etcd_server.endpoint, "--fabric", keys.fabric, "--lease-ttl-s", str(TTL)])
    yield made
    made.close()


@pytest.fixture
async def fabric(etcd, keys) -> AsyncIterator[tuple[FabricView, RunningRouter]]:
    """The fabric's view and a router whose misses go through the real cache miss."""
    async with FabricView(etcd, keys) as view, RuntimeClients() as runtimes, \
            CacheMiss(etcd, keys, view, runtimes) as miss:
        await view.wait_ready(10)
        settings = RouterSettings(host="127.0.0.1", port=0, rest_port=free_port(), metrics_port=0)
        running = await start_router(settings, view, miss)
        try:
            yield view, running
        finally:
            await running.stop(0)


@pytest.fixture
async def view_only(etcd, keys) -> AsyncIterator[FabricView]:
    async with FabricView(etcd, keys) as view:
        await view.wait_ready(10)
        yield view


async def seated(seats: Seats, view: FabricView, capacity: int) -> tuple[RuntimeProcess, AgentProcess, InstanceRecord]:
    runtime = await asyncio.to_thread(seats.runtime, capacity)
    agent = await asyncio.to_thread(seats.agent, runtime)
    return runtime, agent, await registered(view, agent)


async def registered(view: FabricView, agent: AgentProcess, instance_id: str = "a1") -> InstanceRecord:
    def up() -> InstanceRecord | None:
        if agent.process.poll() is not None:
            raise AssertionError(f"agent exited with {agent.process.returncode}:\n{agent.log()[-3000:]}")
        return view.instance(instance_id)

    return await view.wait_for(up, WAIT)


def infer(router: RunningRouter, model_id: str, x: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{router.port}") as client:
        return client.infer(model_id, [tensor], client_timeout=60).as_numpy("y")


def held_by_runtime(runtime: RuntimeProcess) -> set[str]:
    """What the runtime itself holds (its RepositoryIndex): the truth the agent must match."""
    return {m.name for m in runtime.inference.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models}


def copies(view: FabricView, instance_id: str = "a1") -> dict:
    record = view.instance(instance_id)
    return {m: c for m, c in record.copies.items() if not c.loading} if record else {}


def now_ms() -> int:
    return int(time.time() * 1000)


X = np.ones((1, 4), dtype=np.float32)


async def register(etcd, keys, model_id: str, path: Path, model_type: str = "mt:onnx|pv:grpc-v2") -> None:
    await Registry(etcd, keys).register(ModelRecord(model_id, model_type, str(path)))


async def test_a_model_loads_on_the_runtime_through_the_agent_and_answers_through_the_router(
        seats, fabric, etcd, keys, onnx_models) -> None:
    view, router = fabric
    runtime, agent, record = await seated(seats, view, 64 << 20)
    # The fabric calls the agent's SPI; routers call the runtime's V2 endpoint.
    assert record.address == agent.address and record.data_address == runtime.address
    assert record.labels == ("mt:onnx", "pv:grpc-v2", "rt:plain-runtime") and record.capacity_bytes == 64 << 20
    assert record.model_types == ("onnx",)  # for readers older than labels

    await register(etcd, keys, "m0", onnx_models["m0"])
    assert (await asyncio.to_thread(infer, router, "m0", X)).tolist() == (X + 1).tolist()
    assert held_by_runtime(runtime) == {"m0"}
    size = charged(onnx_models["m0"])
    await view.wait_for(lambda: (c := copies(view).get("m0")) and c.size_bytes == size, WAIT)
    model = await view.wait_for(lambda: (r := view.model("m0")) and r.copies.get("a1")
                                and r.copies["a1"].state == "loaded" and r, WAIT)
    assert model.size_estimate_bytes == size

    # The runtime's statistics reach the record on the agent's publish tick: last use and rate.
    before = now_ms()
    for _ in range(3):
        await asyncio.to_thread(infer, router, "m0", X)
    await view.wait_for(lambda: (c := copies(view).get("m0")) and c.last_used_ms >= before and c.rate_per_min > 0, WAIT)

    # The agent answers the SPI for the fabric with the capacity it enforces and the sizes it holds.
    with grpc.insecure_channel(agent.address) as channel:
        spi = rt_grpc.ModelRuntimeStub(channel)
        status = spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=10)
        assert status.status == rt.RuntimeStatusResponse.READY and status.capacityInBytes == 64 << 20
        assert spi.modelSize(rt.ModelSizeRequest(modelId="m0"), timeout=10).sizeInBytes == size
        with pytest.raises(grpc.RpcError) as missing:
            spi.modelSize(rt.ModelSizeRequest(modelId="nope"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # A type no live instance has the labels for is refused at once, naming them.
    await register(etcd, keys, "sk", onnx_models["m1"], "mt:sklearn|pv:grpc-v2")
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as refused:
        await asyncio.to_thread(infer, router, "sk", X)
    assert time.monotonic() - started < 10
    assert "RESOURCE_EXHAUSTED" in str(refused.value.status()) and "mt:sklearn|pv:grpc-v2" in refused.value.message()

    # SIGTERM: the runtime's models are unloaded, the records updated, the instance gone.
    assert await asyncio.to_thread(agent.stop) == 0, agent.log()[-3000:]
    await view.wait_for(lambda: view.instance("a1") is None, WAIT)
    await view.wait_for(lambda: "a1" not in view.model("m0").copies, WAIT)
    assert view.model("m0").last_used_ms >= before
    assert held_by_runtime(runtime) == set()


async def test_room_is_made_by_lru_over_the_spi_when_the_runtime_is_full(seats, fabric, etcd, keys, onnx_models) -> None:
    view, router = fabric
    size = charged(onnx_models["m0"])
    runtime, agent, _ = await seated(seats, view, int(size * 3.5))  # three fit, a fourth needs an eviction
    for model_id, path in onnx_models.items():
        await register(etcd, keys, model_id, path)

    async def use(model_id: str) -> None:
        """One call, then wait until the agent has read it from the runtime's statistics."""
        since = now_ms()
        assert (await asyncio.to_thread(infer, router, model_id, X)).tolist() == (X + 1 + int(model_id[1:])).tolist()
        await view.wait_for(lambda: (c := copies(view).get(model_id)) and c.last_used_ms >= since, WAIT)

    for model_id in ("m0", "m1", "m2"):
        await asyncio.to_thread(infer, router, model_id, X)  # loads it
        await use(model_id)
    await use("m0")  # m0 is now the most recently used; m1 the least
    assert held_by_runtime(runtime) == {"m0", "m1", "m2"}

    await use("m3")
    assert held_by_runtime(runtime) == {"m0", "m2", "m3"}, agent.log()[-3000:]
    await view.wait_for(lambda: set(copies(view)) == {"m0", "m2", "m3"}, WAIT)
    await view.wait_for(lambda: "a1" not in view.model("m1").copies, WAIT)
    record = view.instance("a1")
    assert record.used_bytes + record.loading_bytes <= record.capacity_bytes
    assert "evicting m1" in agent.log()
    # The agent drives the loads, so it times them and counts the eviction, under ModelMesh's names.
    text = agent.metrics()
    assert float(re.search(r"^modelmesh_loadmodel_milliseconds_count (\S+)$", text, re.M).group(1)) == 4
    assert float(re.search(r"^modelmesh_age_at_eviction_milliseconds_count (\S+)$", text, re.M).group(1)) == 1
    assert float(re.search(r"^modelmesh_model_sizing_milliseconds_count (\S+)$", text, re.M).group(1)) == 4
    assert re.search(r"^modelmesh_loadmodel_failure 0", text, re.M)
    assert re.search(r"^modelmesh_instance_capacity_bytes \S+$", text, re.M)


async def seated_with_a_copy(seats: Seats, fabric, etcd, keys, path: Path) -> tuple[RuntimeProcess, AgentProcess]:
    """A runtime and its agent, the runtime holding m0 (loaded through the router's miss)."""
    view, router = fabric
    runtime, agent, _ = await seated(seats, view, 64 << 20)
    await register(etcd, keys, "m0", path)
    await asyncio.to_thread(infer, router, "m0", X)
    await view.wait_for(lambda: "m0" in copies(view), WAIT)
    return runtime, agent


async def test_a_killed_runtime_takes_the_instance_out_within_the_lease_ttl(seats, fabric, etcd, keys, onnx_models) -> None:
    view, router = fabric
    runtime, agent = await seated_with_a_copy(seats, fabric, etcd, keys, onnx_models["m0"])

    runtime.process.kill()
    await view.wait_for(lambda: view.instance("a1") is None, EXPIRY)
    # The agent noticed (runtimeStatus failing), left the fabric and exits 1 for its supervisor.
    assert await asyncio.to_thread(agent.process.wait, WAIT) == 1
    assert "is gone" in agent.log()
    await view.wait_for(lambda: "a1" not in view.model("m0").copies, WAIT)  # its copy was forgotten


async def test_a_killed_agent_takes_the_instance_out_and_a_new_one_purges_the_runtime(
        seats, fabric, etcd, keys, onnx_models) -> None:
    view, router = fabric
    runtime, agent = await seated_with_a_copy(seats, fabric, etcd, keys, onnx_models["m0"])

    agent.process.kill()
    await view.wait_for(lambda: view.instance("a1") is None, EXPIRY)
    assert held_by_runtime(runtime) == {"m0"}  # the runtime serves on, unseated

    # An agent started again beside it unloads what it holds from before, then seats it anew.
    again = await asyncio.to_thread(seats.agent, runtime)
    record = await registered(view, again)
    assert record.copies == {} and held_by_runtime(runtime) == set()
    assert "held 1 models from before" in again.log()
    assert (await asyncio.to_thread(infer, router, "m0", X)).tolist() == (X + 1).tolist()
    assert held_by_runtime(runtime) == {"m0"}


async def test_an_agent_waits_for_the_runtime_and_says_why_it_cannot_start(seats, etcd_server, keys, view_only) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    flags = ["--etcd", etcd_server.endpoint, "--fabric", keys.fabric, "--instance-id", "a1"]
    gives_up = await asyncio.to_thread(start_agent_process, seats.workdir / "gives-up", nowhere, *flags,
                                       "--runtime-ready-timeout-s", "1")
    waiting = await asyncio.to_thread(start_agent_process, seats.workdir / "waiting", nowhere, *flags)
    seats.agents += [gives_up, waiting]
    assert await asyncio.to_thread(gives_up.process.wait, WAIT) == 1
    assert f"meshserve agent: cannot start: the runtime at {nowhere} is not READY after 1s" in gives_up.log()
    # Told to stop while it waits, it stops at once, having registered nothing.
    await asyncio.to_thread(wait_until, lambda: "waiting for the runtime" in waiting.log(), WAIT, "the agent to wait")
    assert await asyncio.to_thread(waiting.stop, 10) == 0
    assert view_only.instance("a1") is None and "registered at" not in waiting.log()


async def test_the_agent_answers_serving_once_its_runtime_is_ready_and_not_once_it_is_gone(
        seats, view_only) -> None:
    runtime, agent, _ = await seated(seats, view_only, 64 << 20)
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def status(service: str = "") -> int:
            return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status

        for service in ("", "mmesh.ModelRuntime"):
            assert await status(service) == health_pb2.HealthCheckResponse.SERVING, service

        async def not_serving() -> bool:
            try:
                return await status() == health_pb2.HealthCheckResponse.NOT_SERVING
            except grpc.aio.AioRpcError as error:  # or gone with the agent
                return error.code() == grpc.StatusCode.UNAVAILABLE

        runtime.process.kill()
        await async_wait_until(not_serving, WAIT, "the agent to stop answering SERVING")
    assert await asyncio.to_thread(agent.process.wait, WAIT) == 1


def test_bad_labels_are_refused_in_one_line() -> None:
    from mesh.cli import agent as agent_cli

    with pytest.raises(SystemExit) as refused:
        agent_cli.main(["--etcd", "127.0.0.1:1", "--labels", "mt:onnx|pv:grpc-v2"])
    assert "meshserve agent: bad setting labels" in str(refused.value) and "comma-separated" in str(refused.value)


async def test_a_copy_the_runtime_drops_by_itself_leaves_the_record(seats, fabric, etcd, keys, onnx_models) -> None:
    view, router = fabric
    runtime, agent = await seated_with_a_copy(seats, fabric, etcd, keys, onnx_models["m0"])
    await asyncio.to_thread(runtime.unload, "m0")  # behind the agent's back (or a restart)
    await view.wait_for(lambda: "m0" not in copies(view), WAIT)
    await view.wait_for(lambda: "a1" not in view.model("m0").copies, WAIT)
    assert "no longer reports m0" in agent.log()
    # The next call loads it again, through the agent.
    assert (await asyncio.to_thread(infer, router, "m0", X)).tolist() == (X + 1).tolist()
    assert held_by_runtime(runtime) == {"m0"}


async def test_the_agent_publishes_the_room_left_once_its_runtime_sets_up_a_new_format(
        seats, view_only, tmp_path) -> None:
    pytest.importorskip("sklearn")
    from tests.support import classic_models

    logistic = classic_models.sklearn_logistic(tmp_path / "logistic" / "model.joblib")[0].parent
    # Calibrated, unlike the other seats' runtimes: scikit-learn's first load charges its import.
    runtime = await asyncio.to_thread(start_runtime_process, seats.workdir / "calibrated", capacity=str(512 << 20))
    seats.runtimes.append(runtime)
    agent = await asyncio.to_thread(seats.agent, runtime)
    assert (await registered(view_only, agent)).capacity_bytes == 512 << 20
    # Loaded on the runtime's own SPI, beside the agent: what matters is the runtime's report.
    await asyncio.to_thread(runtime.load, "logistic", logistic, "sklearn")
    charged_now = re.search(r"backend sklearn set up: .* \((\d+) bytes\) charged", runtime.log())
    assert charged_now, runtime.log()
    overhead = int(charged_now.group(1))
    assert overhead > 10 << 20  # scikit-learn's import: tens of MiB
    record = await view_only.wait_for(
        lambda: (r := view_only.instance("a1")) and r.capacity_bytes == (512 << 20) - overhead and r, WAIT)
    assert record.used_bytes + record.loading_bytes <= record.capacity_bytes
