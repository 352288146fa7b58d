"""Owned background tasks: every task has a name, an owner, and is awaited on shutdown.

Pure asyncio; no I/O libraries. Used by the etcd store layer (lease keepalive, mirror
watch, leadership monitor) and meant for any long-lived mesh component.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["TaskSupervisor", "cancel_and_wait"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], *, nag_after: float = 1.0) -> None:
    """Cancel `tasks` and wait until every one has finished.

    A task that is still running `nag_after` seconds after being cancelled is logged and
    cancelled again: some libraries swallow a cancellation that races with completion
    (`asyncio.wait_for` on Python 3.11), and one lost cancel must not hang shutdown.
    """
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=nag_after)
        for task in pending:
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            log.warning("task %s still running %.1fs after cancel; cancelling again", name, nag_after)



class AsyncClosing:
    """`async with` support for objects that own resources: exiting calls `close()`.

    Subclasses define `async def close()`; those that must start something on entry
    override `__aenter__`.
    """

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class TaskSupervisor(AsyncClosing):
    """Owns a set of named background tasks.

    Guarantees:
    - every task started with `spawn` is tracked until it finishes;
    - a task that ends with an exception (other than cancellation) is logged at ERROR with
      its name and traceback, at once, not when garbage-collected;
    - `close()` cancels every task still running and awaits all of them, so nothing of
      this owner outlives it; calling `spawn` after `close()` raises `RuntimeError`.

    Failure is not propagated to the owner automatically: a task that must take its owner
    down should set an event the owner waits on. Use as `async with TaskSupervisor(...)`
    or call `close()` yourself.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        """The tasks that are still running."""
        return frozenset(self._tasks)

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Start `coro` as a task named `<owner>/<name>` and own it."""
        if self._closed:
            coro.close()  # avoid "coroutine was never awaited" noise
            raise RuntimeError(f"task supervisor {self.name!r} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}/{name}")
        self._tasks.add(task)
        task.add_done_callback(self._on_done)
        return task

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    async def close(self) -> None:
        """Cancel all running tasks and wait for them to finish. Idempotent."""
        self._closed = True
        await cancel_and_wait(self._tasks)

