"""End to end through the real stack: run.py (actor system, gateway, workers), a WebSocket Godot
peer, and the scripted LLM over HTTP. Each test uses its own agent ids, and runs under both
placements: NPCs pooled on 2 workers, and each NPC in a dedicated worker process of its own."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from config.settings import PLACEMENTS
from tests.conftest import TEST_API_KEY, ServerProcess
from tests.godot_peer import END_TYPES, GodotPeer, played_tags

GUARD = {
    "name": "Bram",
    "description": "A tired gate guard",
    "persona": "gruff but fair",
    "goals": ["keep the gate"],
    "location": "North Gate",
    "inventory": ["spear"],
}
REPLY = '<thought>A stranger.</thought><say>Halt! State your business &amp; name.</say><action name="raise_spear"/>'
TAGS = [
    {"tag": "thought", "attrs": {}, "text": "A stranger."},
    {"tag": "say", "attrs": {}, "text": "Halt! State your business & name."},
    {"tag": "action", "attrs": {"name": "raise_spear"}, "text": ""},
]


@pytest.fixture(scope="module", params=PLACEMENTS)
def server(request, llm, tmp_path_factory) -> ServerProcess:
    """The module's server, once per placement (``GAME_AGENT_PLACEMENT``)."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"), llm.url, GAME_AGENT_PLACEMENT=request.param)
    yield proc
    proc.stop()


def dedicated(server: ServerProcess) -> bool:
    return server.env["GAME_AGENT_PLACEMENT"] == "dedicated"


def check_turn_order(frames: list[dict]) -> None:
    """The contract's per-turn ordering guarantees."""
    assert frames[0]["type"] == "agent_turn_started"
    assert frames[-1]["type"] in END_TYPES
    assert sum(f["type"] in END_TYPES for f in frames) == 1
    open_index, expected_index = None, 0
    for f in frames[1:-1]:
        if f["type"] == "agent_tag_open":
            assert open_index is None and f["index"] == expected_index
            open_index, expected_index = f["index"], expected_index + 1
        elif f["type"] == "agent_tag_chunk":
            assert f["index"] == open_index and f["text"]
        elif f["type"] == "agent_tag_close":
            assert f["index"] == open_index
            open_index = None
    assert open_index is None, "a tag was left open when the turn ended"


def user_text(request: dict) -> str:
    return "\n".join(m["content"] for m in request["body"]["messages"] if m["role"] != "system")


async def test_a_whole_turn(godot: GodotPeer, llm):
    godot.specs["bram"] = GUARD
    await llm.script({"content": REPLY, "chunk_size": 5})
    frames = await godot.turn("bram", "Who goes there?")
    check_turn_order(frames)
    assert frames[-1]["type"] == "agent_turn_finished" and frames[-1]["reason"] == "completed"
    assert played_tags(frames) == TAGS
    state_request = next(f for f in godot.frames if f["type"] == "get_agent_state")
    assert state_request["agent_id"] == "bram" and state_request["event_id"] == frames[0]["event_id"]
    prompt = (await llm.requests())[-1]["body"]
    assert prompt["stream"] is True and prompt["model"] == "scripted-model"
    system = prompt["messages"][0]
    assert system["role"] == "system" and "Bram" in system["content"] and "North Gate" in system["content"]
    assert "Who goes there?" in prompt["messages"][-1]["content"]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64])
async def test_tags_split_anywhere_stream_the_same(godot: GodotPeer, llm, chunk_size):
    godot.specs["split"] = GUARD
    await llm.script({"content": REPLY, "chunk_size": chunk_size})
    frames = await godot.turn("split")
    check_turn_order(frames)
    assert played_tags(frames) == TAGS


async def test_confirmed_turn_and_notification_reach_the_next_prompt(godot: GodotPeer, llm):
    godot.specs["mira"] = {"name": "Mira"}
    await llm.script({"content": "<say>I sell potions, cheap ones and fine ones.</say>"})
    first = await godot.turn("mira", "What do you sell?")
    played = [{"tag": "say", "attrs": {}, "text": "I sell potions"}]  # the player skipped the rest
    await godot.send(
        {
            "type": "agent_turn_result",
            "agent_id": "mira",
            "turn_id": first[0]["turn_id"],
            "status": "interrupted",
            "tags": played,
        }
    )
    await godot.send(
        {
            "type": "notification_event",
            "agent_ids": ["mira", "bystander"],
            "event": {"kind": "weather", "text": "It starts to rain."},
        }
    )
    await godot.turn("mira", "And the price?")
    prompt = (await llm.requests())[-1]["body"]["messages"]
    history = "\n".join(m["content"] for m in prompt[1:])
    assert "I sell potions" in history and "fine ones" not in history
    assert any(m["role"] == "assistant" and "I sell potions" in m["content"] for m in prompt)
    assert "It starts to rain." in history and "What do you sell?" in history
    assert "And the price?" in prompt[-1]["content"]


async def test_interruption_closes_the_llm_stream_and_nothing_follows(godot: GodotPeer, llm):
    godot.specs["kai"] = {"name": "Kai"}
    await llm.script(
        {"content": "<say>" + "word " * 200 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.02},
        {"content": "<say>Yes?</say>"},
    )
    start = len(godot.frames)
    await godot.interact("kai", "Tell me a long story")
    first_chunk = await godot.wait_type("agent_tag_chunk", start=start, agent_id="kai")
    old_turn = first_chunk["turn_id"]
    cut_at = time.time()
    interrupting = await godot.interact("kai", "Stop!")
    interrupted = await godot.wait_type("agent_turn_interrupted", start=start, turn_id=old_turn)
    assert interrupted["reason"] == "new_event" and interrupted["by_event_id"] == interrupting
    new_started = await godot.wait_type("agent_turn_started", start=start, event_id=interrupting)
    await godot.wait_for(lambda f: f["type"] in END_TYPES and f["turn_id"] == new_started["turn_id"])
    old_frames = godot.turn_frames(old_turn)
    check_turn_order(old_frames)
    assert old_frames[-1] is interrupted
    assert godot.frames.index(interrupted) < godot.frames.index(new_started)
    assert played_tags(godot.turn_frames(new_started["turn_id"])) == [{"tag": "say", "attrs": {}, "text": "Yes?"}]
    records = await llm.requests()
    story = next(r for r in records if "long story" in user_text(r))
    # The LLM stream was closed when the newer event came, long before its ~4 s of words were sent.
    assert story["end"] == "client_closed"
    assert story["closed_at"] - cut_at < 2
    assert story["chunks_sent"] < 150


async def test_agents_stream_at_once_on_several_workers(server: ServerProcess, godot: GodotPeer, llm):
    agents = [f"crowd{i}" for i in range(6)]
    for agent in agents:
        godot.specs[agent] = {"name": agent.title()}
    for agent in agents:
        await llm.script(
            {
                "match": agent.title(),
                "content": f"<say>I am {agent}, talking slowly.</say>",
                "chunk_size": 2,
                "chunk_delay_s": 0.03,
            }
        )
    # The agents exist first (with placement "dedicated", their processes start: timed apart, below).
    await godot.send({"type": "notification_event", "agent_ids": agents, "event": {"text": "A crowd gathers."}})
    deadline = time.monotonic() + 30
    while len(created := crowd_hosts(server)) < len(agents):
        assert time.monotonic() < deadline, f"only {created} of the crowd were created"
        await asyncio.sleep(0.05)
    began = time.monotonic()
    turns = await asyncio.gather(*(godot.turn(agent, "Everyone, speak!") for agent in agents))
    elapsed = time.monotonic() - began
    for agent, frames in zip(agents, turns):
        check_turn_order(frames)
        assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": f"I am {agent}, talking slowly."}]
    one_turn = len("<say>I am crowd0, talking slowly.</say>") / 2 * 0.03
    assert elapsed < one_turn * 3, f"6 turns of {one_turn:.2f} s each took {elapsed:.2f} s: not concurrent"
    hosts = crowd_hosts(server)
    async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as response:
        health = await response.json()
    assert health["status"] == "ok" and health["agents"] >= 6
    if dedicated(server):  # a process each
        assert len(hosts) == len(set(hosts)) == 6 and health["workers"] >= 6
        assert health["worker_agents"] == [1] * health["workers"]
    else:
        assert set(hosts) == {"worker-0", "worker-1"} and health["workers"] == 2


def crowd_hosts(server: ServerProcess) -> list[str]:
    """The worker (its log name) of each crowd agent created so far."""
    log = server.server_log()
    return [line.split()[2] for line in log.splitlines() if "agent crowd" in line and "created" in line]


async def test_tool_call_results_and_continuation(godot: GodotPeer, llm):
    godot.specs["smith"] = {
        "name": "Smith",
        "tools": [{"name": "open_door", "description": "Open a door", "parameters": {"type": "object"}}],
    }
    await llm.script(
        {"content": '<say>Let me check.</say><tool name="open_door">{"door": "forge"}</tool>'},
        {"content": "<say>The forge is open.</say>"},
    )
    frames = await godot.turn("smith", "Open the forge, please")
    tool_open = next(f for f in frames if f["type"] == "agent_tag_open" and f["tag"] == "tool")
    call_id = tool_open["attrs"]["call_id"]
    assert tool_open["attrs"]["name"] == "open_door" and call_id
    assert played_tags(frames)[1]["text"] == '{"door": "forge"}'
    system = (await llm.requests())[-1]["body"]["messages"][0]["content"]
    assert "open_door" in system and "<tool" in system
    start = len(godot.frames)
    await godot.send(
        {
            "type": "tool_results",
            "agent_id": "smith",
            "turn_id": frames[0]["turn_id"],
            "results": [{"call_id": call_id, "tool": "open_door", "ok": True, "output": "door opened"}],
        }
    )
    started = await godot.wait_type("agent_turn_started", start=start, agent_id="smith")
    assert "event_id" not in started
    end = await godot.wait_for(lambda f: f["type"] in END_TYPES and f["turn_id"] == started["turn_id"])
    assert end["reason"] == "completed"
    assert "door opened" in user_text((await llm.requests())[-1])
    # continue: false records the results and starts nothing.
    start = len(godot.frames)
    await godot.send(
        {
            "type": "tool_results",
            "agent_id": "smith",
            "turn_id": started["turn_id"],
            "results": [{"tool": "open_door", "output": "already open"}],
            "continue": False,
        }
    )
    # The agent handles its messages in order: a continuation would start before the next event's turn.
    event_id = await godot.interact("smith", "Anything else?")
    turn_id = (await godot.wait_type("agent_turn_started", start=start, event_id=event_id))["turn_id"]
    assert [f.get("event_id") for f in godot.frames[start:] if f["type"] == "agent_turn_started"] == [event_id]
    await godot.wait_for(lambda f: f["type"] in END_TYPES and f["turn_id"] == turn_id, start=start)


async def test_untagged_prose_is_spoken(godot: GodotPeer, llm):
    """A model that ignores the tag format still speaks: its prose streams as say."""
    godot.specs["grimbold"] = {"name": "Grimbold"}
    prose = "I am Grimbold Ironfist, the highest authority on the realm."
    await llm.script({"content": prose, "chunk_size": 4}, {"content": f"<thought>Hm.</thought>\n{prose}"})
    frames = await godot.turn("grimbold", "Who are you?")
    check_turn_order(frames)
    assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": prose}]
    assert sum(f["type"] == "agent_tag_chunk" for f in frames) > 1  # streamed as it arrived
    frames = await godot.turn("grimbold", "Again?")
    assert played_tags(frames) == [
        {"tag": "thought", "attrs": {}, "text": "Hm."},
        {"tag": "say", "attrs": {}, "text": prose},
    ]


async def test_undeclared_tool_is_an_error_never_a_tool(godot: GodotPeer, llm):
    godot.specs["liar"] = {"name": "Liar", "tools": [{"name": "open_door"}]}
    await llm.script({"content": '<say>Sure.</say><tool name="summon_dragon">{"size": "huge"}</tool>'})
    start = len(godot.frames)
    frames = await godot.turn("liar", "Summon a dragon")
    assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": "Sure."}]
    errors = [f for f in godot.frames[start:] if f["type"] == "error"]
    assert [(e["code"], e["ref"]["tool"], e["ref"]["turn_id"]) for e in errors] == [
        ("undeclared_tool", "summon_dragon", frames[0]["turn_id"])
    ]


async def test_snapshot_timeout_without_and_with_a_known_spec(godot: GodotPeer, llm):
    # No spec ever: the turn ends with an error after the snapshot timeout (1.5 s in these tests).
    frames = await godot.turn("silent")
    assert [f["type"] for f in frames] == ["agent_turn_started", "agent_turn_finished"]
    assert frames[-1]["reason"] == "error"
    error = await godot.wait_type("error", timeout=0.1)
    assert error["code"] == "snapshot_timeout" and error["ref"]["turn_id"] == frames[0]["turn_id"]
    assert godot.frames.index(error) < godot.frames.index(frames[-1])
    # A spec known from an earlier turn: a later unanswered request falls back to it.
    godot.specs["silent"] = {"name": "Quiet Quill"}
    await llm.script({"content": "<say>One.</say>"}, {"content": "<say>Two.</say>"})
    await godot.turn("silent")
    del godot.specs["silent"]
    frames = await godot.turn("silent")
    assert frames[-1]["reason"] == "completed" and played_tags(frames)[0]["text"] == "Two."
    assert "Quiet Quill" in (await llm.requests())[-1]["body"]["messages"][0]["content"]


async def test_bad_input_gets_an_error_and_loses_nothing(godot: GodotPeer, llm):
    godot.specs["bea"] = {"name": "Bea"}
    await llm.script({"content": "<say>Fine.</say>"})
    turn = await godot.turn("bea")
    turn_id = turn[0]["turn_id"]
    bad = [
        ("{not json", "bad_json", None),
        ("[1,2,3]", "bad_frame", None),
        (b"\x00binary", "bad_frame", None),
        ({"type": "fly"}, "unknown_type", {"type": "fly"}),
        ({"type": "interaction_event", "event": {}}, "missing_field", {"type": "interaction_event"}),
        ({"type": "interaction_event", "agent_id": 12, "event": {}}, "bad_field", {"type": "interaction_event"}),
        (
            {"type": "agent_turn_result", "agent_id": "nobody", "turn_id": "t", "status": "completed", "tags": []},
            "unknown_agent",
            {"type": "agent_turn_result", "agent_id": "nobody"},
        ),
        (
            {
                "type": "agent_turn_result",
                "agent_id": "bea",
                "turn_id": "no-such-turn",
                "status": "completed",
                "tags": [],
            },
            "unknown_turn",
            {"agent_id": "bea", "turn_id": "no-such-turn"},
        ),
        (
            {"type": "tool_results", "agent_id": "bea", "turn_id": "nope", "results": []},
            "unknown_turn",
            {"agent_id": "bea", "turn_id": "nope"},
        ),
        (
            {"type": "agent_state_snapshot", "request_id": "made-up", "agent_id": "bea", "state": {"name": "B"}},
            "unknown_request",
            {"agent_id": "bea", "request_id": "made-up"},
        ),
        (
            {
                "type": "agent_state_snapshot",
                "request_id": f"{turn_id}.state",
                "agent_id": "bea",
                "state": {"goals": "x"},
            },
            "bad_state",
            {"agent_id": "bea"},
        ),
    ]
    for frame, code, ref in bad:
        start = len(godot.frames)
        await godot.send(frame)
        error = await godot.wait_type("error", start=start)
        assert error["code"] == code, (frame, error)
        assert error["message"]
        for key, value in (ref or {}).items():
            assert error["ref"][key] == value, (frame, error)
    # The same result twice: the second is refused, the first counted.
    await godot.confirm(turn)
    start = len(godot.frames)
    await godot.confirm(turn)
    assert (await godot.wait_type("error", start=start))["code"] == "unknown_turn"
    # Nothing else was affected: the connection and the agent still work.
    await llm.script({"content": "<say>Still here.</say>"})
    frames = await godot.turn("bea")
    assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": "Still here."}]
    assert "Fine." in user_text((await llm.requests())[-1])


async def test_logs_are_written_on_disconnect(server: ServerProcess, llm):
    await llm.reset()
    peer = await GodotPeer.connect(server.url, "?session=logtest")
    peer.specs["scribe"] = {"name": "Scribe"}
    await llm.script({"content": "<say>Noted.</say>"})
    frames = await peer.turn("scribe", "Write this down")
    await peer.confirm(frames)
    await peer.send({"type": "notification_event", "agent_id": "scribe", "event": {"text": "Ink spilled."}})
    await peer.send({"type": "ping"})
    await peer.wait_type("pong")
    await peer.close()
    folder = server.log_dir / "logtest"
    deadline = time.monotonic() + 10
    while not list(folder.glob("*/scribe.llm_input.json")) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    conversation = json.loads(next(folder.glob("*/scribe.conversation.json")).read_text())
    llm_input = json.loads(next(folder.glob("*/scribe.llm_input.json")).read_text())
    kinds = [entry["kind"] for entry in conversation["history"]]
    assert kinds == ["event", "turn", "notification"]
    assert conversation["history"][1]["tags"] == [{"tag": "say", "attrs": {}, "text": "Noted."}]
    assert conversation["name"] == "Scribe"
    assert llm_input["turns"][0]["turn_id"] == frames[0]["turn_id"]
    assert llm_input["turns"][0]["messages"][-1]["content"].endswith("Write this down")


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_clean_shutdown_leaves_no_process(tmp_path, llm, placement):
    server = ServerProcess(tmp_path, llm.url, workers=2, GAME_AGENT_PLACEMENT=placement)
    try:
        # run.py, admin, logger, gateway, pool, and 2 workers (pooled) or none until an NPC speaks
        assert len(server.processes()) == (7 if placement == "pooled" else 5)
        peer = await GodotPeer.connect(server.url)
        peer.specs["last"] = {"name": "Last"}
        await llm.script({"content": "<say>Goodbye.</say>"})
        await peer.turn("last")
        assert len(server.processes()) == (7 if placement == "pooled" else 6)
        await peer.close()
    finally:
        server.stop()  # asserts: exit code 0, no process left
    log = server.server_log()
    assert "actor system stopped" in log
    assert TEST_API_KEY not in log
