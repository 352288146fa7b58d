"""The puller's error hierarchy.

Every failure the puller reports is a :class:`PullError`. Each one says whether a retry
can help (``retryable``) and carries a message that names the location (``s3://bucket/key``,
an URL without its query string, a path) and the reason. Messages never contain
credentials: providers build them from the location only, and the :class:`~puller.Puller`
scrubs any known secret value from them before they leave the package.

Third-party exceptions are chained (``raise ... from exc``) for debugging, but callers
should only ever show ``str(error)``.
"""

from __future__ import annotations


class PullError(Exception):
    """Base of all puller failures.

    ``retryable`` is True when the same pull may succeed later unchanged (a network blip,
    a 5xx, a throttle); False when it will keep failing until the model's storage, the
    credentials or the cache change.
    """

    retryable: bool = False

    def __init__(self, message: str, *, location: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message

    def with_message(self, message: str) -> "PullError":
        """A copy of this error (same class, location, retryability) with a new message."""
        clone = type(self).__new__(type(self))
        PullError.__init__(clone, message, location=self.location, retryable=self.retryable)
        clone.__cause__ = self.__cause__
        return clone


class InvalidStorageUri(PullError):
    """The model path, model key or storage config cannot be understood (unknown scheme,
    malformed JSON, bad bucket name, missing storage key). Permanent."""


class StorageNotFound(PullError):
    """The bucket, container, object, prefix or file does not exist, or a prefix is empty.
    Permanent."""


class StorageAccessDenied(PullError):
    """The store refused the credentials (401/403, bad key id, bad signature). Permanent."""


class UnsafePath(PullError):
    """A key, archive member or link would place a file outside the cache directory (or a
    local path outside its root). Permanent."""


class IntegrityError(PullError):
    """What was fetched does not match the expected size or checksum, or an archive is
    corrupt. Permanent: a store serving different bytes than it advertises will not heal
    by retrying (a truncated transfer is reported as :class:`StorageUnavailable`)."""


class DiskBudgetExceeded(PullError):
    """The model does not fit in the cache's disk budget next to the models already held.
    Not retried by the puller: it can only succeed after the caller releases models."""


class StorageUnavailable(PullError):
    """A transient failure: connection refused or dropped, timeout, 5xx, throttling, a
    truncated transfer. Retried with backoff by the puller before it is reported."""

    retryable = True
