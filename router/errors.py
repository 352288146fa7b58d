"""What can go wrong on the router's request path, independent of any transport (pure).

Each error carries `code`, the name of the gRPC status it stands for; the gRPC front
(`router.grpc_front`) and the REST front (`router.rest`) each map codes once, in one
table. `UpstreamError` is an instance's own answer (a model error such as
INVALID_ARGUMENT), passed back to the client unchanged with its message and trailers.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DeadlineExceeded", "InvalidRequest", "MessageTooLarge", "ModelNotFound", "NoCapacity", "RouterError",
           "Unavailable", "Unimplemented", "UpstreamError"]


class RouterError(Exception):
    """Base: `code` names a gRPC status; `str(error)` is the message the client sees."""

    code = "INTERNAL"
    trailing_metadata: Sequence[tuple[str, str | bytes]] = ()


class InvalidRequest(RouterError):
    code = "INVALID_ARGUMENT"


class ModelNotFound(RouterError):
    code = "NOT_FOUND"


class Unavailable(RouterError):
    """No copy could serve the call (instances unreachable, load failed, retries spent)."""

    code = "UNAVAILABLE"


class DeadlineExceeded(RouterError):
    code = "DEADLINE_EXCEEDED"


class NoCapacity(RouterError):
    code = "RESOURCE_EXHAUSTED"


class MessageTooLarge(RouterError):
    """A request (`request` True) or an instance's reply over the router's `max_message_bytes`;
    the REST front answers a request 413 rather than RESOURCE_EXHAUSTED's 429."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, request: bool) -> None:
        super().__init__(message)
        self.request = request


class Unimplemented(RouterError):
    code = "UNIMPLEMENTED"


class UpstreamError(RouterError):
    """An instance answered with an error that is the client's to see (not retried)."""

    def __init__(self, code: str, message: str, trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.trailing_metadata = tuple(trailing_metadata)
