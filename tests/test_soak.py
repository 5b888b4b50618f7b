"""A bounded soak with crashes injected: NPCs talk non-stop while workers are killed, then the
whole server is killed and restarted. Not one confirmed turn may be lost.

A turn counts as confirmed when Godot sent its ``agent_turn_result`` and got no ``error`` about
it. At the end every confirmed turn must be in the journal, and each NPC's newest confirmed turns
must be in the prompt of its next turn after the restart. ``--soak-seconds`` sets the length
(20 s by default, for CI; longer by hand).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sqlite3
import time

import orjson
import pytest

from gateway.journal import FILE_NAME
from tests.conftest import ScriptedLLM, ServerProcess
from tests.godot_peer import END_TYPES, GodotPeer
from tests.test_turns import user_text

NPCS = 12
CHECKED_IN_PROMPT = 5  # newest confirmed turns per NPC looked for in its next prompt


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    server = ScriptedLLM(
        tmp_path_factory.mktemp("soak-llm"),
        "--tokens-per-s",
        "100",
        "--default-tokens",
        "10",
        "--first-token-delay-s",
        "0.05",
    )
    yield server
    server.stop()


class Game:
    """One Godot connection playing every NPC's turns and confirming them with its own words."""

    def __init__(self, godot: GodotPeer) -> None:
        self.godot = godot
        self.confirmed: dict[str, list[str]] = {}  # agent_id -> played words, oldest first
        self.turn_ids: dict[str, str] = {}  # played words -> turn_id
        self.sent = 0

    async def play(self, agent_id: str, until: float) -> None:
        godot = self.godot
        while time.monotonic() < until:
            start = len(godot.frames)
            event_id = await godot.interact(agent_id, "talk")
            started = await godot.wait_type("agent_turn_started", 30, start, event_id=event_id)
            turn_id = started["turn_id"]
            end = await godot.wait_for(
                lambda f, turn_id=turn_id: f["type"] in END_TYPES and f["turn_id"] == turn_id, 30, start
            )
            words = f"played-{agent_id}-{self.sent}"
            self.sent += 1
            status = "completed" if end.get("reason") == "completed" else "interrupted"
            await godot.send(
                {
                    "type": "agent_turn_result",
                    "agent_id": agent_id,
                    "turn_id": turn_id,
                    "status": status,
                    "tags": [{"tag": "say", "text": words}],
                }
            )
            self.confirmed.setdefault(agent_id, []).append(words)
            self.turn_ids[words] = turn_id

    def refused(self) -> set[str]:
        """Turn ids whose result got an error (those were never confirmed)."""
        return {
            f["ref"].get("turn_id")
            for f in self.godot.frames
            if f["type"] == "error" and f.get("ref", {}).get("type") == "agent_turn_result"
        }


TOKEN = "tok-soak-" + secrets.token_hex(8)  # /healthz gives the worker pids with it


async def worker_pids(server: ServerProcess) -> list[int]:
    return (await server.health())["worker_pids"]  # given with the token only


@pytest.mark.timeout(600)
async def test_no_confirmed_turn_is_lost_to_crashes(tmp_path, llm, request):
    seconds = request.config.getoption("--soak-seconds")
    data = tmp_path / "data"
    server = await asyncio.to_thread(ServerProcess, tmp_path, llm.url, data_dir=data, GAME_AGENT_TOKEN=TOKEN)
    crashes = 0
    try:
        godot = await GodotPeer.connect(server.url, server.query("?session=soak"))
        game = Game(godot)
        agents = [f"npc{n}" for n in range(NPCS)]
        for agent_id in agents:
            godot.specs[agent_id] = {"name": agent_id}
        until = time.monotonic() + seconds
        players = [asyncio.create_task(game.play(agent_id, until)) for agent_id in agents]
        for share in (0.35, 0.7):  # kill one worker, then the other
            await asyncio.sleep(seconds * share - (seconds - (until - time.monotonic())))
            pid = (await worker_pids(server))[crashes % 2]
            os.kill(pid, signal.SIGKILL)
            crashes += 1
        await asyncio.gather(*players)
        await godot.send({"type": "ping", "id": "last"})
        await godot.wait_type("pong", 10)  # every result before it was read by the gateway
        await godot.close()
    finally:
        for process in server.processes():  # and the last crash: the whole server at once
            process.kill()
        server.process.proc.wait(10)
    crashes += 1

    refused = game.refused()
    confirmed = {words: turn_id for words, turn_id in game.turn_ids.items() if turn_id not in refused}
    db = sqlite3.connect(data / FILE_NAME)
    journaled = {
        orjson.loads(fact)["turn_id"]
        for (fact,) in db.execute("select fact from facts")
        if b'"agent_turn_result"' in fact
    }
    db.close()
    lost = [words for words, turn_id in confirmed.items() if turn_id not in journaled]

    again = await asyncio.to_thread(ServerProcess, tmp_path, llm.url, data_dir=data)
    try:
        godot = await GodotPeer.connect(again.url, "?session=soak")
        for agent_id in agents:
            godot.specs[agent_id] = {"name": agent_id}
            await godot.turn(agent_id, f"recall {agent_id}")
        prompts = {
            user_text(r).rsplit("recall ", 1)[-1]: user_text(r)
            for r in await llm.requests()
            if "recall " in user_text(r)
        }
        await godot.close()
    finally:
        again.stop()
    forgotten = [
        words
        for agent_id in agents
        for words in game.confirmed.get(agent_id, [])[-CHECKED_IN_PROMPT:]
        if game.turn_ids[words] not in refused and words not in prompts[agent_id]
    ]
    print(
        f"\nsoak: {seconds} s, {len(game.turn_ids)} turns played, {len(confirmed)} confirmed, "
        f"{len(refused)} results refused, {crashes} crashes injected, {len(lost)} confirmed turns lost"
    )
    assert len(confirmed) > NPCS * 3
    assert not lost, f"confirmed turns missing from the journal: {lost[:10]}"
    assert not forgotten, f"confirmed turns missing from the next prompt: {forgotten[:10]}"
