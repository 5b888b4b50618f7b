"""The /events feed (core/taleweave.py) and the player-input conversion (core/playerinput.py), as pure
code: messages in, events out."""

from __future__ import annotations

import orjson
import pytest

from core import protocol as p
from core.history import fact_of, starts_turn
from core.playerinput import InputError, actions_of, player_markup
from core.spec import parse_spec
from core.tagstream import TagStreamParser
from core.takeover import PlayerInput, Takeover, TakeoverEnded, TurnPrompt
from core.taleweave import (
    MAX_QUEUED_INPUTS,
    UNKNOWN_ROOM,
    Effects,
    Feed,
    coalesce,
)

GUARD = {
    "name": "Bram",
    "description": "A tired gate guard",
    "persona": "gruff but fair",
    "location": "North Gate",
    "inventory": ["spear", {"name": "brass key", "opens": "gatehouse"}],
    "mood": "irritable",
    "goals": ["keep the gate"],
}
TAGS = ("thought", "say", "action")


# --- player input as markup ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, markup",
    [
        ("Halt!", "<say>Halt!</say>"),
        ("  a < b & c > d  ", "<say>a &lt; b &amp; c &gt; d</say>"),
        ("I <3 you", "<say>I &lt;3 you</say>"),
        ("<thought>hm</thought><say>Hi</say>", "<thought>hm</thought><say>Hi</say>"),
        ('<SAY>loud</SAY> <action name="wave"/>', '<SAY>loud</SAY> <action name="wave"/>'),
        ("~wave", '<action name="wave"/>'),
        ("~give:item=spear, to=Mira", '<action name="give" item="spear" to="Mira"/>'),
        ('~say_hi:text=~a "quote" & more,', '<action name="say_hi" text="a &quot;quote&quot; &amp; more"/>'),
        ("~", "<say>~</say>"),
        # The functions of the prompt's actions, as TaleWeave's client writes a chosen one.
        ("~say:text=Hello & bye", "<say>Hello &amp; bye</say>"),
        ("~say:text=Potions, cheap & fine.", "<say>Potions, cheap &amp; fine.</say>"),  # TaleWeave's form
        ("~Thought:text=~hm", "<thought>hm</thought>"),  # the tag as the NPC spells it
        ("~action:name=wave,text=", '<action name="wave"/>'),
        ("~action:name=bow,text=deeply", '<action name="bow">deeply</action>'),
        (
            "~open_door:door=forge,force=yes,times=2,rate=0.5,code=~7",
            '<tool name="open_door">{"door":"forge","force":true,"times":2,"rate":0.5,"code":"7"}</tool>',
        ),
        ("~Open_Door", '<tool name="open_door">{}</tool>'),
    ],
)
def test_player_markup(text, markup):
    assert player_markup(text, (*TAGS, "tool"), "say", "action", ("open_door",)) == markup


def test_player_markup_parses_like_llm_output():
    parser = TagStreamParser(TAGS)
    events = parser.feed(player_markup("~give:item=brass key,to=~Mira", TAGS, "say", "action")) + parser.close()
    assert events[0].attrs == {"name": "give", "item": "brass key", "to": "Mira"}
    parser = TagStreamParser(TAGS)
    events = parser.feed(player_markup("a < b & c", TAGS, "say", "action")) + parser.close()
    assert [e.text for e in events if hasattr(e, "text")] == ["a < b & c"]


@pytest.mark.parametrize(
    "text, allowed, complaint",
    [
        ("   ", TAGS, "empty"),
        ("~:x=1", TAGS, "needs a name"),
        ("~give:item", TAGS, "param=value"),
        ("~give:2x=1", TAGS, "param=value"),
        ("~give:name=x", TAGS, "'name'"),
        ("~say:text=", TAGS, "needs some text"),
        ("~say", TAGS, "needs some text"),
        ("~wave", ("say",), "no 'action' tag"),
        ("Hello", ("action",), "no 'say' tag"),
    ],
)
def test_player_markup_refuses_with_a_reason(text, allowed, complaint):
    with pytest.raises(InputError, match=complaint):
        player_markup(text, allowed, "say", "action")


def test_actions_are_openai_tools_as_taleweaves_client_reads_them():
    door = {"type": "object", "properties": {"door": {"type": "string"}}, "required": ["door"]}
    spec = parse_spec(
        {
            "name": "Smith",
            "tools": [{"name": "open_door", "description": "Open a door", "parameters": door}, {"name": "rest"}],
        }
    )
    actions = actions_of(spec)
    for action in actions:  # TaleWeave's client reads action.function.parameters.properties
        assert action["type"] == "function" and set(action["function"]) == {"name", "description", "parameters"}
        assert action["function"]["description"]  # the label of its button
        parameters = action["function"]["parameters"]
        assert parameters["type"] == "object" and isinstance(parameters["properties"], dict)
        assert isinstance(parameters["required"], list)
    assert [a["function"]["name"] for a in actions] == ["thought", "say", "action", "open_door", "rest"]
    assert actions[2]["function"]["parameters"]["properties"] == {
        "name": {"type": "string", "description": "what the action is, e.g. wave"},
        "text": {"type": "string", "description": "the text inside <action>"},
    }
    assert actions[3]["function"]["parameters"] == door
    assert actions[4]["function"] == {
        "name": "rest",
        "description": "rest",
        "parameters": {"type": "object", "properties": {}, "required": []},
    }


# --- the feed ----------------------------------------------------------------------------------


class Turns:
    """Drives a Feed the way the gateway does: Godot's messages in (their journaled facts first,
    with turn ids assigned as the router assigns them), the server's frames out."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.count = 0
        self.assigned: dict[str, str] = {}  # agent_id -> the turn its latest event started

    def inbound(self, message: p.AgentMessage) -> list[dict]:
        agent_ids = message.agent_ids if isinstance(message, p.NotificationEvent) else (message.agent_id,)
        out = []
        for agent_id in agent_ids:
            turn_id = self.assigned[agent_id] = self._next() if starts_turn(message) else None
            fact = fact_of(message, agent_id, turn_id)
            if fact is not None:
                out += self.feed.fact(agent_id, fact)
        return out + self.feed.godot_inbound(message)

    def _next(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def interact(self, agent_id: str, text: str = "Who goes there?", source: str = "player") -> list[dict]:
        return self.inbound(p.InteractionEvent(agent_id, "e1", {"kind": "speech", "source": source, "text": text}))

    def turn(
        self,
        agent_id: str,
        tags: list[tuple[str, dict, list[str]]],
        spec: dict | None = None,
        end: str = "agent_turn_finished",
    ) -> tuple[str, list[dict]]:
        """One whole turn (the one the agent's latest event started, else a new one); returns its
        id and every event it produced."""
        turn_id = self.assigned.pop(agent_id, None) or self._next()
        out = self.out({"type": "agent_turn_started", "agent_id": agent_id, "turn_id": turn_id})
        out += self.out({"type": "get_agent_state", "agent_id": agent_id, "request_id": f"{turn_id}.state"})
        if spec is not None:
            out += self.inbound(p.AgentStateSnapshot(f"{turn_id}.state", agent_id, spec))
        for index, (tag, attrs, chunks) in enumerate(tags):
            frame = {"agent_id": agent_id, "turn_id": turn_id, "index": index, "tag": tag}
            out += self.out({"type": "agent_tag_open", **frame, "attrs": attrs})
            for chunk in chunks:
                out += self.out({"type": "agent_tag_chunk", **frame, "text": chunk})
            out += self.out({"type": "agent_tag_close", **frame})
        reason = "completed" if end == "agent_turn_finished" else "new_event"
        out += self.out({"type": end, "agent_id": agent_id, "turn_id": turn_id, "reason": reason})
        return turn_id, out

    def out(self, frame: dict) -> list[dict]:
        return self.feed.godot_outbound(orjson.loads(orjson.dumps(frame)))


def world_events(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] != "stream"]


def watched(feed: Feed) -> Feed:
    """A feed that a client taking extensions follows, so it builds the live stream events too."""
    feed.connect("watcher", extended=True)
    return feed


def test_a_turn_becomes_generate_reply_action_and_a_snapshot():
    turns = Turns(watched(Feed("tavern", replay=50)))
    assert [(e["type"], e["name"], e["entity"]) for e in turns.interact("bram")] == [("generate", "bram", None)]
    _, out = turns.turn(
        "bram",
        [
            ("thought", {}, ["A stranger."]),
            ("say", {}, ["Halt! ", "State your ", "name."]),
            ("action", {"name": "raise", "item": "Spear"}, []),
        ],
        spec=GUARD,
    )
    generate, reply, action = world_events(out)
    assert generate["type"] == "generate" and generate["name"] == "Bram"
    bram = generate["entity"]
    assert bram == {
        "type": "character",
        "name": "Bram",
        "backstory": "gruff but fair",
        "description": "A tired gate guard",
        "planner": {"calendar": [], "notes": []},
        "attributes": {"agent_id": "bram", "location": "North Gate", "mood": "irritable"},
        "items": [
            {"type": "item", "name": "spear", "description": "", "items": [], "attributes": {}},
            {"type": "item", "name": "brass key", "description": "", "items": [], "attributes": {"opens": "gatehouse"}},
        ],
    }
    assert reply["text"] == "Halt! State your name." and reply["speaker"] == reply["character"] == bram
    assert reply["room"]["name"] == "North Gate" and reply["room"]["characters"] == [bram]
    assert reply["audience"] == reply["room"]  # "player" is no character of this world
    assert action["action"] == "raise" and action["parameters"] == {"item": "Spear"}
    assert action["item"]["name"] == "spear" and action["character"] == bram
    # The chunk-level view streams every piece, in order.
    chunks = [e["text"] for e in out if e["type"] == "stream" and e["phase"] == "chunk"]
    assert chunks == ["A stranger.", "Halt! ", "State your ", "name."]
    assert [e["phase"] for e in out if e["type"] == "stream"][-1] == "end"
    # Ids are unique; the snapshot comes when the shell asks, once per batch of ended turns.
    assert len({e["id"] for e in out}) == len(out)
    snapshot = turns.feed.snapshot()
    assert turns.feed.snapshot() is None
    assert snapshot["turn"] == snapshot["step"] == 1 and snapshot["world"]["turn"] == 1
    world = snapshot["world"]
    assert world["type"] == "world" and world["name"] == "tavern" and world["order"] == ["Bram"]
    assert [(r["type"], r["name"], [c["name"] for c in r["characters"]]) for r in world["rooms"]] == [
        ("room", "North Gate", ["Bram"])
    ]
    assert snapshot["memory"] == {"Bram": [{"type": "human", "content": "[speech from player] Who goes there?"}]}


def test_memory_holds_what_godot_confirmed_and_tools_give_results():
    turns = Turns(Feed("default"))
    turns.interact("smith", "Open the forge")
    spec = {"name": "Smith", "location": "Forge", "tools": [{"name": "open_door"}]}
    turn_id, out = turns.turn(
        "smith", [("tool", {"name": "open_door", "call_id": "t1.0"}, ['{"door": ', '"forge"}'])], spec=spec
    )
    action = world_events(out)[-1]
    assert action["action"] == "open_door" and action["parameters"] == {"door": "forge"} and action["item"] is None
    played = [{"tag": "tool", "attrs": {"name": "open_door", "call_id": "t1.0"}, "text": '{"door": "forge"}'}]
    assert turns.inbound(p.AgentTurnResult("smith", turn_id, "completed", played)) == []
    (result,) = turns.inbound(p.ToolResults("smith", turn_id, [{"tool": "open_door", "output": "opened"}]))
    assert result["type"] == "result" and result["result"] == "opened" and result["room"]["name"] == "Forge"
    # A result for a turn the NPC does not know, and a second confirmation, are refused as the
    # agent's history refuses them: not remembered, no result event.
    assert turns.inbound(p.ToolResults("smith", "made-up", [{"tool": "x", "output": "no"}])) == []
    turns.inbound(p.AgentTurnResult("smith", turn_id, "completed", played))
    memory = turns.feed.snapshot()["memory"]["Smith"]
    assert [m["type"] for m in memory] == ["human", "ai", "human"]
    assert memory[1]["content"].startswith('<tool name="open_door"') and "opened" in memory[2]["content"]


def remembered(feed: Feed, name: str) -> list[str]:
    return [m["content"] for m in feed.snapshot()["memory"][name]]


def test_memory_keeps_a_turn_where_it_started_as_the_agents_history_does():
    """A notification that comes while a turn runs follows that turn in the NPC's memory, as in
    the agent's prompt; a turn Godot never confirmed is not shown."""
    turns = Turns(Feed("default"))
    turns.interact("bram", "Who goes there?")
    turn_id = turns.assigned["bram"]
    turns.out({"type": "agent_turn_started", "agent_id": "bram", "turn_id": turn_id})
    turns.inbound(p.NotificationEvent(("bram",), {"kind": "bell", "text": "The bell rings."}))
    turns.out({"type": "agent_turn_finished", "agent_id": "bram", "turn_id": turn_id, "reason": "completed"})
    assert remembered(turns.feed, "bram") == [
        "[speech from player] Who goes there?\n[notification: bell] The bell rings."
    ]
    turns.inbound(p.AgentTurnResult("bram", turn_id, "completed", [{"tag": "say", "attrs": {}, "text": "Halt."}]))
    turns.feed.snapshot_due = True
    assert remembered(turns.feed, "bram") == [
        "[speech from player] Who goes there?",
        "<say>Halt.</say>",
        "[notification: bell] The bell rings.",
    ]


def test_only_the_latest_valid_spec_counts():
    turns = Turns(Feed("default"))
    turns.interact("bram")
    turns.turn("bram", [], spec=GUARD)
    # A late answer to the latest request counts (as in the agent); one to an older request, or
    # an invalid spec, does not.
    turns.inbound(p.AgentStateSnapshot("t1.state", "bram", {**GUARD, "location": "North Gate"}))
    turns.out({"type": "get_agent_state", "agent_id": "bram", "request_id": "t9.state"})
    assert turns.inbound(p.AgentStateSnapshot("t1.state", "bram", {**GUARD, "location": "Moon"})) == []
    turns.inbound(p.AgentStateSnapshot("t9.state", "bram", {"goals": 3}))
    assert turns.feed.npcs["bram"].location == "North Gate"
    turns.inbound(p.AgentStateSnapshot("t9.state", "bram", {**GUARD, "location": "Market"}))
    assert turns.feed.snapshot()["world"]["rooms"][0]["name"] == "Market"


def test_status_for_notifications_interruptions_and_errors():
    turns = Turns(Feed("default"))
    turns.interact("bram")
    turns.interact("mira")
    (one,) = turns.inbound(p.NotificationEvent(("bram",), {"kind": "weather", "text": "Rain."}))
    assert one["type"] == "status" and one["text"] == "[notification: weather] Rain."
    assert one["character"]["name"] == "bram" and one["room"]["name"] == UNKNOWN_ROOM
    (both,) = turns.inbound(p.NotificationEvent(("bram", "mira"), {"text": "Bells."}))
    assert both["character"] is None and both["room"] is None
    _, out = turns.turn("bram", [("say", {}, ["Wait"])], end="agent_turn_interrupted")
    assert world_events(out)[-1]["text"] == "bram was interrupted (new_event)"
    (error,) = turns.out(p.error(p.LLM_ERROR, "llm_http_500: boom", {"agent_id": "mira", "turn_id": "t"}))
    assert error["text"] == "error llm_error: llm_http_500: boom" and error["character"]["name"] == "mira"


def test_connect_replays_the_last_snapshot_and_a_bounded_buffer():
    turns = Turns(Feed("default", replay=3))
    turns.interact("bram")
    turns.turn("bram", [("say", {}, ["One."])], spec=GUARD)
    turns.turn("bram", [("say", {}, ["Two."])])
    snapshot = turns.feed.snapshot()
    first = turns.feed.connect("c0")
    assert first[1] is snapshot  # nothing ended since: the last one
    turns.turn("bram", [("say", {}, ["Three."])])
    first = turns.feed.connect("c1")
    assert first[0] == {"type": "id", "id": "c1", "client": "c1"}
    assert first[1]["type"] == "snapshot" and first[1] is not snapshot  # rebuilt: a turn ended since
    assert first[1]["turn"] == snapshot["turn"] + 1
    assert [e.get("text") for e in first[2:]] == ["One.", "Two.", "Three."]  # the generates fell out


def player_feed() -> tuple[Turns, Feed]:
    turns = Turns(Feed("default", speech_tag="say", action_tags=("action", "emote")))
    turns.interact("bram")
    turns.turn("bram", [], spec={**GUARD, "tags": ["say", "action", "emote"]})
    turns.interact("mira")
    turns.feed.connect("a")
    turns.feed.connect("b")
    return turns, turns.feed


def test_names_and_becoming_a_character():
    _, feed = player_feed()
    effects = feed.command("a", '{"type": "player", "name": "Alice"}')
    assert [e["type"] for e in effects.broadcast] == ["players"] and effects.broadcast[0]["names"] == {"a": "Alice"}
    (taken,) = feed.command("b", '{"type": "player", "name": " Alice "}').reply
    assert taken["type"] == "error" and taken["code"] == "name_taken" and "Alice" in taken["message"]
    assert feed.command("a", '{"type": "player", "name": "Alice"}').reply == []  # your own name again
    effects = feed.command("a", '{"type": "player", "become": "Bram"}')
    join, players = effects.broadcast
    assert join["type"] == "player" and join["status"] == "join" and join["character"] == "Bram"
    assert join["client"] == "Alice" and join["client_id"] == "a" and join["name"] == "Alice"  # as TaleWeave's
    assert players["players"] == {"Alice": "Bram"}
    assert effects.agents == [("bram", Takeover("a", 1))]
    (taken,) = feed.command("b", '{"type": "player", "become": "bram"}').reply
    assert taken["code"] == "character_taken" and "Alice" in taken["message"]
    (unknown,) = feed.command("b", '{"type": "player", "become": "Nobody"}').reply
    assert unknown["code"] == "unknown_character" and "Bram" in unknown["message"]
    # Switching characters leaves the first one; becoming null leaves the second.
    effects = feed.command("a", '{"type": "player", "become": "mira"}')
    assert [(e["type"], e.get("status"), e.get("character")) for e in effects.broadcast] == [
        ("player", "leave", "Bram"),
        ("player", "join", "mira"),
        ("players", None, None),
    ]
    assert effects.agents == [("bram", Takeover(None, 2)), ("mira", Takeover("a", 1))]
    effects = feed.command("a", '{"type": "player", "become": null}')
    assert effects.agents == [("mira", Takeover(None, 2))] and feed.players == {}


def test_input_goes_to_the_agent_as_markup_and_is_kept_until_the_next_prompt():
    _, feed = player_feed()
    (refused,) = feed.command("a", '{"type": "input", "input": "Hi"}').reply
    assert refused["code"] == "not_playing"
    feed.command("a", '{"type": "player", "become": "Bram"}')
    actions = [{"type": "function", "function": {"name": "say"}}]
    effects = feed.agent_report(TurnPrompt("bram", "t9", "a", "[speech from player] Hello", actions))
    (prompt,) = effects.broadcast
    assert prompt["type"] == "prompt" and prompt["client"] == "a" and prompt["actions"] == actions
    assert prompt["character"]["name"] == "Bram" and prompt["room"]["name"] == "North Gate"
    assert prompt not in feed.replay  # for this player and this turn only
    assert feed.view(prompt, "a") == (prompt,) and feed.view(prompt, "b") == ()
    (refused,) = feed.command("a", '{"type": "input", "input": "~wave:x"}').reply
    assert refused["code"] == "bad_input" and "param=value" in refused["message"]
    (refused,) = feed.command("b", '{"type": "input", "input": "Hi"}').reply
    assert refused["code"] == "not_playing"
    effects = feed.command("a", '{"type": "input", "input": "~bow:deep=yes"}')
    assert effects.agents == [("bram", PlayerInput("a", '<action name="bow" deep="yes"/>'))]
    # Input with no prompt waiting is kept, in order, for the next prompts (as TaleWeave's queue).
    assert feed.command("a", '{"type": "input", "input": "First"}') == Effects()
    assert feed.command("a", '{"type": "input", "input": "Second"}') == Effects()
    effects = feed.agent_report(TurnPrompt("bram", "t10", "a", "[continue]", actions))
    assert effects.broadcast == [] and effects.agents == [("bram", PlayerInput("a", "<say>First</say>"))]
    effects = feed.agent_report(TurnPrompt("bram", "t11", "a", "[continue]", actions))
    assert effects.agents == [("bram", PlayerInput("a", "<say>Second</say>"))]
    for _ in range(MAX_QUEUED_INPUTS):
        feed.command("a", '{"type": "input", "input": "more"}')
    (refused,) = feed.command("a", '{"type": "input", "input": "too much"}').reply
    assert refused["code"] == "too_many_inputs"
    feed.command("a", '{"type": "player", "become": null}')  # leaving drops what was kept
    feed.command("a", '{"type": "player", "become": "Bram"}')
    (prompt,) = feed.agent_report(TurnPrompt("bram", "t12", "a", "Hi", actions)).broadcast
    assert prompt["type"] == "prompt"


def test_a_turn_that_ends_takes_the_prompt_back():
    turns, feed = player_feed()
    feed.command("a", '{"type": "player", "become": "Bram"}')
    feed.agent_report(TurnPrompt("bram", "t2", "a", "Hi", []))
    turns.out({"type": "agent_turn_interrupted", "agent_id": "bram", "turn_id": "t2", "reason": "new_event"})
    assert feed.command("a", '{"type": "input", "input": "late"}') == Effects()  # kept for the next turn
    assert feed.agent_report(TurnPrompt("bram", "t3", "a", "Hi", [])).agents == [
        ("bram", PlayerInput("a", "<say>late</say>"))
    ]


def test_prompts_only_for_turns_a_person_plays():
    _, feed = player_feed()
    assert feed.agent_report(TurnPrompt("mira", "t1", "a", "[continue]", [])) == Effects()  # a does not play mira
    feed.command("a", '{"type": "player", "become": "Bram"}')
    feed.command("a", '{"type": "player", "become": null}')
    assert feed.agent_report(TurnPrompt("bram", "t2", "a", "late report", [])) == Effects()


def test_what_each_client_sees():
    turns, feed = player_feed()
    feed.connect("ours", extended=True)
    feed.connect("bot")
    assert feed.command("bot", '{"type": "hello", "extended": true}') == Effects()  # opts in later
    feed.command("a", '{"type": "player", "name": "Alice"}')
    join, players = feed.command("a", '{"type": "player", "become": "Bram"}').broadcast
    # TaleWeave's client knows itself by client == its id: its own join comes between two ids.
    assert feed.view(join, "a") == (
        {"type": "id", "id": "Alice", "client": "Alice"},
        join,
        {"type": "id", "id": "a", "client": "a"},
    )
    assert feed.view(join, "b") == (join,) and feed.view(join, "ours") == (join,)
    _, out = turns.turn("bram", [("say", {}, ["Hi"])])
    stream = next(e for e in out if e["type"] == "stream")
    assert feed.view(stream, "b") == () and feed.view(stream, "a") == ()
    assert feed.view(stream, "ours") == (stream,) and feed.view(stream, "bot") == (stream,)
    (error,) = feed.command("b", "{nope").reply
    assert feed.view(error, "ours") == (error,)
    ((status,),) = [feed.view(error, "b")]  # TaleWeave's client lists a status
    assert status["type"] == "status" and status["text"].startswith("Refused (bad_json): ")
    # render: TaleWeave's client asks for images; nothing here can render: a status says so.
    (status,) = feed.command("b", '{"type": "render", "event": "x"}').reply
    assert status["type"] == "status" and "render" in status["text"] and feed.view(status, "b") == (status,)
    feed.disconnect("ours")
    feed.disconnect("bot")
    assert not feed.watched


def test_takeover_ends_on_timeout_and_on_disconnect():
    _, feed = player_feed()
    feed.command("a", '{"type": "player", "become": "Bram"}')
    assert feed.agent_report(TakeoverEnded("bram", "a", 0)) == Effects()  # about an earlier takeover: ignored
    status, leave, players = feed.agent_report(TakeoverEnded("bram", "a", 1)).broadcast
    assert "did not answer in time" in status["text"] and leave["status"] == "leave"
    assert players["players"] == {} and feed.npcs["bram"].player is None
    feed.command("b", '{"type": "player", "become": "Bram"}')
    effects = feed.disconnect("b")
    assert [e.get("status") for e in effects.broadcast] == ["leave", None]
    assert effects.agents == [("bram", Takeover(None, 4))]
    feed.command("a", '{"type": "player", "name": "Alice"}')
    effects = feed.disconnect("a")
    assert effects.agents == [] and effects.broadcast[0]["names"] == {}  # Alice is gone


def test_a_takeover_the_gateway_could_not_deliver_is_undone_and_the_player_told():
    """No worker is free for the NPC (placement "dedicated", all taken): the NPC stays the LLM's,
    the player gets the error; an older grant's failure undoes nothing newer."""
    _, feed = player_feed()
    (_, takeover) = feed.command("a", '{"type": "player", "become": "Bram"}').agents[0]
    effects = feed.undelivered("bram", takeover, p.TOO_MANY_WORKERS, "no worker is free")
    (error,) = effects.reply
    assert error["type"] == "error" and error["code"] == p.TOO_MANY_WORKERS
    assert [e["type"] for e in effects.broadcast] == ["player", "players"] and effects.agents == []
    assert feed.npcs["bram"].player is None and feed.players == {}
    feed.command("b", '{"type": "player", "become": "Bram"}')
    assert feed.undelivered("bram", takeover, p.TOO_MANY_WORKERS, "late").broadcast == []
    assert feed.npcs["bram"].player == "b"


def test_coalesce_joins_one_tags_pieces_and_keeps_each_npcs_order():
    turns = Turns(watched(Feed("default")))
    turns.interact("bram")
    turns.interact("mira")
    out = []
    for agent_id in ("bram", "mira"):
        out += turns.out({"type": "agent_turn_started", "agent_id": agent_id, "turn_id": agent_id})
        out += turns.out(
            {"type": "agent_tag_open", "agent_id": agent_id, "turn_id": agent_id, "index": 0, "tag": "say", "attrs": {}}
        )
    for piece in ("Hel", "lo", "!"):
        for agent_id in ("bram", "mira"):
            out += turns.out(
                {
                    "type": "agent_tag_chunk",
                    "agent_id": agent_id,
                    "turn_id": agent_id,
                    "index": 0,
                    "tag": "say",
                    "text": f"{agent_id}:{piece}",
                }
            )
    out += turns.out({"type": "agent_tag_close", "agent_id": "bram", "turn_id": "bram", "index": 0, "tag": "say"})
    merged = coalesce(out)
    assert [(e["type"], e.get("phase"), e.get("agent_id"), e.get("text")) for e in merged] == [
        ("stream", "start", "bram", None),
        ("stream", "open", "bram", None),
        ("stream", "start", "mira", None),
        ("stream", "open", "mira", None),
        ("stream", "chunk", "bram", "bram:Helbram:lobram:!"),
        ("stream", "chunk", "mira", "mira:Helmira:lomira:!"),
        ("stream", "close", "bram", None),
        ("reply", None, None, "bram:Helbram:lobram:!"),
    ]


@pytest.mark.parametrize(
    "frame, code",
    [
        ("{nope", "bad_json"),
        ("[1]", "bad_frame"),
        ('{"type": 3}', "bad_frame"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "input", "input": "~say"}', "not_playing"),
        ('{"type": "player"}', "missing_field"),
        ('{"type": "player", "name": ""}', "bad_field"),
        ('{"type": "player", "name": 7}', "bad_field"),
        ('{"type": "player", "become": 7}', "bad_field"),
        ('{"type": "input", "input": null}', "bad_field"),
    ],
)
def test_bad_frames_get_an_error_for_the_sender_only(frame, code):
    _, feed = player_feed()
    before = dict(feed.names), dict(feed.players), len(feed.replay)
    effects = feed.command("a", frame)
    assert effects.broadcast == [] and effects.agents == []
    (error,) = effects.reply
    assert error["type"] == "error" and error["code"] == code and error["message"] and error["id"]
    assert (dict(feed.names), dict(feed.players), len(feed.replay)) == before


def test_frames_about_unknown_agents_are_ignored():
    feed = Feed("default")
    assert (
        feed.godot_outbound(
            {"type": "agent_tag_chunk", "agent_id": "ghost", "turn_id": "t", "index": 0, "tag": "say", "text": "boo"}
        )
        == []
    )
    assert feed.godot_outbound({"type": "pong"}) == []
    assert feed.godot_inbound(p.AgentTurnResult("ghost", "t", "completed", [])) == []
    assert feed.fact("ghost", fact_of(p.AgentTurnResult("ghost", "t", "completed", []), "ghost")) == []
    assert feed.agent_report(TurnPrompt("ghost", "t", "a", "x", [])) == Effects()


def test_nobody_watching_no_stream_events_but_the_world_events_still_kept():
    turns = Turns(Feed("default"))
    turns.interact("bram")
    _, out = turns.turn("bram", [("say", {}, ["Halt! ", "Who goes there?"])], spec=GUARD)
    assert not [e for e in out if e["type"] == "stream"]
    assert [e["text"] for e in out if e["type"] == "reply"] == ["Halt! Who goes there?"]
    assert any(e["type"] == "reply" for e in turns.feed.replay)  # a late joiner still gets it
