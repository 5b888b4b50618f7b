"""Hostile frames are bounded, end to end: one frame cannot multiply in the journal, and the rate
limits hold per session, across reconnects, for interaction events, notifications and
continuing tool_results. Each refusal is an ``error`` frame; what was accepted stays."""

from __future__ import annotations

import pytest

from tests.godot_peer import GodotPeer
from tests.test_recovery import health

pytestmark = pytest.mark.timeout(120)


def journal_bytes(server) -> int:
    return sum(f.stat().st_size for f in server.data_dir.glob("journal.sqlite3*"))


async def settled(godot: GodotPeer, tag: str) -> list[dict]:
    """Every frame after a ping's pong: the frames the server answered before it (it answers in order)."""
    start = len(godot.frames)
    await godot.send({"type": "ping", "id": tag})
    await godot.wait_type("pong", 10, start, id=tag)
    return godot.frames[start:]


async def test_one_notification_cannot_multiply_in_the_journal(server, godot):
    before, known = journal_bytes(server), (await health(server))["known_agents"]
    text = "x" * 10_000
    cases = {
        "too_many_recipients": [f"crowd{n}" for n in range(300)],  # over max_notification_agents (256)
        "journal_limit": [f"crowd{n}" for n in range(200)],  # 200 x 10 KB over max_journal_bytes_per_frame
    }
    for code, agent_ids in cases.items():
        start = len(godot.frames)
        await godot.send({"type": "notification_event", "agent_ids": agent_ids, "event": {"text": text}})
        refused = await godot.wait_type("error", 10, start, code=code)
        assert refused["ref"] == {"type": "notification_event"}
    start = len(godot.frames)
    await godot.interact("crowd0", "y" * 100_000)  # over max_event_bytes (64 KiB)
    assert (await godot.wait_type("error", 10, start, code="event_too_large"))["ref"]["agent_id"] == "crowd0"
    assert not [f for f in await settled(godot, "refused") if f["type"] != "pong"]
    assert (await health(server))["known_agents"] == known, "a refused frame recorded something"
    # Within the limits, a notification reaches every recipient once: 256 small facts.
    await godot.send(
        {"type": "notification_event", "agent_ids": [f"ok{n}" for n in range(256)], "event": {"text": "rain"}}
    )
    assert not [f for f in await settled(godot, "accepted") if f["type"] != "pong"]
    assert (await health(server))["known_agents"] == known + 256
    assert journal_bytes(server) - before < 1_000_000


async def test_rate_limits_hold_per_session_across_reconnects(fresh, llm):  # noqa: F811
    server = await fresh(
        GAME_AGENT_RATE_LIMIT_BURST="3",
        GAME_AGENT_RATE_LIMIT_EVENTS_PER_S="0.001",
        GAME_AGENT_RATE_LIMIT_NOTIFICATIONS_BURST="4",
        GAME_AGENT_RATE_LIMIT_NOTIFICATIONS_PER_S="0.001",
        GAME_AGENT_MAX_NOTIFICATION_AGENTS="4",
    )
    first = await fresh.connect(server, "?session=busy")
    for n in range(3):
        first.specs[f"npc{n}"] = {"name": f"Npc{n}"}
        started = len(first.frames)
        event_id = await first.interact(f"npc{n}", "hi")
        await first.wait_type("agent_turn_started", 10, started, event_id=event_id)
    await first.send({"type": "notification_event", "agent_ids": ["npc0", "npc1", "npc2", "npc3"], "event": {}})
    assert not [f for f in await settled(first, "burst used") if f["type"] == "error"]
    await first.close()

    again = await fresh.connect(server, "?session=busy")  # a reconnect brings no fresh burst
    await again.interact("npc0", "hi again")
    await again.send({"type": "notification_event", "agent_id": "npc1", "event": {"text": "rain"}})
    await again.send({"type": "tool_results", "agent_id": "npc2", "turn_id": "t", "results": [{"tool": "x"}]})
    limited = [f for f in await settled(again, "limited") if f["type"] == "error"]
    assert [(f["code"], f["ref"]["type"]) for f in limited] == [
        ("rate_limited", "interaction_event"),
        ("rate_limited", "notification_event"),
        ("rate_limited", "tool_results"),
    ], limited
    assert not [f for f in again.frames if f["type"] == "agent_turn_started"]
    # A tool result that starts no turn is not rate limited (here: refused as an unknown turn).
    start = len(again.frames)
    await again.send(
        {"type": "tool_results", "agent_id": "npc2", "turn_id": "t", "results": [{"tool": "x"}], "continue": False}
    )
    assert (await again.wait_type("error", 10, start))["code"] == "unknown_turn"

    other = await fresh.connect(server, "?session=calm")  # another session has its own limits
    other.specs["npc0"] = {"name": "Npc0"}
    event_id = await other.interact("npc0", "hi")
    await other.wait_type("agent_turn_started", 10, event_id=event_id)


async def test_journaled_bytes_are_rate_limited_per_session(fresh, llm):  # noqa: F811
    server = await fresh(
        GAME_AGENT_RATE_LIMIT_JOURNAL_BYTES_BURST="50000",
        GAME_AGENT_RATE_LIMIT_JOURNAL_BYTES_PER_S="1",
        GAME_AGENT_MAX_JOURNAL_BYTES_PER_FRAME="50000",
    )
    big = {"type": "notification_event", "agent_id": "bard", "event": {"text": "x" * 20_000}}
    first = await fresh.connect(server, "?session=chatty")
    await first.send(big)
    await first.send(big)
    assert not [f for f in await settled(first, "two") if f["type"] == "error"]  # 40 KB of 50 KB
    await first.close()
    again = await fresh.connect(server, "?session=chatty")
    await again.send(big)
    await again.send({"type": "notification_event", "agent_id": "bard", "event": {"text": "small"}})
    limited = [f for f in await settled(again, "third") if f["type"] == "error"]
    assert [(f["code"], f["ref"]) for f in limited] == [("rate_limited", {"type": "notification_event"})], limited
    assert "journaled bytes" in limited[0]["message"]
