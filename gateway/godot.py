"""The Godot socket, ``/ws``: one handler per game connection.

Reads frames, validates them (core.protocol), answers what the gateway answers itself (``ping``,
errors about the frame, the rate limit or what the router refuses) and routes the rest to the
agent's worker, showing what it routed to the ``observer`` (the /events feeds). Outbound
frames arrive already serialised and are written in order by one writer task per connection, so
a burst from the workers never waits on a socket inside the router.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Protocol

import orjson
from aiohttp import WSMsgType, web
from loguru import logger

from config.settings import Settings
from core import protocol as p
from core.framelimits import FrameLimits
from core.history import starts_turn
from core.ratelimit import KeyedBuckets, take_all
from gateway.router import Router
from gateway.writer import TOO_SLOW_CLOSE_CODE, FrameWriter


class InboundObserver(Protocol):
    def godot_inbound(self, session: str, message: p.AgentMessage) -> None: ...

    def godot_closed(self, session: str) -> None: ...


DEFAULT_SESSION = "default"
REPLACED_CLOSE_CODE = 4000  # a newer connection took this session over
HARD_FRAME_FACTOR = 4  # frames up to this many times max_frame_bytes are read, then refused
_connection_ids = itertools.count(1)


class GodotConnection:
    """One Godot WebSocket: its session, the agents it talked to, and its ordered outbox."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, settings: Settings) -> None:
        self.ws = ws
        self.session = request.query.get("session") or DEFAULT_SESSION
        self.connection_id = f"c{next(_connection_ids)}"
        self.agents: set[str] = set()
        self.log = logger.bind(session=self.session, connection=self.connection_id)
        self._settings = settings
        self._writer = FrameWriter(ws, request.transport, self.log, settings.ws_send_buffer_bytes)
        self._dropped = False

    def send(self, data: bytes) -> None:
        """Queue a frame (per token: keep this cheap); a game too slow to read it is dropped."""
        if not self._writer.send(data):
            self._too_slow()

    def _too_slow(self) -> None:
        if self._dropped:
            return
        self._dropped = True
        self.log.warning(
            "Godot connection dropped: over {} bytes wait unsent for it; it reads too slowly "
            "(setting ws_send_buffer_bytes); close code {}",
            self._settings.ws_send_buffer_bytes,
            TOO_SLOW_CLOSE_CODE,
        )
        self._writer.drop(self._settings.slow_client_close_timeout_s)

    def send_json(self, frame: dict) -> None:
        self.send(orjson.dumps(frame))

    def replaced(self) -> None:
        asyncio.get_running_loop().create_task(
            self.ws.close(code=REPLACED_CLOSE_CODE, message=b"session taken over by a newer connection")
        )

    async def close(self) -> None:
        await self._writer.stop()


class GodotEndpoint:
    """The aiohttp handler of ``/ws``."""

    def __init__(self, router: Router, settings: Settings, observer: InboundObserver) -> None:
        self.router = router
        self.settings = settings
        self.max_frame_bytes = settings.max_frame_bytes
        self.observer = observer
        self.connections: set[GodotConnection] = set()
        self.frame_limits = FrameLimits(
            settings.max_notification_agents, settings.max_event_bytes, settings.max_journal_bytes_per_frame
        )
        # Per session, so that reconnecting gives no fresh burst.
        self.turn_rate = KeyedBuckets(settings.rate_limit_events_per_s, settings.rate_limit_burst)
        self.notification_rate = KeyedBuckets(
            settings.rate_limit_notifications_per_s, settings.rate_limit_notifications_burst
        )
        self.journal_rate = KeyedBuckets(
            settings.rate_limit_journal_bytes_per_s, settings.rate_limit_journal_bytes_burst
        )
        self.rate_names = {  # what each counts, and its settings
            self.turn_rate: (
                "turns started (interaction events and continuing tool_results)",
                "rate_limit_events_per_s, rate_limit_burst",
            ),
            self.notification_rate: (
                "notification recipients",
                "rate_limit_notifications_per_s, rate_limit_notifications_burst",
            ),
            self.journal_rate: (
                "journaled bytes",
                "rate_limit_journal_bytes_per_s, rate_limit_journal_bytes_burst",
            ),
        }

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # aiohttp's own cap closes the connection (1009); below it, an oversize frame gets an error.
        # No compression (a browser offers it): each token's frame would be deflated on the gateway's
        # loop, and frames queued together could not leave in one write (gateway/writer.py).
        ws = web.WebSocketResponse(max_msg_size=HARD_FRAME_FACTOR * self.max_frame_bytes, heartbeat=30, compress=False)
        await ws.prepare(request)
        conn = GodotConnection(ws, request, self.settings)
        self.connections.add(conn)
        self.router.attach(conn)
        conn.log.info("Godot connected from {}", request.remote)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self.on_frame(conn, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    conn.send_json(p.error(p.BAD_FRAME, "binary frames are not supported; send JSON as text"))
                elif msg.type is WSMsgType.ERROR:
                    conn.log.warning("connection error: {}", ws.exception())
        finally:
            self.connections.discard(conn)
            self.router.detach(conn)
            self.observer.godot_closed(conn.session)
            await conn.close()
            conn.log.info("Godot disconnected ({} agents)", len(conn.agents))
        return ws

    def on_frame(self, conn: GodotConnection, data: str) -> None:
        if len(data) * 4 > self.max_frame_bytes and len(data.encode()) > self.max_frame_bytes:
            conn.send_json(
                p.error(
                    p.FRAME_TOO_LARGE,
                    f"frame of {len(data.encode())} bytes is over the "
                    f"limit of {self.max_frame_bytes} bytes (setting max_frame_bytes)",
                )
            )
            return
        try:
            message = p.parse_frame(data)
        except p.ProtocolError as exc:
            conn.send_json(exc.frame())
            return
        if isinstance(message, p.Ping):
            conn.send_json(p.pong(message.id))
            return
        if isinstance(message, p.MemoryAdd | p.MemoryForget | p.MemoryList):
            self.on_memory(conn, message, len(data))
            return
        try:
            journal_bytes = self.frame_limits.journal_bytes(message, len(data))
        except p.ProtocolError as exc:
            conn.send_json(exc.frame())
            return
        refused = self.rate_limited(conn.session, message, journal_bytes)
        if refused is not None:
            conn.send_json(refused)
            return
        agent_ids = message.agent_ids if isinstance(message, p.NotificationEvent) else (message.agent_id,)
        routed = False
        for agent_id in agent_ids:
            refused = self.router.route_or_refuse(conn, agent_id, message)
            if refused is None:
                routed = True
            else:
                conn.send_json(refused)
        if routed:
            self.observer.godot_inbound(conn.session, message)

    def on_memory(self, conn: GodotConnection, message: p.MemoryMessage, frame_bytes: int) -> None:
        """A memory operation: carried out by the journal, answered to whoever holds the session
        then. It counts as journaled bytes (its frame's size) against the session's rate."""
        over = take_all([(self.journal_rate, frame_bytes)], conn.session, time.monotonic())
        if over is not None:
            conn.send_json(
                self._refused(over, conn.session, {"type": p.TYPE_NAMES[type(message)], "agent_id": message.agent_id})
            )
            return
        connections, session = self.router.connections, conn.session

        def answer(frame: dict) -> None:
            holder = connections.get(session)
            if holder is not None:
                holder.send(orjson.dumps(frame))

        self.router.memory(conn, message, answer)

    def rate_limited(self, session: str, message: p.AgentMessage, journal_bytes: int) -> dict | None:
        """The ``rate_limited`` error when ``session`` is over a rate this message counts against:
        turns started (interaction events, continuing tool_results), notification recipients, and
        the bytes it journals. A refused message uses up none of them."""
        charges = [(self.journal_rate, journal_bytes)] if journal_bytes else []
        if isinstance(message, p.NotificationEvent):
            charges.append((self.notification_rate, len(message.agent_ids)))
        elif starts_turn(message):
            charges.append((self.turn_rate, 1))
        over = take_all(charges, session, time.monotonic())
        if over is None:
            return None
        ref = {"type": p.TYPE_NAMES[type(message)]}
        if not isinstance(message, p.NotificationEvent):
            ref["agent_id"] = message.agent_id
        if isinstance(message, p.ToolResults | p.AgentTurnResult):
            ref["turn_id"] = message.turn_id
        return self._refused(over, session, ref)

    def _refused(self, over: KeyedBuckets, session: str, ref: dict) -> dict:
        """The ``rate_limited`` error of a frame over the rate ``over`` counts."""
        what, settings = self.rate_names[over]
        return p.error(
            p.RATE_LIMITED,
            f"too many {what}: session {session!r} may have {over.rate:g} per second and {over.burst} at once "
            f"(settings {settings}); this frame was not accepted",
            ref,
        )

    async def close_all(self) -> None:
        for conn in list(self.connections):
            await conn.ws.close(code=1001, message=b"server shutting down")
