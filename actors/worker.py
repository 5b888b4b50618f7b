"""The worker actor: one process hosting many NPC agents on its own event loop.

Thespian places it (capability ``NPC Host``), configures it and supervises it; the agents live in
``AgentHost`` on the loop thread, and their traffic with the gateway travels on the worker's own
stream (``actors/link.py``), never through this class. When that stream ends (the gateway is gone,
or declared this worker lost), when no gateway connects in time, or when its gateway stays out of
reach (a partition: actors/lease.py), the worker stops itself: it is of no use to anyone, and its
LLM streams must not go on costing tokens. With placement "dedicated" it also stops when the
gateway retires it (``Retire``, after everything sent before it): its one NPC was deactivated.
"""

from __future__ import annotations

import asyncio
import os

from loguru import logger
from thespian.actors import Actor, ActorExitRequest, WakeupMessage, WatchMessage, requireCapability

from actors.bridge import LoopBridge, settle_process
from actors.host import AgentHost
from actors.lease import GatewayLease
from actors.lifeline import die_with_parent
from actors.link import LinkListener
from actors.messages import NPC_HOST, NPC_NODE, ConfigureWorker, Notice, WorkerFailed, WorkerReady
from config.log import configure_logging

EXIT = "exit"  # bridge destination: the loop asks the actor to stop this worker


@requireCapability(NPC_HOST)
class WorkerActor(Actor):
    @classmethod
    def actorSystemCapabilityCheck(cls, capabilities: dict, requirements: dict) -> bool:
        """Placement on one named node: the pool asks for ``{"node": name}``."""
        wanted = (requirements or {}).get("node")
        return wanted is None or capabilities.get(NPC_NODE) == wanted

    def __init__(self) -> None:
        die_with_parent()  # actors/lifeline.py
        super().__init__()
        self.bridge: LoopBridge | None = None
        self.host: AgentHost | None = None
        self.listener: LinkListener | None = None
        self.index = -1
        self.lease: GatewayLease | None = None

    def receiveMessage(self, message, sender):
        try:
            if isinstance(message, WatchMessage):
                if EXIT in self.bridge.drain():
                    self.send(self.myAddress, ActorExitRequest())
            elif isinstance(message, WakeupMessage):
                if message.payload is GatewayLease:
                    self._check_lease()
            elif isinstance(message, Notice):
                self.bridge.call(self.host.deliver, [message])
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
        settings = message.settings
        configure_logging(settings.log_level, f"worker-{message.index}")
        self.index = message.index
        settle_process()
        self.bridge = LoopBridge(f"worker-{self.index}-loop", settings.event_loop)
        bridge = self.bridge
        # On the leader's machine a private Unix socket; on a worker node, the node's own address.
        link_host = None if message.node == settings.node else self.myAddress.addressDetails.sockname[0]

        def stop_self() -> None:
            bridge.post(EXIT, None)

        async def start() -> str:
            listener: LinkListener  # the host sends on it; made second, as it delivers to the host
            self.host = host = AgentHost(settings, self.index, lambda item: listener.send(item), stop_self)
            self.listener = listener = LinkListener(
                message.link_secret,
                self.index,
                message.generation,
                host.deliver,
                stop_self,
                settings.frame_batch_s,
            )
            address = await listener.start(link_host)
            asyncio.get_running_loop().create_task(
                self._await_gateway(listener.connected, settings.startup_timeout_s, stop_self)
            )
            return address

        address = bridge.run(start(), timeout=30)
        logger.info(
            "worker {} generation {} ready on node {} (pid {}), its stream at {}",
            self.index,
            message.generation,
            message.node,
            os.getpid(),
            address,
        )
        self.send(message.gateway, WorkerReady(self.index, os.getpid(), message.generation, message.node, address))
        self.lease = GatewayLease(message.gateway.addressDetails.sockname, settings.node_check_s)
        self.wakeupAfter(self.lease.check_s, payload=GatewayLease)

    def _check_lease(self) -> None:
        assert self.lease is not None  # its wakeup is asked for once the lease exists
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

    async def _await_gateway(self, connected: asyncio.Event, timeout: float, gateway_lost) -> None:
        try:
            await asyncio.wait_for(connected.wait(), timeout)
        except TimeoutError:
            logger.error("worker {}: no gateway connected within {:.0f} s: stopping", self.index, timeout)
            gateway_lost()

    def _stop(self) -> None:
        if self.lease is not None:
            self.lease.close()
        if self.bridge is None:
            return
        try:
            self.bridge.run(self._aclose(), timeout=5)
        except Exception as exc:  # noqa: BLE001
            logger.warning("worker {} did not close cleanly: {}", self.index, exc)
        self.bridge.stop()
        self.bridge = None
        logger.complete()

    async def _aclose(self) -> None:
        if self.host is not None:
            await self.host.aclose()
        if self.listener is not None:
            await self.listener.aclose()
