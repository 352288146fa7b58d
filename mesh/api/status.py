"""The one table that turns mesh errors into gRPC status codes, and the decorator that applies it.

  ModelNotRegistered, VModelNotFound          NOT_FOUND
  InvalidRequest                              INVALID_ARGUMENT
  PreconditionFailed, ModelInUse              FAILED_PRECONDITION
  ModelAlreadyRegistered                      ALREADY_EXISTS
  RegistryConflict                            ABORTED
  NoCapacity                                  RESOURCE_EXHAUSTED
  NoSupportingRuntime (a NoCapacity)          RESOURCE_EXHAUSTED (the message names the missing labels)
  NoLiveInstance (a NoCapacity)               UNAVAILABLE (no runtime in the fabric at all; the message says so)
  LoadingFailed                               UNAVAILABLE (the reasons are in the message)
  StoreUnavailable, StoreClosed               UNAVAILABLE (etcd unreachable; the message says so)
  TimeoutError                                DEADLINE_EXCEEDED
  anything else                               INTERNAL, with an id that is in the log
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid

import grpc

from mesh.domain.errors import (
    InvalidRequest,
    LoadingFailed,
    ModelAlreadyRegistered,
    ModelInUse,
    ModelNotRegistered,
    NoCapacity,
    NoLiveInstance,
    NoSupportingRuntime,
    PreconditionFailed,
    RegistryConflict,
    VModelNotFound,
)
from mesh.etcd.errors import StoreClosed, StoreUnavailable

__all__ = ["STATUS_OF_ERROR", "mapped_errors", "message_of", "status_of"]

log = logging.getLogger(__name__)

STATUS_OF_ERROR: dict[type[BaseException], grpc.StatusCode] = {
    ModelNotRegistered: grpc.StatusCode.NOT_FOUND,
    VModelNotFound: grpc.StatusCode.NOT_FOUND,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    ModelInUse: grpc.StatusCode.FAILED_PRECONDITION,
    ModelAlreadyRegistered: grpc.StatusCode.ALREADY_EXISTS,
    RegistryConflict: grpc.StatusCode.ABORTED,
    NoCapacity: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NoSupportingRuntime: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NoLiveInstance: grpc.StatusCode.UNAVAILABLE,
    LoadingFailed: grpc.StatusCode.UNAVAILABLE,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    StoreClosed: grpc.StatusCode.UNAVAILABLE,
    TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(error: BaseException) -> grpc.StatusCode | None:
    """The status of `error`'s most specific class in the table; None if it has none."""
    return next((STATUS_OF_ERROR[k] for k in type(error).__mro__ if k in STATUS_OF_ERROR), None)


def message_of(error: BaseException) -> str:
    """What the caller reads: the error's own words, with the context a client needs."""
    if isinstance(error, (StoreUnavailable, StoreClosed)):
        return f"the fabric's etcd is unreachable, try again later: {error}"
    if isinstance(error, TimeoutError):
        return f"deadline exceeded: {error}" if str(error) else "deadline exceeded"
    if isinstance(error, LookupError) and error.args:
        return str(error.args[0])  # KeyError would quote its message
    return str(error)


def mapped_errors(handler):
    """Turn our errors into their status codes, and anything else into INTERNAL with an id in the log."""

    @functools.wraps(handler)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await handler(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            code = status_of(error)
            if code is not None:
                await context.abort(code, message_of(error))
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error %s in %s", error_id, handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); see the server's log")

    return wrapper
