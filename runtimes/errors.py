"""The runtime's errors, free of any transport.

Each error names what was wrong; `grpc_servicers` maps each class to a gRPC
status code in one table. Anything not listed there becomes INTERNAL.
"""

from __future__ import annotations


class RuntimeError_(Exception):
    """Base of every error the runtime raises on purpose."""


class ModelNotFound(RuntimeError_):
    """The model is not loaded here (or was never known)."""

    def __init__(self, model_id: str, detail: str = "is not loaded") -> None:
        super().__init__(f"model '{model_id}' {detail}")
        self.model_id = model_id


class InvalidInput(RuntimeError_):
    """The request is malformed: wrong input name, shape, datatype or raw size."""


class InvalidModel(RuntimeError_):
    """The model files cannot be loaded: corrupt, wrong format, unsupported type."""


class CapacityExhausted(RuntimeError_):
    """Loading would exceed the runtime's capacity; the caller must evict first."""


class ModelTooLarge(RuntimeError_):
    """The model needs more than this runtime's whole capacity: no eviction can help."""


class Busy(RuntimeError_):
    """Too many requests are queued for one model (`limit` "model") or for the whole runtime
    (`limit` "instance"); retry later, or on another copy. Backpressure, not a model error:
    the servicers mark it so that a router can tell it from a model's own RESOURCE_EXHAUSTED."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class MessageTooLarge(RuntimeError_):
    """A request or reply over the runtime's max_message_bytes; the message names the setting."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} of {size} bytes is larger than max ({limit} bytes), the runtime's "
                         "max_message_bytes (--max-message-bytes, MESHSERVE_RUNTIME_MAX_MESSAGE_BYTES)")


class DeadlineExceeded(RuntimeError_):
    """The request's deadline passed before it could run."""


class ModelUnavailable(RuntimeError_):
    """The model is being unloaded or failed to load; retry elsewhere."""


class LoadFailed(RuntimeError_):
    """Loading failed for a reason outside the model files (storage, backend)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
