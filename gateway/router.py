"""Where each agent lives, what reaches it, and where each session's frames go.

Loop-side state of the gateway. An agent is placed on the least-loaded worker when it is first
named (or first named again after its worker died, it was deactivated, or the server restarted)
and stays there while it is active; when it had history, a restore from the journal goes to
the worker before anything else for it. With placement "dedicated" it is placed instead on a
worker process of its own, started for it (``start_worker``: its items wait for it, in order, in
gateway/workers.py) and retired when it is deactivated; a lost one is not replaced, the agent's
next message starts another. Every history fact goes through the journal on its way
(``gateway.journal``) and is shown to the ``observer``; turn ids are assigned here, so the journal
knows a turn before the agent.

Frames coming back from workers are forwarded to the Godot connection currently holding the
session, noted by ``OpenTurns`` and shown, with the agents' reports, to the ``observer`` (the
/events feeds).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import orjson
from loguru import logger

from actors.messages import (
    ConnectionClosed,
    Deactivate,
    Flush,
    Flushed,
    Frame,
    NodeRefused,
    Retire,
    Scrape,
    Scraped,
    SnapshotRecall,
    Summarised,
    ToAgent,
    ToFeed,
    ToGateway,
    ToWorker,
    WorkerGone,
)
from actors.metrics import END_TO_END, Metrics
from config.settings import Settings
from core import memory as m
from core import protocol as p
from core.dedicated import DedicatedSlots
from core.history import fact_of, starts_turn
from core.openturns import FIRST_SAY, FIRST_TAG, INTERRUPT, OpenTurns
from core.recall import RecallQuery, query_words
from core.spec import SpecError, as_text, groups_of
from core.takeover import PlayerInput, Takeover, TakeoverEnded
from core.turn import turn_of_request
from gateway.journal import Journal

Key = tuple[str, str]  # (session, agent_id)


class Connection(Protocol):
    session: str
    connection_id: str
    agents: set[str]

    def send(self, data: bytes) -> None: ...
    def replaced(self) -> None: ...


class Observer(Protocol):
    def fact_recorded(self, session: str, agent_id: str, fact: dict) -> None: ...

    def worker_items(self, items: list[Frame | ToFeed]) -> None: ...


class WorkerReports(Protocol):
    """Who keeps the workers' metrics (gateway/metrics.py)."""

    def scraped(self, worker: int, item: Scraped) -> None: ...
    def lost(self, worker: int) -> None: ...


class Router:
    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        start_worker: Callable[[int, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.clock = clock
        self.metrics = metrics or Metrics()  # the gateway's own
        self.reports: WorkerReports | None = None
        self.placement: dict[Key, int] = {}
        # Placement "dedicated": its slots, and how to start worker (index, generation) for one.
        self.dedicated = DedicatedSlots(settings.max_dedicated_workers) if settings.dedicated else None
        self.start_worker = start_worker
        # Per worker index (add_worker): agents placed, generation, pid, node, and whether it lives.
        self.load: list[int] = []
        self.generation: list[int] = []
        self.worker_pids: list[int | None] = []
        self.worker_nodes: list[str | None] = []
        self.alive: list[bool] = []
        self.unreachable: set[int] = set()  # workers whose stream ended, until replaced
        self.relayed: list[int] = []  # frames received from each worker
        self.refused_nodes: dict[str, str] = {}  # node -> why the pool refuses it (actors/pool.py, Flaps)
        self._ignored: set[tuple[int, int]] = set()  # (worker, generation) whose batches were dropped
        self.last_seen: dict[Key, float] = {}  # placed agents: when Godot or a player last addressed them
        self.pinned: set[Key] = set()  # taken over by a person on /events: kept active
        latencies = {
            FIRST_TAG: self.metrics.first_tag.labels(END_TO_END).observe,
            FIRST_SAY: self.metrics.first_say.labels(END_TO_END).observe,
            INTERRUPT: self.metrics.interrupt.observe,
        }
        self.open = OpenTurns(lambda what, seconds: latencies[what](seconds))
        self.turn_events: dict[Key, tuple[str, dict]] = {}  # placed agents: (turn_id, event) its recall looks up
        self.groups: dict[Key, tuple[str, ...]] = {}  # placed agents: the groups of their latest spec
        self.session_agents: Counter[str] = Counter()
        self.connections: dict[str, Connection] = {}
        self._flush_waiters: dict[int, Callable[[int], None]] = {}
        self.observer: Observer | None = None

    def journal_opened(self) -> None:
        """Count the agents the journal already knows, per session (for max_agents_per_session)."""
        self.session_agents = Counter(session for session, _ in self.journal.known)

    @property
    def agent_count(self) -> int:
        return len(self.placement)

    # --- Godot side ------------------------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        """``conn`` now receives its session's frames; a previous holder is told it was replaced."""
        previous = self.connections.get(conn.session)
        self.connections[conn.session] = conn
        if previous is not None:
            logger.info("session {} taken over by connection {}", conn.session, conn.connection_id)
            previous.replaced()

    def detach(self, conn: Connection) -> None:
        """``conn`` closed: its agents write their logs, and end their turns unless a newer
        connection took the session over (then those turns are the newer connection's)."""
        still_held = self.connections.get(conn.session) is conn
        if still_held:
            del self.connections[conn.session]
        by_worker: dict[int, list[str]] = {}
        for agent_id in conn.agents:
            worker = self.placement.get((conn.session, agent_id))
            if worker is not None:
                by_worker.setdefault(worker, []).append(agent_id)
        for worker, agent_ids in by_worker.items():
            self._send(worker, ConnectionClosed(conn.session, conn.connection_id, agent_ids, still_held))

    def route_or_refuse(self, conn: Connection, agent_id: str, message: p.AgentMessage) -> dict | None:
        """Send a message from Godot on to the agent and return None; or, when it cannot go, send
        nothing and return the ``error`` frame that refuses it (for the caller to send Godot)."""
        session = conn.session
        key = (session, agent_id)
        kind = type(message)
        if isinstance(message, p.AgentTurnResult) and self.open.running(key, message.turn_id):
            return p.error(
                p.TURN_NOT_ENDED,
                f"agent_turn_result: turn {message.turn_id!r} is still running; "
                "send it after agent_turn_finished or agent_turn_interrupted",
                {"type": "agent_turn_result", "agent_id": agent_id, "turn_id": message.turn_id},
            )
        worker = self.placement.get(key)
        if worker is None:
            new = key not in self.journal.known
            if new:
                if kind is not p.InteractionEvent and kind is not p.NotificationEvent:
                    return _unknown_agent(message, agent_id, session)
                if self.session_agents[session] >= self.settings.max_agents_per_session:
                    return p.error(
                        p.TOO_MANY_AGENTS,
                        f"session {session!r} already has "
                        f"{self.session_agents[session]} agents (setting max_agents_per_session)",
                        {"type": p.TYPE_NAMES[kind], "agent_id": agent_id},
                    )
            worker = self._place(key)
            if worker is None:
                return self._no_worker(message, agent_id)
            if new:
                self.session_agents[session] += 1
        conn.agents.add(agent_id)
        self.last_seen[key] = now = self.clock()
        turn_id = None
        if starts_turn(message):
            turn_id = uuid.uuid4().hex[:16]
            self.open.assigned(key, turn_id, getattr(message, "event_id", None), now)
            event = message.event if isinstance(message, p.InteractionEvent) else self.turn_events.get(key, ("", {}))[1]
            self.turn_events[key] = (turn_id, event)
        fact = fact_of(message, agent_id, turn_id)
        if fact is not None:
            self._record(worker, ToAgent(session, agent_id, fact), (session, agent_id, fact))
            if self.observer is not None:
                self.observer.fact_recorded(session, agent_id, fact)
        else:
            assert isinstance(message, p.AgentStateSnapshot)  # fact_of: the one message that is no history
            self._snapshot(worker, key, message)
        return None

    def _snapshot(self, worker: int, key: Key, message: p.AgentStateSnapshot) -> None:
        """The spec a turn asked for goes with what the journal recalls for the turn's event (who
        is involved, where, in the groups the spec names); any other snapshot goes as it is."""
        try:
            self.groups[key] = groups_of(message.state)
        except SpecError:
            self.groups[key] = ()  # the agent refuses this spec, and tells Godot why
        asked = self.turn_events.get(key)
        item = ToAgent(*key, message)
        if asked is None or asked[0] != turn_of_request(message.request_id) or not self.settings.recall_budget_chars:
            self._send(worker, item)
            return
        del self.turn_events[key]
        location = message.state.get("location")
        scopes = m.scopes_of(self.groups[key])
        said, context = query_words(asked[1], as_text(location) if location is not None else "")
        owners = tuple(m.owner_of(key[1], scope) for scope in scopes)
        query = RecallQuery(key[1], owners, said, context, self.settings.history_budget_chars)
        self.journal.recall(
            (worker, self.generation[worker]), item._replace(message=SnapshotRecall(message, query, None))
        )

    def memory(self, conn: Connection, message: p.MemoryMessage, done: Callable[[dict], None]) -> None:
        """Carry out the game's memory operation in the journal's order; ``done(reply)`` once durable."""
        session, agent_id = conn.session, message.agent_id
        op: m.MemoryOp
        if isinstance(message, p.MemoryAdd):
            op = m.AddMemory(
                session, agent_id, message.scope, uuid.uuid4().hex[:16], message.text, pinned=message.pinned
            )
        elif isinstance(message, p.MemoryForget):
            op = m.ForgetMemories(session, agent_id, message.scope, message.memory_id, message.query)
        else:
            scopes = (message.scope,) if message.scope else m.scopes_of(self.groups.get((session, agent_id), ()))
            op = m.ListMemories(session, agent_id, scopes, message.query)
        self.journal.memory(op, done)

    def to_known_agent(self, session: str, agent_id: str, message: Takeover | PlayerInput) -> tuple[str, str] | None:
        """Send a player's message (/events) to an agent Godot has named and return None; or,
        when it cannot go, the error (code, message) that says why."""
        key = (session, agent_id)
        worker = self.placement.get(key)
        if worker is None:
            if key not in self.journal.known:
                return p.UNKNOWN_AGENT, f"the game has not named agent {agent_id!r} in session {session!r}"
            worker = self._place(key)
            if worker is None:
                logger.warning("no dedicated worker is free for agent {} of session {}", agent_id, session)
                return (
                    p.TOO_MANY_WORKERS,
                    "no worker is free for this NPC: every dedicated worker is taken "
                    "(setting max_dedicated_workers); try again when one is retired",
                )
        if type(message) is Takeover:
            (self.pinned.add if message.client is not None else self.pinned.discard)(key)
        self.last_seen[key] = self.clock()
        self._send(worker, ToAgent(session, agent_id, message))
        return None

    def _place(self, key: Key) -> int | None:
        """Put ``key`` on the least-loaded live worker; it gets its history first if it has one.
        A worker whose stream just ended is passed over while another can take it (if none can,
        the agent waits there for its replacement: what it is sent ends with the lost turns).
        With placement "dedicated", on a worker started for it; None when all are taken."""
        if self.dedicated is not None:
            taken = self.dedicated.take(key)
            if taken is None:
                return None
            worker, generation = taken
            self._grow(worker)
            self.generation[worker], self.worker_pids[worker] = generation, None
            self.worker_nodes[worker] = self.settings.node
            assert self.start_worker is not None  # the gateway gives one with placement "dedicated"
            self.start_worker(worker, generation)
        else:
            live = self.live_workers()
            reachable = [worker for worker in live if worker not in self.unreachable]
            worker = min(reachable or live, key=self.load.__getitem__)
        self.placement[key] = worker
        self.load[worker] += 1
        if key in self.journal.known:
            self.journal.restore((worker, self.generation[worker]), *key)
        return worker

    def _no_worker(self, message: p.AgentMessage, agent_id: str) -> dict:
        limit = self.settings.max_dedicated_workers
        return p.error(
            p.TOO_MANY_WORKERS,
            f"all {limit} dedicated workers are running an NPC (setting max_dedicated_workers); "
            f"agent {agent_id!r} gets one when another NPC is deactivated (setting agent_idle_s)",
            {"type": p.TYPE_NAMES[type(message)], "agent_id": agent_id, **_event_id(message)},
        )

    def _send(self, worker: int, item: ToWorker) -> None:
        """``item`` goes to ``worker`` after everything sent or recorded for it before."""
        self.journal.send_in_order((worker, self.generation[worker]), item)

    def _record(self, worker: int, item: ToAgent, fact: tuple[str, str, dict]) -> None:
        """``item`` goes to ``worker`` once ``fact`` (session, agent_id, fact) is durable."""
        self.journal.record((worker, self.generation[worker]), item, fact)

    # --- worker side -----------------------------------------------------------------------

    def deliver(self, items: list[ToGateway], origin: int | None = None, generation: int = 0) -> None:
        """Forward one batch from worker ``origin``; nothing from one that was lost or replaced."""
        if origin is not None and not self._current(origin, generation):
            return
        connections = self.connections
        note = self.open.frame
        now = self.clock()
        observed: list[Frame | ToFeed] = []  # in order, for the observer
        others = 0  # items that are not frames: counted in the rare branches, not per frame
        for item in items:
            if isinstance(item, Frame):  # the hot one: first
                note(item.session, item.data, now)
                conn = connections.get(item.session)
                if conn is not None:
                    conn.send(item.data)
                observed.append(item)
                continue
            others += 1
            if isinstance(item, ToFeed):
                if type(item.report) is TakeoverEnded:
                    self.pinned.discard((item.session, item.report.agent_id))
                observed.append(item)
            elif isinstance(item, Summarised):
                self.journal.keep_summary(item.session, item.agent_id, item.fact)
            elif isinstance(item, WorkerGone):
                self.worker_gone(item.worker)
            elif isinstance(item, NodeRefused):
                self.refused_nodes[item.node] = item.reason
                logger.error("node {} is refused: {}", item.node, item.reason)
            elif isinstance(item, Flushed):
                waiter = self._flush_waiters.get(item.token)
                if waiter is not None:
                    waiter(item.token)
            elif isinstance(item, Scraped):
                if self.reports is not None and origin is not None:
                    self.reports.scraped(origin, item)
            else:
                logger.error("unknown item {!r} from a worker", type(item).__name__)
        if origin is not None:
            self.relayed[origin] += len(items) - others
        if observed and self.observer is not None:
            self.observer.worker_items(observed)

    def _current(self, worker: int, generation: int) -> bool:
        """Whether ``worker`` of ``generation`` is the live one; said once per stale generation."""
        if worker < len(self.alive) and self.alive[worker] and self.generation[worker] == generation:
            return True
        if (worker, generation) not in self._ignored:
            self._ignored.add((worker, generation))
            logger.warning("ignoring worker {} of generation {}: it was lost or replaced", worker, generation)
        return False

    def flush(self, token: int, done: Callable[[int], None]) -> None:
        """Ask every worker to report once all it was sent so far is handled."""
        self._flush_waiters[token] = done
        for worker in self.live_workers():
            self._send(worker, Flush(token))

    def scrape(self, token: int) -> list[int]:
        """Ask every live worker for its metrics (answered with ``Scraped``); return which."""
        live = self.live_workers()
        for worker in live:
            self._send(worker, Scrape(token))
        return live

    # --- workers coming and going --------------------------------------------------------------

    def live_workers(self) -> list[int]:
        return [worker for worker, alive in enumerate(self.alive) if alive]

    def nodes(self) -> list[dict]:
        """``{name, workers, agents, frames}`` per node with live workers (frames: relayed so far)."""
        nodes: dict[str, dict] = {}
        for worker in self.live_workers():
            name = self.worker_nodes[worker]
            assert name is not None  # add_worker gave every live worker its node
            node = nodes.setdefault(name, {"name": name, "workers": 0, "agents": 0, "frames": 0})
            node["workers"] += 1
            node["agents"] += self.load[worker]
            node["frames"] += self.relayed[worker]
        return list(nodes.values())

    def add_worker(self, worker: int, generation: int, pid: int, node: str) -> None:
        """A worker to place agents on: one of this node's, or a joining node's (or, with placement
        "dedicated", the one started for an agent)."""
        self._grow(worker)
        self.generation[worker], self.worker_pids[worker], self.worker_nodes[worker] = generation, pid, node
        self.alive[worker] = True
        self.unreachable.discard(worker)
        self.refused_nodes.pop(node, None)
        logger.info("worker {} of node {} (pid {}) takes agents", worker, node, pid)

    def _grow(self, worker: int) -> None:
        """Make room in the per-worker books for index ``worker``."""
        missing = worker + 1 - len(self.alive)
        if missing > 0:
            self.load += [0] * missing
            self.generation += [0] * missing
            self.worker_pids += [None] * missing
            self.worker_nodes += [None] * missing
            self.alive += [False] * missing
            self.relayed += [0] * missing

    def worker_lost(self, worker: int) -> None:
        """Worker ``worker``'s stream ended: it died, and Thespian will replace it. With placement
        "dedicated" it is not replaced (or it never started): its slot is free, its agent's next
        message starts another."""
        pid = self.worker_pids[worker]
        if self.dedicated is None:
            self.unreachable.add(worker)
        else:
            self.alive[worker] = False
            self.dedicated.release(worker)
        if pid is None:  # a dedicated worker given up before it was up (gateway/workers.py)
            self._lose(worker, "the worker process for this agent did not start; its turn is lost")
        else:
            self._lose(worker, f"the worker process running this agent died (pid {pid}); its turn is lost")

    def worker_replaced(self, worker: int, generation: int, pid: int) -> None:
        """A new generation of worker ``worker`` took the place of the one that died."""
        self.metrics.worker_restarts.inc()
        self.worker_lost(worker)  # nothing left to end when its stream's end was seen first
        self.generation[worker], self.worker_pids[worker] = generation, pid
        self.alive[worker] = True  # also a lost node's worker, started again when the node came back
        self.unreachable.discard(worker)
        node = self.worker_nodes[worker]
        if node is not None:
            self.refused_nodes.pop(node, None)

    def worker_gone(self, worker: int) -> None:
        """Worker ``worker``'s node left the convention: it takes no more agents."""
        if worker >= len(self.alive) or not self.alive[worker]:
            logger.info("worker {} is gone before it took agents (its node left as it joined)", worker)
            return
        self.alive[worker] = False
        self._lose(worker, f"the node running this agent ({self.worker_nodes[worker]}) was lost; its turn is lost")

    def _lose(self, worker: int, why: str) -> None:
        """End the turns ``worker`` was running for Godot; its agents are placed again (with their
        history) when next addressed."""
        lost = [key for key, placed in self.placement.items() if placed == worker]
        frames: list[ToGateway] = []
        ended = 0
        for key in lost:
            del self.placement[key]
            self.last_seen.pop(key, None)
            self.turn_events.pop(key, None)
            for frame in self.open.end(key, why):
                frames.append(Frame(key[0], orjson.dumps(frame)))
                ended += frame["type"] == "agent_turn_finished"
        self.load[worker] = 0
        if ended:
            self.metrics.turns.labels("error").inc(ended)
        if self.reports is not None:
            self.reports.lost(worker)
        logger.warning(
            "worker {} of node {} lost: {} agents will be restored, {} frames end their turns",
            worker,
            self.worker_nodes[worker],
            len(lost),
            len(frames),
        )
        self.deliver(frames)

    # --- idle agents -------------------------------------------------------------------------

    def deactivate_idle(self, idle_s: float) -> int:
        """Free agents nobody addressed for ``idle_s`` and that run no turn; return how many."""
        cutoff = self.clock() - idle_s
        idle = [
            key
            for key, seen in self.last_seen.items()
            if seen < cutoff and not self.open.busy(key) and key not in self.pinned
        ]
        for key in idle:
            worker = self.placement.pop(key)
            del self.last_seen[key]
            self.turn_events.pop(key, None)
            self.groups.pop(key, None)
            self.load[worker] -= 1
            if self.dedicated is None:
                self._send(worker, Deactivate(*key))
            else:  # its process ends, after everything sent to it before
                self._send(worker, Retire(*key))
                self.alive[worker] = False
                self.dedicated.release(worker)
                if self.reports is not None:  # its counters as of the last scrape stay, as a dead worker's
                    self.reports.lost(worker)
        return len(idle)


def _event_id(message: p.AgentMessage) -> dict:
    """``{"event_id": ...}`` for an error's ref, when the message has one."""
    event_id = getattr(message, "event_id", None)
    return {"event_id": event_id} if event_id is not None else {}


def _unknown_agent(message: p.AgentMessage, agent_id: str, session: str) -> dict:
    ref = {"type": p.TYPE_NAMES[type(message)], "agent_id": agent_id}
    for key in ("turn_id", "request_id"):
        if hasattr(message, key):
            ref[key] = getattr(message, key)
    return p.error(
        p.UNKNOWN_AGENT,
        f"agent {agent_id!r} has had no interaction_event or notification_event in session {session!r}",
        ref,
    )
