"""The gateway actor: owns the aiohttp server (on its own event loop) and talks to the workers.

Start-up: have the worker pool run.py created (see actors/pool.py) start the workers, wait for
every worker to report ready, then listen and tell run.py. Afterwards this class only moves
batches between the loop (``GatewayServer``) and the workers (out through the pool, back
directly: every actor pair carries traffic one way, see actors/pool.py), and stops on request.

Supervision (actors/lifeline.py): it dies with the admin, and ends the whole actor system when
run.py dies. When the pool dies (its workers die with it), run.py creates a new one and hands it
over (``ReplacePool``): its workers start with newer generations, so they count as replacements
of the lost ones, whose turns end with ``worker_lost`` and whose NPCs come back from the journal.
Workers on worker nodes are not the pool's children and would outlive it: they are asked to exit,
and anything they still send is dropped.
"""

from __future__ import annotations

import os
import signal

from loguru import logger
from thespian.actors import Actor, ActorExitRequest, WakeupMessage, WatchMessage

from actors.bridge import LoopBridge, OneInFlight
from actors.lifeline import die_with_parent, exit_fd
from actors.messages import (
    Batch,
    GatewayStarted,
    GatewayStopped,
    ReplacePool,
    SpawnWorkers,
    StartFailed,
    StartGateway,
    StopGateway,
    ToWorkers,
    WorkerFailed,
    WorkerReady,
)
from config.log import configure_logging
from gateway.app import GatewayServer

REPLY = "reply"  # bridge destination: a message for whoever asked us to start or stop
POOL = "pool"  # outbox destination: every worker's batches, carried by the pool


class GatewayActor(Actor):
    def __init__(self) -> None:
        die_with_parent()
        super().__init__()
        self.bridge: LoopBridge | None = None
        self.server: GatewayServer | None = None
        self.pool = None
        self.workers: dict[int, WorkerReady] = {}  # worker index -> its latest generation's report
        self.addresses: dict = {}  # worker index -> its latest generation's address
        self.retired: list = []  # workers of a dead pool that might still send (on worker nodes)
        self.requester = None
        self.settings = None
        self.started = False
        self.stopping = False

    def receiveMessage(self, message, sender):
        try:
            if isinstance(message, WatchMessage):
                self.outbox.watched(self.bridge.woken)
            elif isinstance(message, WakeupMessage):
                self.outbox.wakeup(message.payload)
            elif isinstance(message, Batch):
                if not (self.retired and sender in self.retired):
                    self.bridge.call(self.server.router.deliver, message.items, message.origin)
            elif isinstance(message, WorkerReady):
                self._worker_ready(message, sender)
            elif isinstance(message, WorkerFailed):
                self._worker_failed(message)
            elif isinstance(message, StartGateway):
                self._start(message, sender)
            elif isinstance(message, StopGateway):
                self._stop(message, sender)
            elif isinstance(message, ReplacePool):
                self._replace_pool(message.pool)
            elif isinstance(message, ActorExitRequest):
                if self.bridge is not None:
                    self.bridge.stop()
                logger.complete()
        except Exception as exc:  # noqa: BLE001 - an actor must not die on one message
            logger.exception("gateway failed on {}", type(message).__name__)
            if not self.started and not self.stopping:  # run.py is waiting for the start
                self.send(self.requester or sender, StartFailed(repr(exc)))
        return self.bridge.watch if self.bridge is not None else None

    def _send_queued(self) -> None:
        for destination, items in self.bridge.drain().items():
            if destination == REPLY:
                for item in items:
                    self.send(self.requester, item)
            else:  # destination: (worker index, generation)
                self.outbox.add(POOL, [(destination, items)])

    def _start(self, message: StartGateway, sender) -> None:
        self.settings = message.settings
        self.requester = sender
        configure_logging(self.settings.log_level, "gateway")
        self.pool = message.pool
        self.send(self.pool, SpawnWorkers(self.settings, self.myAddress))
        self.bridge = LoopBridge("gateway-loop")
        self.bridge.call(self.bridge.loop.add_reader, exit_fd(message.starter_pid), _starter_died, message.starter_pid)
        self.outbox = self._pool_outbox()
        logger.info("starting {} workers", self.settings.worker_count)

    def _pool_outbox(self) -> OneInFlight:
        return OneInFlight(
            self, lambda _, batches: (self.pool, ToWorkers(batches)), self._send_queued, self.settings.batch_interval_s
        )

    def _replace_pool(self, pool) -> None:
        """The pool died and run.py made this one: its workers replace every worker of the old."""
        first = 1 + max((ready.generation for ready in self.workers.values()), default=0)
        remote = [index for index, ready in self.workers.items() if ready.node != self.settings.node]
        logger.error("the worker pool was replaced: starting its workers again (generation {})", first)
        for index in remote:
            self.retired.append(self.addresses[index])
            self.send(self.addresses[index], ActorExitRequest())
        self.pool = pool
        self.outbox = self._pool_outbox()  # the old one may wait forever for the dead pool
        self.send(self.pool, SpawnWorkers(self.settings, self.myAddress, first))

    def _worker_ready(self, message: WorkerReady, sender) -> None:
        """A worker is ready: one of this node's at start, a new node's, or a replacement."""
        known = message.index in self.workers
        self.workers[message.index] = message
        self.addresses[message.index] = sender
        logger.debug(
            "worker {} generation {} ready on node {} (pid {})",
            message.index,
            message.generation,
            message.node,
            message.pid,
        )
        if self.started:
            router = self.server.router
            if known:
                self.bridge.call(router.worker_replaced, message.index, message.generation, message.pid)
            else:
                self.bridge.call(router.add_worker, message.index, message.generation, message.pid, message.node)
            return
        if sum(ready.node == self.settings.node for ready in self.workers.values()) < self.settings.worker_count:
            return

        async def start_server() -> str:
            self.server = GatewayServer(self.settings, list(self.workers.values()), self.bridge.post)
            return await self.server.start()

        url = self.bridge.run(start_server(), timeout=self.settings.startup_timeout_s)
        self.started = True
        self.send(self.requester, GatewayStarted(url, len(self.workers), os.getpid(), os.getppid(), os.getpgid(0)))

    def _worker_failed(self, message: WorkerFailed) -> None:
        if self.stopping:
            return
        logger.error("worker {} failed: {}", message.index, message.reason)
        if not self.started:
            self.send(self.requester, StartFailed(f"worker {message.index} failed: {message.reason}"))

    def _stop(self, message: StopGateway, sender) -> None:
        self.stopping = True
        self.requester = sender
        if self.server is None:
            self.send(sender, GatewayStopped())
            return

        async def stop_server() -> None:
            await self.server.stop(timeout=10 if message.workers else None)
            self.bridge.post(REPLY, GatewayStopped())

        self.bridge.call(self.bridge.loop.create_task, stop_server())


def _starter_died(pid: int) -> None:
    """run.py is gone (killed): end every process of this actor system, this one included."""
    logger.error("run.py (pid {}) died: ending the actor system", pid)
    logger.complete()
    os.killpg(os.getpgid(0), signal.SIGKILL)
