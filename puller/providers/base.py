"""The storage-provider interface and its registry (no SDK imports here).

A provider fetches from one kind of store. It has a typed config (built from a
storage-config entry, or from the environment when no entry applies) and two blocking
operations, run by the :class:`~puller.Puller` in worker threads:

* ``list`` says what the location holds: one object, or the objects under a prefix (with
  their sizes and any checksum the store advertises). An empty prefix or a missing object is
  :class:`~puller.errors.StorageNotFound`.
* ``download`` writes one listed object into a new file and returns its size and hashes.

Providers translate their SDK's failures into :mod:`puller.errors` (with the location in the
message and never a credential), and know nothing of caches, budgets, retries or asyncio.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from puller.spec import Checksum, Location
from puller.storage_config import StorageEntry
from puller.transfer import FetchedFile, TransferConfig

__all__ = ["Listing", "Provider", "ProviderRegistry", "RemoteObject"]

ConfigT = TypeVar("ConfigT")
KeyT = TypeVar("KeyT")
ClientT = TypeVar("ClientT")


class ClientCache(Generic[KeyT, ClientT]):
    """SDK clients, one per credential set: created once under a lock, closed together."""

    def __init__(self) -> None:
        self._clients: dict[KeyT, ClientT] = {}
        self._lock = threading.Lock()

    def get(self, key: KeyT, create: Callable[[], ClientT]) -> ClientT:
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = create()
                self._clients[key] = client
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RemoteObject:
    """One object to fetch. ``relative`` is its path below the model root ("" when the
    location is a single object); ``ref`` is whatever the provider needs to fetch it."""

    ref: str
    relative: str
    size: int | None
    checksums: tuple[Checksum, ...] = ()
    display: str = ""
    version: str | None = None  # the store's version tag (ETag) seen when listing

    @property
    def wants_md5(self) -> bool:
        return any(c.algorithm == "md5" for c in self.checksums)


@dataclass(frozen=True)
class Listing:
    single: bool
    objects: tuple[RemoteObject, ...]
    name: str = "model"  # file name for a single object


class Provider(Protocol, Generic[ConfigT]):
    """What the puller needs from a store (see the module docstring)."""

    scheme: ClassVar[str]  # the storage type it serves: "s3", "azure", "http"

    def config_from_entry(self, entry: StorageEntry) -> ConfigT: ...

    def config_from_env(self, env: Mapping[str, str]) -> ConfigT: ...

    def entry_match(self, location: Location) -> Mapping[str, str | None]:
        """Config fields that, equal to these values, make an entry the right one."""
        ...

    def list(self, config: ConfigT, location: Location, params: Mapping[str, Any]) -> Listing: ...

    def download(self, config: ConfigT, location: Location, obj: RemoteObject, dest: Path, *,
                 transfer: TransferConfig, cancel: threading.Event, want_md5: bool = False) -> FetchedFile:
        """``want_md5``: also return the MD5 (the caller will check one)."""
        ...


@dataclass
class ProviderRegistry:
    """Providers by storage type."""

    providers: dict[str, Provider[Any]] = field(default_factory=dict)

    def register(self, provider: Provider[Any]) -> None:
        self.providers[provider.scheme] = provider

    def get(self, scheme: str) -> Provider[Any] | None:
        return self.providers.get(scheme)
