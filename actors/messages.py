"""Messages between run.py, the gateway actor, the worker pool and the workers.

Start-up, shut-down and supervision use one small class each, as Thespian messages. Everything on
the hot path travels on each worker's own stream (``actors/link.py``) as a ``NamedTuple`` per item,
one class per kind: readers dispatch with ``isinstance`` (which type checkers follow) and read
fields by name. A tuple subclass costs a little more to pickle than a plain tuple: see ``Frame``.

gateway -> worker (``ToWorker``)
    Restore           the agent is placed here: rebuild it from these journaled facts (before any
                      other item for it)
    ToAgent           for one agent: a history fact (core.history.fact_of, journaled), an
                      agent_state_snapshot (a SnapshotRecall when it answers a turn: with what the
                      journal recalls for it), or a core.takeover Takeover / PlayerInput from /events
    Deactivate        the agent was idle: free it (its history is journaled)
    Retire            placement "dedicated": this worker's NPC was idle: stop the whole process
    ConnectionClosed  write the agents' logs; end their turns if ``end_turns``
    Flush             answer ``Flushed(token)`` once everything before it is done
    Scrape            answer ``Scraped(token, families)``: the worker's metrics so far (/metrics)
worker -> gateway (``ToGateway``)
    Frame             one JSON frame for the session's Godot connection
    ToFeed            a core.takeover TurnPrompt / TakeoverEnded for /events
    Flushed
    Scraped
    Summarised        an agent's new summary of its older history (core.summary), for the journal
    WorkerGone        worker ``worker`` is gone for good (its node left); the pool has a surviving
                      worker pass this on
    NodeRefused       the pool refuses node ``node`` (it kept being lost), passed on the same way
gateway -> pool (a Thespian message)
    StartWorker       placement "dedicated": start worker ``index`` of ``generation`` for an NPC
pool -> worker (a ``Notice``, a Thespian message)
    Notice            the worker passes ``item`` on to the gateway (the pool never sends to the
                      gateway itself: see actors/pool.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

from thespian.actors import ActorAddress

from config.settings import Settings
from core import protocol as p
from core.metrics import Family
from core.recall import Recall, RecallQuery
from core.takeover import PlayerInput, Takeover, TakeoverEnded, TurnPrompt

# Capabilities of an actor system that hosts NPC workers (placement through Thespian): that it
# does, its node's name, and how many workers it wants.
NPC_HOST = "NPC Host"
NPC_NODE = "NPC Node"
NPC_WORKERS = "NPC Workers"


class SnapshotRecall(NamedTuple):
    """The spec a turn waits for, with the old facts and memories its event recalls (core.recall)."""

    snapshot: p.AgentStateSnapshot
    query: RecallQuery
    recall: Recall | None  # None until the journal's thread has looked it up


# What an agent receives: a history fact (core.history.fact_of) or a message that changes none.
AgentInput: TypeAlias = dict[str, Any] | p.AgentStateSnapshot | SnapshotRecall | Takeover | PlayerInput
# What an agent reports to the session's /events feed.
FeedReport: TypeAlias = TurnPrompt | TakeoverEnded


# --- gateway -> worker ---------------------------------------------------------------------


class Restore(NamedTuple):
    session: str
    agent_id: str
    facts: list[dict[str, Any]] | None  # None until the journal's thread has read them


class ToAgent(NamedTuple):
    session: str
    agent_id: str
    message: AgentInput


class Deactivate(NamedTuple):
    session: str
    agent_id: str


class Retire(NamedTuple):
    """The NPC the worker was dedicated to was deactivated: the process ends (after all before it)."""

    session: str
    agent_id: str


class ConnectionClosed(NamedTuple):
    session: str
    connection_id: str
    agent_ids: list[str]
    end_turns: bool  # False when a newer connection took the session over: its turns go on


class Flush(NamedTuple):
    token: int


class Scrape(NamedTuple):
    token: int


# --- worker -> gateway ---------------------------------------------------------------------


class Frame(NamedTuple):
    """The hot item: one per token streamed. Measured with pickle protocol 5, 50 frames a record:
    about 0.9 us more to pickle and 0.3 us more to unpickle each than the plain tagged tuple it
    replaced (a tuple subclass takes pickle's reduce path, and each record names the class)."""

    session: str
    data: bytes  # serialised once, in the worker; the gateway forwards it untouched


class ToFeed(NamedTuple):
    session: str
    report: FeedReport


class Flushed(NamedTuple):
    token: int


class Scraped(NamedTuple):
    token: int
    families: list[Family]  # actors.metrics.Metrics.snapshot: cumulative since the worker started


class Summarised(NamedTuple):
    session: str
    agent_id: str
    fact: dict[str, Any]  # core.summary.summary_fact


class WorkerGone(NamedTuple):
    worker: int  # its index (not ``index``: a tuple's method)


class NodeRefused(NamedTuple):
    node: str
    reason: str


ToWorker: TypeAlias = Restore | ToAgent | Deactivate | Retire | ConnectionClosed | Flush | Scrape
ToGateway: TypeAlias = Frame | ToFeed | Flushed | Scraped | Summarised | WorkerGone | NodeRefused


@dataclass
class Notice:
    """From the pool, for a live worker to pass on to the gateway on its stream."""

    item: WorkerGone | NodeRefused


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
class StartWorker:
    """The gateway to the pool: a dedicated worker for an NPC, in a slot the gateway chose
    (core/dedicated.py); it is never replaced by the pool, the gateway asks again when needed."""

    index: int
    generation: int


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
