"""/events consumed the way TaleWeave's own web client consumes it, end to end: run.py, the
scripted LLM, a Godot peer on /ws and NPCs streaming all along.

TaleWeave's client (ssube/taleweave-ai, ``client/src``: app.tsx, events.tsx, prompt.tsx,
world.tsx, player.tsx, models.ts) is a React page. ``TaleWeaveClient`` does, in Python, what that
page does with each event (which fields it reads, what it keeps, when it sends), so a change to
/events that would break that page fails here: a field its components read that is missing or of
the wrong kind (a TypeError in the browser, and React unmounts the whole page) or an event type it
does not know (listed as "Unknown event type", and every one of those costs it a render).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.godot_peer import END_TYPES, GodotPeer, JsonPeer, played_tags

# The event types its history lists (events.tsx, EventItem); ``id`` and ``players`` app.tsx
# handles without listing them.
LISTED = {"action", "result", "reply", "status", "player", "render", "snapshot", "prompt", "generate"}
SESSION = "taleweave-client"
NPCS = {
    "bram": {"name": "Bram", "location": "North Gate", "persona": "gruff", "inventory": ["spear"]},
    "kai": {"name": "Kai", "location": "Dock"},
    "ona": {"name": "Ona", "location": "Market"},
    "mira": {"name": "Mira", "location": "Market", "persona": "a shrewd potion seller", "inventory": ["potion"]},
}
CHATTY = ("bram", "kai", "ona")  # the NPCs the LLM plays all along, streaming


class Blank(AssertionError):
    """What would throw in TaleWeave's client: its page goes blank and its socket closes."""


def need(value: Any, *path: str, kind: type | tuple = object) -> Any:
    """``value.a.b`` as the client reads it; missing, null or of another kind is a ``Blank``."""
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            raise Blank(f"{'.'.join(path)} is missing")
        value = value[key]
    if not isinstance(value, kind):
        raise Blank(f"{'.'.join(path)} is {type(value).__name__}, not {kind}")
    return value


class TaleWeaveClient(JsonPeer):
    """TaleWeave's client state (store.ts) and its reactions to each event (app.tsx)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.client_id = ""
        self.world: dict | None = None
        self.players: dict = {}
        self.character: dict | None = None  # playerCharacter
        self.prompt_event: dict | None = None
        self.history: list[dict] = []
        self.problems: list[str] = []

    async def received(self, event: dict) -> None:
        try:
            self.on_message(event)
            self.render_panels()
        except Blank as exc:
            self.problems.append(f"{event['type']} {event.get('id')}: {exc}")

    def on_message(self, event: dict) -> None:
        """app.tsx, the effect on ``lastMessage``."""
        kind = event["type"]
        if kind == "id":
            self.client_id = event["client"]
            return
        if kind == "prompt":
            # TaleWeave's client closes its dialog on a prompt that is not its own.
            self.prompt_event = event if event.get("client") == self.client_id else None
        elif kind == "player":
            if self.world is not None and event.get("client") == self.client_id:
                if event.get("status") == "join":
                    characters = [c for room in self.world["rooms"] for c in room["characters"]]
                    self.character = next((c for c in characters if c["name"] == event["character"]), None)
                elif event.get("status") == "leave":
                    self.character = None
        elif kind == "players":
            self.players = event["players"]
            return
        elif kind == "snapshot":
            self.world = event["world"]
        self.render_event(event)
        self.history.append(event)

    def render_event(self, event: dict) -> None:
        """events.tsx: what each history item reads."""
        kind = event["type"]
        if kind in ("action", "result"):
            need(event, "room", "name", kind=str)
            need(event, "character", "name", kind=str)
            if kind == "action":  # format.ts, formatActionName: shortName[0].toUpperCase()
                if not need(event, "action", kind=str).replace("action_", "", 1):
                    raise Blank("action is empty")
                need(event, "parameters", kind=dict)
        elif kind == "reply":
            need(event, "speaker", "name")
            need(event, "audience", "name")
        elif kind == "player":
            need(event, "character", kind=str)
        elif kind == "render":
            need(event, "images", kind=dict)
        elif kind == "snapshot":
            need(event, "world", kind=dict)
        elif kind == "prompt":
            need(event, "character", "name", kind=str)
        elif kind == "generate":
            need(event, "name", kind=str)
            if event.get("entity") is not None:
                need(event, "entity", "type")
        elif kind not in LISTED:
            raise Blank(f"Unknown event type: {kind}")

    def render_panels(self) -> None:
        """world.tsx, player.tsx and prompt.tsx, as they render after each event."""
        if self.world is not None:
            for room in need(self.world, "rooms", kind=list):
                need(room, "name", kind=str)
                for character in need(room, "characters", kind=list):
                    need(character, "name", kind=str)
                    for item in need(character, "items", kind=list):
                        need(item, "name", kind=str)
                for key in ("items", "portals"):
                    for entity in need(room, key, kind=list):
                        need(entity, "name", kind=str)
        if self.character is not None:
            need(self.character, "name", kind=str)
        if self.prompt_event is not None:
            need(self.prompt_event, "character", "name", kind=str)
            for action in need(self.prompt_event, "actions", kind=list):
                need(action, "function", "description", kind=str)
                for parameter in need(action, "function", "parameters", "properties", kind=dict).values():
                    need(parameter, "type", kind=str)

    # --- what a person does on the page (app.tsx, prompt.tsx) ---------------------------------

    async def set_name(self, name: str) -> None:
        await self.send({"type": "player", "name": name})

    async def set_player(self, character: dict | None) -> None:
        await self.send({"type": "player", "become": character["name"] if character else None})

    def choose(self, name: str, values: dict[str, str]) -> str:
        """The button of action ``name`` with ``values`` filled in: its ``formatAction`` input."""
        action = next(a for a in self.prompt_event["actions"] if a["function"]["name"] == name)
        defaults = {key: p.get("default", "") for key, p in action["function"]["parameters"]["properties"].items()}
        return f"~{name}:" + ",".join(f"{key}={value}" for key, value in {**defaults, **values}.items())

    async def send_input(self, text: str) -> None:
        """Sent only while it plays a character, as the page does; its dialog closes."""
        assert self.character is not None, "the page plays no character: it would not send the input"
        await self.send({"type": "input", "input": text})
        self.prompt_event = None

    async def until(self, predicate, timeout: float = 20) -> None:
        """Wait for the page's state to be so; a timeout says what the page choked on."""
        try:
            await self.wait_for(lambda _: predicate(), timeout, start=max(0, len(self.frames) - 1))
        except TimeoutError:
            raise AssertionError(f"not reached in {timeout} s; the page's problems: {self.problems[:5]}") from None


def characters(world: dict | None) -> dict[str, dict]:
    return {c["name"]: c for room in (world or {}).get("rooms", []) for c in room["characters"]}


@pytest.fixture
async def game(server, llm):
    """The Godot side with its NPCs, the LLM streaming the chatty ones' turns over and over."""
    await llm.reset()
    await llm.defaults(default_tokens=24, tokens_per_s=40)  # each turn streams for about 0.6 s
    godot = await GodotPeer.connect(server.url, f"?session={SESSION}")
    godot.specs.update(NPCS)
    await godot.send({"type": "notification_event", "agent_ids": list(NPCS), "event": {"text": "Dawn."}})
    await godot.confirm(await godot.turn("mira", "Good morning."))  # her spec, so her name, is known
    stop = asyncio.Event()

    async def chatter(agent_id: str) -> None:
        while not stop.is_set():
            await godot.confirm(await godot.turn(agent_id, "Tell me more.", timeout=30))

    chatting = [asyncio.create_task(chatter(agent_id)) for agent_id in CHATTY]
    try:
        yield godot
    finally:
        stop.set()
        await asyncio.gather(*chatting)
        await godot.close()
        await llm.defaults(default_tokens=60, tokens_per_s=0)


async def open_client(server) -> TaleWeaveClient:
    """As its page opens ``?socket=ws://HOST:PORT/events?session=NAME``: no extensions asked."""
    return await TaleWeaveClient.open(server.url, f"/events?session={SESSION}")


async def test_taleweaves_client_watches_plays_an_npc_and_leaves(server, game):
    client = await open_client(server)
    spectator = await JsonPeer.open(server.url, f"/events?session={SESSION}&extended=1")
    try:
        # Watching: a world to pick a character from, while the others stream.
        await client.until(lambda: "Mira" in characters(client.world))
        await spectator.wait_for(lambda e: e["type"] == "stream" and e["phase"] == "chunk", timeout=20)
        await client.until(lambda: sum(e["type"] == "reply" for e in client.history) >= 3)

        # A name, then Mira: the page must know itself in the join event to let its player type.
        await client.set_name("Alice")
        await client.set_player(characters(client.world)["Mira"])
        await client.until(lambda: client.character is not None)
        assert client.character["name"] == "Mira"
        await client.until(lambda: client.players == {"Alice": "Mira"})  # "Played by Alice"
        join = next(e for e in client.history if e["type"] == "player")
        assert join["client"] == "Alice" and join["status"] == "join"  # the display name, as TaleWeave's

        # Her turn: the dialog opens with her actions; its buttons write TaleWeave's ~ syntax.
        for asked, (action, values), tag in [
            ("What do you sell?", ("say", {"text": "Potions, cheap & fine."}), ("say", {}, "Potions, cheap & fine.")),
            ("Wave to me.", ("action", {"name": "wave"}), ("action", {"name": "wave"}, "")),
        ]:
            godot_start = len(game.frames)
            event_id = await game.interact("mira", asked)
            await client.until(lambda asked=asked: client.prompt_event and asked in client.prompt_event["prompt"])
            assert client.prompt_event["character"]["name"] == "Mira"
            assert [a["function"]["name"] for a in client.prompt_event["actions"]] == ["thought", "say", "action"]
            typed = client.choose(action, values)
            await client.send_input(typed)
            started = await game.wait_type("agent_turn_started", start=godot_start, event_id=event_id)
            turn_id = started["turn_id"]
            end = await game.wait_for(lambda f, turn_id=turn_id: f["type"] in END_TYPES and f["turn_id"] == turn_id)
            assert end["type"] == "agent_turn_finished" and end["reason"] == "completed"
            frames = game.turn_frames(turn_id)
            assert played_tags(frames) == [{"tag": tag[0], "attrs": tag[1], "text": tag[2]}], typed
            await game.confirm(frames)
        await client.until(lambda: any(e["type"] == "action" and e["action"] == "wave" for e in client.history))
        reply = next(e for e in client.history if e["type"] == "reply" and e["text"] == "Potions, cheap & fine.")
        assert reply["speaker"]["name"] == "Mira"

        # Its camera button: nothing renders here, and the page is told so in a way it lists.
        await client.send({"type": "render", "event": reply["id"]})
        await client.until(lambda: any(e["type"] == "status" and "render" in e["text"] for e in client.history))

        # Leaving: the page knows it plays nobody any more.
        await client.set_player(None)
        await client.until(lambda: client.character is None)
        await client.until(lambda: client.players == {})

        assert client.problems == []
        prompts = [e for e in client.frames if e["type"] == "prompt"]
        assert len(prompts) == 2 and all(p["client"] == client.client_id for p in prompts)  # only its own
        assert not [e for e in client.frames if e["type"] not in LISTED | {"id", "players"}]
        assert len(spectator.frames) > len(client.frames)  # the spectator got the streams too
    finally:
        await spectator.close()
        await client.close()


async def test_a_late_taleweave_client_gets_the_last_snapshot_and_the_last_100_messages(server, llm):
    await llm.reset()
    godot = await GodotPeer.connect(server.url, "?session=taleweave-replay")
    try:
        godot.specs["bram"] = NPCS["bram"]
        await godot.confirm(await godot.turn("bram", "Who goes there?"))
        for n in range(150):
            await godot.send({"type": "notification_event", "agent_id": "bram", "event": {"text": f"Bell {n}."}})
        await godot.send({"type": "ping", "id": "rung"})  # the gateway has read every notification
        await godot.wait_type("pong", id="rung")
        late = await TaleWeaveClient.open(server.url, "/events?session=taleweave-replay")
        try:
            await late.send({"type": "render", "room": "North Gate"})  # answered after the replay
            await late.until(lambda: any(e["type"] == "status" and "render" in e["text"] for e in late.history))
            kinds = [e["type"] for e in late.frames]
            assert kinds[:2] == ["id", "snapshot"] and len(kinds) == 2 + 100 + 1, kinds
            assert [e["text"] for e in late.frames[2:102]] == [f"[notification] Bell {n}." for n in range(50, 150)]
            assert late.problems == []
        finally:
            await late.close()
    finally:
        await godot.close()
