"""The :class:`Puller`: storage location -> complete, verified files in the local cache."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from puller.archive import unpack
from puller.cache import MODEL_DIR, CacheLayout, EntryMeta, tree_digest
from puller.errors import (
    DiskBudgetExceeded,
    IntegrityError,
    InvalidStorageUri,
    PullError,
    StorageAccessDenied,
    StorageNotFound,
    UnsafePath,
)
from puller.providers.base import Listing, Provider, ProviderRegistry, RemoteObject
from puller.retry import RetryPolicy
from puller.spec import (
    AzureLocation,
    Checksum,
    HttpLocation,
    LocalLocation,
    ResolvedSource,
    S3Location,
    is_archive,
    resolve,
    safe_join,
    verify_checksum_shape,
)
from puller.storage_config import Redactor, StorageConfig, load_storage_config, secrets_in
from puller.transfer import FetchedFile, TransferConfig, hash_file

__all__ = ["PulledModel", "Puller"]

log = logging.getLogger("puller")
T = TypeVar("T")

_SCHEMES: dict[type, str] = {S3Location: "s3", AzureLocation: "azure", HttpLocation: "http"}


@dataclass(frozen=True)
class PulledModel:
    """A model's files on local disk.

    ``local_path`` is the file (single-object models) or directory (prefixes, unpacked
    archives, most local paths) a backend loads from; ``size_bytes`` the total size of its
    files; ``digest`` ``"sha256:<hex>"`` (see :mod:`puller.cache` for how it is formed)."""

    local_path: Path
    size_bytes: int
    digest: str


@dataclass
class _Flight:
    task: asyncio.Task[PulledModel]
    fingerprint: str
    waiters: int = 0


@dataclass
class _Held:
    meta: EntryMeta
    orphan: bool = False  # found on disk at start-up, not pulled by this process yet


@dataclass
class _Stats:
    downloads_started: int = 0
    bytes_downloaded: int = 0
    retries: int = 0


def _default_providers() -> list[Provider[Any]]:
    # Imported here so that an SDK missing from an image only disables its own scheme.
    providers: list[Provider[Any]] = []
    from puller.providers.http import HttpProvider

    providers.append(HttpProvider())
    try:
        from puller.providers.s3 import S3Provider

        providers.append(S3Provider())
    except ImportError:  # pragma: no cover - boto3 is a dependency
        log.warning("boto3 is not importable; s3:// models cannot be pulled")
    try:
        from puller.providers.azure import AzureProvider

        providers.append(AzureProvider())
    except ImportError:  # pragma: no cover - azure-storage-blob is a dependency
        log.warning("azure-storage-blob is not importable; Azure Blob models cannot be pulled")
    return providers


class Puller:
    """Brings model artifacts from storage into a local cache directory.

    Guarantees:

    * ``pull`` returns only when every file is complete and verified (size; checksum where
      the store advertises one or the model key names one). Files are downloaded under
      ``<cache_dir>/.staging`` and moved into place with one rename, so a failed or
      cancelled pull leaves nothing behind.
    * Nothing is written outside ``cache_dir``: unsafe keys, archive members and links are
      refused with :class:`~puller.errors.UnsafePath`.
    * Concurrent pulls of one model id (same source) share one download; at most
      ``max_concurrent_pulls`` models download at once (others wait their turn).
    * Transient failures are retried with backoff (``retry``); permanent ones fail at once.
    * The files of all held models stay within ``disk_budget_bytes``
      (:class:`~puller.errors.DiskBudgetExceeded` otherwise; entries left by an earlier
      process and not pulled again are evicted first).
    * Local paths (plain absolute paths, ``file://``, ``pvc://``) are not copied; they are
      returned in place after checking that they exist.
    * Error messages and logs name locations, never credentials (known secret values are
      scrubbed from every message).

    Failures are :class:`~puller.errors.PullError` subclasses. The caller must ``release``
    a model when it unloads it (that deletes its cached files) and ``aclose`` the puller
    on shutdown.
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        storage_config_dir: Path | None = None,
        disk_budget_bytes: int | None = None,
        max_concurrent_pulls: int = 4,
        pvc_root: Path = Path("/pvc"),
        env: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        transfer: TransferConfig | None = None,
        files_in_parallel: int = 4,
        providers: Iterable[Provider[Any]] | None = None,
    ):
        if max_concurrent_pulls < 1:
            raise ValueError("max_concurrent_pulls must be at least 1")
        self._layout = CacheLayout(Path(cache_dir).absolute())
        self._storage_config_dir = storage_config_dir
        self._budget = disk_budget_bytes
        self._pvc_root = pvc_root
        # The environment is read once, here: the fallback credentials.
        self._env = dict(os.environ if env is None else env)
        self._env_secrets = secrets_in(self._env)
        self._retry = retry or RetryPolicy()
        self._transfer = transfer or TransferConfig()
        self._files_in_parallel = max(1, files_in_parallel)
        self._registry = ProviderRegistry()
        for provider in (providers if providers is not None else _default_providers()):
            self._registry.register(provider)
        self._slots = asyncio.Semaphore(max_concurrent_pulls)
        self._executor = ThreadPoolExecutor(
            max_workers=max_concurrent_pulls * self._files_in_parallel + 4, thread_name_prefix="puller")
        self._flights: dict[str, _Flight] = {}
        self._held: dict[str, _Held] = {}
        self._reservations: dict[int, int] = {}
        self._tokens = itertools.count()
        self._ready: asyncio.Future[None] | None = None
        self._waiting = 0
        self._closed = False
        self.stats = _Stats()

    # -- public API -------------------------------------------------------------------

    @property
    def cache_dir(self) -> Path:
        return self._layout.root

    @property
    def pulls_waiting(self) -> int:
        """Pulls queued behind the concurrency limit."""
        return self._waiting

    @property
    def pulls_in_progress(self) -> int:
        return len(self._flights)

    @property
    def bytes_held(self) -> int:
        return sum(h.meta.size_bytes for h in self._held.values())

    async def pull(self, model_id: str, model_path: str, model_key: str | None = None) -> PulledModel:
        """Fetch the model's files (or find them in the cache) and return where they are."""
        if self._closed:
            raise RuntimeError("puller is closed")
        await self._prepare()
        config = await self._run(load_storage_config, self._storage_config_dir)
        redact = Redactor(config.secret_values() | self._env_secrets)
        try:
            try:
                return await self._pull(model_id, model_path, model_key, config, redact)
            except OSError as exc:  # the cache's own disk (full, permissions), not the store
                raise PullError(f"model {model_id!r}: local cache I/O failed: {exc.strerror or type(exc).__name__}"
                                ) from exc
        except PullError as exc:
            clean = exc.with_message(redact(exc.message))
            log.info("pull of model %r failed: %s", model_id, clean)
            raise clean from exc.__cause__

    async def release(self, model_id: str) -> None:
        """Delete the model's cached files; stop its pull if one is running. No-op for an
        unknown model or a local path (local files are never deleted)."""
        flight = self._flights.get(model_id)
        if flight is not None:
            flight.task.cancel()
            await asyncio.wait([flight.task])
        held = self._held.pop(model_id, None)
        if held is not None:
            await self._run(self._layout.remove, self._layout.entry_dir(model_id))
            log.info("released model %r (%d bytes)", model_id, held.meta.size_bytes)

    async def aclose(self) -> None:
        """Stop pulls in progress and the worker threads; cached files stay."""
        self._closed = True
        tasks = [f.task for f in self._flights.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await asyncio.to_thread(self._executor.shutdown, True)
        for provider in self._registry.providers.values():
            close = getattr(provider, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    # -- pulling ----------------------------------------------------------------------

    async def _pull(self, model_id: str, model_path: str, model_key: str | None,
                    config: StorageConfig, redact: Redactor) -> PulledModel:
        source = resolve(model_path, model_key, pvc_root=self._pvc_root, storage_types=config.types)
        if isinstance(source.location, LocalLocation):
            return await self._run(self._local, source)
        scheme = _SCHEMES[type(source.location)]
        provider = self._registry.get(scheme)
        if provider is None:
            raise InvalidStorageUri(f"{source.display}: no provider for {scheme!r} storage is installed")
        entry = config.select(scheme, storage_key=source.storage_key, match=provider.entry_match(source.location),
                              where=source.display)
        typed = provider.config_from_entry(entry) if entry is not None else provider.config_from_env(self._env)
        # repr() of a provider config leaves secrets out; the hash keeps URLs' query strings out of the file.
        fingerprint = hashlib.sha256(
            f"{scheme}|{typed!r}|{source.location!r}|{source.checksum}".encode()).hexdigest()

        while True:
            flight = self._flights.get(model_id)
            if flight is not None:
                if flight.fingerprint == fingerprint:
                    return await self._join(flight)
                await asyncio.wait([flight.task])  # another source for this id: let it finish first
                continue
            held = self._held.get(model_id)
            if held is not None and held.meta.fingerprint == fingerprint:
                final = self._layout.entry_dir(model_id) / held.meta.relative_path
                if await self._run(final.exists):
                    held.orphan = False
                    return PulledModel(final, held.meta.size_bytes, held.meta.digest)
                if model_id in self._flights:
                    continue  # another caller started a pull while we looked
            break
        # No await from the flight check to here: one task per model id.
        task = asyncio.create_task(self._pull_with_retries(model_id, provider, typed, source, fingerprint, redact),
                                   name=f"puller:pull:{model_id}")
        flight = _Flight(task, fingerprint)
        self._flights[model_id] = flight
        task.add_done_callback(lambda t, mid=model_id, fl=flight: self._flight_done(mid, fl))
        return await self._join(flight)

    def _flight_done(self, model_id: str, flight: _Flight) -> None:
        if self._flights.get(model_id) is flight:
            del self._flights[model_id]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved: waiters see it; no "never retrieved" noise

    async def _join(self, flight: _Flight) -> PulledModel:
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling() == 0:
                # The shared pull was stopped (release, aclose), not this caller.
                raise PullError("pull was cancelled (the model was released or the puller closed)",
                                retryable=True) from None
            if flight.waiters == 1 and not flight.task.done():
                # Nobody else wants it: stop it, and return only once its staging directory is gone.
                flight.task.cancel()
                await asyncio.wait([flight.task])
            raise
        finally:
            flight.waiters -= 1

    async def _pull_with_retries(self, model_id: str, provider: Provider[Any], typed: Any,
                                 source: ResolvedSource, fingerprint: str, redact: Redactor) -> PulledModel:
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            attempt = 0
            while True:
                attempt += 1
                try:
                    return await self._fetch_once(model_id, provider, typed, source, fingerprint)
                except PullError as exc:
                    if not exc.retryable or attempt >= self._retry.attempts:
                        raise
                    delay = self._retry.delay(attempt)
                    self.stats.retries += 1
                    log.warning("pull of model %r: attempt %d failed (%s); retrying in %.2fs",
                                model_id, attempt, redact(exc.message), delay)
                    await asyncio.sleep(delay)  # backoff, not synchronisation
        finally:
            self._slots.release()

    async def _fetch_once(self, model_id: str, provider: Provider[Any], typed: Any, source: ResolvedSource,
                          fingerprint: str) -> PulledModel:
        listing: Listing = await self._run(provider.list, typed, source.location, source.params or {})
        verify_checksum_shape(source.checksum, single_object=listing.single, where=source.display)
        announced = sum(obj.size or 0 for obj in listing.objects)
        token = await self._reserve(announced, where=source.display)
        staged = await self._run(self._layout.new_staging, model_id)
        try:
            model_dir = staged / MODEL_DIR
            known: dict[str, str] = {}
            if listing.single:
                obj = listing.objects[0]
                name = _file_name(listing.name, where=obj.display or source.display)
                if is_archive(name):
                    archive = staged / f"archive-{name}"
                    await self._download(provider, typed, source, obj, archive, extra=source.checksum)
                    limit = None if self._budget is None else self._budget - self._used(exclude=token) - announced
                    files = await self._run_cancellable(
                        lambda cancel: unpack(archive, model_dir, name=name, where=obj.display or source.display,
                                              max_bytes=limit, cancel=cancel))
                    await self._run(archive.unlink)
                    known = {f.relative: f.sha256 for f in files}
                    local = model_dir
                else:
                    local = model_dir / name
                    fetched = await self._download(provider, typed, source, obj, local, extra=source.checksum)
                    known = {"": fetched.sha256}
            else:
                local = model_dir
                gate = asyncio.Semaphore(self._files_in_parallel)

                async def fetch(obj: RemoteObject) -> None:
                    dest = safe_join(model_dir, obj.relative, where=obj.display or source.display)
                    async with gate:
                        await self._run(dest.parent.mkdir, parents=True, exist_ok=True)
                        fetched = await self._download(provider, typed, source, obj, dest, extra=None)
                    known[obj.relative] = fetched.sha256

                async with asyncio.TaskGroup() as group:
                    for obj in listing.objects:
                        group.create_task(fetch(obj), name=f"puller:file:{model_id}")
            size, digest = await self._run(tree_digest, local, known)
            await self._resize(token, size, where=source.display)
            meta = EntryMeta(model_id, fingerprint, local.relative_to(staged).as_posix(), size, digest)
            final = await self._run(self._layout.commit, staged, model_id, meta)
            self._held[model_id] = _Held(meta)
            log.info("pulled model %r from %s: %d bytes, %s", model_id, source.display, size, digest)
            return PulledModel(final / meta.relative_path, size, digest)
        except BaseException:
            await asyncio.shield(self._run(self._layout.remove, staged))
            raise
        finally:
            self._reservations.pop(token, None)

    async def _download(self, provider: Provider[Any], typed: Any, source: ResolvedSource, obj: RemoteObject,
                        dest: Path, *, extra: Checksum | None) -> FetchedFile:
        self.stats.downloads_started += 1
        want_md5 = obj.wants_md5 or (extra is not None and extra.algorithm == "md5")
        fetched: FetchedFile = await self._run_cancellable(
            lambda cancel: provider.download(typed, source.location, obj, dest, transfer=self._transfer,
                                             cancel=cancel, want_md5=want_md5))
        where = obj.display or source.display
        if obj.size is not None and fetched.size != obj.size:
            raise IntegrityError(f"{where}: got {fetched.size} bytes, expected {obj.size}", location=where)
        for checksum in (*obj.checksums, *((extra,) if extra else ())):
            got = fetched.sha256 if checksum.algorithm == "sha256" else fetched.md5
            if got is None:
                got = (await self._run(hash_file, dest, want_md5=True)).md5
            if got != checksum.hex:
                raise IntegrityError(f"{where}: {checksum.algorithm} mismatch: expected {checksum.hex}, got {got}",
                                     location=where)
        self.stats.bytes_downloaded += fetched.size
        return fetched

    def _local(self, source: ResolvedSource) -> PulledModel:
        path = source.location.path  # type: ignore[union-attr]
        where = source.display
        try:
            if not path.exists():
                raise StorageNotFound(f"{where}: no such file or directory", location=where)
            size, digest = tree_digest(path)
        except PermissionError as exc:
            raise StorageAccessDenied(f"{where}: permission denied", location=where) from exc
        if source.checksum is not None:
            if not path.is_file():
                raise IntegrityError(f"{where}: a checksum was given but the path is a directory", location=where)
            got = digest.removeprefix("sha256:") if source.checksum.algorithm == "sha256" else None
            if got is None:
                got = hash_file(path, want_md5=True).md5
            if got != source.checksum.hex:
                raise IntegrityError(f"{where}: {source.checksum.algorithm} mismatch", location=where)
        return PulledModel(path, size, digest)

    # -- disk budget ------------------------------------------------------------------

    def _used(self, exclude: int | None = None) -> int:
        reserved = sum(v for k, v in self._reservations.items() if k != exclude)
        return self.bytes_held + reserved

    async def _reserve(self, size: int, *, where: str) -> int:
        await self._make_room(size, where=where)
        token = next(self._tokens)
        self._reservations[token] = size
        return token

    async def _resize(self, token: int, size: int, *, where: str) -> None:
        self._reservations.pop(token, None)
        try:
            await self._make_room(size, where=where)
        finally:
            self._reservations[token] = size

    async def _make_room(self, size: int, *, where: str) -> None:
        if self._budget is None or self._used() + size <= self._budget:
            return
        # Entries left by an earlier process that nobody asked for again go first.
        for model_id, held in list(self._held.items()):
            if held.orphan and self._used() + size > self._budget:
                del self._held[model_id]
                await self._run(self._layout.remove, self._layout.entry_dir(model_id))
        free = self._budget - self._used()
        if size > free:
            raise DiskBudgetExceeded(
                f"{where}: needs {size} bytes but the cache has {max(free, 0)} of {self._budget} bytes free",
                location=where)

    # -- plumbing ---------------------------------------------------------------------

    async def _prepare(self) -> None:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            try:
                found = await self._run(self._layout.prepare)
            except BaseException as exc:
                self._ready.set_exception(exc)
                self._ready.exception()
                self._ready = None
                raise
            for model_id, meta in found.items():
                self._held.setdefault(model_id, _Held(meta, orphan=True))
            self._ready.set_result(None)
        else:
            await asyncio.shield(self._ready)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def _run_cancellable(self, fn: Callable[[threading.Event], T]) -> T:
        """Run ``fn(cancel)`` in a worker; if we are cancelled, tell it and wait for it to stop
        (so nothing writes into a staging directory after it is deleted)."""
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, cancel)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()
            raise


def _file_name(name: str, *, where: str) -> str:
    name = PurePosixPath(name).name
    if name in ("", ".", "..") or "\x00" in name:
        raise UnsafePath(f"{where}: refusing object name {name!r}", location=where)
    return name
