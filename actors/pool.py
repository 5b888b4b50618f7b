"""The worker pool: creates the worker actors and is told when one exits.

It exists so that workers are forked from a process with a single thread: the gateway runs an
asyncio thread, and forking a threaded process can copy a lock held by another thread. Workers are
placed by Thespian through the ``NPC Host`` capability, so a remote convention member can host them.
"""

from __future__ import annotations

from loguru import logger
from thespian.actors import Actor, ActorExitRequest, ChildActorExited

from actors.messages import ConfigureWorker, SpawnWorkers, WorkerFailed
from actors.worker import WorkerActor
from config.log import configure_logging


class WorkerPool(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.gateway = None
        self.stopping = False

    def receiveMessage(self, message, sender):
        try:
            if isinstance(message, SpawnWorkers):
                configure_logging(message.settings.log_level, "pool")
                for index in range(message.count):
                    worker = self.createActor(WorkerActor)
                    self.send(worker, ConfigureWorker(message.settings, message.gateway, index))
                self.gateway = message.gateway
            elif isinstance(message, ActorExitRequest):
                self.stopping = True
            elif isinstance(message, ChildActorExited) and not self.stopping:
                logger.error("worker actor {} exited", message.childAddress)
                self.send(self.gateway, WorkerFailed(-1, str(message.childAddress)))
        except Exception:  # noqa: BLE001 - an actor must not die on one message
            logger.exception("worker pool failed on {}", type(message).__name__)
