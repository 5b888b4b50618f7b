"""The gateway actor: owns the aiohttp server (on its own event loop) and talks to the workers.

Start-up: create the worker pool (before any thread exists in this process, see actors/pool.py),
wait for every worker to report ready, then listen and tell run.py. Afterwards this class only
moves batches between the loop (``GatewayServer``) and the workers (out through the pool, back
directly: every actor pair carries traffic one way, see actors/pool.py), and stops on request.
"""

from __future__ import annotations

from loguru import logger
from thespian.actors import Actor, ActorExitRequest, ChildActorExited, WakeupMessage, WatchMessage

from actors.bridge import LoopBridge, OneInFlight
from actors.messages import (
    Batch,
    GatewayStarted,
    GatewayStopped,
    SpawnWorkers,
    StartFailed,
    StartGateway,
    StopGateway,
    ToWorkers,
    WorkerFailed,
    WorkerReady,
)
from actors.pool import WorkerPool
from config.log import configure_logging
from gateway.app import GatewayServer

REPLY = "reply"  # bridge destination: a message for whoever asked us to start or stop
POOL = "pool"  # outbox destination: every worker's batches, carried by the pool


class GatewayActor(Actor):
    def __init__(self) -> None:
        super().__init__()
        self.bridge: LoopBridge | None = None
        self.server: GatewayServer | None = None
        self.pool = None
        self.workers: dict[int, WorkerReady] = {}  # worker index -> its latest generation's report
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
                self.bridge.call(self.server.router.deliver, message.items, message.origin, message.generation)
            elif isinstance(message, WorkerReady):
                self._worker_ready(message, sender)
            elif isinstance(message, WorkerFailed):
                self._worker_failed(message)
            elif isinstance(message, StartGateway):
                self._start(message, sender)
            elif isinstance(message, StopGateway):
                self._stop(sender)
            elif isinstance(message, ActorExitRequest):
                if self.bridge is not None:
                    self.bridge.stop()
                logger.complete()
            elif isinstance(message, ChildActorExited):
                if not self.stopping:
                    logger.error("worker pool exited")
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
        self.pool = self.createActor(WorkerPool)  # fork while this process has a single thread
        self.send(self.pool, SpawnWorkers(self.settings, self.myAddress))
        self.bridge = LoopBridge("gateway-loop")
        self.outbox = OneInFlight(
            self, lambda _, batches: (self.pool, ToWorkers(batches)), self._send_queued, self.settings.batch_interval_s
        )
        logger.info("starting {} workers", self.settings.worker_count)

    def _worker_ready(self, message: WorkerReady, sender) -> None:
        """A worker is ready: one of this node's at start, a new node's, or a replacement."""
        known = message.index in self.workers
        self.workers[message.index] = message
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
        self.send(self.requester, GatewayStarted(url, len(self.workers)))

    def _worker_failed(self, message: WorkerFailed) -> None:
        if self.stopping:
            return
        logger.error("worker {} failed: {}", message.index, message.reason)
        if not self.started:
            self.send(self.requester, StartFailed(f"worker {message.index} failed: {message.reason}"))

    def _stop(self, sender) -> None:
        self.stopping = True
        self.requester = sender
        if self.server is None:
            self.send(sender, GatewayStopped())
            return

        async def stop_server() -> None:
            await self.server.stop(timeout=10)
            self.bridge.post(REPLY, GatewayStopped())

        self.bridge.call(self.bridge.loop.create_task, stop_server())
