"""End to end through the real stack: run.py, a Godot peer on /ws, spectators and players on
/events, and the scripted LLM over HTTP. Each test uses its own session (one feed each), and runs
under both placements (NPCs pooled, or each in a worker process of its own)."""

from __future__ import annotations

import asyncio
import time

import pytest

from config.settings import PLACEMENTS
from tests.conftest import ServerProcess
from tests.godot_peer import END_TYPES, GodotPeer, JsonPeer, played_tags
from tests.raw_ws import RawWebSocket

TAKEOVER_TIMEOUT_S = 2.0
GUARD = {
    "name": "Bram",
    "description": "A tired gate guard",
    "persona": "gruff but fair",
    "location": "North Gate",
    "inventory": ["spear"],
}
REPLY = '<thought>A stranger.</thought><say>Halt! State your business &amp; name.</say><action name="raise_spear"/>'


@pytest.fixture(scope="module", params=PLACEMENTS)
def server(request, llm, tmp_path_factory) -> ServerProcess:
    """The server of this module, once per placement: a short takeover timeout, a small buffer for
    slow spectators."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("server"),
        llm.url,
        GAME_AGENT_PLACEMENT=request.param,
        GAME_AGENT_EVENTS_TAKEOVER_TIMEOUT_S=str(TAKEOVER_TIMEOUT_S),
        GAME_AGENT_EVENTS_REPLAY="60",
        GAME_AGENT_EVENTS_CLIENT_BUFFER="50",
    )
    yield proc
    proc.stop()
    assert "Traceback" not in proc.server_log(), "the server logged an exception"


class EventsPeer(JsonPeer):
    """A client of /events that takes extensions (``stream``, ``error``) as the web page does;
    ``events`` is everything it received. tests/test_taleweave_client.py plays TaleWeave's client."""

    client: str

    @classmethod
    async def connect(cls, base_url: str, session: str) -> EventsPeer:
        peer = await cls.open(base_url, f"/events?session={session}&extended=1")
        peer.client = (await peer.wait_type("id"))["client"]
        return peer

    @property
    def events(self) -> list[dict]:
        return self.frames

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


@pytest.fixture
async def peers(server, llm):
    """Open Godot peers and /events clients; all closed after the test."""
    await llm.reset()
    opened: list[GodotPeer | EventsPeer] = []

    async def open_godot(session: str) -> GodotPeer:
        opened.append(await GodotPeer.connect(server.url, f"?session={session}"))
        return opened[-1]

    async def open_events(session: str) -> EventsPeer:
        opened.append(await EventsPeer.connect(server.url, session))
        return opened[-1]

    yield open_godot, open_events
    for peer in reversed(opened):
        await peer.close()


async def test_spectators_see_a_turn_and_a_late_joiner_gets_the_replay(peers, llm):
    open_godot, open_events = peers
    godot = await open_godot("watch")
    spectator = await open_events("watch")
    godot.specs["bram"] = GUARD
    await llm.script({"content": REPLY, "chunk_size": 4, "chunk_delay_s": 0.01})
    frames = await godot.turn("bram", "Who goes there?")
    await godot.confirm(frames)

    assert (await spectator.wait_type("generate", name="bram"))["entity"] is None
    bram = (await spectator.wait_type("generate", name="Bram"))["entity"]
    assert bram["type"] == "character" and bram["description"] == "A tired gate guard"
    assert bram["items"][0]["name"] == "spear" and bram["attributes"]["agent_id"] == "bram"
    reply = await spectator.wait_type("reply")
    assert reply["text"] == "Halt! State your business & name."
    assert reply["speaker"] == reply["character"] == bram and reply["room"]["name"] == "North Gate"
    action = await spectator.wait_type("action")
    assert action["action"] == "raise_spear" and action["parameters"] == {} and action["item"] is None
    snapshot = await spectator.wait_type("snapshot", timeout=5)
    rooms = {room["name"]: [c["name"] for c in room["characters"]] for room in snapshot["world"]["rooms"]}
    assert rooms == {"North Gate": ["Bram"]} and snapshot["turn"] >= 1
    # The live view came in pieces, as Godot got them, before the finished reply.
    say_chunks = [e for e in spectator.events if e["type"] == "stream" and e["phase"] == "chunk" and e["tag"] == "say"]
    assert len(say_chunks) > 1 and "".join(e["text"] for e in say_chunks) == reply["text"]
    assert spectator.events.index(say_chunks[0]) < spectator.events.index(reply)
    ids = [e["id"] for e in spectator.events if e["type"] != "id"]
    assert len(ids) == len(set(ids))

    # Godot's confirmation is in the next snapshot's memory.
    await llm.script({"content": "<say>Move along.</say>"})
    await godot.turn("bram", "I am a merchant.")
    later = await spectator.wait_for(lambda e: e["type"] == "snapshot" and e["turn"] > snapshot["turn"], timeout=5)
    memory = [m["content"] for m in later["memory"]["Bram"]]
    assert any("Halt! State your business &amp; name." in m for m in memory)
    assert any("I am a merchant." in m for m in memory)

    late = await open_events("watch")
    await late.wait_type("reply", text="Move along.")  # the newest event replayed: the replay is in
    assert not late.of_type("prompt") and not spectator.of_type("prompt")  # an LLM turn asks nobody
    first = late.events[:2]
    assert first[0] == {"type": "id", "id": late.client, "client": late.client} and late.client != spectator.client
    assert first[1]["type"] == "snapshot" and first[1]["id"] == later["id"]
    replayed = {e["id"] for e in late.events if e["type"] not in ("id", "snapshot")}
    assert reply["id"] in replayed and action["id"] in replayed
    assert not late.of_type("stream")  # the live view is not replayed
    # Another session's feed knows nothing of this one.
    # (a render request's answer comes after everything a connect sends: no guessed wait)
    other = await open_events("elsewhere")
    await other.ws.send_json({"type": "render"})
    await other.wait_type("status")
    assert [e["type"] for e in other.events] == ["id", "status"]


async def test_a_player_takes_an_npc_over_and_the_llm_resumes_on_leave(peers, llm):
    open_godot, open_events = peers
    godot = await open_godot("play")
    watcher = await open_events("play")
    godot.specs["mira"] = {
        "name": "Mira",
        "location": "Market",
        "tags": ["thought", "say", {"name": "action", "attrs": ["name"]}],
    }
    await godot.send({"type": "notification_event", "agent_id": "mira", "event": {"text": "The market opens."}})
    await watcher.wait_type("generate", name="mira")
    player = await open_events("play")
    await player.send({"type": "player", "name": "Alice"})
    await player.wait_for(lambda e: e["type"] == "players" and e["names"].get(player.client) == "Alice")
    await player.send({"type": "player", "become": "mira"})
    join = await watcher.wait_type("player", status="join")
    assert join["client"] == "Alice" and join["client_id"] == player.client and join["character"] == "mira"
    assert (await watcher.wait_type("players", players={"Alice": "mira"}))["names"] == {player.client: "Alice"}
    llm_calls = len(await llm.requests())

    # Plain words: the speech tag, entities and all, with the lifecycle of an LLM turn.
    start = len(player.events)
    event_id = await godot.interact("mira", "What do you sell?")
    prompt = await player.wait_type("prompt", start=start, client=player.client)
    assert "What do you sell?" in prompt["prompt"] and prompt["character"]["name"] == "Mira"
    assert [a["function"]["name"] for a in prompt["actions"]] == ["thought", "say", "action"]
    assert not watcher.of_type("prompt")  # the prompt is for the player only
    await player.send({"type": "input", "input": "Potions, cheap & <fine>."})
    started = await godot.wait_type("agent_turn_started", event_id=event_id)
    end = await godot.wait_for(lambda f: f["type"] in END_TYPES and f["turn_id"] == started["turn_id"])
    assert end["type"] == "agent_turn_finished" and end["reason"] == "completed"
    frames = godot.turn_frames(started["turn_id"])
    asked = await godot.wait_type("get_agent_state", event_id=event_id)  # Godot still gives the spec
    assert godot.frames.index(started) < godot.frames.index(asked) < godot.frames.index(frames[1])
    assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": "Potions, cheap & <fine>."}]
    await godot.confirm(frames)
    assert (await watcher.wait_type("reply", text="Potions, cheap & <fine>."))["speaker"]["name"] == "Mira"

    # TaleWeave's action syntax, then tags as an LLM writes them.
    for typed, tags in [
        (
            "~wave:hand=left,speed=~slow",
            [{"tag": "action", "attrs": {"name": "wave", "hand": "left", "speed": "slow"}, "text": ""}],
        ),
        (
            "<thought>Busy day.</thought><say>Next!</say>",
            [{"tag": "thought", "attrs": {}, "text": "Busy day."}, {"tag": "say", "attrs": {}, "text": "Next!"}],
        ),
    ]:
        start, godot_start = len(player.events), len(godot.frames)
        await godot.interact("mira", "And?")
        await player.wait_type("prompt", start=start, client=player.client)
        await player.send({"type": "input", "input": typed})
        end = await godot.wait_for(lambda f: f["type"] in END_TYPES, start=godot_start)
        assert played_tags(godot.turn_frames(end["turn_id"])) == tags
    assert (await watcher.wait_type("action", action="wave"))["parameters"] == {"hand": "left", "speed": "slow"}

    # An interruption works as for LLM turns: the waiting turn ends, the new one asks again.
    start, godot_start = len(player.events), len(godot.frames)
    await godot.interact("mira", "Hello?")
    first = await player.wait_type("prompt", start=start, client=player.client)
    cutting = await godot.interact("mira", "HELLO?")
    interrupted = await godot.wait_type("agent_turn_interrupted", start=godot_start, by_event_id=cutting)
    second = await player.wait_for(lambda e: e["type"] == "prompt" and e["id"] != first["id"], start=start)
    assert "HELLO?" in second["prompt"]
    await player.send({"type": "input", "input": "Yes, yes."})
    end = await godot.wait_for(
        lambda f: f["type"] in END_TYPES and f["turn_id"] != interrupted["turn_id"], start=godot_start
    )
    assert played_tags(godot.turn_frames(end["turn_id"])) == [{"tag": "say", "attrs": {}, "text": "Yes, yes."}]
    assert len(await llm.requests()) == llm_calls  # no LLM call while a person played

    # Giving the NPC back: the LLM answers again.
    await player.send({"type": "player", "become": None})
    leave = await watcher.wait_type("player", status="leave")
    assert leave["client"] == "Alice" and leave["client_id"] == player.client and leave["character"] == "Mira"
    await llm.script({"content": "<say>The LLM again.</say>"})
    frames = await godot.turn("mira", "Still there?")
    assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": "The LLM again."}]
    assert len(await llm.requests()) == llm_calls + 1


async def test_no_answer_in_time_or_leaving_gives_the_npc_back_to_the_llm(peers, llm):
    open_godot, open_events = peers
    godot = await open_godot("lapse")
    godot.specs["kai"] = {"name": "Kai", "location": "Dock"}
    await godot.send({"type": "notification_event", "agent_id": "kai", "event": {"text": "Fog."}})
    player = await open_events("lapse")
    watcher = await open_events("lapse")
    await player.send({"type": "player", "become": "kai"})
    await watcher.wait_type("player", status="join")

    # No answer within the takeover timeout: the LLM plays this turn and keeps the NPC.
    await llm.script({"content": "<say>Nobody answered, so I did.</say>"})
    asked_at = time.monotonic()
    frames = await godot.turn("kai", "Anyone?", timeout=TAKEOVER_TIMEOUT_S + 10)
    assert time.monotonic() - asked_at >= TAKEOVER_TIMEOUT_S - 0.2
    assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": "Nobody answered, so I did."}]
    leave = await watcher.wait_type("player", status="leave")
    assert leave["client"] == leave["client_id"] == player.client and leave["character"] == "Kai"  # no name set
    status = await watcher.wait_for(lambda e: e["type"] == "status" and "did not answer in time" in e["text"])
    assert status["character"]["name"] == "Kai"
    start = len(player.events)
    await player.send({"type": "input", "input": "too late"})
    assert (await player.wait_type("error", start=start))["code"] == "not_playing"

    # A player who disconnects while prompted: the LLM takes the turn at once.
    await player.send({"type": "player", "become": "Kai"})
    await watcher.wait_for(lambda e: e["type"] == "player" and e["status"] == "join" and e["character"] == "Kai")
    await llm.script({"content": "<say>Back to me.</say>"})
    start, godot_start = len(player.events), len(godot.frames)
    await godot.interact("kai", "Anyone now?")
    await player.wait_type("prompt", start=start, client=player.client)
    left_at = time.monotonic()
    await player.close()
    end = await godot.wait_for(lambda f: f["type"] in END_TYPES, start=godot_start, timeout=TAKEOVER_TIMEOUT_S)
    assert time.monotonic() - left_at < TAKEOVER_TIMEOUT_S
    assert played_tags(godot.turn_frames(end["turn_id"])) == [{"tag": "say", "attrs": {}, "text": "Back to me."}]
    players = await watcher.wait_for(lambda e: e["type"] == "players" and not e["players"])
    assert players["players"] == {}


async def test_bad_input_gets_an_error_for_that_client_only(peers, llm):
    open_godot, open_events = peers
    godot = await open_godot("bad")
    await godot.send({"type": "notification_event", "agent_ids": ["ana", "ben"], "event": {"text": "Dawn."}})
    a, b = await open_events("bad"), await open_events("bad")
    await b.wait_type("generate", name="ben")
    await b.send({"type": "player", "name": "Bob"})
    await b.wait_type("players")
    await b.send({"type": "player", "become": "ben"})
    await b.wait_type("player", status="join")
    b_seen = len(b.events)
    bad = [
        ("{nope", "bad_json"),
        (b"\x00binary", "bad_frame"),
        ("[1, 2]", "bad_frame"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "player"}, "missing_field"),
        ({"type": "player", "become": "Nobody"}, "unknown_character"),
        ({"type": "player", "name": "Bob"}, "name_taken"),
        ({"type": "player", "become": "ben"}, "character_taken"),
        ({"type": "input", "input": "hello"}, "not_playing"),
    ]
    for frame, code in bad:
        start = len(a.events)
        await a.send(frame)
        error = await a.wait_type("error", start=start)
        assert error["code"] == code and error["message"], (frame, error)
    start = len(b.events)
    await b.send({"type": "input", "input": "~say"})
    assert (await b.wait_type("error", start=start))["code"] == "bad_input"
    # Nothing else was disturbed: B saw none of A's errors, both still work, so does Godot.
    await a.send({"type": "player", "name": "Ann"})
    names = await b.wait_for(lambda e: e["type"] == "players" and e["names"].get(a.client) == "Ann", start=b_seen)
    assert names["players"] == {"Bob": "ben"}
    assert not [e for e in b.events[b_seen:] if e["type"] == "error" and e["code"] != "bad_input"]
    await godot.send({"type": "ping", "id": "still-fine"})
    await godot.wait_type("pong", id="still-fine")


async def test_a_slow_spectator_is_dropped_and_godot_is_not_slowed(server, peers, llm):
    open_godot, open_events = peers
    godot = await open_godot("slow")
    # A long description makes every reply large (the room and the speaker are in it), so the
    # socket of a client that does not read is full after a few of them, whatever the kernel buffers.
    godot.specs["crier"] = {"name": "Crier", "location": "Square", "description": "loud " * 20000}
    fast = await open_events("slow")
    slow = RawWebSocket(server.port, "/events?session=slow&extended=1")
    try:
        says = [f"<say>Hear ye, number {n}!</say>" for n in range(40)]
        await llm.script({"chunks": says, "chunk_delay_s": 0.01})
        began = time.monotonic()
        frames = await godot.turn("crier", "News?", timeout=30)
        elapsed = time.monotonic() - began
        assert frames[-1]["type"] == "agent_turn_finished" and frames[-1]["reason"] == "completed"
        assert len(played_tags(frames)) == 40 and elapsed < 10, f"the turn took {elapsed:.1f} s"
        await fast.wait_type("reply", text="Hear ye, number 39!", timeout=10)
        assert len(fast.of_type("reply")) == 40
        deadline = time.monotonic() + 10
        while "/events client dropped" not in server.server_log() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert "/events client dropped: its socket is full" in server.server_log()
    finally:
        slow.close()
    # The fast spectator was never dropped and still gets events.
    await godot.send({"type": "notification_event", "agent_id": "crier", "event": {"text": "Quiet now."}})
    await fast.wait_for(lambda e: e["type"] == "status" and "Quiet now." in e["text"])
