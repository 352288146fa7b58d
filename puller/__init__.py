"""meshserve's puller: model artifacts from storage into a safe local cache.

Given a model's ``modelPath`` and ModelMesh ``modelKey`` (or a KServe-style storage URI:
``s3://``, ``http(s)://``, Azure Blob ``https://<account>.blob.core.windows.net/...``,
``pvc://``, ``file://``, plain paths), :class:`Puller` brings the files into a local cache
directory and returns a :class:`PulledModel` (local path, size on disk, digest). It owns
credentials (ModelMesh's storage-config directory, environment fallback), retries, the
cache's disk budget and the rule that nothing is written outside the cache.

Layering: ``puller`` is a leaf package. It imports nothing from ``protos``, ``runtimes``,
``mesh`` or ``router`` (an import-linter contract holds it to this). Inside it:

* pure modules, no I/O or SDKs: :mod:`puller.spec` (resolving storage, path safety),
  :mod:`puller.retry`, :mod:`puller.errors`;
* blocking helpers run in worker threads: :mod:`puller.transfer` (ranged downloads and
  hashing), :mod:`puller.archive` (safe unpacking), :mod:`puller.cache` (layout, digests),
  :mod:`puller.storage_config`;
* providers, the only modules that import storage SDKs (boto3, azure-storage-blob):
  :mod:`puller.providers.s3`, :mod:`puller.providers.azure`, :mod:`puller.providers.http`
  (urllib), behind the interface in :mod:`puller.providers.base`;
* :mod:`puller.service`: the asyncio :class:`Puller` tying them together.
"""

from puller.errors import (
    DiskBudgetExceeded,
    IntegrityError,
    InvalidStorageUri,
    PullError,
    StorageAccessDenied,
    StorageNotFound,
    StorageUnavailable,
    UnsafePath,
)
from puller.retry import RetryPolicy
from puller.service import PulledModel, Puller
from puller.transfer import TransferConfig

__all__ = [
    "DiskBudgetExceeded",
    "IntegrityError",
    "InvalidStorageUri",
    "PullError",
    "PulledModel",
    "Puller",
    "RetryPolicy",
    "StorageAccessDenied",
    "StorageNotFound",
    "StorageUnavailable",
    "TransferConfig",
    "UnsafePath",
]
