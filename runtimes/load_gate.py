"""Loads share the way; a backend's calibration has it alone (an asyncio readers-writer gate).

A calibration reads the process's resident memory as its probes load: another model loading
or unloading meanwhile would show in those readings. So ordinary loads and unloads hold the
gate `shared()` (any number at once), a calibration holds it `exclusive()`: it waits for the
loads in progress to finish, and loads that arrive meanwhile wait for it (a waiting
calibration goes first, so a steady stream of loads cannot starve it). The calibration's
own probe loads do not pass through the gate (they have a manager of their own).

Shared holds nest: a load that unloads other models to make room for itself (the instance
agent's eviction) already holds the gate, so its unloads pass (else they would wait for a
waiting calibration, which waits for the load: a deadlock).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator

__all__ = ["LoadGate"]


class LoadGate:
    def __init__(self) -> None:
        self._holding = contextvars.ContextVar(f"holding gate {id(self)}", default=False)
        self._changed = asyncio.Condition()
        self._holders = 0  # shared holders inside
        self._exclusive_wanted = 0  # exclusive holders waiting or inside
        self._exclusive = asyncio.Lock()  # one exclusive holder at a time
        self.waiting = 0  # loads, unloads and setups waiting for their turn (tests and logs read it)

    @property
    def held_here(self) -> bool:
        """Whether this task holds the gate shared (it must not wait for an exclusive hold)."""
        return self._holding.get()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        if self._holding.get():  # this task (or the one that started it) holds it already
            yield
            return
        async with self._changed:
            self.waiting += 1
            try:
                await self._changed.wait_for(lambda: self._exclusive_wanted == 0)
            finally:
                self.waiting -= 1
            self._holders += 1
        token = self._holding.set(True)
        try:
            yield
        finally:
            self._holding.reset(token)
            async with self._changed:
                self._holders -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._changed:
            self._exclusive_wanted += 1
        self.waiting += 1
        entered = False
        try:
            async with self._exclusive:
                async with self._changed:
                    await self._changed.wait_for(lambda: self._holders == 0)
                entered = True
                self.waiting -= 1
                yield
        finally:
            if not entered:
                self.waiting -= 1
            async with self._changed:
                self._exclusive_wanted -= 1
                self._changed.notify_all()
