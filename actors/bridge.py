"""An asyncio loop inside an actor process, joined to the actor's own thread with batching.

Why: Thespian lets an actor send only from its own thread (inside ``receiveMessage``), and its TCP
transport is stop-and-wait, so one Thespian message per streamed token tops out at a few hundred
messages per second for the whole system (shared/notes/measured-facts.md). Here the asyncio side
only appends to a deque and, when the actor thread is not already due to wake, writes one byte to
a socketpair the actor watches (``ThespianWatch``). The actor thread then sends everything queued
for one destination as a single ``Batch``. At low load a batch is one item and leaves at once; under
load the next batch fills by itself while the previous message waits for its ACK
(``OneInFlight``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from concurrent.futures import Future
from functools import partial
from typing import Any

from loguru import logger
from thespian.actors import Actor, ActorAddress, ThespianWatch
from thespian.system.transport import TransmitIntent


class LoopBridge:
    """Runs an asyncio loop in a daemon thread; carries work in and batched items out."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
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

    def woken(self) -> None:
        """Consume the wake-up (actor thread), but stay signalled: the loop writes no more wake-ups
        until ``drain``. An actor that cannot send yet calls this instead of ``drain``, so it is
        not woken once per item while its previous message is in flight."""
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def drain(self) -> dict[Hashable, list]:
        """Take every queued item, grouped by destination in queue order (actor thread)."""
        self.woken()
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


class OneInFlight:
    """Sends to each destination one message at a time; the next carries all that queued meanwhile.

    ``Actor.send`` has no completion signal and queues every call behind the one in flight.
    Sending one batch per wake-up therefore queued hundreds of small messages under load, and
    Thespian then stopped receiving to drain them ("tx-only mode": stalls of seconds, measured).
    This hands each message to the actor's transport with a completion callback instead, and
    sends the next batch for that destination only when the previous one is acknowledged: no
    delay at low load, a few large messages under high load.

    Each Thespian message costs about a millisecond of CPU between the two processes, so at
    moderate load (a token every millisecond or two) sending each as soon as the previous is
    acknowledged still meant one message per token. ``min_interval_s`` spaces the sends to one
    destination: an item that comes after a quiet spell leaves at once, one that comes sooner
    waits at most that long and shares the message with whatever else came meanwhile.

    It reaches into Thespian's ActorManager (``_myRef._send_intent``, as ``Actor.send`` does);
    setup.cfg pins Thespian to the 4.0 series for that reason. The actor must hand its
    ``WakeupMessage``s to ``wakeup``.
    """

    def __init__(
        self,
        actor: Actor,
        message_for: Callable[[Hashable, list], tuple[ActorAddress, Any]],
        refill: Callable[[], None] = lambda: None,
        min_interval_s: float = 0.0,
    ) -> None:
        self._actor = actor
        self._message_for = message_for
        self._refill = refill  # takes whatever the event loop queued since the last look
        self._min_interval_s = min_interval_s
        self._pending: dict[Hashable, list] = {}
        self._in_flight: set[Hashable] = set()
        self._waiting: set[Hashable] = set()  # a wake-up is due for these
        self._sent_at: dict[Hashable, float] = {}

    def add(self, destination: Hashable, items: list) -> None:
        """Queue ``items`` for ``destination``; they leave now unless a message is in flight."""
        pending = self._pending.get(destination)
        if pending is None:
            self._pending[destination] = items
        else:
            pending.extend(items)
        if destination not in self._in_flight and destination not in self._waiting:
            self._send_soon(destination)

    def discard(self, destination: Hashable) -> None:
        """Drop what waits for ``destination``: it is gone."""
        self._pending.pop(destination, None)

    def watched(self, consume_wakeup: Callable[[], None]) -> None:
        """The event loop queued items: take them now if nothing is in flight or waiting; else
        only consume the wake-up (``LoopBridge.woken``): the completion or wake-up takes them."""
        if not self._in_flight and not self._waiting:
            self._refill()
        else:
            consume_wakeup()

    def wakeup(self, payload: Any) -> bool:
        """Handle a ``WakeupMessage`` payload; False if it was not one of ours."""
        if not (type(payload) is tuple and len(payload) == 2 and payload[0] is OneInFlight):
            return False
        destination = payload[1]
        self._waiting.discard(destination)
        self._refill()
        if destination not in self._in_flight:
            self._send(destination)
        return True

    def _send_soon(self, destination: Hashable) -> None:
        """Send now, or once ``min_interval_s`` has passed since the last send there."""
        wait = self._sent_at.get(destination, -1e9) + self._min_interval_s - time.monotonic()
        if wait <= 0:
            self._send(destination)
        elif destination in self._pending:
            self._waiting.add(destination)
            self._actor.wakeupAfter(wait, payload=(OneInFlight, destination))

    def _send(self, destination: Hashable) -> None:
        items = self._pending.pop(destination, None)
        if not items:
            return
        address, message = self._message_for(destination, items)
        self._in_flight.add(destination)
        self._sent_at[destination] = time.monotonic()
        done = partial(self._done, destination)
        self._actor._myRef._send_intent(TransmitIntent(address, message, onSuccess=done, onError=done))

    def _done(self, destination: Hashable, result, intent: TransmitIntent) -> None:
        self._in_flight.discard(destination)
        if not result:
            logger.error("message to {} failed: {}", intent.targetAddr, result)
            self._actor._myRef.actor_send_fail(result, intent)  # dead letters, as Actor.send does
        self._refill()
        if destination not in self._waiting:
            self._send_soon(destination)
