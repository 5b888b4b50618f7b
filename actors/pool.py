"""The worker pool: creates the worker actors and carries the gateway's batches to them.

Two reasons for it to exist:
- Workers must be forked from a process with a single thread: the gateway runs an asyncio
  thread, and forking a threaded process can copy a lock held by another thread into the child.
- No two actors may send to each other. Thespian's TCP transport reuses one socket for both
  directions of a pair; when both ends send at once, neither gets its ACK and the retry waits up to
  attempts x 35 s, and later messages overtake (measured: reordered frames, multi-second stalls).
  So traffic flows one way on every pair: gateway -> pool -> worker -> gateway.

Workers are placed by Thespian through the ``NPC Host`` capability, so a convention member on
another machine can host them.

It also supervises them: a worker that exits (even killed) is replaced under the same index
with the next generation. The new worker's ``WorkerReady`` tells the gateway, which ends the lost
turns for Godot and places the lost agents again (their history comes back from the journal);
batches the gateway addressed to the old generation are dropped here, since their facts are
already in the journal.
"""

from __future__ import annotations

import time

from loguru import logger
from thespian.actors import Actor, ActorExitRequest, ChildActorExited, WakeupMessage

from actors.bridge import OneInFlight
from actors.messages import Batch, ConfigureWorker, SpawnWorkers, ToWorkers
from actors.worker import WorkerActor
from config.log import configure_logging


QUICK_DEATH_S = 5.0  # a worker that dies sooner than this after starting died "quickly"
MAX_BACKOFF_S = 30.0


class WorkerPool(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.workers: list = []
        self.generations: list[int] = []
        self.started_at: list[float] = []
        self.quick_deaths: list[int] = []
        self.spawn: SpawnWorkers | None = None
        self.outbox: OneInFlight | None = None
        self.stopping = False

    def receiveMessage(self, message, sender):
        try:
            if type(message) is ToWorkers:
                for (index, generation), items in message.batches:
                    if generation == self.generations[index]:
                        self.outbox.add(index, items)
            elif isinstance(message, WakeupMessage):
                if type(message.payload) is int:
                    self._start_worker(message.payload)
                else:
                    self.outbox.wakeup(message.payload)
            elif isinstance(message, SpawnWorkers):
                configure_logging(message.settings.log_level, "pool")
                self.spawn = message
                self.outbox = OneInFlight(self, self._batch_for, min_interval_s=message.settings.batch_interval_s)
                self.workers = [None] * message.count
                self.generations = [0] * message.count
                self.started_at = [0.0] * message.count
                self.quick_deaths = [0] * message.count
                for index in range(message.count):
                    self._start_worker(index)
            elif isinstance(message, ActorExitRequest):
                self.stopping = True
            elif isinstance(message, ChildActorExited) and not self.stopping:
                self._worker_exited(message.childAddress)
        except Exception:  # noqa: BLE001 - an actor must not die on one message
            logger.exception("worker pool failed on {}", type(message).__name__)

    def _start_worker(self, index: int) -> None:
        self.workers[index] = self.createActor(WorkerActor)
        self.started_at[index] = time.monotonic()
        self.send(self.workers[index], ConfigureWorker(
            self.spawn.settings, self.spawn.gateway, index, self.generations[index]))

    def _worker_exited(self, address) -> None:
        """Replace the worker at once; after a pause when it keeps dying as soon as it starts."""
        if address not in self.workers:
            return
        index = self.workers.index(address)
        self.workers[index] = None
        self.generations[index] += 1
        self.outbox.discard(index)
        lived = time.monotonic() - self.started_at[index]
        self.quick_deaths[index] = self.quick_deaths[index] + 1 if lived < QUICK_DEATH_S else 0
        delay = min(MAX_BACKOFF_S, 2.0 ** self.quick_deaths[index]) if self.quick_deaths[index] > 1 else 0.0
        logger.error("worker {} exited after {:.1f} s: starting generation {} in {:.0f} s", index, lived,
                     self.generations[index], delay)
        if delay:
            self.wakeupAfter(delay, payload=index)
        else:
            self._start_worker(index)

    def _batch_for(self, index: int, items: list) -> tuple:
        return self.workers[index], Batch(-1, items)
