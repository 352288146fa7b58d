"""The routing machinery: one class that sends a call to a loaded copy of a model.

`Router.call(method, body, model_id, metadata, timeout)` forwards the request bytes
unchanged to one instance holding a loaded copy and returns the reply bytes. It owns:

- the candidates: `view.loaded_on(model_id)`, read from the watched mirror (no etcd call);
- the counters the policy reads (requests in flight from this router, last pick); the
  choice itself is `policy.choose()` (`router.policy`), a pure function;
- one grpc.aio channel per instance inference address (the record's `data_address`, else
  its `address`), made on first use and closed once the instance has left the view (or
  moved) and nothing is in flight to it; ModelInfer goes as a message on that address's
  `InstanceStream` (`router.instance_stream`) unless the instance does not serve the
  stream or `instance_streams` is off, every other method as one unary call;
- the miss: no candidate -> `loader.ensure_loaded(model_id, remaining deadline)`;
- retries: an instance that answers UNAVAILABLE (unreachable, dying) or NOT_FOUND (its
  copy is gone) is excluded for the rest of this call and marked suspect for
  `suspect_s` (others try it last), and the call goes to another copy, or waits for
  the fabric to change and loads again, at most `max_tries` forwards, within the deadline;
- backpressure: a RESOURCE_EXHAUSTED marked `protos.limits.BUSY_TRAILER` (the copy's queue
  or its runtime's is full) goes to another loaded copy, each tried once; with none left
  the caller gets that answer (no load is waited for: the caller backs off). The model is
  reported saturated to the `scaler` (`CacheMiss.scale_up`: one copy more), at most once
  per model per `saturation_report_s`, in a task of its own.

Guarantees: every failure is a `router.errors.RouterError`; instance answers that are
the model's business (INVALID_ARGUMENT, an unmarked RESOURCE_EXHAUSTED, ...) come back as
`UpstreamError` unchanged. No lock is held across an await; the hit path allocates the
candidate list and the call, nothing per message. The caller must `await close()`.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import grpc

from mesh.domain.errors import LoadingFailed, ModelNotRegistered, NoCapacity as LoaderNoCapacity, NoLiveInstance
from mesh.etcd.errors import StoreUnavailable
from mesh.state.fabric_view import FabricView
from mesh.aio.tasks import AsyncClosing, TaskSupervisor
from protos.limits import BUSY_TRAILER, DEFAULT_MAX_MESSAGE_BYTES
from protos.tls import ClientTls, aio_channel
from router.errors import DeadlineExceeded, ModelNotFound, NoCapacity, Unavailable, UpstreamError
from router.instance_stream import FRAME_MARGIN_BYTES, InstanceStream, StreamUnsupported
from router.policy import LeastInFlight, Policy, ReplicaLoad

__all__ = ["Loader", "Observer", "Reply", "Router", "Scaler"]

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]

#: The method carried on an instance's stream (`router.instance_stream`); the rest go unary.
_STREAMED_METHOD = "/inference.GRPCInferenceService/ModelInfer"

#: Instance answers that mean "not here, try another copy" rather than "your request is wrong".
_RETRY_ELSEWHERE = {grpc.StatusCode.UNAVAILABLE: "unavailable", grpc.StatusCode.NOT_FOUND: "not_found"}


class Loader(Protocol):
    """The placement layer's cache-miss entry point (`mesh.control.cache_miss.CacheMiss`)."""

    async def ensure_loaded(self, model_id: str, timeout: float) -> list[str]:
        """Ids of instances holding a loaded copy, loading one if there is none. Raises
        ModelNotRegistered, LoadingFailed, NoCapacity, or TimeoutError."""
        ...


class Scaler(Protocol):
    """Where a router reports a saturated model (`mesh.control.cache_miss.CacheMiss`)."""

    async def scale_up(self, model_id: str) -> str | None:
        """Add one copy of `model_id` if placement allows; the instance it went to, or None."""
        ...


class Observer(Protocol):
    """Hooks for metrics (`router.metrics.RouterMetrics`); each must be quick."""

    def retried(self, reason: str) -> None: ...

    def cache_miss(self, seconds: float, model_id: str) -> None: ...


def _is_busy(code: grpc.StatusCode, trailing: Metadata) -> bool:
    """A RESOURCE_EXHAUSTED a runtime marked as backpressure (not the model's own answer)."""
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and any(key == BUSY_TRAILER for key, _ in trailing)


class Reply(NamedTuple):
    body: bytes
    initial_metadata: Metadata
    trailing_metadata: Metadata


class _Endpoint:
    """One instance as this router talks to it: unary calls, and ModelInfer on its stream when it has one."""

    __slots__ = ("address", "channel", "calls", "stream")

    def __init__(self, address: str, channel: grpc.aio.Channel, stream: InstanceStream | None) -> None:
        self.address = address
        self.channel = channel
        self.calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self.stream = stream

    def call(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        found = self.calls.get(method)
        if found is None:
            # No serializers: bytes go out and come back as they are.
            found = self.calls[method] = self.channel.unary_unary(method)
        return found

    async def forward(self, method: str, body: bytes, metadata: Metadata | None, timeout: float) -> Reply:
        """The instance's reply; grpc.aio.AioRpcError as a unary call raises it."""
        stream = self.stream
        if stream is not None and method == _STREAMED_METHOD and stream.usable():
            try:
                response, trailing = await stream.call(body, metadata, timeout)
                return Reply(response, (), trailing)
            except StreamUnsupported:
                pass  # it never ran there: send it the unary way
        call = self.call(method)(body, metadata=metadata, timeout=timeout)
        response = await call
        return Reply(response, await call.initial_metadata() or (), await call.trailing_metadata() or ())


class Router(AsyncClosing):
    def __init__(self, view: FabricView, loader: Loader | None, *, policy: Policy | None = None,
                 max_tries: int = 3, suspect_s: float = 2.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 observer: Observer | None = None, clock: Callable[[], float] = time.monotonic,
                 instance_streams: bool = True, scaler: Scaler | None = None,
                 saturation_report_s: float = 5.0, tls: ClientTls | None = None) -> None:
        self._view = view
        self._tls = tls  # TLS to instances; channels opened after a certificate rotation take the new files
        self._loader = loader
        self._scaler = scaler
        self.saturation_report_s = saturation_report_s
        self._saturation_reported: dict[str, float] = {}  # model id -> when (clock)
        self._policy = policy or LeastInFlight()
        self.max_tries = max(1, max_tries)
        self.suspect_s = suspect_s
        self._observer = observer
        self._clock = clock
        self.instance_streams = instance_streams
        # A stream's frame is a request (or reply) plus its id and headers: room for both.
        # A reply up to a frame over the limit is taken, so that the data plane refuses it
        # naming the router's setting (`DataPlane.check_size`) rather than grpc's words.
        self._max_message_bytes = max_message_bytes
        frame_bytes = max_message_bytes + FRAME_MARGIN_BYTES
        self._options = [("grpc.max_receive_message_length", frame_bytes),
                         ("grpc.max_send_message_length", frame_bytes),
                         ("grpc.enable_retries", 0)]  # retries are ours: they know about copies
        self._loads: dict[str, ReplicaLoad] = {}
        self._endpoints: dict[str, _Endpoint] = {}  # instance id -> endpoint
        self._channels: dict[str, grpc.aio.Channel] = {}  # address -> channel
        self._streams: dict[str, InstanceStream] = {}  # address -> its stream (one per channel)
        self._suspects: dict[str, float] = {}  # instance id -> until (clock)
        self._sequence = 0
        self._tasks = TaskSupervisor("router")
        self._unsubscribe = view.subscribe(self._prune)
        #: The native front's proof on a `tried` attempt (None: no native front, never honoured).
        self.handover_token: str | None = None

    # -- the call -------------------------------------------------------------------------
    async def call(self, method: str, body: bytes, model_id: str, metadata: Metadata | None,
                   timeout: float, tried: str | None = None) -> Reply:
        """Forward `body` to a copy of `model_id`; `method` is the full path
        (`/inference.GRPCInferenceService/ModelInfer`); `timeout` in seconds; `tried`: a
        failed attempt made before this router got the call (the native front's), as
        "<token> <unavailable|not_found|busy> <inference address> <its message>" (ignored unless the token is
        `handover_token`: a caller cannot steer retries)."""
        clock = self._clock
        deadline = clock() + timeout
        candidates = self._view.loaded_on(model_id)
        excluded: set[str] | None = None  # unreachable instances: not again in this call
        gone: dict[str, int] | None = None  # instance -> its record's publish time when the copy was found gone
        tries = moves = 0
        last_failure = ""
        busy: UpstreamError | None = None  # the last copy that refused the call as backpressure
        if tried:
            excluded, gone, busy, tries, moves, last_failure = self._tried_before(tried, model_id, candidates)
            if busy is not None and self._observer is not None and self._usable(candidates, excluded, gone):
                self._observer.retried("busy")
        while True:
            if excluded or gone:
                candidates = self._usable(candidates, excluded, gone)
            if not candidates:
                if busy is not None:  # every copy left is busy (or gone): the caller backs off
                    raise busy
                candidates = await self._miss(model_id, deadline, excluded, gone, last_failure)
                continue
            instance_id = self._choose(candidates)
            endpoint = self._endpoint(instance_id)
            remaining = deadline - clock()
            if remaining <= 0:
                raise DeadlineExceeded(f"deadline exceeded routing a call for model '{model_id}'"
                                       + (f" (last failure: {last_failure})" if last_failure else ""))
            if endpoint is None:  # the instance left the view between the read and now
                excluded = (excluded or set()) | {instance_id}
                candidates = self._view.loaded_on(model_id)
                continue
            load = self._loads.get(instance_id)
            if load is None:
                load = self._loads[instance_id] = ReplicaLoad()
            self._sequence += 1
            load.last_pick = self._sequence
            load.in_flight += 1
            try:
                return await endpoint.forward(method, body, metadata, remaining)
            except grpc.aio.AioRpcError as error:
                reason = _RETRY_ELSEWHERE.get(error.code())
                if reason is None:
                    upstream = UpstreamError(error.code().name, error.details() or "",
                                             tuple(error.trailing_metadata() or ()))
                    if not _is_busy(error.code(), upstream.trailing_metadata):
                        raise upstream from None
                    reason, busy = "busy", upstream
                last_failure = f"instance {instance_id} at {endpoint.address}: {error.code().name}: {error.details()}"
            finally:
                load.in_flight -= 1
            if reason == "busy":
                # Backpressure: this copy is full, not broken; try another loaded one (not a load).
                self._saturated(model_id)
                excluded = (excluded or set()) | {instance_id}
                candidates = self._usable(self._view.loaded_on(model_id), excluded, gone)
                if candidates and self._observer is not None:
                    self._observer.retried(reason)
                continue
            if self._observer is not None:
                self._observer.retried(reason)
            if reason == "not_found":
                # The copy went (evicted, unloaded) but the instance is fine: skip it until it
                # publishes again, then trust the view (it may hold a fresh copy by then).
                # Bounded by the deadline, and loosely by count so a bug cannot spin.
                moves += 1
                record = self._view.instance(instance_id)
                gone = {**(gone or {}), instance_id: record.published_ms if record is not None else 0}
                if moves >= self.max_tries * 10:
                    raise Unavailable(f"model '{model_id}': copies kept disappearing ({moves} tries); last: {last_failure}")
            else:
                tries += 1
                self._suspects[instance_id] = clock() + self.suspect_s
                excluded = (excluded or set()) | {instance_id}
                log.info("model %s: %s; %s", model_id, last_failure,
                         "retrying" if tries < self.max_tries else "giving up")
                if tries >= self.max_tries:
                    raise Unavailable(f"model '{model_id}': no copy answered after {tries} tries; last: {last_failure}")
            candidates = self._view.loaded_on(model_id)

    def _saturated(self, model_id: str) -> None:
        """Ask the scaler for one copy more, at most once per model per saturation_report_s."""
        if self._scaler is None or self._tasks.closed:
            return
        now = self._clock()
        last = self._saturation_reported.get(model_id)
        if last is not None and now - last < self.saturation_report_s:
            return
        self._saturation_reported[model_id] = now
        self._tasks.spawn(self._scale_up(model_id), name=f"scale up {model_id}")

    async def _scale_up(self, model_id: str) -> None:
        try:
            await self._scaler.scale_up(model_id)
        except Exception as error:  # advice only: the next saturation asks again
            log.info("model %s: no copy more for its saturation: %s: %s", model_id, type(error).__name__, error)
    def _tried_before(self, tried: str, model_id: str, candidates: list[str]):
        """(excluded, gone, busy, tries, moves, last failure) after the attempt `tried`
        describes, as if this call had made it: the copies at that address are skipped as
        after their own UNAVAILABLE (suspect too), NOT_FOUND or busy refusal."""
        nothing = None, None, None, 0, 0, ""
        token, reason, address, message = (tried.split(" ", 3) + ["", "", ""])[:4]
        if self.handover_token is None or not hmac.compare_digest(token, self.handover_token):
            return nothing
        at = [c for c in candidates if (r := self._view.instance(c)) is not None and r.inference_address == address]
        if not at or reason not in ("unavailable", "not_found", "busy"):
            return nothing
        code = {"busy": "RESOURCE_EXHAUSTED"}.get(reason, reason.upper())
        last_failure = f"instance {', '.join(at)} at {address}: {code}: {message} (tried by the native front)"
        if reason == "not_found":
            gone = {}
            for instance_id in at:
                record = self._view.instance(instance_id)
                gone[instance_id] = record.published_ms if record is not None else 0
            return None, gone, None, 0, 1, last_failure
        if reason == "busy":
            self._saturated(model_id)
            busy = UpstreamError("RESOURCE_EXHAUSTED", message or f"model '{model_id}' is busy on instance "
                                 f"{', '.join(at)}: retry later", ((BUSY_TRAILER, "model"),))
            return set(at), None, busy, 0, 0, last_failure
        for instance_id in at:
            self._suspects[instance_id] = self._clock() + self.suspect_s
        return set(at), None, None, 1, 0, last_failure

    def _choose(self, candidates: list[str]) -> str:
        if self._suspects:
            now = self._clock()
            for instance_id, until in list(self._suspects.items()):
                if until <= now:
                    del self._suspects[instance_id]
            healthy = [c for c in candidates if c not in self._suspects]
            if healthy:  # all suspect: try them anyway rather than fail
                candidates = healthy
        return self._policy.choose(candidates, self._loads)

    def _usable(self, candidates: list[str], excluded: set[str] | None, gone: dict[str, int] | None) -> list[str]:
        usable = []
        for candidate in candidates:
            if excluded and candidate in excluded:
                continue
            if gone and candidate in gone:
                record = self._view.instance(candidate)
                if record is None or record.published_ms <= gone[candidate]:
                    continue  # not republished since its copy was found gone
            usable.append(candidate)
        return usable

    async def _miss(self, model_id: str, deadline: float, excluded: set[str] | None, gone: dict[str, int] | None,
                    last_failure: str) -> list[str]:
        """Candidates once the loader says the model is loaded; raises RouterError."""
        remaining = deadline - self._clock()
        why = f" (last failure: {last_failure})" if last_failure else ""
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline exceeded before model '{model_id}' could be served{why}")
        before = frozenset(self._view.loaded_on(model_id))
        if self._loader is None:
            if self._view.model(model_id) is None and not before:
                raise ModelNotFound(f"model '{model_id}' is not registered")
            holders: Sequence[str] = ()
        else:
            started = time.perf_counter()
            try:
                holders = await self._loader.ensure_loaded(model_id, remaining)
            except ModelNotRegistered:
                raise ModelNotFound(f"model '{model_id}' is not registered") from None
            except TimeoutError:
                raise DeadlineExceeded(f"model '{model_id}' was not loaded within the call's deadline "
                                       f"({remaining:.3g}s){why}") from None
            except (LoadingFailed, NoLiveInstance) as error:
                raise Unavailable(str(error)) from None
            except LoaderNoCapacity as error:
                raise NoCapacity(str(error) or f"no instance has room for model '{model_id}'") from None
            except StoreUnavailable as error:  # etcd down: the load's claim cannot be written
                raise Unavailable(f"model '{model_id}' cannot be loaded while etcd is unreachable: {error}") from None
            finally:
                if self._observer is not None:
                    self._observer.cache_miss(time.perf_counter() - started, model_id)
        usable = [h for h in self._usable(list(holders), excluded, gone) if self._view.instance(h) is not None]
        if usable:
            return usable
        # Every copy the fabric knows of failed this call (or is not in our view yet): wait
        # for the fabric to change (the dead instance's record expiring, a copy appearing),
        # woken by the watch, then look again; each round is bounded by the deadline.
        remaining = deadline - self._clock()
        try:
            await self._view.wait_for(lambda: self._usable(self._view.loaded_on(model_id), excluded, gone)
                                      or frozenset(self._view.loaded_on(model_id)) != before, max(remaining, 0))
        except TimeoutError:
            raise DeadlineExceeded(f"model '{model_id}': no usable copy within the call's deadline{why}") from None
        return self._view.loaded_on(model_id)

    # -- endpoints ----------------------------------------------------------------------------
    def _endpoint(self, instance_id: str) -> _Endpoint | None:
        endpoint = self._endpoints.get(instance_id)
        if endpoint is not None:
            return endpoint
        record = self._view.instance(instance_id)
        if record is None:
            return None
        address = record.inference_address
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = aio_channel(address, self._options, self._tls)
        stream = self._streams.get(address) if self.instance_streams else None
        if stream is None and self.instance_streams:
            stream = self._streams[address] = InstanceStream(channel, address, max_message_bytes=self._max_message_bytes,
                                                                   clock=self._clock)
        endpoint = self._endpoints[instance_id] = _Endpoint(address, channel, stream)
        return endpoint

    def _prune(self) -> None:
        """After a view change: forget instances that left (or moved), close unused channels."""
        for instance_id in [i for i in self._endpoints if self._is_gone(i)]:
            load = self._loads.get(instance_id)
            if load is None or load.in_flight == 0:
                del self._endpoints[instance_id]
                self._loads.pop(instance_id, None)
                self._suspects.pop(instance_id, None)
        used = {e.address for e in self._endpoints.values()}
        for address in [a for a in self._channels if a not in used]:
            channel = self._channels.pop(address)
            stream = self._streams.pop(address, None)
            if not self._tasks.closed:
                self._tasks.spawn(self._close_channel(channel, stream), name=f"close {address}")

    @staticmethod
    async def _close_channel(channel: grpc.aio.Channel, stream: InstanceStream | None) -> None:
        if stream is not None:
            await stream.close()
        await channel.close()

    def _is_gone(self, instance_id: str) -> bool:
        record = self._view.instance(instance_id)
        return record is None or record.inference_address != self._endpoints[instance_id].address

    def streamed_calls(self) -> dict[str, int]:
        """Calls sent on each instance's stream so far, by inference address (the rest went unary)."""
        return {address: stream.calls_sent for address, stream in self._streams.items()}

    def in_flight(self) -> dict[str, int]:
        """Requests in flight from this router, per instance (for metrics)."""
        return {i: load.in_flight for i, load in self._loads.items()}

    async def close(self) -> None:
        self._unsubscribe()
        await self._tasks.close()
        channels, self._channels = self._channels, {}
        streams, self._streams = self._streams, {}
        self._endpoints.clear()
        for stream in streams.values():
            await stream.close()
        for channel in channels.values():
            await channel.close()
