"""Reliability end to end: a worker killed mid-turn, any other process of the service killed, a
whole server killed and restarted, a reconnect, two sessions side by side, the limits, and idle
agents deactivated and restored.

Each test starts its own server (they kill processes or restart), with its own data directory;
the scripted LLM is shared. History is checked where it matters: in the prompt the LLM receives.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import time

import aiohttp
import orjson
import psutil
import pytest

from tests.conftest import TOKEN, ServerProcess
from tests.godot_peer import END_TYPES, GodotPeer
from tests.test_turns import check_turn_order, user_text

pytestmark = pytest.mark.timeout(120)
SLOW = {"content": "<say>" + " ".join(f"word{n}" for n in range(200)) + "</say>", "tokens_per_s": 20}


async def health(server: ServerProcess) -> dict:
    return await server.health()


async def confirmed_turn(godot: GodotPeer, llm, agent_id: str, words: str) -> None:
    """A turn that says ``words``, played and confirmed as a game would."""
    await llm.script({"content": f"<say>{words}</say>", "match": words})
    frames = await godot.turn(agent_id, f"say {words}")
    assert frames[-1].get("reason") == "completed", frames
    await godot.confirm(frames)


async def prompt_of_next_turn(godot: GodotPeer, llm, agent_id: str) -> str:
    """Run one more turn and return everything but the system part of the prompt it sent."""
    await llm.script({"content": "<say>ok</say>", "match": "what do you remember"})
    before = len(await llm.requests())
    frames = await godot.turn(agent_id, "what do you remember")
    assert frames[-1]["type"] in END_TYPES
    requests = await llm.requests()
    assert len(requests) > before
    return user_text(requests[-1])


async def victim_and_bystander_streaming(godot: GodotPeer, llm) -> tuple[int, str]:
    """Agents ``victim`` and ``bystander`` both mid-tag in a long turn; returns the index of the
    first frame since, and the victim's turn id."""
    await llm.script({**SLOW, "match": "keep talking"}, {**SLOW, "match": "go on"})
    start = len(godot.frames)
    await godot.interact("victim", "keep talking")
    await godot.interact("bystander", "go on")
    for agent_id in ("victim", "bystander"):
        await godot.wait_type("agent_tag_chunk", 10, start, agent_id=agent_id)
    victim_turn = next(
        f["turn_id"] for f in godot.frames[start:] if f["type"] == "agent_turn_started" and f["agent_id"] == "victim"
    )
    return start, victim_turn


async def victim_lost(godot: GodotPeer, start: int, turn_id: str) -> list[dict]:
    """Wait for the victim's ``turn_id`` to end as a lost worker's turn does (and no other turn
    since ``start``); return its frames."""
    finished = await godot.wait_type("agent_turn_finished", 10, start, turn_id=turn_id)
    assert finished["reason"] == "error"
    frames = godot.turn_frames(turn_id)
    check_turn_order(frames)  # the open tag was closed before the end
    lost = [f for f in godot.frames[start:] if f["type"] == "error" and f["code"] == "worker_lost"]
    assert [f["ref"] for f in lost] == [{"agent_id": "victim", "turn_id": turn_id}]  # the bystander's goes on
    return frames


async def test_a_killed_worker_is_replaced_and_only_its_agents_notice(fresh, llm):
    server = await fresh(workers=2)
    godot = await fresh.connect(server)
    godot.specs.update(victim={"name": "Vic"}, bystander={"name": "Bea"})
    await confirmed_turn(godot, llm, "victim", "alpha beta")  # victim on worker 0 (least loaded first)
    before = await health(server)
    assert before["worker_agents"] == [1, 0] and len(before["worker_pids"]) == 2

    # Both agents stream; the victim's worker is killed mid-tag.
    start, victim_turn = await victim_and_bystander_streaming(godot, llm)
    killed_at = time.monotonic()
    os.kill(before["worker_pids"][0], signal.SIGKILL)
    frames = await victim_lost(godot, start, victim_turn)
    while (replaced := await health(server))["worker_pids"][0] == before["worker_pids"][0]:
        assert time.monotonic() - killed_at < 10, "the worker was not replaced within 10 s"
        await asyncio.sleep(0.05)
    recovery_s = time.monotonic() - killed_at
    print(f"worker replaced {recovery_s:.2f} s after kill -9")
    assert replaced["worker_pids"][1] == before["worker_pids"][1]

    # The bystander on the other worker streams on undisturbed.
    bystander_end = await godot.wait_for(lambda f: f["type"] in END_TYPES and f["agent_id"] == "bystander", 30, start)
    assert bystander_end.get("reason") == "completed"
    # The victim comes back with its history, and can confirm what it played before the kill.
    await godot.confirm(frames, status="interrupted")
    remembered = await prompt_of_next_turn(godot, llm, "victim")
    assert "alpha beta" in remembered and "<say>word0" in remembered
    assert not [f for f in godot.frames[start:] if f["type"] == "error" and f["code"] != "worker_lost"]


def service_processes(server: ServerProcess) -> dict[str, psutil.Process | list[psutil.Process]]:
    """Each process of the service by its role, found from the gateway (the HTTP listener)."""
    [gateway] = [
        psutil.Process(c.pid)
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port and c.pid
    ]
    admin = gateway.parent()
    others = [process for process in admin.children() if process.pid != gateway.pid]
    [pool] = [process for process in others + gateway.children() if process.children()]  # the logger has none
    return {
        "run.py": psutil.Process(server.process.proc.pid),
        "admin": admin,
        "gateway": gateway,
        "pool": pool,
        "workers": pool.children(),
        "logger": [process for process in others if process.pid != pool.pid],
    }


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


async def test_a_killed_pool_is_replaced_with_its_workers_and_a_crash_loop_stops_the_service(fresh, llm):
    server = await fresh(workers=2)
    godot = await fresh.connect(server)
    godot.specs["victim"] = {"name": "Vic"}
    await confirmed_turn(godot, llm, "victim", "gamma delta")
    before = service_processes(server)
    await llm.script({**SLOW, "match": "keep talking"})
    start = len(godot.frames)
    await godot.interact("victim", "keep talking")
    await godot.wait_type("agent_tag_chunk", 10, start)
    turn_id = next(f["turn_id"] for f in godot.frames[start:] if f["type"] == "agent_turn_started")
    killed_at = time.monotonic()
    before["pool"].kill()

    # The running turn ends as on a lost worker; the old workers died with their pool.
    finished = await godot.wait_type("agent_turn_finished", 15, start, turn_id=turn_id)
    assert finished["reason"] == "error"
    assert [f["ref"] for f in godot.frames[start:] if f["type"] == "error"] == [
        {"agent_id": "victim", "turn_id": turn_id}
    ]
    print(f"kill -9 of the pool: the turn ended {time.monotonic() - killed_at:.2f} s later")
    deadline = time.monotonic() + 10
    while left := running([before["pool"], *before["workers"]]):
        assert time.monotonic() < deadline, f"the dead pool's workers still run: {left}"
        await asyncio.sleep(0.05)
    old_pids = {w.pid for w in before["workers"]}
    deadline = time.monotonic() + 30
    while len(set((state := await health(server)).get("worker_pids") or ()) - old_pids) < 2:
        assert time.monotonic() < deadline, f"the new pool's workers did not come up: {state}"
        await asyncio.sleep(0.05)
    after = service_processes(server)
    assert after["gateway"].pid == before["gateway"].pid and server.process.proc.poll() is None
    assert len(after["workers"]) == 2
    assert state["status"] == "ok" and sorted(state["worker_pids"]) == sorted(w.pid for w in after["workers"])
    # The NPC comes back with its history, on the same connection.
    remembered = await prompt_of_next_turn(godot, llm, "victim")
    assert "gamma delta" in remembered and "keep talking" in remembered

    # A replacement that dies at once too: a crash loop, the service stops loudly and entirely.
    everything = server.processes()
    killed_at = time.monotonic()
    after["pool"].kill()
    code = await asyncio.to_thread(server.process.proc.wait, 30)
    print(f"kill -9 of the new pool: run.py exited {code} after {time.monotonic() - killed_at:.2f} s")
    log = server.server_log()
    assert code == 1 and "after it replaced another: stopping the service" in log
    assert "did not confirm their logs" not in log  # nobody waited for the dead pool's workers
    deadline = time.monotonic() + 15
    while left := running(everything):
        assert time.monotonic() < deadline, f"left running: {left}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("victim", ["gateway", "admin", "run.py"])
async def test_the_gateway_admin_or_run_py_killed_stops_it_all_and_run_py_says_so(fresh, victim):
    """No orphan ever: a dead gateway or admin stops the whole service and run.py exits 1 at once
    (for a process manager to restart it); a dead run.py takes every actor with it."""
    server = await fresh()
    godot = await fresh.connect(server)
    roles = service_processes(server)
    assert len(roles["workers"]) == 2 and len(roles["logger"]) == 1
    everything = server.processes()
    assert len(everything) == 7  # run.py, admin, logger, gateway, pool, 2 workers
    killed_at = time.monotonic()
    roles[victim].kill()
    code = await asyncio.to_thread(server.process.proc.wait, 30)
    print(f"kill -9 of the {victim}: run.py exited {code} after {time.monotonic() - killed_at:.2f} s")
    if victim == "run.py":
        assert code == -signal.SIGKILL
    else:
        assert code == 1, server.server_log()
        assert "exited: stopping the service (exit status 1" in server.server_log()
    deadline = time.monotonic() + 15
    while left := running(everything):
        assert time.monotonic() < deadline, f"left running after kill -9 of the {victim}: {left}"
        await asyncio.sleep(0.1)
    print(f"every process gone {time.monotonic() - killed_at:.2f} s after the kill")
    await asyncio.wait_for(godot.closed.wait(), 10)


async def test_healthz_shows_no_port_or_pid_without_the_token(fresh):
    """A health checker gets the status, why not ok, and counts; pids and node names (by default
    host:admin_port) only with the token, and never when the server has none."""
    with_token, without = await asyncio.gather(fresh(), fresh(GAME_AGENT_TOKEN=""))
    async with aiohttp.ClientSession() as http:
        for server, tries in (
            (with_token, [{}, {"headers": {"Authorization": "Bearer wrong"}}, {"params": {"token": "wrong"}}]),
            (without, [{}, {"headers": {"Authorization": f"Bearer {TOKEN}"}}]),
        ):
            secrets_of_server = [str(server.admin_port)] + [str(p.pid) for p in server.processes()]
            for how in tries:
                async with http.get(server.url + "/healthz", **how) as response:
                    assert response.status == 200
                    text = await response.text()
                body = orjson.loads(text)
                assert body["status"] == "ok" and body["problems"] == [] and body["workers"] == 2, body
                assert "worker_pids" not in body
                assert [set(node) for node in body["nodes"]] == [{"workers", "agents", "frames"}]
                assert not [s for s in secrets_of_server if s in text], (how, text)
    detailed = await with_token.health()
    workers = service_processes(with_token)["workers"]
    assert sorted(detailed["worker_pids"]) == sorted(w.pid for w in workers)
    assert detailed["nodes"][0]["name"].endswith(f":{with_token.admin_port}")


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MB filesystem (tmpfs), mounted for the test and unmounted after (needs root)."""
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs (root and CAP_SYS_ADMIN needed): {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk) -> None:
    """Write a file until the filesystem has no byte left."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


async def test_a_full_disk_is_told_to_the_game_and_to_healthz_and_the_npc_goes_on(small_disk, fresh, llm):
    server = await fresh(data_dir=small_disk)
    godot = await fresh.connect(server)
    godot.specs["scribe"] = {"name": "Scribe"}
    await confirmed_turn(godot, llm, "scribe", "before the flood")
    assert "before the flood" in await prompt_of_next_turn(godot, llm, "scribe")  # the NPC has it: it is durable
    fill(small_disk)
    start = len(godot.frames)
    await godot.send({"type": "notification_event", "agent_id": "scribe", "event": {"text": "flood " + "x" * 5000}})
    error = await godot.wait_type("error", 10, start, code="journal_error")
    assert error["ref"] == {"type": "notification_event", "agent_id": "scribe"}, error
    print("the game is told:", error["message"])
    full = await health(server)
    assert full["status"] == "unavailable" and full["problems"][0].startswith("the journal cannot write"), full
    async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as response:
        assert response.status == 503

    (small_disk / "filler").unlink()  # room again: the next looks at /healthz try a write
    deadline = time.monotonic() + 10
    while (state := await health(server))["status"] != "ok":
        assert time.monotonic() < deadline, f"/healthz did not recover: {state}"
        await asyncio.sleep(0.1)
    # The NPC went on with the fact it was given, and with what was saved before.
    remembered = await prompt_of_next_turn(godot, llm, "scribe")
    assert "before the flood" in remembered and "flood xxx" in remembered
    assert [f["code"] for f in godot.frames[start:] if f["type"] == "error"] == ["journal_error"]


async def test_a_server_killed_and_restarted_has_every_confirmed_turn(fresh, llm, tmp_path):
    data = tmp_path / "kept-data"
    server = await fresh(data_dir=data)
    godot = await fresh.connect(server, "?session=save1")
    godot.specs["keeper"] = {"name": "Kee"}
    for words in ("first memory", "second memory", "third memory"):
        await confirmed_turn(godot, llm, "keeper", words)
    await godot.send({"type": "notification_event", "agent_id": "keeper", "event": {"text": "a storm rises"}})
    await godot.send({"type": "ping", "id": 1})
    await godot.wait_type("pong", 5)
    await godot.close()
    for process in server.processes():  # a power cut, as far as the server can tell
        process.kill()
    server.process.proc.wait(10)

    again = await fresh(data_dir=data)
    assert (await health(again))["known_agents"] == 1
    godot = await fresh.connect(again, "?session=save1")
    godot.specs["keeper"] = {"name": "Kee"}
    remembered = await prompt_of_next_turn(godot, llm, "keeper")
    for words in ("first memory", "second memory", "third memory", "a storm rises"):
        assert words in remembered
    # Another session of the same journal knows nothing of it.
    other = await fresh.connect(again, "?session=save2")
    await other.send(
        {"type": "agent_turn_result", "agent_id": "keeper", "turn_id": "x", "status": "completed", "tags": []}
    )
    assert (await other.wait_type("error", 5))["code"] == "unknown_agent"


async def test_reconnect_keeps_history_and_ends_the_dropped_turn(fresh, llm):
    server = await fresh()
    godot = await fresh.connect(server, "?session=rc")
    godot.specs["mira"] = {"name": "Mira"}
    await confirmed_turn(godot, llm, "mira", "potions for sale")
    await llm.script({**SLOW, "match": "long story"})
    start = len(godot.frames)
    await godot.interact("mira", "long story")
    await godot.wait_type("agent_tag_chunk", 10, start)
    await godot.close()  # the game drops mid-turn
    # The LLM stream is closed (200 words at 20/s would run 10 s more if it were not).
    deadline = asyncio.get_running_loop().time() + 8
    while (await llm.requests())[-1]["end"] is None:
        assert asyncio.get_running_loop().time() < deadline, "the dropped turn's LLM stream was not closed"
        await asyncio.sleep(0.02)
    assert (await llm.requests())[-1]["end"] == "client_closed"

    godot = await fresh.connect(server, "?session=rc")
    godot.specs["mira"] = {"name": "Mira"}
    assert "potions for sale" in await prompt_of_next_turn(godot, llm, "mira")


async def test_two_sessions_never_see_each_other(fresh, llm):
    server = await fresh()
    north, south = await fresh.connect(server, "?session=north"), await fresh.connect(server, "?session=south")
    for peer, words in ((north, "northern secret"), (south, "southern secret")):
        peer.specs["guard"] = {"name": "Guard"}
        await confirmed_turn(peer, llm, "guard", words)
    assert not [f for f in north.frames if "southern" in str(f)]
    assert not [f for f in south.frames if "northern" in str(f)]
    remembered = await prompt_of_next_turn(north, llm, "guard")
    assert "northern secret" in remembered and "southern secret" not in remembered
    assert (await health(server))["agents"] == 2


async def test_limits_answer_with_errors_and_the_connection_goes_on(fresh, llm):
    server = await fresh(
        GAME_AGENT_RATE_LIMIT_BURST="3", GAME_AGENT_RATE_LIMIT_EVENTS_PER_S="0.5", GAME_AGENT_MAX_AGENTS_PER_SESSION="2"
    )
    godot = await fresh.connect(server)
    for n in range(5):
        await godot.interact(f"npc{n % 2}", "hi")
    limited = await godot.wait_type("error", 10, code="rate_limited")
    assert limited["ref"]["type"] == "interaction_event"
    await godot.send({"type": "notification_event", "agent_ids": ["npc0", "npc2"], "event": {"text": "rain"}})
    too_many = await godot.wait_type("error", 10, code="too_many_agents")
    assert too_many["ref"]["agent_id"] == "npc2"
    assert sum(f["type"] == "error" and f["code"] == "rate_limited" for f in godot.frames) == 2
    await godot.send({"type": "ping", "id": "still here"})
    assert (await godot.wait_type("pong", 5))["id"] == "still here"


async def test_idle_agents_are_deactivated_and_come_back_with_their_history(fresh, llm):
    server = await fresh(GAME_AGENT_AGENT_IDLE_S="1")
    godot = await fresh.connect(server)
    godot.specs["sleepy"] = {"name": "Sleepy"}
    await confirmed_turn(godot, llm, "sleepy", "remember the red door")
    deadline = time.monotonic() + 10
    while (await health(server))["agents"]:
        assert time.monotonic() < deadline, "the idle agent was not deactivated"
        await asyncio.sleep(0.2)
    assert (await health(server))["known_agents"] == 1
    # Its next messages arrive in order on whichever worker it lands on.
    await godot.send({"type": "notification_event", "agent_id": "sleepy", "event": {"text": "one"}})
    await godot.send({"type": "notification_event", "agent_id": "sleepy", "event": {"text": "two"}})
    remembered = await prompt_of_next_turn(godot, llm, "sleepy")
    assert "remember the red door" in remembered
    assert remembered.index("one") < remembered.index("two") < remembered.index("what do you remember")
