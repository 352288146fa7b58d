"""Dynamic batching: a model's waiting requests run as one call of its backend, as Triton's
dynamic batcher does.

One `Batcher` per batched model (`runtimes.batching_policy` says which and how). Requests
join its queue; one collector task forms batches in arrival order:

- A batch starts when the model may run one more (`max_batches` at once: at most the
  worker threads, as a batch waiting for a thread could still have grown; each takes one
  of the model's concurrency slots) and either the queue holds `max_batch_size` rows (or
  the largest preferred size) of requests that batch with the oldest, or the oldest has
  waited `max_queue_delay_us`, or no batch of the model is running: then nothing will
  come back sooner than new callers, and waiting would only add the delay to a lone
  caller's latency. So under load a partial batch waits (at most the delay) for the
  running one to finish, and grows meanwhile. It takes the largest preferred size the
  queue can fill, else all it can up to `max_batch_size` rows. Requests that batch with each other agree in
  everything but the first dimension (input names, datatypes, the other dimensions, the
  outputs asked for); the others wait for a batch of their own, in order. A request that
  cannot batch (a scalar input, inputs of different first dimensions, more rows than
  `max_batch_size`) runs alone as soon as a slot is free.
- A batch's inputs are concatenated along the first dimension (numpy), run once on the
  worker pool (or on the event loop, when the model manager says the model is proven fast:
  `BatchHooks.runs_inline`, as single requests of such a model run), and the outputs split
  back by each request's rows (views, no copy).
- Each request keeps its own deadline and its own error: one whose deadline passed while it
  waited is answered DeadlineExceeded and not run; one whose caller went away is dropped
  (its batch, if it runs already, still runs: `wait_idle` before the model goes). A
  batch the backend rejects runs again one request at a time, so a request with bad values
  fails alone and its batch-mates get their answers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from runtimes.backends import LoadedModel
from runtimes.batching_policy import BatchingPolicy
from runtimes.errors import DeadlineExceeded, ModelUnavailable
from runtimes.stats import ModelStats

__all__ = ["BatchHooks", "Batcher", "BatchResult"]

#: (outputs, when its batch started, when it finished: perf_counter ns)
BatchResult = tuple[dict[str, np.ndarray], int, int]


@dataclass(frozen=True)
class BatchHooks:
    """What a batcher tells its model manager, and asks it."""

    on_queued: Callable[[float], None]  # each request's wait for its batch to start (seconds)
    on_batch: Callable[[int], None]  # the rows of each batch run
    runs_inline: Callable[[int], bool]  # may a batch of these input bytes run on the event loop?
    ran: Callable[[int, int, bool], None]  # a batch's CPU and wall ns, and whether it ran inline


@dataclass(eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    output_names: list[str]
    deadline: float | None  # time.perf_counter() seconds
    queued_ns: int
    rows: int
    key: tuple | None  # requests of one key batch together; None: runs alone
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """One model's queue and the batches it runs; see the module docstring."""

    def __init__(self, model_id: str, model: LoadedModel, policy: BatchingPolicy, slots: asyncio.Semaphore,
                 max_batches: int, pool: Executor, stats: ModelStats, hooks: BatchHooks) -> None:
        self.model_id = model_id
        self.policy = policy
        self._model = model
        self._slots = slots
        self._batch_turns = asyncio.Semaphore(max_batches)
        self._running = 0  # batches in flight
        self._idle = asyncio.Event()  # no batch in flight
        self._idle.set()
        self._tasks: set[asyncio.Task] = set()  # theirs: the loop keeps only weak references
        self._pool = pool
        self._stats = stats
        self._hooks = hooks
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._collector: asyncio.Task | None = None
        self._delay_s = policy.max_queue_delay_us / 1e6
        self._target = max(policy.preferred_batch_sizes, default=policy.max_batch_size)

    async def submit(self, inputs: dict[str, np.ndarray], output_names: list[str],
                     deadline: float | None) -> BatchResult:
        """The request's outputs once its batch ran; its own error if it failed."""
        rows, key = self._batch_key(inputs, output_names)
        pending = _Pending(inputs, output_names, deadline, time.perf_counter_ns(), rows, key)
        self._queue.append(pending)
        self._arrived.set()
        if self._collector is None or self._collector.done():
            self._collector = asyncio.get_running_loop().create_task(self._collect(), name=f"batcher {self.model_id}")
        try:
            return await pending.future
        except asyncio.CancelledError:  # the future is cancelled with the wait: the collector drops it
            self._arrived.set()  # now, rather than when the delay of a batch it was waiting for ends
            raise

    async def wait_idle(self) -> None:
        """Until no batch runs: one whose callers all went away still holds the model."""
        await self._idle.wait()

    def _batch_key(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> tuple[int, tuple | None]:
        rows = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
        if len(rows) != 1 or -1 in rows or not inputs:
            return 1, None
        (count,) = rows
        if count > self.policy.max_batch_size or count == 0:
            return count, None
        signature = tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items()))
        return count, (signature, tuple(output_names))

    # -- forming batches (the collector task) ------------------------------------------------
    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            await self._batch_turns.acquire()
            try:
                await self._slots.acquire()
            except BaseException:
                self._batch_turns.release()
                raise
            try:
                batch = await self._form()
            except BaseException:
                self._release()
                raise
            if batch:
                self._running += 1
                self._idle.clear()
                task = loop.create_task(self._execute(batch))  # it releases the turn and the slot
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._release()

    def _release(self) -> None:
        self._slots.release()
        self._batch_turns.release()

    async def _form(self) -> list[_Pending]:
        """The next batch once it is due (see the module docstring); [] when the queue emptied."""
        while True:
            self._drop_dead()
            if not self._queue:
                return []
            head = self._queue[0]
            if head.key is None:
                self._queue.popleft()
                return [head]
            available = self._rows_like(head)
            waited = time.perf_counter() - head.queued_ns / 1e9
            wait = self._delay_s - waited
            if available >= self._target or wait <= 0 or not self._running:
                return self._take(head, available)
            await self._next_arrival(wait)

    async def _next_arrival(self, seconds: float) -> None:
        """Until a request arrives (or goes, or a batch ends), `seconds` at most. A timer that
        sets the event costs a fraction of asyncio.wait_for, which starts a task per wait."""
        self._arrived.clear()
        timer = asyncio.get_running_loop().call_later(seconds, self._arrived.set)
        try:
            await self._arrived.wait()
        finally:
            timer.cancel()

    def _drop_dead(self) -> None:
        now = None
        kept = deque()
        for pending in self._queue:
            if pending.future.done():  # its caller went away
                continue
            if pending.deadline is not None:
                now = now or time.perf_counter()
                if now >= pending.deadline:
                    pending.future.set_exception(DeadlineExceeded(
                        f"model '{self.model_id}': the request's deadline passed while it waited for a batch"))
                    continue
            kept.append(pending)
        self._queue = kept

    def _rows_like(self, head: _Pending) -> int:
        total = 0
        for pending in self._queue:
            if pending.key == head.key:
                total += pending.rows
                if total >= self.policy.max_batch_size:
                    break
        return total

    def _take(self, head: _Pending, available: int) -> list[_Pending]:
        limit = self.policy.max_batch_size
        fitting = [size for size in self.policy.preferred_batch_sizes if size <= available]
        if fitting and available < limit:
            limit = fitting[-1]
        batch, rows, rest = [], 0, deque()
        for pending in self._queue:
            if pending.key == head.key and rows + pending.rows <= limit:
                batch.append(pending)
                rows += pending.rows
            else:
                rest.append(pending)
        self._queue = rest
        return batch

    # -- running a batch ----------------------------------------------------------------------
    async def _execute(self, batch: list[_Pending]) -> None:
        try:
            hooks = self._hooks
            started = time.perf_counter_ns()
            for pending in batch:
                hooks.on_queued((started - pending.queued_ns) / 1e9)
            inline = hooks.runs_inline(sum(a.nbytes for p in batch for a in p.inputs.values()))
            if inline:
                results, runs, cpu_ns, wall_ns = _timed_run(self._model, batch)
            else:
                results, runs, cpu_ns, wall_ns = await asyncio.get_running_loop().run_in_executor(
                    self._pool, _timed_run, self._model, batch)
            finished = time.perf_counter_ns()
            hooks.ran(cpu_ns, wall_ns, inline)
            rows = sum(p.rows for p in batch)
            self._stats.record_execution(rows, runs, finished - started)
            hooks.on_batch(rows)
            for pending, result in zip(batch, results):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result((result, started, finished))
        except BaseException as error:  # the pool shut down, or the task was cancelled
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error if isinstance(error, Exception) else ModelUnavailable(
                        f"model '{self.model_id}' stopped while the request's batch ran"))
            if not isinstance(error, Exception):
                raise
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()
            self._release()
            self._arrived.set()  # a batch waiting for more may start now that this one is done


def _timed_run(model: LoadedModel, batch: list[_Pending]) -> tuple[list[dict | Exception], int, int, int]:
    """`_run`'s answer, and the CPU and wall nanoseconds it took in the thread that ran it."""
    cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
    results, runs = _run(model, batch)
    return results, runs, time.thread_time_ns() - cpu, time.perf_counter_ns() - wall


def _run(model: LoadedModel, batch: list[_Pending]) -> tuple[list[dict | Exception], int]:
    """Each request's outputs or error, and how many backend calls it took (worker thread)."""
    if len(batch) > 1:
        inputs = {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
        try:
            outputs = model.infer(inputs, batch[0].output_names)
            split = _split(outputs, [p.rows for p in batch])
            if split is not None:
                return split, 1
        except Exception:
            pass  # one request's values may be what the model rejected: each runs alone, with its own answer
    return [_alone(model, p) for p in batch], len(batch) + (len(batch) > 1)


def _alone(model: LoadedModel, pending: _Pending) -> dict | Exception:
    try:
        return model.infer(pending.inputs, pending.output_names)
    except Exception as error:
        return error


def _split(outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict] | None:
    """Each request's rows of every output; None when an output has no batch dimension to split."""
    total = sum(rows)
    arrays = {name: np.asarray(array) for name, array in outputs.items()}
    if any(array.ndim == 0 or array.shape[0] != total for array in arrays.values()):
        return None
    bounds = np.cumsum(rows)[:-1]
    parts = {name: np.split(array, bounds) for name, array in arrays.items()}
    return [{name: parts[name][i] for name in arrays} for i in range(len(rows))]
