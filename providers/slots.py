"""The LLM concurrency limit of one worker, turns first.

Turns wait for a slot in arrival order (asyncio's Semaphore is FIFO since 3.11.1). A background
request (an NPC's summary) never waits and never keeps a turn waiting: it starts only while more
than a ``HEADROOM``th of the slots are free and no turn waits, and when a turn finds every slot
taken, one background request gives its slot up at once (its task is cancelled, which closes its
HTTP stream). One that cannot start is dropped (``Busy``); the agent asks again at a later turn.
Without a limit (``limit`` 0) turns never wait, and background requests are bounded by
``background_limit`` alone.

Why the headroom: measured with the load test at 100 NPCs and ``llm_max_concurrent = 100`` (50
slots a worker, about as many turns in flight), summaries that started whenever one slot was
free were cancelled by the next turn again and again (4 finished in 30 s), and the run's
server-added first-tag p50 was 61 ms against 16 ms without summaries (one run each); with the
headroom they are dropped instead, and the ratio is about 1 (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Busy(Exception):
    """No room for a background request now."""


HEADROOM = 4


class Slots:
    def __init__(self, limit: int, background_limit: int) -> None:
        self._limit = limit
        self._free = asyncio.Semaphore(limit) if limit > 0 else None
        self._held = 0  # slots taken, by turns and background requests
        self._background_limit = background_limit
        self._background: list[asyncio.Task] = []  # holding a slot, oldest first

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        free = self._free
        if free is None:
            yield
            return
        if free.locked() and self._background:
            self._background.pop(0).cancel()  # its slot comes to the first turn waiting
        async with free:
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1

    @contextlib.asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        """Hold a slot for a background request, or raise ``Busy`` at once."""
        free = self._free
        if len(self._background) >= self._background_limit:
            raise Busy
        if free is not None and (free.locked() or self._limit - self._held <= self._limit // HEADROOM):
            raise Busy
        task = asyncio.current_task()
        assert task is not None  # called from a coroutine
        if free is not None:
            await free.acquire()  # not locked: at once
            self._held += 1
        self._background.append(task)
        try:
            yield
        finally:
            if task in self._background:
                self._background.remove(task)
            if free is not None:
                self._held -= 1
                free.release()
