"""What runtimes and routers agree on about limits (pure; both import it).

- `DEFAULT_MAX_MESSAGE_BYTES`: the one default of every process's `max_message_bytes`
  (router, runtime, agent clients), ModelMesh's `grpcMaxMessageSizeBytes` default, so
  that a request the router lets through is one the runtime takes, and a reply the
  runtime sends is one the router takes.
- `BUSY_TRAILER`: the trailing-metadata key a runtime sets on a RESOURCE_EXHAUSTED that is
  backpressure (a model's or the runtime's queue is full), with the limit that was hit
  ("model" or "instance") as its value. A router retries such a call on another copy and
  asks for one more; a RESOURCE_EXHAUSTED without it is the model's own answer and goes
  back to the caller as it is.
"""

from __future__ import annotations

__all__ = ["BUSY_TRAILER", "DEFAULT_MAX_MESSAGE_BYTES"]

DEFAULT_MAX_MESSAGE_BYTES = 16 << 20
BUSY_TRAILER = "meshserve-busy"
