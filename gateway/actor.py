"""The gateway actor: owns the aiohttp server (on its own event loop) and talks to the workers.

Start-up: create the worker pool (before any thread exists in this process, see actors/pool.py),
wait for every worker to report ready, connect to their streams, then listen and tell run.py.
Afterwards this class passes workers' reports (ready, failed) to the loop (``GatewayServer``) and
stops on request; the NPC traffic goes between the loop and the workers' streams directly.

Supervision (actors/lifeline.py): it dies with the admin, and ends the whole actor system when
run.py dies. When its pool dies it stops the service: a new pool cannot be forked from here (this
process has threads, and a fork would copy the listening socket and the journal's database into
it), so it closes every connection, lets the journal write what is queued and exits; run.py sees
that, stops the rest and exits 1, for a process manager to restart the service, which loses no
history (the journal).
"""

from __future__ import annotations

import os
import signal

from loguru import logger
from thespian.actors import Actor, ActorExitRequest, ChildActorExited, WatchMessage

from actors.bridge import LoopBridge
from actors.lifeline import die_with_parent, exit_fd
from actors.messages import (
    GatewayStarted,
    GatewayStopped,
    SpawnWorkers,
    StartFailed,
    StartGateway,
    StopGateway,
    WorkerFailed,
    WorkerReady,
)
from actors.pool import WorkerPool
from config.log import configure_logging
from core.link import new_secret
from gateway.app import GatewayServer

REPLY = "reply"  # bridge destination: a message for whoever asked us to start or stop


class GatewayActor(Actor):
    def __init__(self) -> None:
        die_with_parent()
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
                for item in self.bridge.drain().get(REPLY, ()):
                    self.send(self.requester, item)
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
                    self._pool_died()
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
        self.pool = self.createActor(WorkerPool)  # fork while this process has a single thread
        self.send(self.pool, SpawnWorkers(self.settings, self.myAddress, self.link_secret))
        self.bridge = LoopBridge("gateway-loop")
        self.bridge.call(self.bridge.loop.add_reader, exit_fd(message.starter_pid), _starter_died, message.starter_pid)
        logger.info("starting {} workers", self.settings.worker_count)

    def _worker_ready(self, message: WorkerReady, sender) -> None:
        """A worker is ready: one of this node's at start, a new node's, or a replacement."""
        self.workers[message.index] = message
        logger.debug(
            "worker {} generation {} ready on node {} (pid {})",
            message.index,
            message.generation,
            message.node,
            message.pid,
        )
        if self.started:
            self.bridge.call(self.bridge.loop.create_task, self.server.workers.ready(message))
            return
        if sum(ready.node == self.settings.node for ready in self.workers.values()) < self.settings.worker_count:
            return

        async def start_server() -> str:
            self.server = GatewayServer(self.settings, self.link_secret)
            return await self.server.start(list(self.workers.values()))

        url = self.bridge.run(start_server(), timeout=self.settings.startup_timeout_s)
        self.started = True
        self.send(self.requester, GatewayStarted(url, len(self.workers), os.getpid(), os.getppid(), os.getpgid(0)))

    def _worker_failed(self, message: WorkerFailed) -> None:
        if self.stopping:
            return
        logger.error("worker {} failed: {}", message.index, message.reason)
        if not self.started:
            self.send(self.requester, StartFailed(f"worker {message.index} failed: {message.reason}"))

    def _pool_died(self) -> None:
        why = "the worker pool died"
        logger.error("{}: the service stops (a new pool cannot be forked from the gateway)", why)
        self.stopping = True
        if not self.started:
            self.send(self.requester, StartFailed(why))
            return

        async def fail() -> None:
            self.server.failure = f"{why}; the service is stopping"
            await self.server.stop(timeout=None)
            logger.complete()
            os._exit(1)

        self.bridge.call(self.bridge.loop.create_task, fail())

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


def _starter_died(pid: int) -> None:
    """run.py is gone (killed): end every process of this actor system, this one included."""
    logger.error("run.py (pid {}) died: ending the actor system", pid)
    logger.complete()
    os.killpg(os.getpgid(0), signal.SIGKILL)
