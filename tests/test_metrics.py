"""GET /metrics end to end: run.py with 2 workers, the scripted LLM, a Godot peer; what the scrape
counts must be what was played, on both workers, and outlive a worker that dies."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ScriptedLLM, ServerProcess
from tests.godot_peer import END_TYPES, GodotPeer

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-test-token"
PRICE = {"prompt": 1.5, "completion": 6.0}  # per million tokens
AGENTS = [f"npc{i}" for i in range(6)]


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("server")
    config = tmp / "prices.toml"
    config.write_text(
        f'[llm_prices]\n"scripted-model" = {{ prompt = {PRICE["prompt"]}, completion = {PRICE["completion"]} }}\n'
    )
    proc = ServerProcess(
        tmp,
        llm.url,
        workers=2,
        GAME_AGENT_TOKEN=TOKEN,
        GAME_AGENT_CONFIG=str(config),
        GAME_AGENT_METRICS_SCRAPE_TIMEOUT_S="0.5",
    )
    yield proc
    proc.stop()


async def scrape(server: ServerProcess, headers: dict | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {TOKEN}"} if headers is None else headers
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics", headers=headers) as response:
        return response.status, await response.text()


async def play(server: ServerProcess, llm: ScriptedLLM, *agents: str) -> None:
    """One completed turn for each of ``agents`` (so that a test has counts of its own)."""
    await llm.reset()
    godot = await GodotPeer.connect(server.url, server.query())
    try:
        for agent in agents:
            godot.specs[agent] = {"name": agent.title()}
            await godot.turn(agent)
    finally:
        await godot.close()


def value(text: str, sample: str, **labels: str) -> float:
    """The sum of ``sample``'s values over the series whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


async def test_the_token_is_required(server):
    assert (await scrape(server, {}))[0] == 401
    assert (await scrape(server, {"Authorization": "Bearer wrong"}))[0] == 401
    status, text = await scrape(server)
    assert status == 200 and "npc_turns_total" in text


async def test_the_counts_are_what_was_played_on_both_workers(server, llm):
    await llm.reset()
    godot = await GodotPeer.connect(server.url, server.query())
    try:
        for agent in [*AGENTS, "story"]:
            godot.specs[agent] = {"name": agent.title()}
        played = [await godot.turn(agent) for agent in AGENTS]  # placed by load: 3 on each worker
        health = await server.health()
        assert sorted(health["worker_agents"]) == [3, 3], health

        # One turn interrupted by a newer event (whose turn completes), one answered on a retry, one
        # refused by the LLM.
        await llm.script(
            {"content": "<say>" + "word " * 200 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.02},
            {"content": "<say>Yes?</say>"},
        )
        start = len(godot.frames)
        await godot.interact("story", "Tell me a long story")
        first = await godot.wait_type("agent_tag_chunk", start=start, agent_id="story")
        await godot.interact("story", "Stop!")
        await godot.wait_type("agent_turn_interrupted", start=start, turn_id=first["turn_id"])
        answer = await godot.wait_for(
            lambda f: f["type"] in END_TYPES and f["agent_id"] == "story" and f["turn_id"] != first["turn_id"],
            start=start,
        )
        played.append(godot.turn_frames(answer["turn_id"]))
        await llm.script({"status": 503}, {"content": "<say>Again.</say>"})  # answered on the retry
        played.append(await godot.turn(AGENTS[1]))
        await llm.script({"status": 400, "error_body": {"error": {"message": "no"}}})
        failed = await godot.turn(AGENTS[0])
        assert failed[-1]["reason"] == "error"

        status, text = await scrape(server)
        assert status == 200
    finally:
        await godot.close()

    assert value(text, "npc_turns_total", outcome="completed") == len(AGENTS) + 2
    assert value(text, "npc_turns_total", outcome="new_event") == 1
    assert value(text, "npc_turns_total", outcome="error") == 1
    endpoint = {"endpoint": llm.url + "/v1", "model": "scripted-model"}
    assert value(text, "npc_llm_requests_total", **endpoint, outcome="ok") == len(AGENTS) + 2
    assert value(text, "npc_llm_requests_total", **endpoint, outcome="cancelled") == 1
    assert value(text, "npc_llm_requests_total", **endpoint, outcome="llm_http_400") == 1
    assert value(text, "npc_llm_queue_wait_seconds_count") == len(AGENTS) + 4
    assert value(text, "npc_llm_first_token_seconds_count", model="scripted-model") == len(AGENTS) + 3
    assert value(text, "npc_llm_retries_total") == 1

    usage = [turn[-1]["usage"] for turn in played]
    prompt = sum(u["prompt_tokens"] for u in usage)
    completion = sum(u["completion_tokens"] for u in usage)
    assert value(text, "npc_llm_tokens_total", model="scripted-model", kind="prompt") == prompt
    assert value(text, "npc_llm_tokens_total", model="scripted-model", kind="completion") == completion
    cost = (prompt * PRICE["prompt"] + completion * PRICE["completion"]) / 1e6
    assert value(text, "npc_llm_cost_total", model="scripted-model") == pytest.approx(cost)

    tagged = len(AGENTS) + 3  # every turn but the refused one opened a say tag
    for span in ("end_to_end", "server"):
        assert value(text, "npc_first_tag_seconds_count", span=span) == tagged
        assert value(text, "npc_first_say_seconds_count", span=span) == tagged
    assert value(text, "npc_interrupt_seconds_count") == 1
    assert value(text, "npc_chunk_latency_seconds_count") > 0
    assert value(text, "npc_journal_commit_seconds_count") > 0
    assert value(text, "npc_agents_active") == len(AGENTS) + 1
    assert value(text, "npc_agents_known") == len(AGENTS) + 1
    assert value(text, "npc_connections", endpoint="ws") == 1  # scraped while the game was connected
    assert value(text, "npc_connections", endpoint="events") == 0
    exported = {family.name for family in text_string_to_metric_families(text)}
    documented = set(re.findall(r"`(npc_\w+)`", (ROOT / "docs" / "metrics.md").read_text()))
    assert {name + "_total" if name + "_total" in documented else name for name in exported} <= documented
    charted = set(re.findall(r"npc_\w+", (ROOT / "docs" / "grafana-dashboard.json").read_text())) - {"npc"}
    series = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert charted <= series | {"npc-turn-server"}, charted - series
    [node] = health["nodes"]  # with the token set, nodes go by their names, as in /healthz
    for worker in ("0", "1"):
        assert value(text, "npc_frames_total", worker=worker, node=node["name"]) > 0


async def test_a_late_worker_is_shown_with_its_previous_counts(server, llm):
    await play(server, llm, "late0", "late1")  # spread over the workers by load
    _, before = await scrape(server)
    assert value(before, "npc_turns_total", outcome="completed") > 0
    stopped = (await server.health())["worker_pids"][1]
    os.kill(stopped, signal.SIGSTOP)  # it cannot answer the next scrape
    try:
        statuses_and_texts = await asyncio.gather(*(scrape(server) for _ in range(3)))  # they share one round
    finally:
        os.kill(stopped, signal.SIGCONT)
    for status, text in statuses_and_texts:
        assert status == 200
        for name, labels in [("npc_turns_total", {}), ("npc_llm_tokens_total", {}), ("npc_frames_total", {})]:
            assert value(text, name, **labels) == value(before, name, **labels), name
    assert server.server_log().count("did not answer a scrape within 0.5 s") == 1  # one round for the three


async def test_counts_outlive_a_worker_that_dies(server, llm):
    await play(server, llm, "dies0", "dies1")
    _, before = await scrape(server)
    completed = value(before, "npc_turns_total", outcome="completed")
    assert completed > 0 and value(before, "npc_worker_restarts_total") == 0
    health = await server.health()
    victim = health["worker_pids"][0]
    os.kill(victim, signal.SIGKILL)
    for _ in range(200):  # replaced within a second or so; wait for it, not for a guessed delay
        health = await server.health()
        if health["status"] == "ok" and victim not in health["worker_pids"] and len(health["worker_pids"]) == 2:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"worker {victim} was not replaced: {health}")
    _, after = await scrape(server)
    assert value(after, "npc_worker_restarts_total") == 1
    # What the dead worker counted stays in the sums: counters never go down.
    assert value(after, "npc_turns_total", outcome="completed") == completed
    assert value(after, "npc_llm_tokens_total") == value(before, "npc_llm_tokens_total")
