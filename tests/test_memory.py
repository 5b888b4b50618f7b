"""Recall and memories end to end: a real server (run.py, workers, journal), the scripted LLM, a
Godot stand-in on /ws. What the NPC remembers is read in the prompt the LLM server received.

The history budget is small (``HISTORY_BUDGET``), so a fact a few turns old is out of the
prompt's window and reaches the model only through recall.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.conftest import ServerProcess
from tests.godot_peer import END_TYPES, GodotPeer

HISTORY_BUDGET = "400"
_sessions = itertools.count(1)


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory) -> ServerProcess:
    proc = ServerProcess(
        tmp_path_factory.mktemp("memory"),
        llm.url,
        workers=1,
        GAME_AGENT_HISTORY_BUDGET_CHARS=HISTORY_BUDGET,
        GAME_AGENT_MEMORY_MAX_TEXT_CHARS="200",
        GAME_AGENT_MEMORY_MAX_PINNED_PER_SCOPE="2",
        GAME_AGENT_MEMORY_MAX_FORGET="2",
        GAME_AGENT_RECALL_MATCHES="2",
    )
    yield proc
    proc.stop()


@pytest.fixture
async def godot(server, llm) -> GodotPeer:
    """A Godot of its own session: every test starts with no memories."""
    await llm.reset()
    peer = await GodotPeer.connect(server.url, f"?session=m{next(_sessions)}")
    yield peer
    await peer.close()


async def played(godot: GodotPeer, llm, agent_id: str, text: str, answer: str = "Mm.") -> dict:
    """One turn for ``text``, confirmed as played; returns the LLM request it made."""
    await llm.script({"content": f"<say>{answer}</say>"})
    before = len(await llm.requests())
    frames = await godot.turn(agent_id, text)
    assert frames[-1]["type"] in END_TYPES and frames[-1].get("reason") == "completed", frames
    await godot.confirm(frames)
    requests = await llm.requests()
    assert len(requests) == before + 1
    return requests[-1]["body"]


def system_of(request: dict) -> str:
    return request["messages"][0]["content"]


def history_of(request: dict) -> str:
    return "\n".join(m["content"] for m in request["messages"][1:])


async def memory(godot: GodotPeer, frame: dict, answer: str = "") -> dict:
    """Send a memory frame; return the answer (``answer`` type, or the ``error``)."""
    start = len(godot.frames)
    await godot.send(frame)
    return await godot.wait_for(lambda f: f["type"] in (answer, "error"), 10, start)


async def test_an_old_fact_the_event_refers_to_is_recalled(godot, llm):
    godot.specs["oren"] = {"name": "Oren", "location": "the mill"}
    await played(godot, llm, "oren", "I buried the silver amulet beneath the crooked willow", "I will keep it secret.")
    for n in range(8):
        request = await played(godot, llm, "oren", f"Lovely weather today, number {n}")
    assert "crooked willow" not in history_of(request) and "crooked willow" not in system_of(request)

    request = await played(godot, llm, "oren", "Where did I put the silver amulet?")
    system = system_of(request)
    assert "# What you remember" in system
    assert "beneath the crooked willow" in system
    assert "I will keep it secret." not in system  # its answer shares no word with the question
    assert "crooked willow" not in history_of(request)  # recalled, not in the window
    assert "Lovely weather" not in system  # nothing unrelated


async def test_the_window_talking_of_it_does_not_crowd_the_old_fact_out(godot, llm):
    """Only two matches reach the agent (recall_matches): the newest facts that share the words
    are in the window, and the journal passes them over."""
    godot.specs["nell"] = {"name": "Nell"}
    await played(godot, llm, "nell", "I hid the silver amulet inside the old well")
    for n in range(6):
        await played(godot, llm, "nell", f"Lovely weather today, number {n}")
    for n in range(3):
        await played(godot, llm, "nell", f"Tell me of the silver amulet, part {n}")
    request = await played(godot, llm, "nell", "So where is the silver amulet?")
    assert "Tell me of the silver amulet, part 2" in history_of(request)
    assert "inside the old well" in system_of(request)


async def test_memories_are_added_listed_pinned_and_forgotten(godot, llm):
    godot.specs["tilda"] = {"name": "Tilda"}
    pinned = await memory(
        godot,
        {"type": "memory_add", "agent_id": "tilda", "text": "The mayor is your brother.", "pinned": True},
        "memory_added",
    )
    bridge = await memory(
        godot, {"type": "memory_add", "agent_id": "tilda", "text": "The north bridge fell last winter."}, "memory_added"
    )
    assert pinned["agent_id"] == "tilda" and pinned["memory_id"] != bridge["memory_id"]
    listed = await memory(godot, {"type": "memory_list", "agent_id": "tilda"}, "memory_list_result")
    assert [(m["text"], m["kind"], m["pinned"]) for m in listed["memories"]] == [
        ("The mayor is your brother.", "note", True),
        ("The north bridge fell last winter.", "note", False),
    ]
    found = await memory(godot, {"type": "memory_list", "agent_id": "tilda", "query": "bridge"}, "memory_list_result")
    assert [m["memory_id"] for m in found["memories"]] == [bridge["memory_id"]]

    unrelated = system_of(await played(godot, llm, "tilda", "Good morning"))
    assert "The mayor is your brother." in unrelated  # pinned: always there
    assert "north bridge" not in unrelated
    asked = system_of(await played(godot, llm, "tilda", "Can I cross the north bridge?"))
    assert "The north bridge fell last winter." in asked and "The mayor is your brother." in asked

    forgotten = await memory(
        godot, {"type": "memory_forget", "agent_id": "tilda", "memory_id": bridge["memory_id"]}, "memory_forgotten"
    )
    assert forgotten["memory_ids"] == [bridge["memory_id"]] and forgotten["count"] == 1
    after = system_of(await played(godot, llm, "tilda", "Can I cross the north bridge?"))
    assert "The north bridge fell last winter." not in after
    forgotten = await memory(
        godot, {"type": "memory_forget", "agent_id": "tilda", "query": "mayor brother"}, "memory_forgotten"
    )
    assert forgotten["memory_ids"] == [pinned["memory_id"]]
    listed = await memory(godot, {"type": "memory_list", "agent_id": "tilda"}, "memory_list_result")
    assert listed["memories"] == []


async def test_a_turn_without_a_snapshot_keeps_the_pinned_memories(godot, llm):
    godot.specs["otto"] = {"name": "Otto"}
    await memory(
        godot,
        {"type": "memory_add", "agent_id": "otto", "text": "You are afraid of geese.", "pinned": True},
        "memory_added",
    )
    assert "afraid of geese" in system_of(await played(godot, llm, "otto", "Hello"))
    del godot.specs["otto"]  # the game stops answering get_agent_state: the last spec serves
    assert "afraid of geese" in system_of(await played(godot, llm, "otto", "Hello again"))


async def test_bad_memory_frames_get_clear_errors_and_change_nothing(godot):
    async def refused(frame: dict) -> dict:
        error = await memory(godot, frame)
        assert error["type"] == "error", error
        print(error["code"], error["message"])
        return error

    add = {"type": "memory_add", "agent_id": "ida"}
    assert (await refused({**add, "text": "x" * 201}))["code"] == "memory_too_large"
    assert (await refused({**add, "text": "   "}))["code"] == "bad_field"
    assert (await refused({**add, "text": "hi", "pinned": "yes"}))["code"] == "bad_field"
    assert (await refused({**add, "text": "hi", "scope": "guild"}))["code"] == "bad_field"
    assert (await refused({"type": "memory_add", "text": "hi"}))["code"] == "missing_field"
    for n in range(2):
        await memory(godot, {**add, "text": f"pinned fact {n}", "pinned": True}, "memory_added")
    error = await refused({**add, "text": "one pin too many", "pinned": True})
    assert error["code"] == "too_many_memories" and "memory_max_pinned_per_scope" in error["message"]
    forget = {"type": "memory_forget", "agent_id": "ida"}
    assert (await refused({**forget, "memory_id": "nope"}))["code"] == "unknown_memory"
    assert (await refused(forget))["code"] == "missing_field"
    assert (await refused({**forget, "memory_id": "a", "query": "b"}))["code"] == "bad_field"
    assert (await refused({**forget, "query": "the and of"}))["code"] == "bad_field"  # no word to look for
    await memory(godot, {**add, "text": "another fact"}, "memory_added")
    error = await refused({**forget, "query": "fact"})  # three match, at most two at once
    assert error["code"] == "too_many_memories" and "matches 3 memories" in error["message"]
    listed = await memory(godot, {"type": "memory_list", "agent_id": "ida"}, "memory_list_result")
    assert [m["text"] for m in listed["memories"]] == ["pinned fact 0", "pinned fact 1", "another fact"]
    assert (await refused({"type": "memory_list", "agent_id": "ida", "query": "q" * 501}))["code"] == "bad_field"


async def test_a_group_memory_is_known_to_every_member_and_nobody_else(godot, llm):
    guard = {"groups": ["town guard"]}
    godot.specs.update({"bram": {"name": "Bram", **guard}, "cora": {"name": "Cora", **guard}, "pell": {"name": "Pell"}})
    added = await memory(
        godot,
        {
            "type": "memory_add",
            "agent_id": "bram",
            "scope": "group:town guard",
            "text": "Tonight's password is swordfish.",
            "pinned": True,
        },
        "memory_added",
    )
    assert added["scope"] == "group:town guard"
    assert "swordfish" in system_of(await played(godot, llm, "cora", "Halt!"))
    assert "swordfish" in system_of(await played(godot, llm, "bram", "Halt!"))
    assert "swordfish" not in system_of(await played(godot, llm, "pell", "Halt!"))
    listed = await memory(godot, {"type": "memory_list", "agent_id": "cora"}, "memory_list_result")
    assert listed["scopes"] == ["agent", "group:town guard"]
    assert [m["text"] for m in listed["memories"]] == ["Tonight's password is swordfish."]
    listed = await memory(godot, {"type": "memory_list", "agent_id": "pell"}, "memory_list_result")
    assert listed["memories"] == []
    godot.specs["cora"] = {"name": "Cora"}  # she leaves the guard: the spec says so, turn by turn
    assert "swordfish" not in system_of(await played(godot, llm, "cora", "Halt!"))


async def test_memories_and_recall_survive_a_restart(llm, tmp_path):
    await llm.reset()
    data = tmp_path / "data"
    env = {"GAME_AGENT_HISTORY_BUDGET_CHARS": HISTORY_BUDGET}
    server = await asyncio.to_thread(ServerProcess, tmp_path, llm.url, workers=1, data_dir=data, **env)
    try:
        godot = await GodotPeer.connect(server.url, "?session=kept")
        godot.specs["wren"] = {"name": "Wren"}
        await played(godot, llm, "wren", "The smuggler's boat is moored at Gull Rock")
        for n in range(6):
            await played(godot, llm, "wren", f"Nice day, number {n}")
        await memory(
            godot,
            {"type": "memory_add", "agent_id": "wren", "text": "You owe Hale ten crowns.", "pinned": True},
            "memory_added",
        )
        await godot.close()
    finally:
        await asyncio.to_thread(server.stop)
    server = await asyncio.to_thread(ServerProcess, tmp_path, llm.url, workers=1, data_dir=data, **env)
    try:
        godot = await GodotPeer.connect(server.url, "?session=kept")
        godot.specs["wren"] = {"name": "Wren"}
        listed = await memory(godot, {"type": "memory_list", "agent_id": "wren"}, "memory_list_result")
        assert [m["text"] for m in listed["memories"]] == ["You owe Hale ten crowns."]
        system = system_of(await played(godot, llm, "wren", "Where is the smuggler's boat?"))
        assert "You owe Hale ten crowns." in system and "moored at Gull Rock" in system
        await godot.close()
    finally:
        await asyncio.to_thread(server.stop)
