"""An asyncio loop inside an actor process, joined to the actor's own thread.

Why: Thespian lets an actor send only from its own thread (inside ``receiveMessage``), while the
gateway's HTTP server and a worker's agents live on an asyncio loop. The loop side appends to a
deque and, when the actor thread is not already due to wake, writes one byte to a socketpair the
actor watches (``ThespianWatch``); the actor drains the deque. Only control traffic (a start's
reply, a worker's request to stop) takes this way: NPC traffic goes on the workers' streams
(``actors/link.py``).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from concurrent.futures import Future
from typing import Any

from loguru import logger
from thespian.actors import ThespianWatch

from config.event_loop import new_event_loop

# How long the loop thread waits at most for the GIL while another thread of the process runs
# Python code (the gateway's journal, a worker's log writer): 0.5 ms, not CPython's 5 ms, which
# measured as 1-2 ms more chunk p99 at 100 NPCs and no more CPU (docs/performance.md).
GIL_SWITCH_INTERVAL_S = 0.0005


def settle_process() -> None:
    """Tune a server process (the gateway's, a worker's) once, before its loop starts: the GIL's
    switch interval, and what the process made so far (modules, settings), which lives as long
    as it does, put out of the garbage collector's sight after one last collection, so that a
    full collection no longer walks it: at 100 NPCs one paused the gateway's loop for 59 ms and a
    worker's for 58 ms; after this none was slower than 8 ms (docs/performance.md)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()


class LoopBridge:
    """Runs an asyncio loop in a daemon thread; carries work in and batched items out."""

    def __init__(self, name: str, event_loop: str = "asyncio") -> None:
        self.loop = new_event_loop(event_loop)
        self._outbox: deque[tuple[Hashable, Any]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._signalled = False
        self._watch = ThespianWatch([self._wake_r.fileno()])
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    # --- loop thread ---------------------------------------------------------------------

    def post(self, destination: Hashable, item: Any) -> None:
        """Queue ``item`` for ``destination``; call from the loop thread only."""
        self._outbox.append((destination, item))
        if not self._signalled:
            self._signalled = True
            try:
                self._wake_w.send(b"\0")
            except BlockingIOError:  # the actor is already due to wake: nothing is lost
                pass

    # --- actor thread --------------------------------------------------------------------

    @property
    def watch(self) -> ThespianWatch:
        """Return this from every ``receiveMessage`` so the actor wakes when items are queued."""
        return self._watch

    def drain(self) -> dict[Hashable, list]:
        """Take every queued item, grouped by destination in queue order (actor thread)."""
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        # Reset before popping: an item appended after this line signals again.
        self._signalled = False
        batches: dict[Hashable, list] = {}
        popleft = self._outbox.popleft
        while True:
            try:
                destination, item = popleft()
            except IndexError:
                return batches
            batch = batches.get(destination)
            if batch is None:
                batches[destination] = [item]
            else:
                batch.append(item)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread, in call order."""
        self.loop.call_soon_threadsafe(fn, *args)

    def run(self, coro: Coroutine, timeout: float) -> Any:
        """Run ``coro`` on the loop and wait for its result (start-up only: it blocks the actor)."""
        future: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop, stop it and join its thread."""
        if not self._thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), timeout)
        except Exception as exc:  # noqa: BLE001 - shutting down whatever state the loop is in
            logger.warning("loop did not wind down cleanly: {}", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        self._wake_r.close()
        self._wake_w.close()
