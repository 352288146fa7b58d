"""Fixtures for the placement layer's tests: a real etcd, clients on it, leak checks.

- `etcd_server` (module): one private etcd shared by a module's tests; each test gets
  its own fabric prefix (`keys`), so tests never see each other's keys.
- `private_etcd` (function): an etcd of the test's own, for tests that stop, kill or
  restart it.
- `etcd` / `private_client`: an `EtcdClient` on those, closed at teardown.
- `no_leaked_tasks`: fails the test if an asyncio task it started is still alive after
  its fixtures are torn down. Modules opt in with
  `pytestmark = pytest.mark.usefixtures("no_leaked_tasks")` (it is async, and the pure
  placement/LRU tests in this folder are sync).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from mesh.etcd.client import EtcdClient, RetryPolicy
from mesh.etcd.keys import Keys
from tests.support.etcd_server import EtcdServer

# Short enough that "etcd unreachable" tests finish in a couple of seconds, long enough
# for a loaded CI machine to answer a healthy etcd.
TEST_RETRY = RetryPolicy(attempts=5, initial_backoff=0.02, max_backoff=0.2, deadline=1.0)
TEST_CALL_TIMEOUT = 1.0


def _assert_gone(server: EtcdServer, pid: int | None) -> None:
    assert not server.running, "etcd still running after teardown"
    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # A zombie would still answer kill(0); Popen.wait() in close() reaps it, so a
        # live pid here means the process really survived.
        raise AssertionError(f"etcd pid {pid} still alive after teardown")


def _start(server: EtcdServer) -> Iterator[EtcdServer]:
    server.start()
    try:
        yield server
    finally:
        pid = server.pid
        server.close()
        _assert_gone(server, pid)


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdServer]:
    yield from _start(EtcdServer())


@pytest.fixture
def private_etcd() -> Iterator[EtcdServer]:
    yield from _start(EtcdServer(name="private"))


@pytest.fixture
def keys() -> Keys:
    """A fabric of the test's own on the shared server."""
    return Keys(fabric=f"t-{uuid.uuid4().hex[:12]}")


def _make_client(*servers_or_endpoints: EtcdServer | str) -> EtcdClient:
    endpoints = [s.endpoint if isinstance(s, EtcdServer) else s for s in servers_or_endpoints]
    return EtcdClient(endpoints, call_timeout=TEST_CALL_TIMEOUT, retry=TEST_RETRY)


ClientFactory = Callable[..., EtcdClient]


@pytest.fixture
async def client_factory() -> AsyncIterator[ClientFactory]:
    """`client_factory(server_or_endpoint, ...)` -> a new `EtcdClient` (test timeouts),
    closed at teardown. For tests that need several processes' worth of clients."""
    made: list[EtcdClient] = []

    def factory(*servers_or_endpoints: EtcdServer | str) -> EtcdClient:
        client = _make_client(*servers_or_endpoints)
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.close()


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with _make_client(etcd_server) as client:
        yield client


@pytest.fixture
async def private_client(private_etcd: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with _make_client(private_etcd) as client:
        yield client


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}
    if leaked:
        # Give tasks that are already finishing (cancelled, closing a stream) a moment to
        # end: this waits on their completion, it does not sleep.
        _, still = await asyncio.wait(leaked, timeout=2.0)
        assert not still, "leaked tasks: " + ", ".join(sorted(t.get_name() for t in still))
