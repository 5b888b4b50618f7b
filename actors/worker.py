"""The worker actor: one process hosting many NPC agents on its own event loop.

Thespian places it (capability ``NPC Host``) and carries its batches; the agents themselves live
in ``AgentHost`` on the loop thread. This class only moves messages between the two, and stops
its worker when its gateway stays out of reach (actors/lease.py).
"""

from __future__ import annotations

import os

from loguru import logger
from thespian.actors import Actor, ActorExitRequest, WakeupMessage, WatchMessage, requireCapability

from actors.bridge import LoopBridge, OneInFlight
from actors.host import AgentHost
from actors.lease import GatewayLease
from actors.messages import NPC_HOST, NPC_NODE, Batch, ConfigureWorker, WorkerFailed, WorkerReady
from config.log import configure_logging


@requireCapability(NPC_HOST)
class WorkerActor(Actor):
    @classmethod
    def actorSystemCapabilityCheck(cls, capabilities: dict, requirements: dict) -> bool:
        """Placement on one named node: the pool asks for ``{"node": name}``."""
        wanted = (requirements or {}).get("node")
        return wanted is None or capabilities.get(NPC_NODE) == wanted

    def __init__(self) -> None:
        super().__init__()
        self.bridge: LoopBridge | None = None
        self.host: AgentHost | None = None
        self.gateway = None
        self.index = -1
        self.lease: GatewayLease | None = None

    def receiveMessage(self, message, sender):
        try:
            if isinstance(message, WatchMessage):
                self.outbox.watched(self.bridge.woken)
            elif isinstance(message, WakeupMessage):
                if message.payload is GatewayLease:
                    self._check_lease()
                else:
                    self.outbox.wakeup(message.payload)
            elif isinstance(message, Batch):
                self.bridge.call(self.host.deliver, message.items)
            elif isinstance(message, ConfigureWorker):
                self._configure(message)
            elif isinstance(message, ActorExitRequest):
                self._stop()
        except Exception as exc:  # noqa: BLE001 - an actor must not die on one message
            logger.exception("worker {} failed on {}", self.index, type(message).__name__)
            if isinstance(message, ConfigureWorker):
                self.send(message.gateway, WorkerFailed(message.index, repr(exc)))
        return self.bridge.watch if self.bridge is not None else None

    def _configure(self, message: ConfigureWorker) -> None:
        configure_logging(message.settings.log_level, f"worker-{message.index}")
        self.index, self.gateway = message.index, message.gateway
        self.bridge = LoopBridge(f"worker-{self.index}-loop")
        self.outbox = OneInFlight(
            self,
            lambda _, items: (self.gateway, Batch(self.index, items, message.generation)),
            self._flush,
            message.settings.batch_interval_s,
        )

        async def make_host() -> AgentHost:
            return AgentHost(message.settings, self.index, self.bridge.post)

        self.host = self.bridge.run(make_host(), timeout=30)
        logger.info(
            "worker {} generation {} ready on node {} (pid {})",
            self.index,
            message.generation,
            message.node,
            os.getpid(),
        )
        self.send(self.gateway, WorkerReady(self.index, os.getpid(), message.generation, message.node))
        self.lease = GatewayLease(self.gateway.addressDetails.sockname, message.settings.node_check_s)
        self.wakeupAfter(self.lease.check_s, payload=GatewayLease)

    def _check_lease(self) -> None:
        if self.lease.check():
            self.wakeupAfter(self.lease.check_s, payload=GatewayLease)
            return
        logger.error(
            "worker {} stops: its gateway {} was unreachable for {:.0f} s, so the leader declared its node lost "
            "or was restarted (its agents and turns live on elsewhere)",
            self.index,
            self.lease.address,
            self.lease.unreachable_s(),
        )
        self.send(self.myAddress, ActorExitRequest())

    def _flush(self) -> None:
        for destination, items in self.bridge.drain().items():
            self.outbox.add(destination, items)

    def _stop(self) -> None:
        if self.lease is not None:
            self.lease.close()
        if self.bridge is None:
            return
        try:
            self.bridge.run(self.host.aclose(), timeout=5)
        except Exception as exc:  # noqa: BLE001
            logger.warning("worker {} did not close cleanly: {}", self.index, exc)
        self.bridge.stop()
        logger.complete()
