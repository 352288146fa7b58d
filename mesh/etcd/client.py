"""Async etcd client for meshserve: aetcd underneath, our types on top.

`EtcdClient` is the only place in meshserve that calls aetcd for key-value, lease and
watch operations; everything above (sessions, mirrors, elections, registry, agent) uses
it. Values are small JSON documents; keys are `str` (see `mesh.etcd.keys`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Self, TypeVar

import aetcd
import aetcd.rtypes
from aetcd import rpc

from mesh.aio.backoff import Backoff
from mesh.aio.tasks import AsyncClosing
from mesh.etcd.tls import EtcdTls, TlsEtcdClient
from mesh.etcd.errors import (
    TRANSLATABLE,
    CorruptRecord,
    LeaseLost,
    StoreClosed,
    StoreUnavailable,
    translate_error,
)

__all__ = [
    "CasResult",
    "EtcdClient",
    "EtcdTls",
    "KV",
    "RetryPolicy",
    "WatchEvent",
    "WatchStream",
    "decode_json",
    "encode_json",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What records hold: anything `json.dumps` accepts (dicts in practice).
JSON = Any


def encode_json(value: JSON) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): equal documents give equal bytes,
    which the compare-and-set retry logic relies on."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def decode_json(raw: bytes, *, key: str = "?") -> JSON:
    """Decode a stored record; raises `CorruptRecord` (permanent) if it is not JSON."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptRecord(f"value of {key!r} is not JSON: {raw[:80]!r}") from exc


def _key_str(raw: bytes) -> str:
    # surrogateescape: a foreign non-UTF-8 key still round-trips to the same bytes.
    return raw.decode("utf-8", "surrogateescape")


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class KV:
    """One key as etcd holds it. `value` decodes the JSON document (raises
    `CorruptRecord`); `lease` is 0 when the key is not bound to a lease."""

    key: str
    raw: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int

    @property
    def value(self) -> JSON:
        return decode_json(self.raw, key=self.key)

    @classmethod
    def _from_pb(cls, kv: Any) -> KV:
        return cls(
            key=_key_str(kv.key),
            raw=bytes(kv.value),
            mod_revision=int(kv.mod_revision),
            create_revision=int(kv.create_revision),
            version=int(kv.version),
            lease=int(kv.lease),
        )


class CasResult(NamedTuple):
    """Outcome of a compare-and-set.

    won: the write was applied (or, after a retried ambiguous failure, the store already
        holds exactly what we wrote: see `EtcdClient.create_if_absent`).
    revision: if won, the key's new mod_revision (for a delete, the deletion revision);
        if lost, the store revision at which the comparison failed.
    current: if won, the record as written (None for a delete); if lost, the record as it
        is now (None if absent), so the caller can decide without another read.
    """

    won: bool
    revision: int
    current: KV | None


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change of one key. For a delete, `kv.raw` is empty and `kv.mod_revision` is the
    revision of the deletion."""

    kind: Literal["put", "delete"]
    kv: KV


@dataclass(frozen=True)
class RetryPolicy:
    """How retryable failures (`StoreUnavailable`) are retried inside one call.

    A call gives up after `attempts` tries or when the next backoff would take it past
    `deadline` seconds in total, whichever comes first, so the time a caller waits on an
    unreachable etcd is bounded by about `deadline` plus one `call_timeout`.
    """

    attempts: int = 6
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    deadline: float = 5.0
    _pacing: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pacing", Backoff(self.initial_backoff, self.max_backoff))

    def backoff(self, attempt: int) -> float:
        """Delay before try `attempt + 1` (`attempt` failures so far): exponential with
        jitter (`mesh.aio.Backoff`), so that many clients losing etcd at once do not come
        back in lock step."""
        return self._pacing.delay(attempt)


# Reconnect quickly after an etcd restart (grpc's default backoff grows to 120 s), and
# ping idle connections so a silently dead peer is noticed. etcd rejects pings more often
# than every 5 s by default and pings on a connection without calls unless allowed.
_DEFAULT_GRPC_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
}


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    text = endpoint.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            if scheme == "https://":
                raise ValueError(f"TLS endpoints are not supported yet: {endpoint!r}")
            text = text[len(scheme):]
    host, sep, port = text.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"etcd endpoint must be HOST:PORT, got {endpoint!r}")
    return host.strip("[]"), int(port)


class EtcdClient(AsyncClosing):
    """An etcd client over one or more endpoints of one cluster.

    Guarantees:
    - every failure surfaces as a `StoreError` subclass with the aetcd/grpc error chained:
      `StoreUnavailable` (retryable) after retries with backoff are exhausted, bounded by
      `RetryPolicy.deadline`; anything else at once, without retry;
    - on a retryable failure it moves to the next endpoint (round robin), so one dead
      member does not stall callers; watches open on the old endpoint end and must be
      re-opened by their owner (`Mirror` and `Election` do that);
    - compare-and-set helpers are safe to retry: see `create_if_absent`.

    The caller must `await close()` it (or use `async with`); after that every call raises
    `StoreClosed`. One client is meant to be shared by a whole process.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        call_timeout: float = 2.0,
        retry: RetryPolicy | None = None,
        username: str | None = None,
        password: str | None = None,
        grpc_options: Mapping[str, Any] | None = None,
        tls: EtcdTls | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self._endpoints = [_parse_endpoint(e) for e in endpoints]
        self.call_timeout = call_timeout
        self.retry = retry or RetryPolicy()
        self._username = username
        self._password = password
        self._tls = tls  # None: plaintext
        self._options = {**_DEFAULT_GRPC_OPTIONS, **(grpc_options or {})}
        self._index = 0
        self._generation = 0
        self._client = self._make_client(0)
        self._closed = False
        self._failover_lock = asyncio.Lock()

    # -- plumbing -------------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        return [f"{h}:{p}" for h, p in self._endpoints]

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to now."""
        host, port = self._endpoints[self._index]
        return f"{host}:{port}"

    @property
    def closed(self) -> bool:
        return self._closed

    def _make_client(self, index: int) -> aetcd.Client:
        host, port = self._endpoints[index]
        return (aetcd.Client if self._tls is None else functools.partial(TlsEtcdClient, tls=self._tls))(
            host=host,
            port=port,
            username=self._username,
            password=self._password,
            # aetcd applies this to every unary call and to watch creation.
            timeout=self.call_timeout,
            options=dict(self._options),
        )

    async def _failover(self, generation: int) -> None:
        """Switch to the next endpoint unless someone already switched since the failed
        call started (several calls failing together must move only one step)."""
        if len(self._endpoints) == 1:
            return  # grpc reconnects the one channel by itself
        async with self._failover_lock:
            if generation != self._generation or self._closed:
                return
            old = self._client
            self._index = (self._index + 1) % len(self._endpoints)
            self._client = self._make_client(self._index)
            self._generation += 1
            log.warning("etcd: failing over to %s", self.endpoint)
        # Closing cancels calls still running on the old channel; their callers see a
        # retryable error and retry here.
        try:
            await old.close()
        except Exception:  # noqa: BLE001 - a dead channel may fail to close cleanly
            log.debug("etcd: closing the old channel failed", exc_info=True)

    async def _call(
        self,
        what: str,
        op: Callable[[aetcd.Client, int], Awaitable[T]],
        *,
        retry: bool = True,
        timeout: float | None = None,
    ) -> T:
        """Run `op(client, attempt)` with translation, failover and bounded retries."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.current_task()
        attempt = 0
        while True:
            if self._closed:
                raise StoreClosed(f"etcd client closed: {what}")
            attempt += 1
            client, generation, endpoint = self._client, self._generation, self.endpoint
            cancelling = task.cancelling() if task is not None else 0
            try:
                async with asyncio.timeout(timeout if timeout is not None else self.call_timeout):
                    result = await op(client, attempt)
            except TRANSLATABLE as exc:
                error = translate_error(exc, what=what, endpoint=endpoint)
            except asyncio.CancelledError as exc:
                if task is None or task.cancelling() > cancelling:
                    raise  # our caller was cancelled: let it go
                # grpc cancels calls in flight when their channel is closed (failover,
                # close()); to the caller that is a lost connection, not a cancellation.
                error = StoreUnavailable(f"etcd {endpoint}: {what}: call cut off (channel closed)")
                error.__cause__ = exc
            else:
                # aetcd waits with asyncio.wait_for (watch creation, connect), which on
                # Python 3.11 swallows a cancellation that races with completion. The
                # cancel request is still counted on the task: honour it here, or the
                # caller would go on (e.g. into a watch) and never stop.
                if task is not None and task.cancelling() > cancelling:
                    if isinstance(result, WatchStream):
                        await result.cancel()
                    raise asyncio.CancelledError(f"cancelled during {what}")
                return result
            if self._closed:
                raise StoreClosed(f"etcd client closed: {what}") from error
            error.attempts = attempt
            if not error.retryable or not retry:
                raise error
            await self._failover(generation)
            elapsed = loop.time() - started
            delay = self.retry.backoff(attempt)
            if attempt >= self.retry.attempts or elapsed + delay > self.retry.deadline:
                raise StoreUnavailable(
                    f"etcd unavailable at {', '.join(self.endpoints)}: {what} failed "
                    f"{attempt} times in {elapsed:.2f}s; last error: {error}",
                    attempts=attempt,
                ) from error
            log.debug("etcd: %s failed (%s), retry %d in %.2fs", what, error, attempt, delay)
            await asyncio.sleep(delay)  # backoff, not synchronisation

    @staticmethod
    async def _stub(client: aetcd.Client) -> aetcd.Client:
        # aetcd creates its stubs on connect(); the public methods do it themselves.
        await client.connect()
        return client

    async def close(self) -> None:
        """Close the channel. Watches end; later calls raise `StoreClosed`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._client.close()


    # -- reads -----------------------------------------------------------------------------
    async def get(self, key: str) -> KV | None:
        """The key's record, or None if absent."""

        async def op(c: aetcd.Client, _: int) -> KV | None:
            got = await c.get(_key_bytes(key))
            if got is None:
                return None
            return KV(
                key=key,
                raw=bytes(got.value),
                mod_revision=int(got.mod_revision),
                create_revision=int(got.create_revision),
                version=int(got.version),
                lease=int(got.lease),
            )

        return await self._call(f"get {key}", op)

    async def get_prefix(self, prefix: str, *, page_size: int = 1000) -> tuple[int, list[KV]]:
        """All keys under `prefix` in one consistent read, sorted by key, and the store
        revision the read reflects (watch from `revision + 1` to miss nothing).

        Read in pages of `page_size` keys, all pinned to the first page's revision: one
        range of 100,000 records is ~30 MB, over gRPC's 4 MiB message limit.
        """
        start, end = _key_bytes(prefix), _prefix_end(_key_bytes(prefix))
        kvs: list[KV] = []
        key, revision = start, 0
        while True:  # one call (with its own timeout and retries) per page

            async def page(c: aetcd.Client, _: int, key: bytes = key, revision: int = revision):
                await self._stub(c)
                return await c.kvstub.Range(
                    rpc.RangeRequest(key=key, range_end=end, limit=page_size, revision=revision),
                    timeout=self.call_timeout,
                    metadata=c.metadata,
                )

            reply = await self._call(f"range {prefix}", page)
            revision = revision or int(reply.header.revision)
            kvs.extend(KV._from_pb(kv) for kv in reply.kvs)
            if not reply.more or not reply.kvs:
                return revision, kvs
            key = bytes(reply.kvs[-1].key) + b"\x00"  # the next key after the last one read

    async def revision(self) -> int:
        """The store's current revision."""

        async def op(c: aetcd.Client, _: int) -> int:
            await self._stub(c)
            reply = await c.kvstub.Range(
                rpc.RangeRequest(key=b"\x00", count_only=True),
                timeout=self.call_timeout,
                metadata=c.metadata,
            )
            return int(reply.header.revision)

        return await self._call("revision", op)

    # -- unconditional writes (idempotent, so retried freely) -----------------------------
    async def put(self, key: str, value: JSON, *, lease: int | None = None) -> int:
        """Write `value` as JSON; returns the key's new mod_revision. Raises `LeaseLost`
        if `lease` no longer exists."""
        raw = encode_json(value)

        async def op(c: aetcd.Client, _: int) -> int:
            reply = await c.put(_key_bytes(key), raw, lease=lease)
            return int(reply.header.revision)

        return await self._call(f"put {key}", op)

    async def delete(self, key: str) -> bool:
        """Delete the key; True if this call deleted it (False if it was absent, which
        after a retried ambiguous failure may mean that an earlier try deleted it)."""

        async def op(c: aetcd.Client, _: int) -> bool:
            return bool(await c.delete(_key_bytes(key)))

        return await self._call(f"delete {key}", op)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under `prefix`; returns how many were deleted."""

        async def op(c: aetcd.Client, _: int) -> int:
            reply = await c.delete_prefix(_key_bytes(prefix))
            return int(reply.deleted)

        return await self._call(f"delete prefix {prefix}", op)

    # -- compare-and-set ----------------------------------------------------------------------
    async def create_if_absent(self, key: str, value: JSON, *, lease: int | None = None) -> CasResult:
        """Create the key only if it does not exist (one etcd transaction).

        Retried safely: if a try failed ambiguously (it may have been applied) and a retry
        then finds the key holding exactly our bytes and our lease, that counts as won.
        The only false "won" this allows is another writer having stored the identical
        document with the identical lease, which leaves the store as we wanted it anyway.
        """
        compare = rpc.Compare(
            key=_key_bytes(key), target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
        )
        return await self._cas_put(f"create {key}", key, encode_json(value), lease, compare)

    async def put_if_mod_revision(
        self, key: str, value: JSON, mod_revision: int, *, lease: int | None = None
    ) -> CasResult:
        """Replace the key only if its mod_revision is still `mod_revision` (the one the
        caller read). Use `create_if_absent` for a key that must not exist. Retry-safe
        as described in `create_if_absent`."""
        if mod_revision <= 0:
            raise ValueError("mod_revision must be > 0; use create_if_absent for a new key")
        compare = rpc.Compare(
            key=_key_bytes(key), target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=mod_revision
        )
        return await self._cas_put(f"put {key}@{mod_revision}", key, encode_json(value), lease, compare)

    async def delete_if_mod_revision(self, key: str, mod_revision: int) -> CasResult:
        """Delete the key only if its mod_revision is still `mod_revision`. Retry-safe:
        after an ambiguous failure, finding the key absent counts as won."""
        if mod_revision <= 0:
            raise ValueError("mod_revision must be > 0")
        kb = _key_bytes(key)
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(key=kb, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=mod_revision)
            ],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=kb))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=kb))],
        )

        async def op(c: aetcd.Client, attempt: int) -> CasResult:
            reply = await self._txn(c, request)
            revision = int(reply.header.revision)
            if reply.succeeded:
                return CasResult(True, revision, None)
            current = _first_kv(reply.responses[0].response_range)
            if attempt > 1 and current is None:
                return CasResult(True, revision, None)
            return CasResult(False, revision, current)

        return await self._call(f"delete {key}@{mod_revision}", op)

    async def _txn(self, c: aetcd.Client, request: Any) -> Any:
        # aetcd's transaction() drops the response header (the revision); the stub has it.
        await self._stub(c)
        return await c.kvstub.Txn(request, timeout=self.call_timeout, metadata=c.metadata)

    async def _cas_put(self, what: str, key: str, raw: bytes, lease: int | None, compare: Any) -> CasResult:
        kb = _key_bytes(key)
        lease_id = int(lease or 0)
        request = rpc.TxnRequest(
            compare=[compare],
            # Read the key back in the same transaction: the caller gets the new revision
            # when it wins and the competing record when it loses, in one round trip.
            success=[
                rpc.RequestOp(request_put=rpc.PutRequest(key=kb, value=raw, lease=lease_id)),
                rpc.RequestOp(request_range=rpc.RangeRequest(key=kb)),
            ],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=kb))],
        )

        async def op(c: aetcd.Client, attempt: int) -> CasResult:
            reply = await self._txn(c, request)
            if reply.succeeded:
                written = _first_kv(reply.responses[1].response_range)
                assert written is not None  # read in the same transaction
                return CasResult(True, written.mod_revision, written)
            current = _first_kv(reply.responses[0].response_range)
            if attempt > 1 and current is not None and current.raw == raw and current.lease == lease_id:
                # An earlier try was applied but its answer was lost (see docstring).
                return CasResult(True, current.mod_revision, current)
            return CasResult(False, int(reply.header.revision), current)

        return await self._call(what, op)

    # -- leases -------------------------------------------------------------------------------
    async def grant_lease(self, ttl: int) -> tuple[int, int]:
        """Grant a lease; returns (lease id, granted TTL in seconds; etcd may raise it to
        its minimum). A grant whose answer was lost just expires after its TTL."""
        if ttl < 1:
            raise ValueError("lease TTL must be at least 1 second")

        async def op(c: aetcd.Client, _: int) -> tuple[int, int]:
            lease = await c.lease(int(ttl))
            return int(lease.id), int(lease.ttl)

        return await self._call(f"grant lease ttl={ttl}", op)

    async def refresh_lease(self, lease_id: int, *, retry: bool = True, timeout: float | None = None) -> int:
        """Send one keepalive; returns the TTL granted from now, 0 if the lease is gone."""

        async def op(c: aetcd.Client, _: int) -> int:
            reply = await c.refresh_lease(lease_id)
            if reply is None:  # the keepalive stream closed without an answer
                raise StoreUnavailable(f"no keepalive answer for lease {lease_id:x}")
            return max(0, int(reply.TTL))

        return await self._call(f"keepalive lease {lease_id:x}", op, retry=retry, timeout=timeout)

    async def lease_ttl(self, lease_id: int) -> int:
        """Remaining TTL in seconds; -1 if the lease does not exist (any more)."""

        async def op(c: aetcd.Client, _: int) -> int:
            info = await c.get_lease_info(lease_id, keys=False)
            return int(info.TTL)

        return await self._call(f"ttl of lease {lease_id:x}", op)

    async def revoke_lease(self, lease_id: int, *, retry: bool = True, timeout: float | None = None) -> None:
        """Revoke the lease, deleting its keys now. A lease already gone is not an error."""

        async def op(c: aetcd.Client, _: int) -> None:
            try:
                await c.revoke_lease(lease_id)
            except TRANSLATABLE as exc:  # only "not found" is swallowed
                if isinstance(translate_error(exc, what="", endpoint=""), LeaseLost):
                    return
                raise

        await self._call(f"revoke lease {lease_id:x}", op, retry=retry, timeout=timeout)

    # -- maintenance ----------------------------------------------------------------------------
    async def compact(self, revision: int, *, physical: bool = True) -> None:
        """Drop history before `revision`; watches asking for older revisions then fail
        with `RevisionCompacted`. Operators (and tests) use it; components never need to."""

        async def op(c: aetcd.Client, _: int) -> None:
            await c.compact(revision, physical=physical)

        await self._call(f"compact {revision}", op)

    # -- watches ----------------------------------------------------------------------------------
    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int | None = None, retry: bool = True
    ) -> WatchStream:
        """Open a watch on `key` (or every key under it if `prefix`), from
        `start_revision` (inclusive) or from now. The caller owns the stream and must
        `cancel()` it (or use `async with`). See `WatchStream` for how it ends."""
        kb = _key_bytes(key)
        what = f"watch {key}{'*' if prefix else ''}"

        async def op(c: aetcd.Client, _: int) -> WatchStream:
            if prefix:
                watch = await c.watch_prefix(kb, start_revision=start_revision)
            else:
                watch = await c.watch(kb, start_revision=start_revision)
            return WatchStream(watch, what=what, endpoint=self.endpoint)

        return await self._call(what, op, retry=retry)


def _first_kv(range_response: Any) -> KV | None:
    return KV._from_pb(range_response.kvs[0]) if range_response.kvs else None


class WatchStream:
    """Events of one etcd watch, in revision order, as an async iterator.

    It ends in one of three ways, all of which the consumer must treat as "the watch is
    broken; re-read and re-watch": raising `StoreUnavailable` (connection lost),
    raising `RevisionCompacted` (history gone), or stopping (cancelled, or the client was
    closed or failed over). It never skips events silently.
    """

    def __init__(self, watch: aetcd.rtypes.Watch, *, what: str, endpoint: str) -> None:
        self._watch = watch
        self._events = watch.__aiter__()
        self._what = what
        self._endpoint = endpoint

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchEvent:
        try:
            event = await self._events.__anext__()
        except StopAsyncIteration:
            raise
        except TRANSLATABLE as exc:
            raise translate_error(exc, what=self._what, endpoint=self._endpoint) from exc
        kind: Literal["put", "delete"] = (
            "delete" if event.kind == aetcd.rtypes.EventKind.DELETE else "put"
        )
        return WatchEvent(kind, KV._from_pb(event.kv))

    async def cancel(self) -> None:
        """Stop the watch on the server and release the iterator. Never raises."""
        try:
            async with asyncio.timeout(1.0):
                await self._watch.cancel()
        except Exception:  # noqa: BLE001 - the stream may already be dead
            log.debug("etcd: cancelling %s failed", self._what, exc_info=True)
        # Close aetcd's async generator here, or the loop's finaliser would do it later
        # from a task nobody owns.
        try:
            await self._events.aclose()
        except Exception:  # noqa: BLE001 - "already running" or a late stream error
            log.debug("etcd: closing %s iterator failed", self._what, exc_info=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()


def _prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with `prefix` (etcd's convention)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"  # every key
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
