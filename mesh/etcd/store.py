"""The etcd store layer of the placement layer, in one import.

This is the adapter between meshserve and etcd (through aetcd); the pure modules
(placement engine, LRU) never import it. Pieces:

- `mesh.etcd.keys.Keys`: every key path of a fabric (`/meshserve/<fabric>/models/<id>`, ...).
- `EtcdClient` (`mesh.etcd.client`): async client over several endpoints with failover,
  bounded retries with backoff, JSON records, and compare-and-set helpers
  (`create_if_absent`, `put_if_mod_revision`, `delete_if_mod_revision` -> `CasResult`).
- Errors (`mesh.etcd.errors`): `StoreError` (permanent) and its subclasses
  `StoreUnavailable` (retryable), `StoreClosed`, `RevisionCompacted`, `LeaseLost`,
  `CorruptRecord`; aetcd/grpc errors never escape untranslated.
- `LeaseSession` (`mesh.etcd.session`): a lease as an async context manager, kept alive
  by an owned task, with a `lost` event.
- `Mirror` (`mesh.etcd.mirror`): a watched in-memory copy of a prefix, re-synced after
  any watch break, with listeners and `wait_for(predicate, timeout)`.
- `Election` (`mesh.etcd.election`): leader election on one key under a `LeaseSession`.
- `TaskSupervisor` (`mesh.aio.tasks`): owner of named background tasks.
"""

from mesh.etcd.client import (
    JSON,
    KV,
    CasResult,
    EtcdClient,
    RetryPolicy,
    WatchEvent,
    WatchStream,
    decode_json,
    encode_json,
)
from mesh.etcd.election import Election
from mesh.etcd.errors import (
    CorruptRecord,
    LeaseLost,
    RevisionCompacted,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)
from mesh.etcd.mirror import Change, Entry, Listener, Mirror
from mesh.etcd.session import LeaseSession
from mesh.etcd.keys import Keys
from mesh.aio.tasks import TaskSupervisor

__all__ = [
    "JSON",
    "KV",
    "CasResult",
    "Change",
    "CorruptRecord",
    "Election",
    "Entry",
    "EtcdClient",
    "Keys",
    "LeaseLost",
    "LeaseSession",
    "Listener",
    "Mirror",
    "RetryPolicy",
    "RevisionCompacted",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "TaskSupervisor",
    "WatchEvent",
    "WatchStream",
    "decode_json",
    "encode_json",
]
