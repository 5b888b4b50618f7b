"""The Godot 4 addon in a real Godot 4 engine: Godot 4.6's official web export template runs the
scenarios of ``clients/godot/test_project/test_main.gd`` (packed with the one copy of the addon by
tests/godot_pack.py) in Debian's Chromium, headless, against the real server and the scripted LLM
(tests/godot_web.py). The scenario prints ``RESULT ok|fail <check>`` lines that are asserted here,
next to what the server recorded: the LLM's requests and the conversation logs.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from config.ports import free_port
from tests.conftest import ROOT
from tests.godot_pack import project_files
from tests.godot_peer import GodotPeer
from tests.godot_web import CHROMIUM, CHROMIUM_ARGS, ENGINE_PACKAGE, WebGodot, engine_installed
from tests.test_godot_clients import (
    REPLY,
    Proxy,
    assistant_texts,
    conversation,
    history,
    last_user_texts,
    turns,
    ws_url,
)

GODOT4 = ROOT / "clients" / "godot"
TEST_PROJECT = GODOT4 / "test_project"

async_playwright = pytest.importorskip("playwright.async_api", reason="pip install playwright").async_playwright
pytestmark = pytest.mark.skipif(
    not engine_installed(), reason=f"needs {CHROMIUM} and npm install --prefix .web_engine {ENGINE_PACKAGE}"
)


@pytest.fixture
async def godot():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        engine = WebGodot(browser)
        try:
            yield engine
        finally:
            await engine.close()
            await browser.close()


@pytest.fixture(scope="module")
def test_pack() -> dict[str, bytes]:
    """The test project with the addon where a game has it, under addons/."""
    return project_files((TEST_PROJECT, ""), (GODOT4 / "addons" / "npc_turns", "addons/npc_turns/"))


async def test_a_full_turn_with_automatic_state_and_result(server, llm, godot, test_pack):
    await llm.reset()
    await llm.script({"content": REPLY, "chunk_size": 5}, {"content": "<say>At sundown.</say>"})
    run = await godot.play(test_pack, scenario="full_turn", url=ws_url(server))
    run.assert_ok("full_turn", "second_turn", "server_error")
    first, second = await llm.requests()
    system = first["body"]["messages"][0]["content"]
    assert "Bram" in system and "North Gate" in system
    assert assistant_texts(second) == [
        "<thought>A stranger.</thought><say>Halt! State your business &amp; name.</say>"
        '<action name="raise_spear"></action>'
    ]
    assert "When does the gate close?" in history(second)[-1]["content"]


async def test_the_game_reports_what_it_played(server, llm, godot, test_pack):
    await llm.reset()
    await llm.script(
        {"content": "<thought>A buyer.</thought><say>I sell potions, cheap ones and fine ones.</say>"},
        {"content": "<say>Two coins, friend, and cheap at that.</say>"},
        {"content": "<say>Welcome.</say>"},
    )
    run = await godot.play(test_pack, scenario="played", url=ws_url(server))
    run.assert_ok("held_and_cut", "reported", "third_turn")
    _, second, third = await llm.requests()
    assert assistant_texts(second) == ["<thought>A buyer.</thought><say>I sell potions</say>"]
    assert "[your previous turn was interrupted here]" in history(second)[-1]["content"]
    assert assistant_texts(third)[-1] == "<say>Two coins.</say>"
    assert "friend" not in json.dumps(history(third))


async def test_an_interruption_confirms_what_was_played_so_far(server, llm, godot, test_pack):
    await llm.reset()
    await llm.script(
        {"content": "<say>" + "word " * 400 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.03},
        {"content": "<say>Yes?</say>"},
    )
    run = await godot.play(test_pack, scenario="interrupt", url=ws_url(server))
    run.assert_ok("interrupt")
    played = run.info("played_so_far")
    story, answer = await llm.requests()
    assert story["end"] == "client_closed"
    assert 0 < len(played) < len("word " * 400)
    assert assistant_texts(answer) == [f"<say>{played}</say>"]
    assert "[your previous turn was interrupted here]" in history(answer)[-1]["content"]
    assert "Stop!" in history(answer)[-1]["content"]


async def test_tool_calls_run_registered_tools_and_continue(server, llm, godot, test_pack):
    await llm.reset()
    await llm.script(
        {
            "content": '<say>Let me check.</say><tool name="open_door">{"door": "forge"}</tool>'
            '<tool name="lock_door"></tool><tool name="summon">{}</tool>'
        },
        {"content": "<say>The forge is open.</say>"},
    )
    run = await godot.play(test_pack, scenario="tools", url=ws_url(server))
    run.assert_ok("tool_called", "continuation")
    first, continuation = await llm.requests()
    system = first["body"]["messages"][0]["content"]
    assert "open_door" in system and "lock_door" in system
    assert '{"door": "forge"}</tool>' in assistant_texts(continuation)[0]
    results = history(continuation)[-1]["content"]
    assert re.search(r"\[tool result call_id=\S+\.1 tool=open_door ok=true\] door opened", results), results
    assert "tool=lock_door ok=false] no key for that door" in results
    assert "tool=summon ok=false] unknown tool 'summon'" in results


async def test_reconnect_keepalive_query_and_take_over(server, llm, godot, test_pack):
    await llm.reset()
    await llm.script(
        {"match": "long story", "content": "<say>" + "word " * 400 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.03}
    )
    port = free_port()
    refusals = asyncio.Queue()

    async def refuse(_reader, writer):  # nothing serves yet: the client must try again
        writer.close()
        refusals.put_nowait(1)

    session = "g4-reconnect"
    refuser = await asyncio.start_server(refuse, "127.0.0.1", port)
    proxy = Proxy(server.port)
    try:
        run = await godot.start(
            test_pack, scenario="reconnect", url=f"ws://127.0.0.1:{port}/ws", session=session, token="s3cret tok"
        )
        await run.wait_line("STEP started")
        for _ in range(2):
            await asyncio.wait_for(refusals.get(), 30)
        refuser.close()
        await refuser.wait_closed()
        await proxy.listen(port)
        await run.wait_line("STEP freeze")
        assert len(proxy.links) == 1
        proxy.freeze()
        await run.wait_line("STEP take_over")
        assert len(proxy.links) == 2, "the client did not reconnect after its pings went unanswered"
        peer = await GodotPeer.connect(server.url, f"?session={session}")
        try:
            await run.wait_line("DONE")
        finally:
            await peer.close()
    finally:
        refuser.close()
        await proxy.close()
    run.assert_ok(
        "first_connect", "first_connection_turn", "keepalive_reconnect", "second_connection_turn", "take_over"
    )
    assert len(proxy.links) == 2, "the client reconnected after its session was taken over"
    assert proxy.request_lines[0] == f"GET /ws?token=s3cret%20tok&session={session} HTTP/1.1"
    hello, story, still_there = await llm.requests()
    assert story["end"] == "client_closed"
    played = run.info("played_so_far")
    assert 0 < len(played) < len("word " * 400)
    assert not assistant_texts(hello)
    assert assistant_texts(still_there)[-1] == f"<say>{played}</say>"
    assert "[your previous turn was interrupted here]" in history(still_there)[-1]["content"]


async def test_a_wrong_turn_fails_the_checks(server, llm, godot, test_pack):
    """The scenario's checks can fail: a reply other than the expected one is reported."""
    await llm.reset()
    await llm.script({"content": "<say>Something else entirely.</say>"})
    run = await godot.play(test_pack, scenario="full_turn", url=ws_url(server))
    assert any(line.startswith("RESULT fail full_turn tags") for line in run.lines), run.output()
    with pytest.raises(AssertionError, match="checks failed in godot"):
        run.assert_ok("full_turn")


# --- what running in the engine found (issue 16) ---


async def test_disconnecting_from_turn_finished_keeps_the_turn_completed(server, llm, godot, test_pack):
    await llm.reset()
    await llm.script({"content": "<say>Farewell, traveller.</say>"})
    run = await godot.play(test_pack, scenario="disconnect_on_finish", url=ws_url(server))
    run.assert_ok("disconnect_on_finish")
    # The server got the result before the close: the turn is confirmed as played, not pending.
    assert turns(await conversation(server, "g4-quit", "g4_quinn")) == [
        {
            "kind": "turn",
            "turn_id": run.info("turn_id"),
            "status": "completed",
            "tags": [{"tag": "say", "attrs": {}, "text": "Farewell, traveller."}],
        }
    ]


async def test_disconnecting_from_turn_interrupted_confirms_the_cut_turn(server, llm, godot, test_pack):
    await llm.reset()
    await llm.script(
        {"content": "<say>" + "word " * 400 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.03},
        {"content": "<say>Yes?</say>"},
    )
    run = await godot.play(test_pack, scenario="disconnect_on_interrupt", url=ws_url(server))
    run.assert_ok("disconnect_on_interrupt")
    cut = turns(await conversation(server, "g4-cut-quit", "g4_cora"))[0]
    assert cut["status"] == "interrupted"
    assert cut["tags"] == [{"tag": "say", "attrs": {}, "text": run.info("played_so_far")}]


async def test_frames_queued_for_one_session_never_reach_another(server, llm, godot, test_pack):
    await llm.reset()
    await llm.script(
        {"match": "long story", "content": "<say>" + "word " * 400 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.03},
        {"content": "<say>Hello there.</say>"},
    )
    run = await godot.play(test_pack, scenario="switch_session", url=ws_url(server))
    run.assert_ok("switch_session")
    assert any("not sent to another session" in line for line in run.lines), run.output()
    assert last_user_texts(await llm.requests()) == ["Tell me a long story", "Hello"]
