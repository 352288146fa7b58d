"""EtcdClient against a real etcd: JSON records, compare-and-set races, error mapping."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from mesh.etcd.store import (
    CorruptRecord,
    EtcdClient,
    Keys,
    LeaseLost,
    RetryPolicy,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)
from tests.support.etcd_server import EtcdServer
from tests.support.ports import free_port

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


def _grpc_cause(error: BaseException) -> grpc.aio.AioRpcError:
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, grpc.aio.AioRpcError):
        cause = cause.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError), f"no grpc error chained to {error!r}"
    return cause


async def test_put_get_round_trip_json(etcd: EtcdClient, keys: Keys) -> None:
    record = {"id": "m1", "size": 123, "tags": ["a", "b"], "nested": {"x": None}}
    revision = await etcd.put(keys.model("m1"), record)
    got = await etcd.get(keys.model("m1"))
    assert got is not None
    assert got.value == record
    assert got.mod_revision == revision
    assert got.lease == 0
    assert await etcd.get(keys.model("absent")) is None


async def test_get_prefix_is_consistent_and_sorted(etcd: EtcdClient, keys: Keys) -> None:
    for name in ("b", "a", "c"):
        await etcd.put(keys.model(name), {"n": name})
    await etcd.put(keys.vmodel("a"), {"other": True})  # must not leak into models/
    revision, kvs = await etcd.get_prefix(keys.models)
    assert [kv.key for kv in kvs] == [keys.model("a"), keys.model("b"), keys.model("c")]
    assert revision >= max(kv.mod_revision for kv in kvs)
    assert revision == await etcd.revision()


async def test_corrupt_record_is_a_permanent_error(etcd: EtcdClient, keys: Keys) -> None:
    # Written around our encoder, as a foreign tool might.
    await etcd._client.put(keys.model("bad").encode(), b"{not json")
    got = await etcd.get(keys.model("bad"))
    assert got is not None
    with pytest.raises(CorruptRecord) as info:
        _ = got.value
    assert not info.value.retryable


async def test_create_if_absent_race_has_exactly_one_winner(
    etcd: EtcdClient, client_factory, etcd_server: EtcdServer, keys: Keys
) -> None:
    other = client_factory(etcd_server)  # a second process's client
    key = keys.model("m")
    writers = [
        (etcd if i % 2 else other).create_if_absent(key, {"writer": i}) for i in range(8)
    ]
    results = await asyncio.gather(*writers)
    winners = [i for i, r in enumerate(results) if r.won]
    assert len(winners) == 1
    stored = await etcd.get(key)
    assert stored is not None and stored.value == {"writer": winners[0]}
    win = results[winners[0]]
    assert win.revision == stored.mod_revision and win.current == stored
    for r in results:
        if not r.won:
            # Losers learn who won without another read.
            assert r.current == stored
            assert r.revision >= stored.mod_revision


async def test_put_if_mod_revision_race_one_wins_and_loser_sees_winner(
    etcd: EtcdClient, client_factory, etcd_server: EtcdServer, keys: Keys
) -> None:
    other = client_factory(etcd_server)
    key = keys.model("m")
    created = await etcd.create_if_absent(key, {"v": 0})
    assert created.won
    seen = created.revision
    first, second = await asyncio.gather(
        etcd.put_if_mod_revision(key, {"v": "a"}, seen),
        other.put_if_mod_revision(key, {"v": "b"}, seen),
    )
    assert first.won != second.won
    winner, loser = (first, second) if first.won else (second, first)
    assert winner.revision > seen
    assert loser.current is not None and loser.current.mod_revision == winner.revision
    # The loser retries on what it learnt, and now wins.
    retried = await etcd.put_if_mod_revision(key, {"v": "c"}, loser.current.mod_revision)
    assert retried.won
    assert (await etcd.get(key)).value == {"v": "c"}  # type: ignore[union-attr]


async def test_delete_if_mod_revision(etcd: EtcdClient, keys: Keys) -> None:
    key = keys.model("m")
    first = await etcd.create_if_absent(key, {"v": 1})
    updated = await etcd.put_if_mod_revision(key, {"v": 2}, first.revision)
    stale = await etcd.delete_if_mod_revision(key, first.revision)
    assert not stale.won
    assert stale.current is not None and stale.current.value == {"v": 2}
    fresh = await etcd.delete_if_mod_revision(key, updated.revision)
    assert fresh.won and fresh.revision > updated.revision
    assert await etcd.get(key) is None
    assert not (await etcd.put_if_mod_revision(key, {"v": 3}, updated.revision)).won
    with pytest.raises(ValueError):
        await etcd.put_if_mod_revision(key, {"v": 3}, 0)


async def test_unreachable_etcd_gives_store_unavailable_in_bounded_time() -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    policy = RetryPolicy(attempts=50, initial_backoff=0.02, max_backoff=0.2, deadline=1.0)
    async with EtcdClient(dead, call_timeout=0.5, retry=policy) as client:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await client.get("/meshserve/x/models/m")
        elapsed = time.monotonic() - started
    error = info.value
    assert error.retryable
    assert elapsed < 1.0 + 0.5 + 0.5  # deadline + one call timeout + slack
    assert error.attempts > 1  # it did retry
    assert dead[0] in str(error) and dead[1] in str(error)
    # The cause chain reaches the grpc error, for the logs.
    assert _grpc_cause(error).code() == grpc.StatusCode.UNAVAILABLE


async def test_fails_over_to_a_live_endpoint(etcd_server: EtcdServer, keys: Keys) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with EtcdClient([dead, etcd_server.endpoint], call_timeout=1.0, retry=RetryPolicy(deadline=3.0)) as client:
        assert client.endpoint == dead
        await client.put(keys.model("m"), {"ok": True})
        assert client.endpoint == etcd_server.endpoint
        assert (await client.get(keys.model("m"))).value == {"ok": True}  # type: ignore[union-attr]


async def test_permanent_error_is_not_retried(etcd: EtcdClient, keys: Keys) -> None:
    started = time.monotonic()
    with pytest.raises(LeaseLost) as info:
        await etcd.put(keys.instance("i"), {"x": 1}, lease=0x1234)  # no such lease
    assert not info.value.retryable
    assert info.value.attempts == 1
    assert _grpc_cause(info.value).code() == grpc.StatusCode.NOT_FOUND
    assert time.monotonic() - started < 1.0


async def test_closed_client_raises_store_closed(etcd_server: EtcdServer, keys: Keys) -> None:
    client = EtcdClient([etcd_server.endpoint])
    await client.put(keys.model("m"), {})
    await client.close()
    with pytest.raises(StoreClosed) as info:
        await client.get(keys.model("m"))
    assert isinstance(info.value, StoreError) and not info.value.retryable


async def test_unavailable_while_stopped_then_recovers(private_etcd: EtcdServer, private_client: EtcdClient) -> None:
    await private_client.put("/meshserve/p/models/m", {"v": 1})
    await private_etcd.astop()
    with pytest.raises(StoreUnavailable):
        await private_client.get("/meshserve/p/models/m")
    await private_etcd.astart()
    got = await private_client.get("/meshserve/p/models/m")  # same client, same data dir
    assert got is not None and got.value == {"v": 1}


async def test_calls_cut_off_by_failover_are_retried_not_cancelled(
    etcd_server: EtcdServer, private_etcd: EtcdServer, keys: Keys
) -> None:
    # Two unrelated servers stand in for two members; only the switch matters here.
    async with EtcdClient([etcd_server.endpoint, private_etcd.endpoint], retry=RetryPolicy(deadline=3.0)) as client:
        await client.put(keys.model("m"), {"v": 1})
        calls = [asyncio.ensure_future(client.get(keys.model("m"))) for _ in range(20)]
        await asyncio.sleep(0)  # let them reach the channel
        # White-box: what a failing call does, while the others are still in flight. grpc
        # cancels calls on a closed channel; they must come back as retries on the next
        # endpoint, not as a CancelledError in the caller.
        await client._failover(client._generation)
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert client.endpoint == private_etcd.endpoint
        assert not [r for r in results if isinstance(r, BaseException)], results


async def test_close_with_calls_in_flight_raises_store_closed(etcd_server: EtcdServer, keys: Keys) -> None:
    client = EtcdClient([etcd_server.endpoint])
    await client.put(keys.model("m"), {})
    calls = [asyncio.ensure_future(client.get(keys.model("m"))) for _ in range(10)]
    await asyncio.sleep(0)  # let them reach the channel
    await client.close()
    results = await asyncio.gather(*calls, return_exceptions=True)
    # Each one either finished before the close or reports the close; none is "cancelled".
    finished = [r for r in results if not isinstance(r, BaseException)]
    assert all(r is not None for r in finished)
    assert all(isinstance(r, StoreClosed) for r in results if isinstance(r, BaseException)), results
    assert any(isinstance(r, StoreClosed) for r in results)


async def test_get_prefix_reads_past_the_grpc_message_limit(etcd, keys):
    """6 MiB under one prefix (over gRPC's 4 MiB default) comes back whole, in pages."""
    blob = "x" * 8000
    # Written 40 at a time: 800 puts at once can outlast the tests' 1 s call timeout on a loaded machine.
    for start in range(0, 800, 40):
        await asyncio.gather(*(etcd.put(keys.model(f"m{i:04d}"), {"blob": blob, "i": i})
                               for i in range(start, start + 40)))
    await etcd.put(keys.vmodel("outside"), {"i": -1})
    revision, kvs = await etcd.get_prefix(keys.models, page_size=50)
    assert [kv.value["i"] for kv in kvs] == list(range(800))
    assert revision >= max(kv.mod_revision for kv in kvs)
