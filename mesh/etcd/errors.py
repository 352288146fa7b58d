"""Our error types for the etcd store, and the one place aetcd/grpc errors are translated.

Callers of the store layer catch only these; the original exception is always chained
(`raise ... from original`), so logs keep the grpc status and details.
"""

from __future__ import annotations

import asyncio

import aetcd.exceptions as aetcd_exc
import grpc

from mesh.domain.errors import MeshError

__all__ = [
    "TRANSLATABLE",
    "StoreError",
    "StoreUnavailable",
    "StoreClosed",
    "RevisionCompacted",
    "LeaseLost",
    "CorruptRecord",
    "translate_error",
]


class StoreError(MeshError):
    """An etcd operation failed and retrying it as-is will not help (bad request,
    permission, corrupt data...). The caller must treat it as a bug or a configuration
    problem: report it, do not loop on it.

    `retryable` says whether a retry may succeed; `attempts` is how many tries were made.
    """

    retryable: bool = False

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class StoreUnavailable(StoreError):
    """etcd could not be reached or did not answer in time (every endpoint tried, retries
    with backoff exhausted). Retryable: the caller may try again later, and must keep
    serving from what it already knows (mirrors stay readable).

    For a write, the outcome is unknown: it may have been applied. The compare-and-set
    helpers resolve that for their own retries; a caller that retries later must re-read.
    """

    retryable = True


class StoreClosed(StoreError):
    """The client was closed; no operation is possible on it. Create a new client."""


class RevisionCompacted(StoreError):
    """A watch or read asked for a revision etcd has compacted away. The caller must
    re-read the current state (a fresh range read) and watch from there."""

    def __init__(self, message: str, *, compact_revision: int = 0, attempts: int = 1) -> None:
        super().__init__(message, attempts=attempts)
        self.compact_revision = compact_revision


class LeaseLost(StoreError):
    """The lease is gone (expired, revoked, or could not be kept alive within its TTL).
    Keys bound to it are, or will shortly be, deleted by etcd. The caller must stop the
    work that depended on it and open a new `LeaseSession`."""


class CorruptRecord(StoreError):
    """A value under our prefix is not the JSON document we expect."""


#: What `translate_error` knows how to map: errors of aetcd, grpc, the socket layer and
#: timeouts. Anything else raised under a store call is a bug and propagates unchanged.
TRANSLATABLE: tuple[type[BaseException], ...] = (
    aetcd_exc.ClientError,
    grpc.RpcError,
    grpc.aio.BaseError,
    OSError,
    TimeoutError,
    StoreError,
)

_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        # A stream reset by a dying server surfaces as INTERNAL ("RST_STREAM"), and a
        # channel closed under a call as CANCELLED: both mean "try again elsewhere".
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)


def _grpc_error_in(exc: BaseException) -> grpc.aio.AioRpcError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            return seen
        seen = seen.__cause__
    return None


def translate_error(exc: BaseException, *, what: str, endpoint: str) -> StoreError:
    """Map an exception raised by aetcd/grpc (or a timeout) to one of our types.

    Returns the new exception (with `__cause__` set to `exc`) for the caller to raise;
    an exception that is already a `StoreError` is returned unchanged.
    """
    if isinstance(exc, StoreError):
        return exc
    where = f"etcd {endpoint}: {what}"
    result: StoreError
    if isinstance(exc, aetcd_exc.RevisionCompactedError):
        result = RevisionCompacted(
            f"{where}: revision compacted below {exc.compacted_revision}",
            compact_revision=int(exc.compacted_revision),
        )
    elif isinstance(exc, (TimeoutError, asyncio.TimeoutError, aetcd_exc.WatchTimeoutError)):
        result = StoreUnavailable(f"{where}: timed out")
    elif isinstance(exc, (aetcd_exc.ConnectionFailedError, aetcd_exc.ConnectionTimeoutError)):
        result = StoreUnavailable(f"{where}: unavailable: {exc}")
    elif isinstance(exc, (OSError, grpc.aio.UsageError)):
        # UsageError: the channel was closed under the call (failover, shutdown).
        result = StoreUnavailable(f"{where}: {exc}")
    else:
        rpc_error = _grpc_error_in(exc)
        code = rpc_error.code() if rpc_error is not None else None
        details = (rpc_error.details() or "") if rpc_error is not None else str(exc)
        if code is grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            result = LeaseLost(f"{where}: {details}")
        elif code is grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
            result = RevisionCompacted(f"{where}: {details}")
        elif code in _RETRYABLE_CODES or (
            # etcd answers "too many requests" with RESOURCE_EXHAUSTED; that passes. Its
            # other RESOURCE_EXHAUSTED ("database space exceeded") needs an operator.
            code is grpc.StatusCode.RESOURCE_EXHAUSTED and "too many requests" in details
        ):
            result = StoreUnavailable(f"{where}: {code.name if code else ''} {details}")
        elif isinstance(exc, aetcd_exc.InternalError):
            result = StoreUnavailable(f"{where}: internal error: {details}")
        else:
            name = code.name if code is not None else type(exc).__name__
            result = StoreError(f"{where}: {name}: {details}")
    result.__cause__ = exc
    return result
