"""This process's actor system: the leader's, or a worker node's that joins the leader's convention.

Scaling out is Thespian's own convention: a worker node starts a ``multiprocTCPBase`` system
whose ``Convention Address.IPv4`` is the leader's admin port and whose capabilities say it hosts
NPC workers (``NPC Host``), under which name (``NPC Node``) and how many (``NPC Workers``). The
leader's worker pool hears of it (``ActorSystemConventionUpdate``) and places workers there by
naming the node (``WorkerActor.actorSystemCapabilityCheck``). docs/deploy.md has the whole story.

Every listener of the system is on one address (actors/bind.py): loopback on a single node, the
address the leader reaches it on for a worker node, the operator's ``advertise`` for a leader of
worker nodes.
"""

from __future__ import annotations

import socket

from loguru import logger
from thespian.actors import ActorSystem

from actors.bind import LOOPBACK, check_address, confine_listeners, route_address
from actors.messages import NPC_HOST, NPC_NODE, NPC_WORKERS
from config.settings import Settings

SYSTEM_BASE = "multiprocTCPBase"
# Thespian's own logging (the standard library's, in every actor process): warnings and worse
# only. Our logs go through loguru; libraries such as the HTTP client would print each request.
THESPIAN_LOGGING = {
    "version": 1,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "level": "WARNING"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}


class NodeError(RuntimeError):
    """The actor system could not start; the message says why and what to do."""


def start_system(settings: Settings, leader: tuple[str, int] | None = None) -> ActorSystem:
    """Start this node's actor system; with ``leader``, as a member of that leader's convention."""
    address = advertised_address(settings, leader)
    confine_listeners(address)
    if _port_in_use(address, settings.admin_port):
        raise NodeError(
            f"Thespian admin port {settings.admin_port} is already in use: another server or node is "
            "running, or a crashed one left its actor system behind. Stop it, or choose another port "
            "with --admin-port / GAME_AGENT_ADMIN_PORT."
        )
    capabilities = {
        "Admin Port": settings.admin_port,
        NPC_HOST: True,
        NPC_NODE: settings.node,
        NPC_WORKERS: settings.worker_count,
    }
    if leader is not None:
        capabilities["Convention Address.IPv4"] = leader
    logger.info("Thespian listens on {} only (admin port {})", address, settings.admin_port)
    return ActorSystem(SYSTEM_BASE, capabilities, logDefs=THESPIAN_LOGGING, transientUnique=True)


def advertised_address(settings: Settings, leader: tuple[str, int] | None = None) -> str:
    """The one address this node's Thespian listens on and gives its peers (see actors/bind.py)."""
    try:
        if settings.advertise:
            return check_address(settings.advertise)
        return LOOPBACK if leader is None else check_address(route_address(*leader))
    except ValueError as exc:
        raise NodeError(
            f"cannot choose the address for Thespian to listen on: {exc}. Name it with --advertise "
            "ADDRESS / GAME_AGENT_ADVERTISE (this host's address on the network it shares with the leader)."
        ) from None


def _port_in_use(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((address, port)) == 0
