"""The smallest relay doing a turn server's per-token work: one process, one asyncio loop, no actors.

Why: run the load test (``python run.py loadtest --baseline``) against it and against ``run.py``,
and the ratio of the two is the cost of the actor architecture (worker processes, Thespian
batches, the gateway hop), because the per-frame and per-token work is the same code: frames are
validated by ``core.protocol``, prompts built by ``core.spec`` and ``core.prompt``, the LLM read by
``providers.client.ChatStreamer`` with the server's own LLM settings, and its output parsed by
``core.tagstream``.

It speaks the part of ``/ws`` the load test uses, with the same frames and order: ``ping`` ->
``pong``; ``interaction_event`` -> interruption of a streaming turn, then ``agent_turn_started``,
``get_agent_state`` / ``agent_state_snapshot`` (timeout, last spec), the streamed tags,
``agent_turn_finished``; ``notification_event``, ``agent_turn_result`` and ``tool_results`` into
the history (tool results start a continuation turn); ``GET /healthz``. It is a benchmark fixture,
not a server: no session take-over, no disconnect logs, no recent-turn bookkeeping beyond what
``agent_turn_result`` needs.

    OPENAI_API_BASE=http://127.0.0.1:8099/v1 python bench/baseline_relay.py [--host H] [--port P]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections import deque
from pathlib import Path

import orjson
from aiohttp import WSMsgType, web
from loguru import logger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.host import llm_settings  # noqa: E402  (a pure function; no actor is started)
from config.event_loop import new_event_loop  # noqa: E402
from config.log import configure_logging  # noqa: E402
from config.settings import Settings, load_settings  # noqa: E402
from core import protocol as p  # noqa: E402
from core.history import History, fact_of, starts_turn  # noqa: E402
from core.prompt import build_messages  # noqa: E402
from core.spec import AgentSpec, SpecError, parse_spec  # noqa: E402
from core.tagstream import TagStreamParser  # noqa: E402
from providers.client import ChatStreamer, LLMError  # noqa: E402


class Connection:
    """One game connection and its ordered outbox (one writer task, as in the gateway)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.agents: set[Agent] = set()
        self._outbox: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, frame: dict) -> None:
        self._outbox.append(orjson.dumps(frame))
        self._wake.set()

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    await self.ws.send_frame(self._outbox.popleft(), WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            pass

    async def close(self) -> None:
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)


class Turn:
    __slots__ = ("turn_id", "event_id", "request_id", "spec_waiter", "task", "parser", "ended")

    def __init__(self, turn_id: str, event_id: str | None) -> None:
        self.turn_id = turn_id
        self.event_id = event_id
        self.request_id = f"{self.turn_id}.state"
        self.spec_waiter: asyncio.Future = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task | None = None
        self.parser: TagStreamParser | None = None
        self.ended = False


class Agent:
    """One NPC: history, last spec, current turn; its frames go to the connection that last named it."""

    def __init__(self, relay: Relay, agent_id: str) -> None:
        self.relay = relay
        self.agent_id = agent_id
        self.conn: Connection | None = None
        self.history = History(relay.settings.history_max_entries)
        self.spec: AgentSpec | None = None
        self.turn: Turn | None = None

    def emit(self, frame: dict) -> None:
        if self.conn is not None:
            self.conn.send(frame)

    def on_fact(self, msg: p.AgentMessage) -> None:
        """A message that changes history (the same rules as the server's, without the journal)."""
        turn_id = uuid.uuid4().hex[:16] if starts_turn(msg) else None
        rejected = self.history.apply(fact_of(msg, self.agent_id, turn_id))
        if rejected is not None:
            self.emit(p.error(rejected.code, rejected.message, {"agent_id": self.agent_id, **rejected.ref}))
        elif turn_id is not None:
            event_id = getattr(msg, "event_id", None)
            self.interrupt("new_event", event_id)
            self.start_turn(turn_id, event_id)

    def on_snapshot(self, msg: p.AgentStateSnapshot) -> None:
        try:
            spec = parse_spec(msg.state)
        except SpecError as exc:
            self.emit(
                p.error(
                    p.BAD_STATE,
                    f"agent_state_snapshot rejected: {exc}",
                    {"agent_id": self.agent_id, "request_id": msg.request_id},
                )
            )
            return
        self.spec = spec
        turn = self.turn
        if turn is not None and turn.request_id == msg.request_id and not turn.spec_waiter.done():
            turn.spec_waiter.set_result(spec)

    def start_turn(self, turn_id: str, event_id: str | None) -> None:
        self.turn = turn = Turn(turn_id, event_id)
        self.emit(p.turn_started(self.agent_id, turn.turn_id, event_id))
        turn.task = asyncio.get_running_loop().create_task(self.run_turn(turn))

    async def run_turn(self, turn: Turn) -> None:
        settings = self.relay.settings
        try:
            self.emit(p.get_agent_state(turn.request_id, self.agent_id, turn.event_id))
            try:
                spec = await asyncio.wait_for(turn.spec_waiter, settings.snapshot_timeout_s)
            except TimeoutError:
                spec = self.spec
            if spec is None:
                self.end(turn, "finished", "error", error=(p.SNAPSHOT_TIMEOUT, "no agent_state_snapshot in time"))
                return
            messages = build_messages(spec, self.history.entries, budget_chars=settings.history_budget_chars)
            turn.parser = parser = TagStreamParser(spec.allowed_tags)
            usage = None
            async for delta in self.relay.llm.stream(messages):
                if delta.content and not turn.ended:
                    self.emit_tags(turn, parser.feed(delta.content))
                if delta.usage:
                    usage = delta.usage
            self.end(turn, "finished", "completed", usage=usage)
        except asyncio.CancelledError:
            self.end(turn, "interrupted", "cancelled")
            raise
        except LLMError as exc:
            self.end(turn, "finished", "error", error=(p.LLM_ERROR, str(exc)))
        except Exception as exc:  # noqa: BLE001 - the turn ends cleanly whatever went wrong
            logger.exception("turn failed")
            self.end(turn, "finished", "error", error=(p.TURN_ERROR, f"turn failed: {exc}"))

    def emit_tags(self, turn: Turn, events: list) -> None:
        for frame in p.tag_frames(self.agent_id, turn.turn_id, events):
            self.emit(frame)

    def interrupt(self, reason: str, by_event_id: str | None) -> None:
        if self.turn is not None and not self.turn.ended:
            self.end(self.turn, "interrupted", reason, by_event_id=by_event_id)

    def end(
        self,
        turn: Turn,
        how: str,
        reason: str,
        *,
        usage: dict | None = None,
        error: tuple[str, str] | None = None,
        by_event_id: str | None = None,
    ) -> None:
        """The single way a turn ends: close its tag, send its last frame, stop its task."""
        if turn.ended:
            return
        turn.ended = True
        if turn.parser is not None:
            self.emit_tags(turn, turn.parser.close())
        if error is not None:
            self.emit(p.error(error[0], error[1], {"agent_id": self.agent_id, "turn_id": turn.turn_id}))
        if how == "interrupted":
            self.emit(p.turn_interrupted(self.agent_id, turn.turn_id, reason, by_event_id))
        else:
            self.emit(p.turn_finished(self.agent_id, turn.turn_id, reason, usage))
        if self.turn is turn:
            self.turn = None
        if turn.task is not None and turn.task is not asyncio.current_task():
            turn.task.cancel()


class Relay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        one = settings.replace(workers=1)  # one process: the whole cap
        self.llm = ChatStreamer(llm_settings(one, one.primary))
        self.agents: dict[tuple[str, str], Agent] = {}
        self.connections: set[web.WebSocketResponse] = set()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "workers": 1, "agents": len(self.agents)})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * self.settings.max_frame_bytes, heartbeat=30)
        await ws.prepare(request)
        session = request.query.get("session") or "default"
        conn = Connection(ws)
        self.connections.add(ws)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self.on_frame(conn, session, msg.data)
        finally:
            self.connections.discard(ws)
            for agent in conn.agents:
                if agent.conn is conn:
                    agent.interrupt("disconnected", None)
                    agent.conn = None
            await conn.close()
        return ws

    def on_frame(self, conn: Connection, session: str, data: str) -> None:
        try:
            msg = p.parse_frame(data)
        except p.ProtocolError as exc:
            conn.send(exc.frame())
            return
        kind = type(msg)
        if kind is p.Ping:
            conn.send(p.pong(msg.id))
        elif kind is p.InteractionEvent:
            self.agent(conn, session, msg.agent_id, create=True).on_fact(msg)
        elif kind is p.NotificationEvent:
            for agent_id in msg.agent_ids:
                self.agent(conn, session, agent_id, create=True).on_fact(msg)
        else:
            agent = self.agent(conn, session, msg.agent_id, create=False)
            if agent is None:
                conn.send(
                    p.error(
                        p.UNKNOWN_AGENT,
                        f"agent {msg.agent_id!r} is unknown in session {session!r}",
                        {"type": p.TYPE_NAMES[kind], "agent_id": msg.agent_id},
                    )
                )
            elif kind is p.AgentStateSnapshot:
                agent.on_snapshot(msg)
            else:
                agent.on_fact(msg)

    def agent(self, conn: Connection, session: str, agent_id: str, create: bool) -> Agent | None:
        agent = self.agents.get((session, agent_id))
        if agent is None:
            if not create:
                return None
            agent = self.agents[(session, agent_id)] = Agent(self, agent_id)
        agent.conn = conn
        conn.agents.add(agent)
        return agent

    async def close(self, app: web.Application) -> None:
        for ws in list(self.connections):
            await ws.close(code=1001, message=b"server shutting down")
        for agent in self.agents.values():
            agent.interrupt("shutdown", None)
        await self.llm.aclose()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="baseline_relay.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="its loop (default asyncio: the reference the server's figures are ratios to)",
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    if not settings.llm_base_url:
        parser.error("set OPENAI_API_BASE: the baseline has no embedded model")
    configure_logging(settings.log_level, "baseline")
    relay = Relay(settings)
    app = web.Application()
    app.router.add_get("/ws", relay.ws)
    app.router.add_get("/healthz", relay.healthz)
    app.on_shutdown.append(relay.close)
    loop = new_event_loop(args.event_loop)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, shutdown_timeout=5, loop=loop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
