"""The TaleWeave event feed (``/events``): what the Godot side does, told as TaleWeave world events.

Why a feed and not a second protocol inside the agents: the gateway already sees everything that
matters (each validated Godot message, each frame sent to Godot, a short report from an agent when
a turn asks for its prompt), so one state machine per session turns that into events, and the
agents stay unaware of spectators. The feed keeps just enough world to fill the events: each NPC's
latest spec and recent history, the players, the turn counter, the last snapshot and a bounded
replay buffer for late joiners. It follows each NPC by the rules the agent itself keeps: its
history is a ``core.history.History`` fed the same journaled facts (so the feed shows what the NPC
remembers, and refuses what it refuses), its running turn a ``core.turn.SeenTurn`` fed the frames.

What a person playing an NPC types becomes tags in ``core.playerinput``; the messages between the
gateway and that agent are in ``core.takeover``.

Pure: no sockets, no clock. See docs/protocol.md, "/events".
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from core import protocol as p
from core.history import FACT_TYPES, History, to_messages
from core.playerinput import TOOL_TAG, InputError, player_markup
from core.spec import DEFAULT_TAGS, AgentSpec, SpecError, as_text, parse_spec
from core.takeover import PlayerInput, Takeover, TakeoverEnded, TurnPrompt
from core.turn import SeenTurn

UNKNOWN_ROOM = "Unknown location"  # the room of NPCs whose spec names no location (yet)
MEMORY_ENTRIES = 50  # history entries per NPC kept for snapshots
MAX_NAME_CHARS = 64  # longest display name of a player
MAX_QUEUED_INPUTS = 8  # inputs a player may send ahead of its prompts
# What TaleWeave's server sends; its client lists anything else as "Unknown event type".
TALEWEAVE_EVENTS = frozenset(
    ("id", "generate", "action", "prompt", "reply", "result", "status", "snapshot", "player", "players", "render")
)
NO_RENDERER = "Nothing can render images here: this server has no renderer."

# Error codes of /events (the first five are the Godot socket's, with the same meaning).
UNKNOWN_CHARACTER = "unknown_character"
CHARACTER_TAKEN = "character_taken"
NAME_TAKEN = "name_taken"
NOT_PLAYING = "not_playing"
BAD_INPUT = "bad_input"
TOO_MANY_INPUTS = "too_many_inputs"


def wants_extensions(value: str | None) -> bool:
    """The ``?extended=`` query parameter: does this client take the events TaleWeave's do not know?"""
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


# --- entities ------------------------------------------------------------------------------


def _item(value: object) -> dict:
    """An inventory entry of the spec as a TaleWeave Item."""
    if isinstance(value, dict):
        attributes = {key: v for key, v in value.items() if key not in ("name", "description") and _scalar(v)}
        name, description = as_text(value.get("name")), as_text(value.get("description") or "")
    else:
        attributes, name, description = {}, as_text(value), ""
    return {"type": "item", "name": name, "description": description, "items": [], "attributes": attributes}


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _room(name: str, characters: list[dict]) -> dict:
    return {
        "type": "room",
        "name": name,
        "description": "",
        "characters": characters,
        "items": [],
        "portals": [],
        "attributes": {},
    }


@dataclass(eq=False, slots=True)
class Npc:
    """What the feed knows of one NPC."""

    agent_id: str
    spec: AgentSpec | None = None
    inventory: list = field(default_factory=list)  # the spec's raw inventory, for Items
    last_request: str | None = None  # request_id of the latest get_agent_state
    memory: History = field(default_factory=lambda: History(MEMORY_ENTRIES))
    turn: SeenTurn | None = None  # the turn running now, as its frames show it
    said: list[str] = field(default_factory=list)  # the text of its open tag so far
    partner: str | None = None  # the source of the latest interaction_event: whom it answers
    player: str | None = None  # the client playing it
    grant: int = 0
    awaiting: str | None = None  # the client whose input a turn waits for
    entity: dict | None = None  # its Character, built when first needed after a change

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else self.agent_id

    @property
    def location(self) -> str:
        return (self.spec.location if self.spec is not None else "") or UNKNOWN_ROOM

    def character(self) -> dict:
        if self.entity is None:
            spec = self.spec
            attributes = {key: value for key, value in spec.extra.items() if _scalar(value)} if spec else {}
            attributes.update(agent_id=self.agent_id, location=spec.location if spec else "")
            self.entity = {
                "type": "character",
                "name": self.name,
                "backstory": spec.persona if spec else "",
                "description": spec.description if spec else "",
                "items": [_item(value) for value in self.inventory],
                "attributes": attributes,
                "planner": {"calendar": [], "notes": []},
            }
        return self.entity


# --- the feed ------------------------------------------------------------------------------


@dataclass(slots=True)
class Effects:
    """What a spectator's command or departure causes."""

    broadcast: list[dict] = field(default_factory=list)  # events for the clients of the session (see Feed.view)
    reply: list[dict] = field(default_factory=list)  # events for the sender only (see Feed.view)
    agents: list[tuple[str, Takeover | PlayerInput]] = field(default_factory=list)  # (agent_id, message)


class Feed:
    """One session's world as TaleWeave events; methods return the events to send."""

    def __init__(
        self,
        session: str,
        *,
        speech_tag: str = "say",
        action_tags: Iterable[str] = ("action",),
        replay: int = 100,
        id_prefix: str = "",
    ) -> None:
        self.session = session
        action_tags = [tag.lower() for tag in action_tags]
        self.speech_tag = speech_tag.lower()
        self.action_tag = action_tags[0] if action_tags else "action"  # what ~action input becomes
        self.action_tags = frozenset((*action_tags, TOOL_TAG))
        self.npcs: dict[str, Npc] = {}
        self.names: dict[str, str | None] = {}  # connected client -> display name
        self.extended: set[str] = set()  # connected clients that take events TaleWeave's do not know
        self.players: dict[str, str] = {}  # client -> agent_id it plays
        self.queued: dict[str, deque[str]] = {}  # client -> markup sent before its next prompt
        self.turn = 0
        self.snapshot_due = False
        self.last_snapshot: dict | None = None
        self.replay: deque[dict] = deque(maxlen=replay)
        self._rooms: dict[str, dict] | None = None
        self._name_index: tuple[dict[str, Npc], dict[str, Npc]] | None = None
        self._ids = itertools.count(1)
        self._id_prefix = id_prefix
        self._out: list[dict] = []

    # --- events ------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict:
        return {"type": kind, "id": f"{self._id_prefix}{next(self._ids)}", **fields}

    def _emit(self, kind: str, **fields: Any) -> None:
        """A world event: broadcast, and replayed to late joiners."""
        event = self._event(kind, **fields)
        self.replay.append(event)
        self._out.append(event)

    def _take(self) -> list[dict]:
        out, self._out = self._out, []
        return out

    @property
    def watched(self) -> bool:
        """Some client takes ``stream`` events: only then are they worth building."""
        return bool(self.extended)

    def view(self, event: dict, client: str) -> tuple[dict, ...]:
        """What ``client`` is sent of ``event``: TaleWeave's server's rules, our additions opt-in.

        A ``prompt`` goes only to the player asked. A client that did not ask for extensions
        gets only TaleWeave's event types, and its refusals as a ``status``. TaleWeave's client
        knows itself in a ``player`` event by ``client`` == its id, while TaleWeave's server puts
        the display name there: so such a client gets its own ``player`` event between an ``id``
        naming it by that display name and one giving its id back (its client keeps the last
        ``id``; neither is listed).
        """
        kind = event["type"]
        if kind == "prompt":
            return (event,) if event["client"] == client else ()
        if client in self.extended:
            return (event,)
        if kind == "error":  # only ever for the sender: told in a way TaleWeave's client lists
            text = f"Refused ({event['code']}): {event['message']}"
            return ({"type": "status", "id": event["id"], "text": text, "room": None, "character": None},)
        if kind not in TALEWEAVE_EVENTS:
            return ()
        if kind == "player" and event["client_id"] == client and event["client"] != client:
            return _id_event(event["client"]), event, _id_event(client)
        return (event,)

    def _all_rooms(self) -> dict[str, dict]:
        """A room per distinct location, built again only after an NPC came or changed."""
        if self._rooms is None:
            by_location: dict[str, list[dict]] = {}
            for npc in self.npcs.values():
                by_location.setdefault(npc.location, []).append(npc.character())
            self._rooms = {name: _room(name, characters) for name, characters in by_location.items()}
        return self._rooms

    def _room_of(self, npc: Npc) -> dict:
        return self._all_rooms()[npc.location]

    def _changed(self, npc: Npc) -> None:
        npc.entity = None
        self._rooms = self._name_index = None

    def _seen(self, agent_id: str) -> Npc:
        npc = self.npcs.get(agent_id)
        if npc is None:
            npc = self.npcs[agent_id] = Npc(agent_id)
            self._rooms = self._name_index = None
            self._emit("generate", name=agent_id, entity=None)
        return npc

    def _status(self, text: str, npc: Npc | None) -> None:
        self._emit(
            "status", text=text, room=self._room_of(npc) if npc else None, character=npc.character() if npc else None
        )

    def find(self, name: str) -> Npc | None:
        """The NPC a person means: by character name, else by agent id; exact case first."""
        exact, folded = self._names()
        return exact.get(name) or self.npcs.get(name) or folded.get(name.lower())

    def _names(self) -> tuple[dict[str, Npc], dict[str, Npc]]:
        """Names to NPCs (exact; case-folded names, then ids), built again only after a change:
        ``find`` runs once per spoken line, which must not walk every NPC."""
        if self._name_index is None:
            exact: dict[str, Npc] = {}
            folded: dict[str, Npc] = {}
            for npc in self.npcs.values():  # the first NPC of a name wins, as it did when searched
                exact.setdefault(npc.name, npc)
                folded.setdefault(npc.name.lower(), npc)
            for npc in self.npcs.values():
                folded.setdefault(npc.agent_id.lower(), npc)
            self._name_index = exact, folded
        return self._name_index

    # --- what Godot sends ----------------------------------------------------------------------

    def godot_inbound(self, message: p.AgentMessage) -> list[dict]:
        """A validated message from Godot that the gateway routed to its agent (after its facts)."""
        if isinstance(message, p.InteractionEvent):
            self._seen(message.agent_id).partner = message.event.get("source")
        elif isinstance(message, p.NotificationEvent):
            npcs = [self._seen(agent_id) for agent_id in message.agent_ids]
            self._status(_line({"kind": "notification", "event": message.event}), npcs[0] if len(npcs) == 1 else None)
        elif isinstance(message, p.AgentStateSnapshot) and (npc := self.npcs.get(message.agent_id)) is not None:
            self._on_spec(npc, message)
        return self._take()

    def fact(self, agent_id: str, fact: dict) -> list[dict]:
        """A history fact the gateway journaled for ``agent_id``: the NPC's memory takes it as
        its agent does (``History``: a result for a turn it does not know is refused there too)."""
        kind = fact["type"]
        if kind not in FACT_TYPES:
            return []
        npc = self._seen(agent_id) if kind in ("interaction_event", "notification_event") else self.npcs.get(agent_id)
        if npc is not None and npc.memory.apply(fact) is None and kind == "tool_results":
            for result in fact["results"]:
                self._emit(
                    "result",
                    result=as_text(result.get("output")),
                    tool=result["tool"],
                    room=self._room_of(npc),
                    character=npc.character(),
                )
        return self._take()

    def _on_spec(self, npc: Npc, message: p.AgentStateSnapshot) -> None:
        """The agent takes a snapshot only for its latest request, and only a valid one: so here."""
        if message.request_id != npc.last_request:
            return
        try:
            spec = parse_spec(message.state)
        except SpecError:
            return
        first = npc.spec is None
        inventory = message.state.get("inventory")
        inventory = [] if inventory is None else inventory if isinstance(inventory, list) else [inventory]
        if spec == npc.spec and inventory == npc.inventory:
            return  # the same NPC as last turn (the usual case): rooms and names stay as they are
        npc.spec, npc.inventory = spec, inventory
        self._changed(npc)
        if first:
            self._emit("generate", name=npc.name, entity=npc.character())
            self.snapshot_due = True  # TaleWeave's client finds the characters it may play in a world

    # --- what the server sends Godot ----------------------------------------------------------

    def godot_outbound(self, frame: dict) -> list[dict]:
        """One frame the server sent to Godot (per token: keep this cheap)."""
        handler = self._outbound.get(frame.get("type", ""))
        if handler is not None:
            npc = self.npcs.get(frame.get("agent_id") or frame.get("ref", {}).get("agent_id"))
            handler(self, npc, frame)
        return self._take()

    def _stream(self, npc: Npc, frame: dict, phase: str, **fields: Any) -> None:
        """The live, chunk-level view of a turn: sent, never replayed, so only built while
        a client that takes extensions follows the feed (``watched``)."""
        if not self.watched:
            return
        self._out.append(
            self._event(
                "stream", phase=phase, agent_id=npc.agent_id, character=npc.name, turn_id=frame["turn_id"], **fields
            )
        )

    def _on_started(self, npc: Npc | None, frame: dict) -> None:
        if npc is not None:
            npc.turn = SeenTurn(npc.agent_id, frame["turn_id"], frame.get("event_id"))
            npc.turn.seen(frame)
            self._stream(npc, frame, "start")

    def _on_state_request(self, npc: Npc | None, frame: dict) -> None:
        if npc is not None:
            npc.last_request = frame["request_id"]

    def _on_open(self, npc: Npc | None, frame: dict) -> None:
        if npc is not None and npc.turn is not None:
            npc.turn.seen(frame)
            npc.said = []
            self._stream(npc, frame, "open", index=frame["index"], tag=frame["tag"], attrs=frame["attrs"])

    def _on_chunk(self, npc: Npc | None, frame: dict) -> None:
        if npc is not None and npc.turn is not None and npc.turn.tag is not None:
            npc.said.append(frame["text"])
            self._stream(npc, frame, "chunk", index=frame["index"], tag=frame["tag"], text=frame["text"])

    def _on_close(self, npc: Npc | None, frame: dict) -> None:
        if npc is None or npc.turn is None or npc.turn.tag is None:
            return
        tag, attrs = npc.turn.tag.name, npc.turn.tag.attrs
        npc.turn.seen(frame)
        text, kind = "".join(npc.said), tag.lower()
        npc.said = []
        self._stream(npc, frame, "close", index=frame["index"], tag=tag)
        if kind == self.speech_tag:
            if text.strip():
                room, speaker = self._room_of(npc), npc.character()
                partner = self.find(npc.partner) if npc.partner else None
                self._emit(
                    "reply",
                    text=text,
                    room=room,
                    character=speaker,
                    speaker=speaker,
                    audience=partner.character() if partner is not None and partner is not npc else room,
                )
        elif kind in self.action_tags:
            parameters = {key: value for key, value in attrs.items() if key not in ("name", "call_id")}
            if kind == TOOL_TAG:
                parameters = _arguments(text)
            elif text:
                parameters.setdefault("text", text)
            character = npc.character()
            wanted = {str(value).lower() for value in parameters.values()}
            item = next((item for item in character["items"] if item["name"].lower() in wanted), None)
            self._emit(
                "action",
                action=attrs.get("name") or tag,
                parameters=parameters,
                room=self._room_of(npc),
                character=character,
                item=item,
            )

    def _on_end(self, npc: Npc | None, frame: dict) -> None:
        if npc is None:
            return
        npc.turn, npc.said, npc.awaiting = None, [], None
        reason = frame["reason"]
        self._stream(npc, frame, "end", reason=reason)
        if frame["type"] == "agent_turn_interrupted":
            self._status(f"{npc.name} was interrupted ({reason})", npc)
        self.turn += 1
        self.snapshot_due = True

    def _on_error(self, npc: Npc | None, frame: dict) -> None:
        self._status(f"error {frame['code']}: {frame['message']}", npc)

    _outbound = {
        "agent_turn_started": _on_started,
        "get_agent_state": _on_state_request,
        "agent_tag_open": _on_open,
        "agent_tag_chunk": _on_chunk,
        "agent_tag_close": _on_close,
        "agent_turn_finished": _on_end,
        "agent_turn_interrupted": _on_end,
        "error": _on_error,
    }

    # --- what agents report -------------------------------------------------------------------

    def agent_report(self, report: TurnPrompt | TakeoverEnded) -> Effects:
        """A turn a person plays asks for input (a ``prompt`` for that person only, or the input
        they sent ahead), or the person's time ran out."""
        effects = Effects()
        npc = self.npcs.get(report.agent_id)
        if npc is None or npc.player != report.client:
            return effects
        if isinstance(report, TurnPrompt):
            queued = self.queued.get(report.client)
            if queued:
                effects.agents.append((npc.agent_id, PlayerInput(report.client, queued.popleft())))
            else:
                npc.awaiting = report.client
                self._out.append(  # not replayed: it is for this player and this turn only
                    self._event(
                        "prompt",
                        prompt=report.prompt,
                        room=self._room_of(npc),
                        character=npc.character(),
                        client=report.client,
                        actions=report.actions,
                    )
                )
        elif npc.grant == report.grant:
            self._status(f"{self._display(report.client)} did not answer in time: the LLM plays {npc.name} again", npc)
            self._release(npc)  # the agent has already taken it back: no Takeover to send
            self._players()
        effects.broadcast = self._take()
        return effects

    # --- spectators ---------------------------------------------------------------------------

    def snapshot(self) -> dict | None:
        """The world after the turns that ended since the last snapshot (None if none did)."""
        if not self.snapshot_due:
            return None
        self.snapshot_due = False
        world = {
            "type": "world",
            "name": self.session,
            "theme": "",
            "order": [npc.name for npc in self.npcs.values()],
            "rooms": list(self._all_rooms().values()),
            "turn": self.turn,
        }
        memory = {
            npc.name: [
                {"type": "ai" if m["role"] == "assistant" else "human", "content": m["content"]}
                for m in to_messages(npc.memory.entries)
            ]
            for npc in self.npcs.values()
        }
        self.last_snapshot = self._event("snapshot", world=world, memory=memory, turn=self.turn, step=self.turn)
        return self.last_snapshot

    def connect(self, client: str, *, extended: bool = False) -> list[dict]:
        """A new client: its id, then the last snapshot and the recent events (TaleWeave's
        server replays its last snapshot and 100 messages)."""
        self.names[client] = None
        if extended:
            self.extended.add(client)
        first = [_id_event(client)]
        snapshot = self.snapshot() or self.last_snapshot  # built here if nobody was watching
        if snapshot is not None:
            first.append(snapshot)
        return first + list(self.replay)

    def disconnect(self, client: str) -> Effects:
        """A client left: the NPC it played goes back to the LLM."""
        effects = Effects()
        agent_id = self.players.get(client)
        if agent_id is not None:
            effects.agents.append(self._release(self.npcs[agent_id]))
        self.extended.discard(client)
        if self.names.pop(client, None) is not None or agent_id is not None:
            self._players()
        effects.broadcast = self._take()
        return effects

    def command(self, client: str, text: str) -> Effects:
        """One frame from a client: ``player`` (name or become) or ``input``."""
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return self.refusal(p.BAD_JSON, f"frame is not valid JSON: {exc}")
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            return self.refusal(p.BAD_FRAME, "frame must be a JSON object with a string field 'type'")
        kind = frame["type"]
        if kind == "player" and "name" in frame:
            return self._set_name(client, frame["name"])
        if kind == "player" and "become" in frame:
            return self._become(client, frame["become"])
        if kind == "player":
            return self.refusal(p.MISSING_FIELD, "player needs a field 'name' or 'become'")
        if kind == "input":
            return self._input(client, frame.get("input"))
        if kind == "render":
            return Effects(reply=[self._event("status", text=NO_RENDERER, room=None, character=None)])
        if kind == "hello":
            if frame.get("extended") is True:
                self.extended.add(client)
            return Effects()
        return self.refusal(p.UNKNOWN_TYPE, f"unknown message type {kind!r}; known: player, input, render, hello")

    def refusal(self, code: str, message: str) -> Effects:
        """An error event for the sender only."""
        return Effects(reply=[self._event("error", code=code, message=message)])

    def undelivered(self, agent_id: str, message: Takeover | PlayerInput, code: str, why: str) -> Effects:
        """The gateway could not hand a player's ``message`` to the NPC's agent: a takeover is
        undone (the NPC stays the LLM's), and the player is told why."""
        npc = self.npcs.get(agent_id)
        client = message.client
        if client is None:
            return Effects()
        if isinstance(message, Takeover) and npc is not None and npc.player == client and npc.grant == message.grant:
            self._release(npc)  # its agent never learnt of the takeover: nothing to give back
            self._players()
        effects = self.refusal(code, why)
        effects.broadcast = self._take()
        return effects

    def _display(self, client: str) -> str:
        return self.names.get(client) or client

    def _players(self) -> None:
        self._emit(
            "players",
            players={self._display(client): self.npcs[agent_id].name for client, agent_id in self.players.items()},
            names={client: name for client, name in self.names.items() if name},
        )

    def _set_name(self, client: str, name: object) -> Effects:
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME_CHARS:
            return self.refusal(
                p.BAD_FIELD, f"player.name must be a non-empty string of at most {MAX_NAME_CHARS} characters"
            )
        name = name.strip()
        holder = next((other for other, taken in self.names.items() if taken == name), None)
        if holder not in (None, client):
            return self.refusal(NAME_TAKEN, f"the name {name!r} is taken by another player")
        self.names[client] = name
        self._players()
        return Effects(broadcast=self._take())

    def _become(self, client: str, name: object) -> Effects:
        if name is not None and not isinstance(name, str):
            return self.refusal(p.BAD_FIELD, "player.become must be a character name or null")
        effects = Effects()
        current = self.players.get(client)
        npc = None
        if name is not None:
            npc = self.find(name)
            if npc is None:
                known = ", ".join(sorted(other.name for other in self.npcs.values())) or "none yet"
                return self.refusal(
                    UNKNOWN_CHARACTER, f"no character named {name!r} in session {self.session!r}; known: {known}"
                )
            if npc.agent_id == current:
                return effects
            if npc.player is not None:
                return self.refusal(CHARACTER_TAKEN, f"{npc.name} is already played by {self._display(npc.player)}")
        if current is not None:
            effects.agents.append(self._release(self.npcs[current]))
        if npc is not None:
            npc.player, npc.grant = client, npc.grant + 1
            self.players[client] = npc.agent_id
            self._player_event("join", npc, client)
            effects.agents.append((npc.agent_id, Takeover(client, npc.grant)))
        if current is not None or npc is not None:
            self._players()
        effects.broadcast = self._take()
        return effects

    def _release(self, npc: Npc) -> tuple[str, Takeover]:
        """``npc``'s player leaves it; the message that gives it back to the LLM."""
        client = npc.player
        assert client is not None  # released only while played
        del self.players[client]
        npc.player = npc.awaiting = None
        npc.grant += 1
        self.queued.pop(client, None)
        self._player_event("leave", npc, client)
        return npc.agent_id, Takeover(None, npc.grant)

    def _player_event(self, status: str, npc: Npc, client: str) -> None:
        """``client`` is the display name, as TaleWeave's server sends it; ``client_id`` the id."""
        self._emit(
            "player",
            status=status,
            character=npc.name,
            client=self._display(client),
            client_id=client,
            name=self.names.get(client),
        )

    def _input(self, client: str, text: object) -> Effects:
        if not isinstance(text, str):
            return self.refusal(p.BAD_FIELD, "input.input must be a string")
        agent_id = self.players.get(client)
        if agent_id is None:
            return self.refusal(NOT_PLAYING, 'you play no character: send {"type": "player", "become": NAME} first')
        npc = self.npcs[agent_id]
        allowed = npc.spec.allowed_tags if npc.spec is not None else [tag.name for tag in DEFAULT_TAGS]
        tools = [tool.name for tool in npc.spec.tools] if npc.spec is not None else []
        try:
            markup = player_markup(text, allowed, self.speech_tag, self.action_tag, tools)
        except InputError as exc:
            return self.refusal(BAD_INPUT, str(exc))
        if npc.awaiting == client:
            npc.awaiting = None
            return Effects(agents=[(agent_id, PlayerInput(client, markup))])
        queued = self.queued.setdefault(client, deque())
        if len(queued) >= MAX_QUEUED_INPUTS:
            return self.refusal(TOO_MANY_INPUTS, f"{MAX_QUEUED_INPUTS} inputs already wait for {npc.name}'s next turns")
        queued.append(markup)  # TaleWeave keeps input sent ahead for the player's next prompt
        return Effects()


def _id_event(client: str) -> dict:
    """Tells a client its id (``id`` is the TaleWeave document's field, ``client`` its server's)."""
    return {"type": "id", "id": client, "client": client}


def coalesce(events: list[dict]) -> list[dict]:
    """Join the text of one tag's ``stream`` chunks into its first chunk in ``events``.

    Order per NPC is kept: nothing of an NPC comes between two chunks of one of its tags.
    Stream events are never replayed, so they are changed in place.
    """
    out: list[dict] = []
    first: dict[tuple, dict] = {}
    for event in events:
        if event["type"] == "stream" and event["phase"] == "chunk":
            key = (event["agent_id"], event["turn_id"], event["index"])
            earlier = first.get(key)
            if earlier is not None:
                earlier["text"] += event["text"]
                continue
            first[key] = event
        out.append(event)
    return out


def _line(entry: dict) -> str:
    """A history entry as the NPC reads it, e.g. ``[notification: weather] It rains.``."""
    return to_messages([entry])[0]["content"]


def _arguments(text: str) -> dict:
    """A tool tag's JSON arguments as parameters (kept as text when they are not an object)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"arguments": text}
    return value if isinstance(value, dict) else {"arguments": value}
