"""The gateway actor: owns the aiohttp server (on its own event loop) and talks to the workers.

Start-up: have the worker pool run.py created (see actors/pool.py) start the workers, wait for
every worker to report ready, connect to their streams, then listen and tell run.py. Afterwards
this class passes workers' reports (ready, failed) to the loop (``GatewayServer``) and stops on
request; the NPC traffic goes between the loop and the workers' streams directly.

Supervision (actors/lifeline.py): it dies with the admin, and ends the whole actor system when
run.py dies. When the pool dies (its workers die with it), run.py creates a new one and hands it
over (``ReplacePool``): its workers start with newer generations, so they count as replacements
of the lost ones, whose turns end with ``worker_lost`` and whose NPCs come back from the journal.
Workers on worker nodes are not the pool's children and would outlive it: they are asked to exit
(and would stop by themselves once their stream ends).
"""

from __future__ import annotations

import os
import signal

from loguru import logger
from thespian.actors import Actor, ActorExitRequest, WatchMessage

from actors.bridge import LoopBridge, settle_process
from actors.lifeline import die_with_parent, exit_fd
from actors.messages import (
    GatewayStarted,
    GatewayStopped,
    ReplacePool,
    SpawnWorkers,
    StartFailed,
    StartGateway,
    StopGateway,
    WorkerFailed,
    WorkerReady,
)
from config.log import configure_logging
from config.settings import Settings
from core.link import new_secret
from gateway.app import GatewayServer

REPLY = "reply"  # bridge destination: a message for whoever asked us to start or stop
POOL = "pool"  # bridge destination: a message for the worker pool (placement "dedicated": StartWorker)


class GatewayActor(Actor):
    # Set by the first message, StartGateway (``_start``): Thespian creates actors without arguments.
    settings: Settings
    link_secret: bytes

    def __init__(self) -> None:
        die_with_parent()
        super().__init__()
        self.bridge: LoopBridge | None = None
        self.server: GatewayServer | None = None
        self.pool = None
        self.workers: dict[int, WorkerReady] = {}  # worker index -> its latest generation's report
        self.addresses: dict = {}  # worker index -> its latest generation's address
        self.requester = None
        self.started = False
        self.stopping = False

    def receiveMessage(self, message, sender):
        try:
            if isinstance(message, WatchMessage):
                assert self.bridge is not None  # only its watch wakes this actor
                posted = self.bridge.drain()
                for item in posted.get(REPLY, ()):
                    self.send(self.requester, item)
                for item in posted.get(POOL, ()):
                    self.send(self.pool, item)
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

    def _start(self, message: StartGateway, sender) -> None:
        self.settings = message.settings
        self.requester = sender
        configure_logging(self.settings.log_level, "gateway")
        self.link_secret = new_secret()
        self.pool = message.pool
        self.send(self.pool, SpawnWorkers(self.settings, self.myAddress, self.link_secret))
        settle_process()
        self.bridge = bridge = LoopBridge("gateway-loop", self.settings.event_loop)
        bridge.call(bridge.loop.add_reader, exit_fd(message.starter_pid), _starter_died, message.starter_pid)
        logger.info("starting {} workers (placement {})", self.settings.pooled_workers, self.settings.placement)
        self._start_server_once_ready()

    def _replace_pool(self, pool) -> None:
        """The pool died and run.py made this one: its workers replace every worker of the old."""
        first = 1 + max((ready.generation for ready in self.workers.values()), default=0)
        remote = [index for index, ready in self.workers.items() if ready.node != self.settings.node]
        logger.error("the worker pool was replaced: starting its workers again (generation {})", first)
        for index in remote:
            self.send(self.addresses[index], ActorExitRequest())
        self.pool = pool
        self.send(self.pool, SpawnWorkers(self.settings, self.myAddress, self.link_secret, first))
        if self.server is not None and self.bridge is not None:  # after SpawnWorkers, which they need
            self.bridge.call(self.server.pool_replaced)

    def _worker_ready(self, message: WorkerReady, sender) -> None:
        """A worker is ready: one of this node's at start, a new node's, or a replacement."""
        self.workers[message.index] = message
        self.addresses[message.index] = sender
        logger.debug(
            "worker {} generation {} ready on node {} (pid {})",
            message.index,
            message.generation,
            message.node,
            message.pid,
        )
        assert self.bridge is not None  # _start made it before it asked for the workers
        if self.started:
            assert self.server is not None  # started: it is listening
            self.bridge.call(self.bridge.loop.create_task, self.server.workers.ready(message))
            return
        self._start_server_once_ready()

    def _start_server_once_ready(self) -> None:
        """Listen once this node's pooled workers are all ready (with placement "dedicated": at once)."""
        if sum(ready.node == self.settings.node for ready in self.workers.values()) < self.settings.pooled_workers:
            return
        bridge = self.bridge
        assert bridge is not None  # _start made it before it asked for the workers

        async def start_server() -> str:
            self.server = GatewayServer(self.settings, self.link_secret, lambda message: bridge.post(POOL, message))
            return await self.server.start(list(self.workers.values()))

        url = bridge.run(start_server(), timeout=self.settings.startup_timeout_s)
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
        server, bridge = self.server, self.bridge
        if server is None:
            self.send(sender, GatewayStopped())
            return
        assert bridge is not None  # the server runs on its loop

        async def stop_server() -> None:
            await server.stop(timeout=10 if message.workers else None)
            bridge.post(REPLY, GatewayStopped())

        bridge.call(bridge.loop.create_task, stop_server())


def _starter_died(pid: int) -> None:
    """run.py is gone (killed): end every process of this actor system, this one included."""
    logger.error("run.py (pid {}) died: ending the actor system", pid)
    logger.complete()
    os.killpg(os.getpgid(0), signal.SIGKILL)
