"""Waiting on conditions with a timeout: the tests' only way to synchronize."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll `condition` until it returns something truthy; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # the condition may fail until the thing is up
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


async def async_wait_until(condition: Callable[[], Awaitable[object]], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = await condition()
            if value:
                return value
        except Exception as error:  # as above
            last_error = error
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))
