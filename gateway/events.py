"""The spectator and player socket, ``/events``, and the web page at ``/`` that uses it.

A thin shell around ``core.taleweave.Feed``, one per session: it decodes the frames the server
sends Godot, hands them and Godot's routed messages to the feed, and broadcasts what comes out.
``/events?session=NAME`` follows the Godot session NAME of ``/ws`` ("default" when absent);
``&extended=1`` asks for this server's additions too (``Feed.view`` decides what each client gets).

Each client has a send buffer bounded in messages and bytes, and its own writer task
(gateway.writer). A client whose buffer fills while its socket is full is dropped (logged with the
reason), never waited for: a slow spectator must not slow Godot down.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from pathlib import Path

import orjson
from aiohttp import WSMsgType, web
from loguru import logger

from actors.messages import Frame, ToFeed
from config.settings import Settings
from core import protocol as p
from core.taleweave import Effects, Feed, coalesce, wants_extensions
from gateway.godot import DEFAULT_SESSION
from gateway.router import Router
from gateway.writer import TOO_SLOW_CLOSE_CODE, FrameWriter

WEB_DIR = Path(__file__).resolve().parent / "web"


class Client:
    """One /events WebSocket: its id and its bounded, ordered outbox."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, session: str, settings: Settings) -> None:
        self.ws = ws
        self.client_id = secrets.token_hex(6)
        self.log = logger.bind(client=self.client_id, session=session)
        self._grace_s = settings.slow_client_close_timeout_s
        self._writer = FrameWriter(
            ws, request.transport, self.log, settings.events_client_buffer_bytes, settings.events_client_buffer
        )
        self.send = self._writer.send  # False when the client is too slow (the caller drops it)

    @property
    def too_slow(self) -> bool:
        return self._writer.full

    def drop(self) -> None:
        self._writer.drop(self._grace_s)

    async def stop_writing(self) -> None:
        await self._writer.stop()


class Audience:
    """A session's feed, the clients following it and its pending snapshot."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.clients: dict[str, Client] = {}
        self.snapshot_timer: asyncio.TimerHandle | None = None

    def join(self, client: Client) -> None:
        self.clients[client.client_id] = client

    def leave(self, client: Client) -> bool:
        """Remove ``client``; False if it was already gone."""
        return self.clients.pop(client.client_id, None) is not None


class EventsEndpoint:
    """The aiohttp handler of ``/events``, and what the router and ``/ws`` show it."""

    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self.sessions: dict[str, Audience] = {}  # followed, or held by Godot: the others are freed
        self._id_prefix = secrets.token_hex(3) + "-"  # with the feed's number: unique event ids
        self._feed_numbers = itertools.count()

    def _session(self, name: str) -> Audience:
        audience = self.sessions.get(name)
        if audience is None:
            s = self.settings
            audience = self.sessions[name] = Audience(
                Feed(
                    name,
                    speech_tag=s.events_speech_tag,
                    action_tags=s.action_tags,
                    replay=s.events_replay,
                    id_prefix=f"{self._id_prefix}{next(self._feed_numbers)}-",
                )
            )
        return audience

    # --- what Godot and the agents do (never raise: the router's batch must go on) ----------------

    def godot_inbound(self, session: str, message: p.AgentMessage) -> None:
        try:
            audience = self._session(session)
            self._broadcast(audience, audience.feed.godot_inbound(message))
        except Exception:  # noqa: BLE001
            logger.exception("/events feed failed on {} from Godot", type(message).__name__)

    def fact_recorded(self, session: str, agent_id: str, fact: dict) -> None:
        try:
            audience = self._session(session)
            self._broadcast(audience, audience.feed.fact(agent_id, fact))
        except Exception:  # noqa: BLE001
            logger.exception("/events feed failed on a {} fact", fact.get("type"))

    def worker_items(self, items: list[Frame | ToFeed]) -> None:
        """One batch from a worker, in order: the frames sent to Godot (per token: keep this
        cheap) and the agents' reports. Its events go out once the batch is read, with each
        tag's pieces of text joined, so a burst makes few, larger messages."""
        touched: dict[Audience, list[dict]] = {}
        for item in items:
            session = item.session
            audience = self.sessions.get(session)
            if audience is None:
                if session not in self.router.connections:
                    continue  # the end of a closed game's turns, and no one follows it
                audience = self._session(session)
            try:
                if isinstance(item, Frame):
                    events = audience.feed.godot_outbound(orjson.loads(item.data))
                else:
                    effects = audience.feed.agent_report(item.report)
                    self._to_agents(audience, effects)
                    events = effects.broadcast
            except Exception:  # noqa: BLE001
                logger.exception("/events feed failed on {!r}", item.data[:200] if isinstance(item, Frame) else item)
                continue
            if events:
                touched.setdefault(audience, []).extend(events)
        for audience, events in touched.items():
            self._broadcast(audience, coalesce(events))
            # Snapshots rebuild every NPC's memory: only while someone watches (a newcomer gets
            # one built on connect).
            if audience.clients and audience.feed.snapshot_due and audience.snapshot_timer is None:
                audience.snapshot_timer = asyncio.get_running_loop().call_later(
                    self.settings.events_snapshot_interval_s, self._snapshot, audience
                )

    def _snapshot(self, audience: Audience) -> None:
        """Coalesced: one snapshot for every turn that ended within the interval."""
        audience.snapshot_timer = None
        snapshot = audience.feed.snapshot()
        if snapshot is not None:
            self._broadcast(audience, [snapshot])

    # --- clients ------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # No compression: every event would be compressed once per client, on the gateway's loop.
        ws = web.WebSocketResponse(max_msg_size=self.settings.events_max_frame_bytes, heartbeat=30, compress=False)
        await ws.prepare(request)
        session = request.query.get("session") or DEFAULT_SESSION
        audience = self._session(session)
        client = Client(ws, request, session, self.settings)
        for event in audience.feed.connect(client.client_id, extended=wants_extensions(request.query.get("extended"))):
            client.send(orjson.dumps(event))
        audience.join(client)
        client.log.info("/events client connected from {}", request.remote)
        if client.too_slow:  # its replay alone is over the limit
            self._drop(audience, client)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._apply(audience, client, audience.feed.command(client.client_id, msg.data))
                elif msg.type is WSMsgType.BINARY:
                    self._apply(
                        audience,
                        client,
                        audience.feed.refusal(p.BAD_FRAME, "binary frames are not supported; send JSON as text"),
                    )
        finally:
            if audience.leave(client):
                await client.stop_writing()
            self._apply(audience, None, audience.feed.disconnect(client.client_id))
            client.log.info("/events client disconnected")
            self._free_if_unused(session)
        return ws

    def _apply(self, audience: Audience, client: Client | None, effects: Effects) -> None:
        for event in effects.reply:
            assert client is not None  # a reply answers a client's command, not a departure
            for seen in audience.feed.view(event, client.client_id):
                if not client.send(orjson.dumps(seen)):
                    self._drop(audience, client)
        self._broadcast(audience, effects.broadcast)
        self._to_agents(audience, effects)

    def _to_agents(self, audience: Audience, effects: Effects) -> None:
        for agent_id, message in effects.agents:
            refused = self.router.to_known_agent(audience.feed.session, agent_id, message)
            if refused is not None and message.client is not None:
                undone = audience.feed.undelivered(agent_id, message, *refused)
                client = audience.clients.get(message.client)
                if client is None:
                    undone.reply = []  # the player left meanwhile
                self._apply(audience, client, undone)

    def _broadcast(self, audience: Audience, events: list[dict]) -> None:
        """Each client gets what ``Feed.view`` gives it; the common case is the event itself,
        serialised once for all."""
        if not audience.clients:
            return
        view = audience.feed.view
        for event in events:
            data = orjson.dumps(event)
            for client in list(audience.clients.values()):
                for seen in view(event, client.client_id):
                    if not client.send(data if seen is event else orjson.dumps(seen)):
                        self._drop(audience, client)
                        break

    def godot_closed(self, session: str) -> None:
        """A Godot connection of ``session`` closed."""
        self._free_if_unused(session)

    def _free_if_unused(self, session: str) -> None:
        """Free the feed of a session that no client follows and no Godot connection holds: a
        session per connection would otherwise grow this map for ever."""
        audience = self.sessions.get(session)
        if audience is None or audience.clients or session in self.router.connections:
            return
        if audience.snapshot_timer is not None:
            audience.snapshot_timer.cancel()
        del self.sessions[session]
        logger.bind(session=session).debug("/events feed freed: no client follows it and no game holds it")

    def _drop(self, audience: Audience, client: Client) -> None:
        if not audience.leave(client):
            return
        client.log.warning(
            "/events client dropped: its socket is full and over {} messages or {} bytes wait unsent; it "
            "reads too slowly (settings events_client_buffer, events_client_buffer_bytes); close code {}",
            self.settings.events_client_buffer,
            self.settings.events_client_buffer_bytes,
            TOO_SLOW_CLOSE_CODE,
        )
        client.drop()

    async def close_all(self) -> None:
        for audience in list(self.sessions.values()):  # a closed client's session may be freed meanwhile
            if audience.snapshot_timer is not None:
                audience.snapshot_timer.cancel()
            for client in list(audience.clients.values()):
                await client.ws.close(code=1001, message=b"server shutting down")


async def index(request: web.Request) -> web.FileResponse:
    """The web page; its other files are served from ``gateway/web/`` by the static route."""
    return web.FileResponse(WEB_DIR / "index.html")
