"""The web page at ``/`` in a real browser: Debian's Chromium, headless, driven by Playwright,
against the real server, a Godot peer and the scripted LLM."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.godot_peer import END_TYPES, GodotPeer, played_tags

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path("/tmp/web_page.png")  # a copy to look at by hand
GUARD = {
    "name": "Bram",
    "description": "A tired gate guard in dented mail",
    "persona": "gruff but fair",
    "location": "North Gate",
    "inventory": ["spear"],
}
WORDS = "Halt! Nobody passes the North Gate after dark, not even a merchant with a kind face."

async_playwright = pytest.importorskip("playwright.async_api", reason="pip install playwright").async_playwright
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install chromium")


@pytest.fixture
async def browser():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def game(server, llm):
    await llm.reset()
    peer = await GodotPeer.connect(server.url, "?session=web")
    yield peer
    await peer.close()


async def test_the_page_shows_live_turns_and_lets_a_person_play(server, llm, game, browser, tmp_path):
    page = await browser.new_page(viewport={"width": 1400, "height": 800})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    await page.goto(f"{server.url}/?session=web")
    await page.wait_for_function(
        "document.getElementById('connection').textContent.startsWith('connected as')", timeout=10_000
    )

    # A turn streams into the page while the LLM is still writing it.
    game.specs["bram"] = GUARD
    chunks = [WORDS[i : i + 6] for i in range(0, len(WORDS), 6)]
    await llm.script({"chunks": ["<say>", *chunks, '</say><action name="raise_spear"/>'], "chunk_delay_s": 0.12})
    await game.interact("bram", "Who goes there?")
    say = page.locator('.live[data-agent="bram"] .tag-say')
    await page.wait_for_function(
        "(el) => el && el.textContent.length > 0", arg=await say.element_handle(timeout=10_000), timeout=10_000
    )
    partial = await say.text_content()
    assert partial and len(partial) < len(WORDS) and WORDS.startswith(partial), partial
    await page.wait_for_function(
        f"(el) => el.textContent === {WORDS!r}", arg=await say.element_handle(), timeout=10_000
    )
    await page.locator('.live[data-agent="bram"] .tag-action', has_text="raise_spear").wait_for(timeout=5_000)
    npc = page.locator('.room[data-room="North Gate"] .npc[data-agent="bram"]')
    await npc.wait_for(timeout=5_000)
    assert "Bram" in await npc.inner_text()
    await page.locator("#events li.reply", has_text="Nobody passes").wait_for(timeout=5_000)

    # A person names themself, takes Bram over and answers for him.
    await page.fill("#name-input", "Alice")
    await page.click("#name-button")
    await npc.locator("button.play").click()
    await page.locator("#player-panel").wait_for(state="visible", timeout=5_000)
    assert await page.inner_text("#player-character") == "Bram"
    await npc.locator(".played", has_text="Alice").wait_for(timeout=5_000)
    llm_calls = len(await llm.requests())
    start = len(game.frames)
    await game.interact("bram", "Then who may pass?")
    await page.locator("#prompt-text", has_text="Then who may pass?").wait_for(timeout=10_000)
    assert "~say:text=…" in await page.inner_text("#actions")  # the prompt's actions, as TaleWeave's tools
    await page.fill("#input-box", "Only the captain & his dog.")
    await page.press("#input-box", "Enter")
    end = await game.wait_for(lambda f: f["type"] in END_TYPES, start=start, timeout=10)
    assert end["reason"] == "completed"
    assert played_tags(game.turn_frames(end["turn_id"])) == [
        {"tag": "say", "attrs": {}, "text": "Only the captain & his dog."}
    ]
    assert len(await llm.requests()) == llm_calls
    await page.locator("#events li.reply", has_text="Only the captain & his dog.").wait_for(timeout=5_000)

    await page.screenshot(path=str(tmp_path / "web_page.png"), full_page=True)
    shutil.copy(tmp_path / "web_page.png", SCREENSHOT)

    # Giving Bram back hides the player's panel.
    await page.locator('.npc[data-agent="bram"] button.give-back').click()
    await page.locator("#player-panel").wait_for(state="hidden", timeout=5_000)
    assert not problems, problems
