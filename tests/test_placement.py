"""Placement "dedicated" end to end: each NPC in a worker process of its own, started on its first
message, retired when the NPC is deactivated, ended turns and history back after a crash, and
bounded by ``max_dedicated_workers``. (tests/test_turns.py runs the protocol under both placements.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

from tests.conftest import ServerProcess
from tests.godot_peer import END_TYPES
from tests.test_recovery import (
    SLOW,
    confirmed_turn,
    prompt_of_next_turn,
    service_processes,
    victim_and_bystander_streaming,
    victim_lost,
)
from tests.test_turns import check_turn_order, user_text

pytestmark = pytest.mark.timeout(120)
DEDICATED = {"GAME_AGENT_PLACEMENT": "dedicated"}


async def until(condition, what: str, timeout: float = 20) -> None:
    """Wait until ``await condition()`` is true."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def worker_pids(server: ServerProcess) -> list[int]:
    return (await server.health())["worker_pids"]


async def no_workers(server: ServerProcess) -> bool:
    return not await worker_pids(server)


async def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def socket_files(server: ServerProcess) -> int:
    """Unix sockets the server's processes hold open (the gateway's end of each worker's stream)."""
    return sum(len(proc.net_connections(kind="unix")) for proc in server.processes())


async def test_the_first_messages_wait_for_their_worker_in_order(fresh, llm):
    server = await fresh(**DEDICATED)
    godot = await fresh.connect(server)
    godot.specs["eager"] = {"name": "Eager"}
    await llm.script({**SLOW, "match": "first words"}, {"content": "<say>At last.</say>", "match": "second words"})
    assert await worker_pids(server) == []
    # All sent at once, before the NPC's process exists: none is lost, and they arrive in order.
    first = await godot.interact("eager", "first words")
    await godot.send({"type": "notification_event", "agent_id": "eager", "event": {"text": "a bell rings"}})
    second = await godot.interact("eager", "second words")
    first_turn = (await godot.wait_type("agent_turn_started", 20, event_id=first))["turn_id"]
    interrupted = await godot.wait_type("agent_turn_interrupted", 20, turn_id=first_turn)
    assert interrupted["by_event_id"] == second
    started = await godot.wait_type("agent_turn_started", 20, event_id=second)
    end = await godot.wait_for(lambda f: f["type"] in END_TYPES and f["turn_id"] == started["turn_id"], 20)
    assert end["reason"] == "completed"
    check_turn_order(godot.turn_frames(interrupted["turn_id"]))
    prompt = user_text((await llm.requests())[-1])
    assert prompt.index("first words") < prompt.index("a bell rings") < prompt.index("second words")
    assert len(await worker_pids(server)) == 1


async def test_a_deactivated_npc_s_process_ends_and_it_comes_back_with_its_history(fresh, llm):
    server = await fresh(GAME_AGENT_AGENT_IDLE_S="1", **DEDICATED)
    godot = await fresh.connect(server)
    godot.specs["sleepy"] = {"name": "Sleepy"}
    baseline = (len(server.processes()), socket_files(server))
    await confirmed_turn(godot, llm, "sleepy", "remember the red door")
    (pid,) = await worker_pids(server)
    # Idle for agent_idle_s: its process ends, its stream is closed at both ends, nothing is left.
    await until(lambda: no_workers(server), "the idle NPC's worker did not end")
    await until(lambda: process_gone(pid), "the idle NPC's worker process did not end")
    health = await server.health()
    assert health["workers"] == 0 and health["agents"] == 0 and health["known_agents"] == 1
    assert (len(server.processes()), socket_files(server)) == baseline
    assert "worker 0 retires: agent sleepy of session" in server.server_log()
    # Its next message starts a new process, which gets its history first.
    remembered = await prompt_of_next_turn(godot, llm, "sleepy")
    assert "remember the red door" in remembered
    (new_pid,) = await worker_pids(server)
    assert new_pid != pid


async def test_a_killed_worker_ends_its_turn_and_its_npc_comes_back(fresh, llm):
    server = await fresh(**DEDICATED)
    godot = await fresh.connect(server)
    godot.specs.update(victim={"name": "Vic"}, bystander={"name": "Bea"})
    await confirmed_turn(godot, llm, "victim", "alpha beta")
    start, victim_turn = await victim_and_bystander_streaming(godot, llm)
    victim_pid, bystander_pid = await worker_pids(server)  # the victim's came first: slot 0
    os.kill(victim_pid, signal.SIGKILL)
    await victim_lost(godot, start, victim_turn)
    # Not replaced: only the bystander's process runs, streaming on undisturbed.
    assert await worker_pids(server) == [bystander_pid]
    bystander_end = await godot.wait_for(lambda f: f["type"] in END_TYPES and f["agent_id"] == "bystander", 30, start)
    assert bystander_end["reason"] == "completed"
    # The victim's next message starts a process of its own again, with its history.
    assert "alpha beta" in await prompt_of_next_turn(godot, llm, "victim")
    assert victim_pid not in await worker_pids(server) and len(await worker_pids(server)) == 2


async def test_past_max_dedicated_workers_an_npc_is_refused_until_one_is_free(fresh, llm):
    server = await fresh(GAME_AGENT_MAX_DEDICATED_WORKERS="2", GAME_AGENT_AGENT_IDLE_S="1", **DEDICATED)
    godot = await fresh.connect(server)
    for agent_id in ("one", "two", "three"):
        godot.specs[agent_id] = {"name": agent_id.title()}
    # Two NPCs in long turns hold both workers (an NPC in a turn is never deactivated).
    await llm.script({**SLOW, "match": "busy one"}, {**SLOW, "match": "busy two"})
    turns = [await godot.interact("one", "busy one"), await godot.interact("two", "busy two")]
    for event_id in turns:
        await godot.wait_type("agent_turn_started", 20, event_id=event_id)
    start = len(godot.frames)
    refused_event = await godot.interact("three", "let me in")
    refused = await godot.wait_type("error", 10, start, code="too_many_workers")
    assert refused["ref"] == {"type": "interaction_event", "agent_id": "three", "event_id": refused_event}
    assert "max_dedicated_workers" in refused["message"]
    assert not [f for f in godot.frames[start:] if f.get("agent_id") == "three" and f["type"] != "error"]
    assert (await server.health())["known_agents"] == 2  # nothing of it was recorded
    # Once a turn ends and its NPC idles out, its worker is free for the third.
    for event_id in turns:
        started = await godot.wait_type("agent_turn_started", 20, event_id=event_id)
        await godot.wait_for(lambda f, t=started["turn_id"]: f["type"] in END_TYPES and f["turn_id"] == t, 30)
    await until(lambda: no_workers(server), "the idle NPCs' workers did not end")
    await llm.script({"content": "<say>Finally.</say>", "match": "let me in"})
    frames = await godot.turn("three", "let me in")
    assert frames[-1]["reason"] == "completed"


async def test_a_dead_pool_takes_the_dedicated_workers_and_their_npcs_come_back(fresh, llm):
    server = await fresh(**DEDICATED)
    godot = await fresh.connect(server)
    godot.specs.update(survivor={"name": "Sur"}, newcomer={"name": "New"})
    await confirmed_turn(godot, llm, "survivor", "gamma delta")
    before = service_processes(server)
    before["pool"].kill()  # its worker dies with it (PR_SET_PDEATHSIG)
    await until(lambda: no_workers(server), "the dead pool's worker is still counted")
    # A new NPC at once, maybe before the new pool is there: its worker is asked of the new pool.
    await llm.script({"content": "<say>Hello.</say>", "match": "newcomer here"})
    frames = await godot.turn("newcomer", "newcomer here")
    assert frames[-1]["reason"] == "completed"
    assert "gamma delta" in await prompt_of_next_turn(godot, llm, "survivor")
    after = service_processes(server)
    assert after["pool"].pid != before["pool"].pid and len(after["workers"]) == 2
    assert not {worker.pid for worker in after["workers"]} & {worker.pid for worker in before["workers"]}
