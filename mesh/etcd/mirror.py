"""`Mirror`: an in-memory copy of one etcd key prefix, kept current by a watch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Self, TypeVar

from mesh.aio.backoff import Backoff
from mesh.etcd.client import JSON, KV, EtcdClient, WatchEvent, decode_json
from mesh.etcd.errors import CorruptRecord, StoreClosed, StoreError
from mesh.aio.tasks import AsyncClosing, TaskSupervisor

__all__ = ["Change", "Entry", "Listener", "Mirror"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Entry(NamedTuple):
    """One mirrored record: the decoded JSON document and the key's mod_revision (use it
    for `put_if_mod_revision` / `delete_if_mod_revision`)."""

    value: JSON
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """One change as listeners see it. `name` is the key relative to the mirror's prefix;
    `entry` is None for a delete, `previous` is None for a creation."""

    kind: Literal["put", "delete"]
    name: str
    entry: Entry | None
    previous: Entry | None


#: A listener gets the changes of one batch (one watch event, or all differences found by
#: a re-sync); an empty batch says only `in_sync` changed (so views built on mirrors can
#: wake their own waiters). It runs in the mirror's task: it must be quick and must not block; to do
#: slow work, hand the change to a queue that another owned task consumes.
Listener = Callable[[Sequence[Change]], None]


class Mirror(Mapping[str, Entry], AsyncClosing):
    """A read-only mapping `name -> Entry` of every key under `prefix` (names are keys
    with the prefix removed), updated in the background from an etcd watch.

    Guarantees:
    - reads (`m[name]`, `m.get`, iteration, `len`) never touch etcd and never block;
      between two awaits the view is one consistent state of etcd;
    - the view only moves forward in etcd revision order; after the first sync `ready` is
      set and stays set;
    - on any watch break (etcd restart, connection loss, failover, compaction) the mirror
      keeps serving its last view, re-reads the whole prefix with backoff, reports the
      differences to listeners as changes, and resumes watching from the new revision; it
      never misses a change that is still in etcd;
    - a value that is not valid JSON is left out of the view and logged.

    Failure: nothing is raised to readers; `in_sync` is False (and `breaks` counts up)
    while the mirror is catching up. A closed `EtcdClient` stops the mirror for good.

    What the caller must do: `async with Mirror(...)` (or `start()`/`close()`), await
    `ready` / `wait_ready()` before trusting the view, and accept that it may be stale by
    the watch latency (or longer while etcd is unreachable): decisions that must be exact
    are confirmed by a compare-and-set on the entry's `mod_revision`.
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        *,
        name: str | None = None,
        initial_backoff: float = 0.05,
        max_backoff: float = 1.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.name = name or prefix
        self._backoff = Backoff(initial_backoff, max_backoff)
        self._data: dict[str, Entry] = {}
        self._revision = 0
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        self.ready = asyncio.Event()
        self._in_sync = False
        self._closed = False
        #: Full range reads done (1 after the first sync; +1 per re-sync).
        self.syncs = 0
        #: Watch breaks seen (each one is followed by a re-sync).
        self.breaks = 0
        self._tasks = TaskSupervisor(f"mirror-{self.name}")

    # -- Mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Entry:
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def value(self, name: str, default: JSON = None) -> JSON:
        """The decoded document of `name`, or `default`."""
        entry = self._data.get(name)
        return default if entry is None else entry.value

    def snapshot(self) -> dict[str, Entry]:
        """A copy of the current view (entries are immutable; the dict is yours)."""
        return dict(self._data)

    @property
    def revision(self) -> int:
        """The etcd revision the view reflects (advances with changes under the prefix)."""
        return self._revision

    @property
    def in_sync(self) -> bool:
        """True while the watch is running; False before the first sync and during a
        re-sync (the view is then possibly stale, but still the last known state)."""
        return self._in_sync

    # -- listeners and waiting ---------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with each batch of changes; returns the unsubscribe function.
        Listeners see changes after the view has applied them."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    async def wait_for(self, predicate: Callable[[Mirror], T], timeout: float | None) -> T:
        """Wait until `predicate(self)` is truthy and return its value. It is evaluated
        now and after every change (woken by the watch; no polling). Raises
        `TimeoutError` after `timeout` seconds, `StoreClosed` if the mirror closes."""
        async with asyncio.timeout(timeout):
            while True:
                result = predicate(self)
                if result:
                    return result
                if self._closed:
                    raise StoreClosed(f"mirror {self.name} closed")
                await self._changed.wait()

    async def wait_ready(self, timeout: float | None) -> None:
        """Wait for the first sync; raises `TimeoutError`."""
        async with asyncio.timeout(timeout):
            await self.ready.wait()

    async def wait_for_revision(self, revision: int, timeout: float | None) -> None:
        """Wait until the view reflects `revision`, e.g. the revision returned by one of
        our own writes under this prefix (read-your-writes). Raises `TimeoutError`."""
        await self.wait_for(lambda m: m.revision >= revision, timeout)

    def _notify(self, changes: Sequence[Change]) -> None:
        # Swap the event first: waiters woken now re-check the predicate and, if it is
        # still false, wait on the new event, so no change can slip between check and wait.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for listener in list(self._listeners):
            try:
                listener(changes)
            except Exception:  # noqa: BLE001 - one bad listener must not stop the mirror
                log.exception("mirror %s: listener %r failed", self.name, listener)

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the background sync task (returns at once; await `ready`)."""
        if self._tasks.tasks or self._closed:
            return
        self._tasks.spawn(self._run(), name="watch")

    async def close(self) -> None:
        """Stop watching; the view stays readable but frozen. Wakes `wait_for` callers
        with `StoreClosed`. Idempotent."""
        self._closed = True
        await self._tasks.close()
        self._in_sync = False
        self._notify(())

    async def __aenter__(self) -> Self:
        await self.start()
        return self


    # -- the sync loop ---------------------------------------------------------------------------------
    async def _after_sync(self, revision: int) -> None:
        """Hook called after each full range read, before the watch is opened. Does
        nothing; tests override it to force races (e.g. a compaction in between)."""

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                revision = await self._resync()
                failures = 0
                await self._after_sync(revision)
                stream = await self.client.watch(self.prefix, prefix=True, start_revision=revision + 1)
                self._in_sync = True
                self._notify(())  # wake waiters on `in_sync`
                try:
                    async for event in stream:
                        self._apply(event)
                finally:
                    await stream.cancel()
                reason = "watch stream ended"
            except StoreClosed:
                log.info("mirror %s: etcd client closed; mirror stops", self.name)
                self._in_sync = False
                return
            except StoreError as exc:
                reason = str(exc)
            self._in_sync = False
            self.breaks += 1
            self._notify(())
            failures += 1
            delay = self._backoff.delay(failures)
            log.warning("mirror %s: watch broken (%s); re-sync in %.2fs", self.name, reason, delay)
            await asyncio.sleep(delay)  # backoff before re-reading, not synchronisation

    def _decode(self, kv: KV) -> Entry | None:
        try:
            return Entry(decode_json(kv.raw, key=kv.key), kv.mod_revision)
        except CorruptRecord as exc:
            log.warning("mirror %s: ignoring %s", self.name, exc)
            return None

    async def _resync(self) -> int:
        revision, kvs = await self.client.get_prefix(self.prefix)
        fresh: dict[str, Entry] = {}
        for kv in kvs:
            entry = self._decode(kv)
            if entry is not None:
                fresh[kv.key[len(self.prefix):]] = entry
        old = self._data
        changes = [
            Change("put", name, entry, old.get(name))
            for name, entry in fresh.items()
            if name not in old or old[name].mod_revision != entry.mod_revision
        ]
        changes.extend(Change("delete", name, None, old[name]) for name in old if name not in fresh)
        self._data = fresh
        self._revision = max(self._revision, revision)
        self.syncs += 1
        self.ready.set()
        self._notify(changes)
        return revision

    def _apply(self, event: WatchEvent) -> None:
        name = event.kv.key[len(self.prefix):]
        previous = self._data.get(name)
        entry = self._decode(event.kv) if event.kind == "put" else None
        if entry is None:
            self._data.pop(name, None)
            change = Change("delete", name, None, previous) if previous is not None else None
        else:
            self._data[name] = entry
            change = Change("put", name, entry, previous)
        self._revision = max(self._revision, event.kv.mod_revision)
        self._notify([change] if change is not None else [])
