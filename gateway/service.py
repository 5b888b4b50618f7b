"""Start and stop the whole service: the Thespian actor system, the gateway actor, the workers.

This is what ``run.py`` calls. It runs in the main process, outside any actor, and talks to the
gateway with Thespian's ``ask``.
"""

from __future__ import annotations

import socket

from loguru import logger
from thespian.actors import ActorSystem

from actors.messages import NPC_HOST, GatewayStarted, GatewayStopped, StartGateway, StopGateway
from config.settings import Settings
from gateway.actor import GatewayActor

SYSTEM_BASE = "multiprocTCPBase"


class ServiceError(RuntimeError):
    """The service could not start; the message says why and what to do."""


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.system: ActorSystem | None = None
        self.gateway = None
        self.url: str | None = None

    def start(self) -> str:
        """Start everything and return the gateway's base URL once it accepts connections."""
        s = self.settings
        if _port_in_use(s.admin_port):
            raise ServiceError(
                f"Thespian admin port {s.admin_port} is already in use: another server is running, "
                "or a crashed one left its actor system behind. Stop it, or choose another port "
                "with --admin-port / GAME_AGENT_ADMIN_PORT.")
        logger.info("starting actor system ({}, admin port {})", SYSTEM_BASE, s.admin_port)
        self.system = ActorSystem(
            SYSTEM_BASE, capabilities={"Admin Port": s.admin_port, NPC_HOST: True}, transientUnique=True)
        try:
            self.gateway = self.system.createActor(GatewayActor)
            reply = self.system.ask(self.gateway, StartGateway(s), s.startup_timeout_s)
            if not isinstance(reply, GatewayStarted):
                reason = getattr(reply, "reason", None) or f"no answer within {s.startup_timeout_s} s"
                raise ServiceError(f"the gateway did not start: {reason}")
        except BaseException:
            self.stop()
            raise
        self.url = reply.url
        logger.info("NPC turn server ready at {} with {} workers", reply.url, reply.workers)
        return reply.url

    def stop(self) -> None:
        """Close connections (logs get written), then shut the actor system and every process down."""
        if self.system is None:
            return
        system, self.system = self.system, None
        try:
            if self.gateway is not None and self.url is not None:
                reply = system.ask(self.gateway, StopGateway(), 20)
                if not isinstance(reply, GatewayStopped):
                    logger.warning("the gateway did not confirm a clean stop")
        finally:
            system.shutdown()
            logger.info("actor system stopped")


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
