"""The fallback ladder end to end: scripted LLMs on their own ports fail the ways providers fail
(HTTP 500s after the retries, a stall before the first token, all at once), a real server steps
down its rungs, its breakers open and close, budgets run out; Godot sees every turn end by the
contract, and is told how the turn stepped down (``agent_turn_finished.fallback``).

Each test starts its own server (breakers and budgets are a server's state), one worker so that
the per-worker breakers and budgets are the whole server's, short timeouts and cooldowns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from core.metrics import endpoint_label
from tests.conftest import TEST_API_KEY, ScriptedLLM, ServerProcess
from tests.godot_peer import GodotPeer, played_tags
from tests.test_metrics import value
from tests.test_provider_faults import wait_until
from tests.test_turns import check_turn_order

MAX_RETRIES = 1
FIRST_TOKEN_TIMEOUT_S = 1.0
BACKUP_KEY = "sk-backup-SECRET-never-logged-7"
LINES = ["The forge is cold today.", "Come back later & bring coal."]


@pytest.fixture(scope="module")
def llms(tmp_path_factory) -> AsyncIterator[dict[str, ScriptedLLM]]:
    """Three scripted LLMs: ``bad`` answers 500, ``stall`` never sends a token, ``good`` answers."""
    tmp = tmp_path_factory.mktemp("ladder-llms")
    servers = {name: ScriptedLLM(tmp) for name in ("bad", "stall", "good")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
async def ready(llms) -> dict[str, ScriptedLLM]:
    """The three LLMs freshly reset to their roles."""
    for server in llms.values():
        await server.reset()
    await llms["bad"].defaults(status=500, first_token_delay_s=0.0)
    await llms["stall"].defaults(status=None, first_token_delay_s=3600.0)
    await llms["good"].defaults(status=None, first_token_delay_s=0.0)
    return llms


def endpoint(server: ScriptedLLM, model: str, key_env: str | None = None) -> str:
    key = f'api_key_env = "{key_env}"\n' if key_env else ""
    return f'base_url = "{server.url}/v1"\nmodel = "{model}"\n{key}'


@asynccontextmanager
async def ladder_server(tmp: Path, primary: ScriptedLLM, config: str, **env: str) -> AsyncIterator[ServerProcess]:
    path = tmp / "ladder.toml"
    path.write_text(config)
    settings = {
        "GAME_AGENT_CONFIG": str(path),
        "GAME_AGENT_LLM_MAX_RETRIES": str(MAX_RETRIES),
        "GAME_AGENT_LLM_RETRY_BASE_S": "0.01",
        "GAME_AGENT_LLM_FIRST_TOKEN_TIMEOUT_S": str(FIRST_TOKEN_TIMEOUT_S),
        "BACKUP_KEY": BACKUP_KEY,
    }
    proc = ServerProcess(tmp, primary.url, workers=1, **{**settings, **env})
    try:
        yield proc
    finally:
        proc.stop()
    log = proc.server_log()
    assert TEST_API_KEY not in log and BACKUP_KEY not in log


async def godot_of(proc: ServerProcess, session: str = "s1") -> GodotPeer:
    return await GodotPeer.connect(proc.url, proc.query(f"?session={session}"))


async def played(godot: GodotPeer, agent_id: str) -> list[dict]:
    """One whole turn, confirmed as played (so the next one follows in the history)."""
    frames = await godot.turn(agent_id, timeout=30)
    check_turn_order(frames)
    await godot.confirm(frames)
    return frames


def requests_of(records: list[dict], name: str) -> int:
    return sum(name in r["body"]["messages"][0]["content"] for r in records)


async def test_a_failing_and_a_stalling_endpoint_step_down_to_the_good_one(tmp_path, ready):
    """HTTP 500 after the retries, then a stall until the first-token timeout: the third rung
    answers, and the turn says so; the failures open both breakers, so the next turn goes to the
    good endpoint at once, asking neither of the others."""
    config = (
        "llm_breaker_failures = 1\nllm_breaker_cooldown_s = 3600\n"
        f"[[llm_fallbacks]]\n{endpoint(ready['stall'], 'stall-model')}"
        f"[[llm_fallbacks]]\n{endpoint(ready['good'], 'good-model', 'BACKUP_KEY')}"
    )
    async with ladder_server(tmp_path, ready["bad"], config) as proc:
        godot = await godot_of(proc)
        godot.specs["smith"] = {"name": "Ladra"}
        try:
            frames = await played(godot, "smith")
            end = frames[-1]
            assert end["reason"] == "completed", end
            assert end["fallback"] == {"why": "endpoint_failed", "rung": 2, "answered_by": "good-model"}
            assert played_tags(frames)  # the good endpoint's answer, in tags
            assert requests_of(await ready["bad"].requests(), "Ladra") == MAX_RETRIES + 1
            assert requests_of(await ready["stall"].requests(), "Ladra") == MAX_RETRIES + 1
            good = await ready["good"].requests()
            assert [r["body"]["model"] for r in good] == ["good-model"]
            assert good[0]["headers"]["Authorization"] == "REDACTED"  # its own key was sent

            frames = await played(godot, "smith")
            assert frames[-1]["fallback"] == {"why": "breaker_open", "rung": 2, "answered_by": "good-model"}
            assert requests_of(await ready["bad"].requests(), "Ladra") == MAX_RETRIES + 1  # skipped
            assert requests_of(await ready["stall"].requests(), "Ladra") == MAX_RETRIES + 1
            # /metrics counts each rung's requests under its own endpoint and model.
            async with aiohttp.ClientSession() as http, http.get(proc.url + "/metrics") as response:
                text = await response.text()
            requests = "npc_llm_requests_total"
            assert value(text, requests, endpoint=endpoint_label(ready["bad"].url + "/v1"), outcome="ok") == 0
            assert value(text, requests, endpoint=endpoint_label(ready["bad"].url + "/v1")) == 1
            assert value(text, requests, endpoint=endpoint_label(ready["stall"].url + "/v1"), model="stall-model") == 1
            assert value(text, requests, endpoint=endpoint_label(ready["good"].url + "/v1"), outcome="ok") == 2
            # and shows which breakers are open: the failing two, not the good one
            breaker = "npc_llm_breaker_open"
            assert value(text, breaker, endpoint=endpoint_label(ready["bad"].url + "/v1")) == 1
            assert value(text, breaker, endpoint=endpoint_label(ready["stall"].url + "/v1")) == 1
            assert value(text, breaker, endpoint=endpoint_label(ready["good"].url + "/v1"), model="good-model") == 0
        finally:
            await godot.close()


async def test_an_open_breaker_probes_after_its_cooldown_and_closes(tmp_path, ready):
    """Two failed turns open the primary's breaker; turns skip it until the cooldown has passed;
    then one turn probes it, and once it answers again the turns are its own (no fallback)."""
    cooldown_s = 2.0
    config = (
        f"llm_breaker_failures = 2\nllm_breaker_cooldown_s = {cooldown_s}\n"
        f"[[llm_fallbacks]]\n{endpoint(ready['good'], 'good-model')}"
    )
    async with ladder_server(tmp_path, ready["bad"], config) as proc:
        godot = await godot_of(proc)
        godot.specs["smith"] = {"name": "Brakka"}
        try:
            for _ in range(2):
                frames = await played(godot, "smith")
                assert frames[-1]["fallback"]["why"] == "endpoint_failed"
            opened = asyncio.get_running_loop().time()
            asked = requests_of(await ready["bad"].requests(), "Brakka")
            assert asked == 2 * (MAX_RETRIES + 1)
            frames = await played(godot, "smith")  # well within the cooldown: skipped
            assert frames[-1]["fallback"]["why"] == "breaker_open"
            assert requests_of(await ready["bad"].requests(), "Brakka") == asked
            await ready["bad"].defaults(status=None)  # the primary recovers

            ends: list[dict] = []

            async def primary_answers() -> bool:
                ends.append((await played(godot, "smith"))[-1])
                return "fallback" not in ends[-1]

            await wait_until(primary_answers, timeout=30)
            assert asyncio.get_running_loop().time() - opened >= cooldown_s
            assert all(end["fallback"]["why"] == "breaker_open" for end in ends[:-1])
            assert requests_of(await ready["bad"].requests(), "Brakka") == asked + 1  # one probe, answered
            frames = await played(godot, "smith")
            assert frames[-1]["reason"] == "completed" and "fallback" not in frames[-1]  # closed
        finally:
            await godot.close()


async def test_when_nothing_answers_the_npc_speaks_its_fallback_lines(tmp_path, ready):
    """Every endpoint fails: an NPC with fallback_lines speaks them in turn, in its say tag, and the
    turn ends with reason fallback; one without lines ends with an llm_error, as before."""
    config = (
        f"llm_breaker_failures = 1\nllm_breaker_cooldown_s = 3600\n[[llm_fallbacks]]\n{endpoint(ready['stall'], 's')}"
    )
    async with ladder_server(tmp_path, ready["bad"], config) as proc:
        godot = await godot_of(proc)
        godot.specs["smith"] = {"name": "Linna", "fallback_lines": LINES}
        godot.specs["mute"] = {"name": "Mutto"}
        try:
            spoken = []
            for _ in range(3):
                frames = await played(godot, "smith")
                assert frames[-1]["reason"] == "fallback", frames[-1]
                assert frames[-1]["fallback"]["answered_by"] == "fallback_lines"
                assert not [f for f in godot.frames if f["type"] == "error"]
                spoken.append(played_tags(frames))
            assert spoken == [[{"tag": "say", "attrs": {}, "text": line}] for line in (*LINES, LINES[0])]
            assert frames[-1]["fallback"] == {"why": "breaker_open", "rung": 2, "answered_by": "fallback_lines"}

            frames = await godot.turn("mute", timeout=30)
            check_turn_order(frames)
            assert [f["type"] for f in frames] == ["agent_turn_started", "agent_turn_finished"]
            assert frames[-1]["reason"] == "error" and "fallback" not in frames[-1]
            error = next(f for f in godot.frames if f["type"] == "error")
            assert error["code"] == "llm_error" and error["ref"]["turn_id"] == frames[0]["turn_id"]
        finally:
            await godot.close()


async def test_past_the_npc_budget_a_hero_steps_down_to_the_crowd_tier(tmp_path, ready):
    """A hero's tier and budget: its first turn spends the NPC's hourly budget; the next ones go to
    the cheaper tier's model with its max_tokens, and Godot is told why. Another NPC of the session
    still has its own budget; a crowd NPC past it, with no cheaper tier, speaks its lines."""
    config = (
        "llm_npc_tokens_per_hour = 5\n"
        f'[llm_tiers.hero]\nmodel = "hero-model"\nmax_tokens = 300\ncheaper = "crowd"\n'
        f"[llm_tiers.crowd]\n{endpoint(ready['good'], 'crowd-model')}max_tokens = 50\n"
    )
    async with ladder_server(tmp_path, ready["good"], config) as proc:
        godot = await godot_of(proc)
        godot.specs["hero"] = {"name": "Herold", "model_tier": "hero"}
        godot.specs["other"] = {"name": "Otho", "model_tier": "hero"}
        godot.specs["crowd"] = {"name": "Crowdy", "model_tier": "crowd", "fallback_lines": LINES}
        try:
            frames = await played(godot, "hero")
            assert frames[-1]["reason"] == "completed" and "fallback" not in frames[-1]
            assert frames[-1]["usage"]["total_tokens"] > 5
            frames = await played(godot, "hero")
            assert frames[-1]["fallback"] == {"why": "npc_budget", "rung": 0, "answered_by": "crowd-model"}
            frames = await played(godot, "other")
            assert "fallback" not in frames[-1]
            asked = [(r["body"]["model"], r["body"]["max_tokens"]) for r in await ready["good"].requests()]
            assert asked == [("hero-model", 300), ("crowd-model", 50), ("hero-model", 300)]

            frames = await played(godot, "crowd")
            assert "fallback" not in frames[-1]
            frames = await played(godot, "crowd")
            assert frames[-1]["reason"] == "fallback"
            assert frames[-1]["fallback"] == {"why": "npc_budget", "rung": 0, "answered_by": "fallback_lines"}
            assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": LINES[0]}]
        finally:
            await godot.close()


async def test_past_the_session_budget_its_npcs_step_down_and_other_sessions_do_not(tmp_path, ready):
    async with ladder_server(tmp_path, ready["good"], "llm_session_tokens_per_hour = 5\n") as proc:
        first, second = await godot_of(proc, "s1"), await godot_of(proc, "s2")
        for godot in (first, second):
            godot.specs["a"] = {"name": "Anna", "fallback_lines": LINES}
            godot.specs["b"] = {"name": "Bert"}
        try:
            assert "fallback" not in (await played(first, "a"))[-1]
            frames = await played(first, "a")
            assert frames[-1]["fallback"] == {"why": "session_budget", "rung": 0, "answered_by": "fallback_lines"}
            frames = await first.turn("b", timeout=30)  # no lines, nowhere to step down to
            assert frames[-1]["reason"] == "error"
            error = next(f for f in first.frames if f["type"] == "error")
            assert error["code"] == "llm_error" and "session_budget" in error["message"]
            assert "fallback" not in (await played(second, "a"))[-1]
        finally:
            await first.close()
            await second.close()


async def test_an_unknown_tier_is_an_error_and_the_default_tier_answers(tmp_path, ready):
    async with ladder_server(tmp_path, ready["good"], '[llm_tiers.hero]\nmodel = "hero-model"\n') as proc:
        godot = await godot_of(proc)
        godot.specs["x"] = {"name": "Xeno", "model_tier": "villain"}
        try:
            frames = await played(godot, "x")
            assert frames[-1]["reason"] == "completed"
            error = next(f for f in godot.frames if f["type"] == "error")
            assert error["code"] == "bad_state" and "'villain'" in error["message"] and "hero" in error["message"]
            assert [r["body"]["model"] for r in await ready["good"].requests()] == ["scripted-model"]
        finally:
            await godot.close()


async def test_the_embedded_model_is_the_last_llm_rung_and_costs_no_budget(tmp_path, ready):
    """A failing primary, and the embedded model started as a fallback: it answers (in the
    spec's tags, whatever it samples); its tokens are not counted against the NPC's budget."""
    config = "llm_fallback_embedded = true\nllm_npc_tokens_per_hour = 1\nllm_breaker_failures = 1\n"
    # A 135M model on a busy 2-core machine may take seconds to its first token: no hurry here.
    async with ladder_server(tmp_path, ready["bad"], config, GAME_AGENT_LLM_FIRST_TOKEN_TIMEOUT_S="60") as proc:
        assert "embedded model ready" in proc.server_log()
        godot = await godot_of(proc)
        godot.specs["bram"] = {"name": "Bram", "tags": ["say"], "fallback_lines": LINES}
        try:
            for why in ("endpoint_failed", "breaker_open"):  # not npc_budget: the model is free
                frames = await godot.turn("bram", "Good evening.", timeout=120)
                check_turn_order(frames)
                assert frames[-1]["reason"] == "completed", frames[-3:]
                assert frames[-1]["fallback"] == {"why": why, "rung": 1, "answered_by": "embedded"}
                assert {tag["tag"] for tag in played_tags(frames)} <= {"say"}
                await godot.confirm(frames)
        finally:
            await godot.close()


async def test_each_rung_has_its_own_structured_mode(tmp_path, ready):
    """A markup primary that fails, then a fallback asked for JSON (``structured``): its JSON
    answer becomes the same tag frames, read by the reader of its rung."""
    config = f'[[llm_fallbacks]]\n{endpoint(ready["good"], "json-model")}structured = "json_schema"\n'
    await ready["good"].script({"content": '{"tags": [{"tag": "say", "text": "From JSON."}]}', "chunk_size": 5})
    async with ladder_server(tmp_path, ready["bad"], config, GAME_AGENT_LLM_STRUCTURED="off") as proc:
        godot = await godot_of(proc)
        godot.specs["j"] = {"name": "Jason"}
        try:
            frames = await played(godot, "j")
        finally:
            await godot.close()
    assert frames[-1]["fallback"]["answered_by"] == "json-model"
    assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": "From JSON."}]
    assert all("response_format" not in r["body"] for r in await ready["bad"].requests())
    assert [r["body"]["response_format"]["type"] for r in await ready["good"].requests()] == ["json_schema"]


async def test_a_rung_that_fails_after_its_first_token_is_not_followed_by_another(tmp_path, ready):
    """Text has streamed: the turn ends in error as before, and no fallback speaks over it."""
    config = f"[[llm_fallbacks]]\n{endpoint(ready['stall'], 'stall-model')}"
    await ready["good"].script({"content": "<say>One two three four</say>", "chunk_size": 4, "reset_after_chunks": 3})
    async with ladder_server(tmp_path, ready["good"], config) as proc:
        godot = await godot_of(proc)
        godot.specs["r"] = {"name": "Resa", "fallback_lines": LINES}
        try:
            frames = await godot.turn("r", timeout=30)
        finally:
            await godot.close()
    check_turn_order(frames)
    assert frames[-1]["reason"] == "error" and "fallback" not in frames[-1]
    assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": "One two"}]
    assert await ready["stall"].requests() == []
