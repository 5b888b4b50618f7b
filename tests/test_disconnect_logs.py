"""Disconnect logs are bounded, off the loop and cleaned up, end to end: a disconnect logs only the
agents whose history changed since their last log, at most ``log_max_agents_per_disconnect``; a
log stuck on the disk stalls no other session; logs older than ``log_retention_days`` (and spools
left behind) are deleted, and the oldest ones over ``log_max_bytes``."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.godot_peer import GodotPeer

pytestmark = pytest.mark.timeout(120)


async def until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def closed_after_notifying(server, session: str, agent_ids: list[str], extra: list[dict] = ()) -> None:
    peer = await GodotPeer.connect(server.url, server.query(f"?session={session}"))
    for start in range(0, len(agent_ids), 200):
        await peer.send({"type": "notification_event", "agent_ids": agent_ids[start : start + 200], "event": {}})
    for frame in extra:
        await peer.send(frame)
    await peer.send({"type": "ping", "id": "sent"})
    await peer.wait_type("pong", 10, id="sent")
    await peer.close()


async def test_a_disconnect_logs_only_changed_agents_and_at_most_the_cap(fresh, tmp_path):  # noqa: F811
    server = await fresh(workers=1, GAME_AGENT_LOG_MAX_AGENTS_PER_DISCONNECT="50")
    logs = server.log_dir

    def written(session: str) -> list[str]:
        return sorted(p.name for p in (logs / session).glob("*/*.conversation.json"))

    async def barrier(n: int) -> None:
        """The worker writes logs in order: once this session's log is there, all before it are."""
        await closed_after_notifying(server, f"barrier{n}", ["marker"])
        await until(lambda: written(f"barrier{n}"), "the barrier's log was never written")

    await closed_after_notifying(server, "flood", [f"npc{n:03}" for n in range(600)])
    await barrier(1)
    first = written("flood")
    assert len(first) == 50, len(first)  # the 50 most recently changed
    assert first == [f"npc{n:03}.conversation.json" for n in range(550, 600)]
    assert len(list((logs / "flood").glob("*/*.llm_input.json"))) == 50
    assert "logging the 50 most recently changed of 600 agents" in server.server_log()

    # Next connection: npc000 gets a notification, npc550 (logged already) only a refused snapshot.
    snapshot = {"type": "agent_state_snapshot", "agent_id": "npc550", "request_id": "made-up", "state": {}}
    await closed_after_notifying(server, "flood", ["npc000"], [snapshot])
    await barrier(2)
    folders = sorted({p.parent.name for p in (logs / "flood").glob("*/*.conversation.json")})
    assert len(folders) == 2
    assert sorted(p.name for p in (logs / "flood" / folders[-1]).glob("*")) == [
        "npc000.conversation.json",
        "npc000.llm_input.json",
    ]


async def test_old_logs_and_spools_are_deleted_at_start(fresh, tmp_path):  # noqa: F811
    logs = tmp_path / "kept-logs"
    month_ago = time.time() - 30 * 86400
    old = [
        logs / "tavern" / "c1" / "bram.conversation.json",
        logs / "tavern" / "c1" / "bram.llm_input.json",
        logs / "tavern" / ".llm_input" / "bram.w0.3.jsonl",  # a spool a crashed worker left
    ]
    recent = logs / "tavern" / "c2" / "bram.conversation.json"
    foreign = logs / "operator-notes.txt"  # not ours: never deleted
    for path in (*old, recent, foreign):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    for path in (*old, foreign, old[0].parent):
        os.utime(path, (month_ago, month_ago))
    await fresh(workers=1, GAME_AGENT_LOG_DIR=str(logs))  # log_retention_days: 14 by default
    await until(lambda: not (logs / "tavern" / "c1").exists(), "logs older than log_retention_days were kept")
    await until(lambda: not old[2].exists(), "a spool older than log_retention_days was kept")
    assert recent.exists() and foreign.exists()


async def test_logs_stay_within_log_max_bytes(fresh, tmp_path):  # noqa: F811
    logs, budget = tmp_path / "kept-logs", 20_000
    older_first = [logs / "tavern" / f"c{n}" / "bram.conversation.json" for n in range(10)]
    for n, path in enumerate(older_first):  # 50 KB of recent logs, 10 s apart
        path.parent.mkdir(parents=True)
        path.write_bytes(b" " * 5000)
        os.utime(path, (time.time() - 100 + 10 * n,) * 2)
    server = await fresh(workers=1, GAME_AGENT_LOG_DIR=str(logs), GAME_AGENT_LOG_MAX_BYTES=str(budget))
    await until(lambda: not older_first[5].exists(), "logs over log_max_bytes were kept")
    assert [path.exists() for path in older_first] == [False] * 6 + [True] * 4  # the oldest went first
    assert not older_first[0].parent.exists()

    def total() -> int:
        return sum(p.stat().st_size for p in logs.rglob("*.json"))

    for _ in range(60):  # connect, notify, close: unbounded, about 120 KB of logs
        await closed_after_notifying(server, "churn", ["victim"])
    await closed_after_notifying(server, "barrier", ["marker"])
    await until(lambda: list((logs / "barrier").glob("*/marker.conversation.json")), "the last log was not written")
    assert total() <= 2 * budget, total()


async def test_a_disconnect_log_stuck_on_the_disk_stalls_no_other_session(fresh, llm, tmp_path):  # noqa: F811
    logs = tmp_path / "kept-logs"
    stuck = logs / "stuck" / "c1" / "npc.conversation.json"  # the first connection's log of npc
    stuck.parent.mkdir(parents=True)
    os.mkfifo(stuck)  # opening it for writing blocks until someone reads: a disk that does not answer
    server = await fresh(workers=1, GAME_AGENT_LOG_DIR=str(logs))
    try:
        await closed_after_notifying(server, "stuck", ["npc"])
        calm = await fresh.connect(server, "?session=calm")
        calm.specs["sage"] = {"name": "Sage"}
        await llm.script({"content": "<say>All is well.</say>"})
        frames = await calm.turn("sage", "How are you?", timeout=20)  # on the same worker
        assert frames[-1]["type"] == "agent_turn_finished", frames[-1]
    finally:
        # Reading unblocks the writer (which, before the log thread, was the worker's loop).
        written = await asyncio.wait_for(asyncio.to_thread(stuck.read_bytes), 30)
    assert b'"agent_id": "npc"' in written
