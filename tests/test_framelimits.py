"""What one frame may cost (core.framelimits): each limit refuses the whole frame with its code."""

from __future__ import annotations

import pytest

from core import protocol as p
from core.framelimits import FrameLimits

LIMITS = FrameLimits(max_notification_agents=3, max_event_bytes=100, max_journal_bytes_per_frame=250)


def notification(n: int, text: str) -> p.NotificationEvent:
    return p.NotificationEvent(tuple(f"a{i}" for i in range(n)), {"text": text})


def refusal(message: p.AgentMessage, frame_bytes: int) -> dict:
    with pytest.raises(p.ProtocolError) as refused:
        LIMITS.journal_bytes(message, frame_bytes)
    return refused.value.frame()


def test_within_the_limits_the_journal_bytes_are_counted():
    assert LIMITS.journal_bytes(notification(3, "x" * 50), 500) == 3 * 61  # the event, once per recipient
    assert LIMITS.journal_bytes(p.AgentTurnResult("a", "t", "completed", []), 250) == 250  # the frame
    assert LIMITS.journal_bytes(p.AgentStateSnapshot("r", "a", {}), 10_000) == 0  # never journaled


def test_each_limit_has_its_code():
    assert refusal(notification(4, ""), 100)["code"] == p.TOO_MANY_RECIPIENTS
    assert refusal(p.InteractionEvent("a", None, {"text": "x" * 100}), 150)["code"] == p.EVENT_TOO_LARGE
    assert refusal(notification(3, "x" * 80), 300)["code"] == p.JOURNAL_LIMIT  # 3 x 93 bytes
    assert refusal(p.ToolResults("a", "t", [{"tool": "x"}]), 251)["code"] == p.JOURNAL_LIMIT


def test_refusals_name_what_they_concern():
    assert refusal(notification(4, ""), 100)["ref"] == {"type": "notification_event"}
    refused = refusal(p.InteractionEvent("bram", None, {"text": "x" * 100}), 150)
    assert refused["ref"] == {"type": "interaction_event", "agent_id": "bram"}
    assert "max_event_bytes" in refused["message"]
