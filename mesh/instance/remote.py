"""`RemoteModels`: the models of a runtime in another process, driven over the model-runtime SPI.

`meshserve agent` seats in the fabric a runtime that speaks `mmesh.ModelRuntime` (loadModel,
unloadModel, predictModelSize, modelSize, runtimeStatus) and V2 inference
(`inference.GRPCInferenceService`): modelmesh-runtime-adapter with Triton or MLServer, a plain
`meshserve runtime` without `--etcd`, ... `RemoteModels` is the `ModelHolder` the instance
agent wraps then (`mesh.instance.holder`); the fabric's loads reach it through the agent's
own SPI server (`mesh.instance.spi_front`).

- Capacity and ordering: `runtimes.lifecycle.ModelLifecycle`, exactly as in process. A load
  reserves the runtime's predictModelSize (its default model size when it cannot tell)
  before calling loadModel; the size loadModel reports (else modelSize, else the
  prediction) replaces it. The capacity is the runtime's `capacityInBytes` unless given,
  re-read at each health check (a meshserve runtime's shrinks as it sets up a new backend).
  A runtime with a GPU says so in meshserve's own fields: `deviceCapacityInBytes` in
  runtimeStatus (0: no GPU), `deviceSizeInBytes` in predictModelSize, loadModel and
  modelSize; device bytes are then accounted apart from host bytes, as in process. Other
  runtimes leave them 0: host memory only.
- Errors: the runtime's status codes become the runtime's errors (`runtimes.errors`), so the
  agent answers the fabric with the same codes and the model records blame a model (or
  not) as for an in-process load: RESOURCE_EXHAUSTED -> CapacityExhausted; UNAVAILABLE,
  DEADLINE_EXCEEDED, CANCELLED -> retryable LoadFailed; INVALID_ARGUMENT -> InvalidInput;
  NOT_FOUND -> ModelNotFound; anything else -> LoadFailed, not retryable; each keeps the
  runtime's message.
- Use: `poll_statistics()` reads the runtime's V2 ModelStatistics (success and failure counts,
  last inference) into each entry's counters on the agent's publish tick, so last-used times
  and request rates are published as in process. A copy loaded before the poll that the
  answer leaves out is one the runtime lost (it restarted, or unloaded it itself): it is
  unloaded here too. A runtime that does not answer ModelStatistics (UNIMPLEMENTED) is not
  asked again; its copies' last use stays their load time.
- In flight is unknown over the wire: entries show 0 requests in flight and are always idle,
  so LRU eviction may choose a copy that is serving. The runtime's own unloadModel must wait
  for the requests it has in flight (ModelMesh asks runtimes the same; meshserve's does).
- Health: `watch()` asks runtimeStatus every interval and returns once it has failed (no
  answer, or not READY) that many times in a row: the runtime is gone (or restarted and lost
  its models), and the caller leaves the fabric.
- Start and stop: `wait_ready()` waits for READY and reads the capacity; `purge()` unloads
  what a runtime holds from before this agent (an agent restarted beside a running runtime),
  so the accounting starts from the truth; `unload_everything()` unloads every model at
  shutdown and forgets (telling the observers) what the runtime no longer answers for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_runtime_pb2 as rt
from protos import model_runtime_pb2_grpc as rt_grpc
from protos.tls import ClientTls, aio_channel
from runtimes.errors import CapacityExhausted, InvalidInput, LoadFailed, ModelNotFound, RuntimeError_
from runtimes.lifecycle import Footprint, ModelLifecycle, State

__all__ = ["RemoteModels", "RuntimeNotReady", "runtime_error"]

log = logging.getLogger(__name__)

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
_READY = rt.RuntimeStatusResponse.READY
#: Reconnect within a couple of seconds of the runtime coming (back) up: gRPC's own backoff
#: grows to two minutes, far longer than a runtime container takes to start.
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2000)]


class RuntimeNotReady(Exception):
    """The runtime did not report READY in time; the message says what it last answered."""


def runtime_error(error: grpc.aio.AioRpcError, model_id: str, address: str) -> RuntimeError_:
    """The runtime's answer as the runtime error that carries its status code."""
    code, details = error.code(), error.details() or ""
    if code in _RETRYABLE:
        return LoadFailed(f"runtime at {address}: {code.name}: {details}", retryable=True)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return CapacityExhausted(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(model_id, f"is not loaded in the runtime at {address} ({details})")
    return LoadFailed(f"{code.name}: {details}", retryable=False)


class RemoteModels(ModelLifecycle):
    """A runtime's models over its SPI at `runtime_address`; V2 statistics from `data_address`."""

    def __init__(self, runtime_address: str, data_address: str = "", *, capacity_bytes: int | None = None,
                 default_model_size: int = 1 << 20, loading_timeout_s: float = 90.0, call_timeout_s: float = 5.0,
                 observer=None, tls: ClientTls | None = None) -> None:
        super().__init__(capacity_bytes or 0, observer)
        self.runtime_address = runtime_address
        self.data_address = data_address or runtime_address
        self._capacity_given = capacity_bytes is not None
        self.default_model_size = default_model_size
        self._loading_timeout_s = loading_timeout_s
        self._call_timeout_s = call_timeout_s
        self._spi_channel = aio_channel(runtime_address, _CHANNEL_OPTIONS, tls)
        self._data_channel = (self._spi_channel if self.data_address == runtime_address
                              else aio_channel(self.data_address, _CHANNEL_OPTIONS, tls))
        self._spi = rt_grpc.ModelRuntimeStub(self._spi_channel)
        self._v2 = pb_grpc.GRPCInferenceServiceStub(self._data_channel)
        self._statistics = True  # until the runtime says it has no ModelStatistics
        self.max_concurrency: dict[str, int] = {}  # model id -> what loadModel said (0: no limit given)

    # -- the runtime --------------------------------------------------------------------
    async def status(self) -> rt.RuntimeStatusResponse:
        """The runtime's runtimeStatus (raises AioRpcError)."""
        return await self._spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=self._call_timeout_s)

    async def wait_ready(self, timeout_s: float, poll_s: float = 0.2,
                         until: asyncio.Event | None = None) -> rt.RuntimeStatusResponse | None:
        """Until runtimeStatus says READY; takes the capacity (unless given) and default model
        size from it. RuntimeNotReady after `timeout_s`, saying what the runtime last said;
        None if `until` is set first (the agent is told to stop while it waits)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        last = "no answer"
        until = until or asyncio.Event()
        while not until.is_set():
            try:
                status = await self.status()
                if status.status == _READY:
                    break
                last = f"status {rt.RuntimeStatusResponse.Status.Name(status.status)}"
            except grpc.aio.AioRpcError as error:
                last = f"{error.code().name}: {error.details()}"
            if loop.time() >= give_up:
                raise RuntimeNotReady(f"the runtime at {self.runtime_address} is not READY after {timeout_s:g}s "
                                      f"(last: {last})")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_s):  # the pace of asking a runtime that is starting
                    await until.wait()
        else:
            return None
        if not self._capacity_given:
            self._capacity_bytes = status.capacityInBytes
        self._take_device_capacity(status)
        if status.defaultModelSizeInBytes:
            self.default_model_size = status.defaultModelSizeInBytes
        if not self.capacity_bytes:
            raise RuntimeNotReady(f"the runtime at {self.runtime_address} reports no capacity; give one")
        return status

    async def watch(self, interval_s: float, max_failures: int) -> str:
        """Ask runtimeStatus every `interval_s`; return why once `max_failures` answers in a row
        were missing or not READY (the runtime is gone)."""
        failures = 0
        while True:
            try:
                status = await self.status()
                reason = "" if status.status == _READY else (
                    f"status {rt.RuntimeStatusResponse.Status.Name(status.status)}")
            except grpc.aio.AioRpcError as error:
                reason = f"{error.code().name}: {error.details()}"
            if not reason:
                failures = 0
                if not self._capacity_given and status.capacityInBytes:
                    # A runtime's room shrinks once it serves a new format (its library's
                    # overhead comes off its capacityInBytes, `runtimes.backend_setup`).
                    self._capacity_bytes = status.capacityInBytes
                self._take_device_capacity(status)
            else:
                failures += 1
                log.warning("runtime at %s: runtimeStatus failed (%d of %d): %s", self.runtime_address, failures,
                            max_failures, reason)
                if failures >= max_failures:
                    return reason
            await asyncio.sleep(interval_s)  # the health check's period

    def _take_device_capacity(self, status: rt.RuntimeStatusResponse) -> None:
        """The runtime's GPU memory for models, as it reports it (0: no GPU)."""
        self.set_device_capacity(status.deviceCapacityInBytes or None)

    async def predict(self, model_id: str, model_type: str, model_path: str, model_key: str | None) -> Footprint:
        """The runtime's predictModelSize, or the default model size when it cannot tell."""
        request = rt.PredictModelSizeRequest(modelId=model_id, modelType=model_type, modelPath=model_path,
                                             modelKey=model_key or "")
        try:
            reply = await self._spi.predictModelSize(request, timeout=self._call_timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                return Footprint(self.default_model_size)
            raise runtime_error(error, model_id, self.runtime_address) from None
        return Footprint(reply.sizeInBytes or self.default_model_size, reply.deviceSizeInBytes)

    # -- the lifecycle's steps, over the SPI ---------------------------------------------
    async def _predict(self, model_id: str, model_type: str, model_path: str, model_key: str | None) -> Footprint:
        return await self.predict(model_id, model_type, model_path, model_key)

    async def _bring_in(self, model_id: str, model_type: str, model_path: str,
                        model_key: str | None) -> tuple[Any, Footprint]:
        request = rt.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=model_path,
                                      modelKey=model_key or "")
        try:
            reply = await self._spi.loadModel(request, timeout=self._loading_timeout_s)
        except grpc.aio.AioRpcError as error:
            raise runtime_error(error, model_id, self.runtime_address) from None
        self.max_concurrency[model_id] = reply.maxConcurrency
        size = Footprint(reply.sizeInBytes, reply.deviceSizeInBytes)
        if not size.host:
            try:
                answer = await self._spi.modelSize(rt.ModelSizeRequest(modelId=model_id), timeout=self._call_timeout_s)
                size = Footprint(answer.sizeInBytes, answer.deviceSizeInBytes)
            except grpc.aio.AioRpcError as error:  # loaded all the same: the prediction stands
                log.info("runtime at %s: modelSize of %s failed (%s); keeping the predicted size",
                         self.runtime_address, model_id, error.code().name)
        return None, size

    async def _discard(self, model_id: str, handle: Any) -> None:
        await self._release(model_id, handle)

    async def _release(self, model_id: str, handle: Any) -> None:
        self.max_concurrency.pop(model_id, None)
        try:
            await self._spi.unloadModel(rt.UnloadModelRequest(modelId=model_id), timeout=self._loading_timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: gone already, as wanted
                raise runtime_error(error, model_id, self.runtime_address) from None

    # -- use ---------------------------------------------------------------------------
    async def poll_statistics(self) -> None:
        """Copy the runtime's V2 ModelStatistics into the loaded entries' counters. Never raises
        (but cancellation): an unanswered poll leaves the counters as they were."""
        loaded = {m: e for m, e in self._entries.items() if e.state is State.LOADED}
        if not self._statistics or not loaded:
            return
        try:
            reply = await self._v2.ModelStatistics(pb.ModelStatisticsRequest(), timeout=self._call_timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._statistics = False
                log.info("runtime at %s has no V2 ModelStatistics: last use is load time, rates are 0",
                         self.data_address)
            else:
                log.debug("runtime at %s: ModelStatistics failed: %s", self.data_address, error.code().name)
            return
        totals: dict[str, tuple[int, int, int]] = {}  # name -> (success, fail, last inference), over versions
        for item in reply.model_stats:
            success, fail, last = totals.get(item.name, (0, 0, 0))
            totals[item.name] = (success + item.inference_stats.success.count, fail + item.inference_stats.fail.count,
                                 max(last, item.last_inference))
        lost = []
        for model_id, entry in loaded.items():
            if model_id in totals:
                entry.stats.set_totals(*totals[model_id])
            elif self._entries.get(model_id) is entry and entry.state is State.LOADED:
                lost.append(model_id)
        if lost:
            # Loaded before the question was asked, yet not in the answer: the runtime lost
            # them (restarted, or unloaded them itself). Unload them here too, so the record
            # and the accounting say what the runtime holds.
            log.warning("runtime at %s no longer reports %s; dropping them", self.data_address, ", ".join(sorted(lost)))
            try:
                async with asyncio.timeout(self._call_timeout_s):
                    await asyncio.gather(*(self.unload(m) for m in lost), return_exceptions=True)
            except TimeoutError:
                log.warning("runtime at %s: unloading lost copies did not finish", self.runtime_address)

    # -- start and stop ------------------------------------------------------------------
    async def purge(self) -> list[str]:
        """Unload whatever the runtime holds that this agent did not load (it was there
        before the agent); the ids unloaded. A runtime without RepositoryIndex is trusted to
        start empty (ModelMesh's contract: a runtime purges itself before READY)."""
        try:
            index = await self._v2.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=self._call_timeout_s)
        except grpc.aio.AioRpcError as error:
            log.info("runtime at %s: no RepositoryIndex (%s); assuming it holds nothing", self.data_address,
                     error.code().name)
            return []
        stale = sorted({m.name for m in index.models if m.name not in self._entries
                        and m.state.upper() in ("READY", "LOADED", "LOADING")})
        for model_id in stale:
            try:
                await self._spi.unloadModel(rt.UnloadModelRequest(modelId=model_id), timeout=self._loading_timeout_s)
            except grpc.aio.AioRpcError as error:
                log.warning("runtime at %s: could not unload %s held from before: %s", self.runtime_address,
                            model_id, error.code().name)
        if stale:
            log.info("runtime at %s held %d models from before this agent; unloaded: %s", self.runtime_address,
                     len(stale), ", ".join(stale))
        return stale

    async def unload_everything(self, timeout_s: float) -> None:
        """Unload every model (bounded by `timeout_s`), then forget what is left: the runtime is
        gone or stuck; either way this agent no longer answers for those copies."""
        try:
            async with asyncio.timeout(timeout_s):
                results = await asyncio.gather(*(self.unload(m) for m in list(self._entries)), return_exceptions=True)
            for failure in (r for r in results if isinstance(r, Exception)):
                log.info("unload at shutdown failed: %s", failure)
        except TimeoutError:
            log.warning("runtime at %s: unloads at shutdown did not finish within %gs", self.runtime_address, timeout_s)
        self.forget_all()

    def forget_all(self) -> None:
        """Drop every entry without asking the runtime, telling the observers each was unloaded."""
        entries, self._entries = self._entries, {}
        self.max_concurrency.clear()
        for model_id in entries:
            for observer in self._observers:
                observer.model_unloaded(model_id, 0.0)

    async def close(self) -> None:
        """Close the channels to the runtime."""
        await self._spi_channel.close()
        if self._data_channel is not self._spi_channel:
            await self._data_channel.close()
