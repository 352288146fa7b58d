"""Whether a model's requests are batched, and how (pure).

A model is batched when it has a batch dimension and one of these turns batching on, the
first that says anything winning:

1. its modelKey's `batching`: `false` (off), or an object `{"max_batch_size": 16,
   "preferred_batch_sizes": [8, 16], "max_queue_delay_us": 200}` whose missing fields come
   from the layers below (else `BUILT_IN`);
2. its config.pbtxt's `dynamic_batching` block (with the config's `max_batch_size`);
3. the runtime's default (`dynamic_batching_max_batch_size` > 0), off unless set.

A batch dimension: config.pbtxt's `max_batch_size` > 0 (Triton's meaning, which also caps
any batch), else every input and output whose shape is known has a variable first dimension.
A modelKey that asks for batching a model without one fails the load (InvalidModel).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from runtimes.backends import LoadedModel
from runtimes.errors import InvalidInput, InvalidModel

#: The modelKey field that sets a model's batching.
KEY = "batching"


@dataclass(frozen=True)
class BatchingPolicy:
    """Triton's dynamic batcher settings: rows per batch, the sizes to aim for, the longest wait."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0


#: What a modelKey's `batching` object leaves out, when nothing below says either.
BUILT_IN = BatchingPolicy(max_batch_size=32, max_queue_delay_us=100)


def batching_policy(model: LoadedModel, model_key: dict, default: BatchingPolicy | None) -> BatchingPolicy | None:
    """The policy the model's requests run under; None: each runs alone (see the module docstring)."""
    config = model.triton_config
    limit = config.max_batch_size if config is not None and config.from_file else 0
    below = default
    if config is not None and config.dynamic_batching is not None and limit > 0:
        block = config.dynamic_batching
        below = BatchingPolicy(limit, tuple(block.preferred_batch_sizes), block.max_queue_delay_us)
    asked = model_key.get(KEY)
    if asked is None:
        policy = below
    elif asked is False:
        return None
    elif isinstance(asked, dict):
        policy = _from_key(asked, below or BUILT_IN)
    else:
        raise InvalidInput(f"modelKey.{KEY} must be false or an object "
                           "{max_batch_size, preferred_batch_sizes, max_queue_delay_us}")
    if policy is None or policy.max_batch_size <= 1:
        return None
    reason = _no_batch_dimension(model, limit)
    if reason:
        if asked is not None:
            raise InvalidModel(f"modelKey.{KEY} asks for dynamic batching, but {reason}")
        return None
    if limit > 0 and policy.max_batch_size > limit:
        policy = replace(policy, max_batch_size=limit,
                         preferred_batch_sizes=tuple(s for s in policy.preferred_batch_sizes if s <= limit))
    return policy


def _from_key(asked: dict, below: BatchingPolicy) -> BatchingPolicy:
    unknown = sorted(set(asked) - {"max_batch_size", "preferred_batch_sizes", "max_queue_delay_us"})
    if unknown:
        raise InvalidInput(f"modelKey.{KEY} has unknown fields {unknown}")
    size = asked.get("max_batch_size", below.max_batch_size)
    delay = asked.get("max_queue_delay_us", below.max_queue_delay_us)
    preferred = asked.get("preferred_batch_sizes", list(below.preferred_batch_sizes))
    if not _count(size) or not _count(delay):
        raise InvalidInput(f"modelKey.{KEY}: max_batch_size and max_queue_delay_us must be integers >= 0")
    if not isinstance(preferred, list) or not all(_count(s) and 0 < s <= size for s in preferred):
        raise InvalidInput(f"modelKey.{KEY}.preferred_batch_sizes must be a list of integers from 1 to "
                           f"max_batch_size ({size})")
    return BatchingPolicy(size, tuple(sorted(set(preferred))), delay)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _no_batch_dimension(model: LoadedModel, limit: int) -> str:
    """Why the model's requests cannot be stacked along a first dimension; "" when they can."""
    config = model.triton_config
    if config is not None and config.from_file:
        return "" if limit > 0 else "its config.pbtxt's max_batch_size is 0 (no batch dimension)"
    known = [spec for spec in (*model.inputs, *model.outputs) if spec.shape]
    if not any(spec.shape for spec in model.inputs):
        return "the model does not say its input shapes"
    fixed = next((spec for spec in known if spec.shape[0] >= 0), None)
    if fixed is not None:
        return f"'{fixed.name}' has a fixed first dimension (shape {list(fixed.shape)})"
    return ""
