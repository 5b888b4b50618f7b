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
"""

from __future__ import annotations

from loguru import logger
from thespian.actors import Actor, ActorExitRequest, ChildActorExited, WakeupMessage

from actors.bridge import OneInFlight
from actors.messages import Batch, ConfigureWorker, SpawnWorkers, ToWorkers
from actors.worker import WorkerActor
from config.log import configure_logging


class WorkerPool(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.workers: list = []
        self.outbox: OneInFlight | None = None
        self.stopping = False

    def receiveMessage(self, message, sender):
        try:
            if type(message) is ToWorkers:
                for index, items in message.batches:
                    self.outbox.add(index, items)
            elif isinstance(message, WakeupMessage):
                self.outbox.wakeup(message.payload)
            elif isinstance(message, SpawnWorkers):
                configure_logging(message.settings.log_level, "pool")
                self.outbox = OneInFlight(self, self._batch_for, min_interval_s=message.settings.batch_interval_s)
                for index in range(message.count):
                    worker = self.createActor(WorkerActor)
                    self.workers.append(worker)
                    self.send(worker, ConfigureWorker(message.settings, message.gateway, index))
            elif isinstance(message, ActorExitRequest):
                self.stopping = True
            elif isinstance(message, ChildActorExited) and not self.stopping:
                logger.error("worker actor {} exited", message.childAddress)
        except Exception:  # noqa: BLE001 - an actor must not die on one message
            logger.exception("worker pool failed on {}", type(message).__name__)

    def _batch_for(self, index: int, items: list) -> tuple:
        return self.workers[index], Batch(-1, items)
