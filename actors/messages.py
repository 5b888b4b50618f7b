"""Messages between run.py, the gateway actor, the worker pool and the workers.

Start-up and shut-down use one small class each. Everything on the hot path travels inside a
``Batch`` as plain tuples (cheap to pickle), tagged by their first element:

gateway -> worker
    (RESTORE, session, agent_id, facts)       the agent is placed here: rebuild it from these
                                              journaled facts (before any other item for it)
    (TO_AGENT, session, agent_id, message)    for one agent: a history fact (core.history.fact_of,
                                              journaled), an agent_state_snapshot, or a
                                              core.taleweave Takeover / PlayerInput from /events
    (DEACTIVATE, session, agent_id)           the agent was idle: free it (its history is journaled)
    (CONNECTION_CLOSED, session, connection_id, agent_ids, end_turns)
                                              write the agents' logs; end their turns if end_turns
    (FLUSH, token)                            answer (FLUSHED, token) once everything before it is done
worker -> gateway
    (FRAME, session, frame_bytes)             one JSON frame for the session's Godot connection
    (TO_FEED, session, report)                a core.taleweave TurnPrompt / TakeoverEnded for /events
    (FLUSHED, token)
    (WORKER_GONE, index)                      worker ``index`` is gone for good (its node left); the
                                              pool has a surviving worker pass this on
    (NODE_REFUSED, node, reason)              the pool refuses node ``node`` (it kept being lost), passed on
                                              the same way
pool -> worker
    (NOTICE, item)                            pass ``item`` on to the gateway (the pool never sends
                                              to the gateway itself: see actors/pool.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorAddress

from config.settings import Settings

# Capabilities of an actor system that hosts NPC workers (placement through Thespian): that it
# does, its node's name, and how many workers it wants.
NPC_HOST = "NPC Host"
NPC_NODE = "NPC Node"
NPC_WORKERS = "NPC Workers"

TO_AGENT = "agent"
RESTORE = "restore"
DEACTIVATE = "deactivate"
CONNECTION_CLOSED = "closed"
FLUSH = "flush"
FRAME = "frame"
TO_FEED = "feed"
FLUSHED = "flushed"
WORKER_GONE = "gone"
NODE_REFUSED = "refused"
NOTICE = "notice"


@dataclass
class Batch:
    """Everything one side queued for the other since its last send."""

    origin: int  # worker index of the sender; -1 for the gateway
    items: list[tuple]
    generation: int = 0  # of the sending worker: the gateway takes nothing from one it replaced

    def __repr__(self) -> str:  # Thespian formats every message it sends: keep that cheap
        return f"Batch(origin={self.origin}, {len(self.items)} items)"


@dataclass
class ToWorkers:
    """Batches from the gateway, ``((worker index, generation), items)`` each, carried by the pool
    (see actors/pool.py); a batch for an older generation of a worker that was replaced is dropped."""

    batches: list[tuple[tuple[int, int], list[tuple]]]

    def __repr__(self) -> str:  # Thespian formats every message it sends: keep that cheap
        return f"ToWorkers({sum(len(items) for _, items in self.batches)} items)"


@dataclass
class StartGateway:
    settings: Settings


@dataclass
class GatewayStarted:
    url: str
    workers: int


@dataclass
class StartFailed:
    reason: str


@dataclass
class StopGateway:
    pass


@dataclass
class GatewayStopped:
    pass


@dataclass
class SpawnWorkers:
    settings: Settings
    gateway: ActorAddress


@dataclass
class ConfigureWorker:
    settings: Settings
    gateway: ActorAddress
    index: int
    generation: int  # how many times worker ``index`` was replaced
    node: str


@dataclass
class WorkerReady:
    index: int
    pid: int
    generation: int
    node: str


@dataclass
class WorkerFailed:
    index: int
    reason: Any
