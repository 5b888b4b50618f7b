"""Messages between run.py, the gateway actor, the worker pool and the workers.

Start-up, shut-down and supervision use one small class each, as Thespian messages. Everything on
the hot path travels on each worker's own stream (``actors/link.py``) as plain tuples (cheap to
pickle), tagged by their first element:

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
pool -> worker (a ``Notice`` message)
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
class Notice:
    """From the pool, for a live worker to pass on to the gateway on its stream."""

    item: tuple


@dataclass
class StartGateway:
    settings: Settings
    starter_pid: int  # run.py: the gateway ends the actor system if it dies (actors/lifeline.py)
    pool: ActorAddress  # the worker pool run.py created (the admin forked it: a single thread)


@dataclass
class ReplacePool:
    """run.py to the gateway: the pool died, this new one is to start the workers again."""

    pool: ActorAddress


@dataclass
class IdentifyPool:
    """run.py to a new pool, which answers with its process id (an int), for run.py to watch."""


@dataclass
class GatewayStarted:
    url: str
    workers: int
    pid: int  # the gateway's process, which run.py watches
    admin_pid: int  # Thespian's admin, the gateway's parent, which run.py watches too
    group: int  # the actor system's process group (the admin's setsid made it one)


@dataclass
class StartFailed:
    reason: str


@dataclass
class StopGateway:
    workers: bool = True  # False: the pool is dead, wait for no worker to confirm its logs


@dataclass
class GatewayStopped:
    pass


@dataclass
class SpawnWorkers:
    settings: Settings
    gateway: ActorAddress
    link_secret: bytes  # proves the gateway and its workers to each other on their streams
    first_generation: int = 0  # a replaced pool's workers are newer than any of the dead one's


@dataclass
class ConfigureWorker:
    settings: Settings
    gateway: ActorAddress
    index: int
    generation: int  # how many times worker ``index`` was replaced
    node: str
    link_secret: bytes


@dataclass
class WorkerReady:
    index: int
    pid: int
    generation: int
    node: str
    link: str  # where its stream listens: "unix:PATH" or "tcp:HOST:PORT"


@dataclass
class WorkerFailed:
    index: int
    reason: Any
