"""Where each agent lives, and where each session's frames go.

Loop-side state of the gateway. An agent is placed on the least-loaded worker the first time it
is named and stays there while that worker lives (stable routing: its history is there). Frames
coming back from workers are forwarded to the Godot connection currently holding the session, and
shown, with the agents' reports, to the ``observer`` (the /events feeds).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Protocol

from loguru import logger

from actors.messages import CONNECTION_CLOSED, FLUSH, FLUSHED, FRAME, TO_AGENT, TO_FEED


class Connection(Protocol):
    session: str
    connection_id: str
    agents: set[str]

    def send(self, data: bytes) -> None: ...
    def replaced(self) -> None: ...


class Observer(Protocol):
    def worker_items(self, items: list[tuple]) -> None: ...


class Router:
    def __init__(self, worker_count: int, post: Callable[[Hashable, Any], None]) -> None:
        self._post = post
        self.placement: dict[tuple[str, str], int] = {}
        self.load = [0] * worker_count
        self.connections: dict[str, Connection] = {}
        self._flush_waiters: dict[int, Callable[[int], None]] = {}
        self.observer: Observer | None = None

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
            self._post(worker, (CONNECTION_CLOSED, conn.session, conn.connection_id, agent_ids, still_held))

    def to_agent(self, conn: Connection, agent_id: str, message: Any, *, create: bool) -> bool:
        """Send ``message`` to the agent; False when it is unknown and ``create`` is not set."""
        key = (conn.session, agent_id)
        worker = self.placement.get(key)
        if worker is None:
            if not create:
                return False
            worker = self.placement[key] = min(range(len(self.load)), key=self.load.__getitem__)
            self.load[worker] += 1
        conn.agents.add(agent_id)
        self._post(worker, (TO_AGENT, conn.session, agent_id, message))
        return True

    def to_known_agent(self, session: str, agent_id: str, message: Any) -> bool:
        """Send ``message`` to an agent that Godot has named; False when there is none."""
        worker = self.placement.get((session, agent_id))
        if worker is not None:
            self._post(worker, (TO_AGENT, session, agent_id, message))
        return worker is not None

    # --- worker side -----------------------------------------------------------------------

    def deliver(self, items: list[tuple]) -> None:
        """Forward one batch from a worker."""
        connections = self.connections
        observed = []  # FRAME and TO_FEED items, in order, for the observer
        for item in items:
            if item[0] == FRAME:
                conn = connections.get(item[1])
                if conn is not None:
                    conn.send(item[2])
                observed.append(item)
            elif item[0] == TO_FEED:
                observed.append(item)
            elif item[0] == FLUSHED:
                waiter = self._flush_waiters.get(item[1])
                if waiter is not None:
                    waiter(item[1])
            else:
                logger.error("unknown item {!r} from a worker", item[0])
        if observed and self.observer is not None:
            self.observer.worker_items(observed)

    def flush(self, token: int, done: Callable[[int], None]) -> None:
        """Ask every worker to report once all it was sent so far is handled."""
        self._flush_waiters[token] = done
        for worker in range(len(self.load)):
            self._post(worker, (FLUSH, token))
