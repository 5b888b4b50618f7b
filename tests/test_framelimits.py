"""What one frame may cost (core.framelimits): each limit refuses the whole frame with its code."""

from __future__ import annotations

from core import protocol as p
from core.framelimits import FrameLimits

LIMITS = FrameLimits(max_notification_agents=3, max_event_bytes=100, max_journal_bytes_per_frame=250)


def notification(n: int, text: str) -> p.NotificationEvent:
    return p.NotificationEvent(tuple(f"a{i}" for i in range(n)), {"text": text})


def test_within_the_limits_nothing_is_refused():
    assert LIMITS.refusal(notification(3, "x" * 50), 500) is None
    assert LIMITS.refusal(p.AgentTurnResult("a", "t", "completed", []), 250) is None


def test_each_limit_has_its_code():
    assert LIMITS.refusal(notification(4, ""), 100)["code"] == p.TOO_MANY_RECIPIENTS
    assert LIMITS.refusal(p.InteractionEvent("a", None, {"text": "x" * 100}), 150)["code"] == p.EVENT_TOO_LARGE
    assert LIMITS.refusal(notification(3, "x" * 80), 300)["code"] == p.JOURNAL_LIMIT  # 3 x 93 bytes
    assert LIMITS.refusal(p.ToolResults("a", "t", [{"tool": "x"}]), 251)["code"] == p.JOURNAL_LIMIT


def test_refusals_name_what_they_concern():
    assert LIMITS.refusal(notification(4, ""), 100)["ref"] == {"type": "notification_event"}
    refused = LIMITS.refusal(p.InteractionEvent("bram", None, {"text": "x" * 100}), 150)
    assert refused["ref"] == {"type": "interaction_event", "agent_id": "bram"}
    assert "max_event_bytes" in refused["message"]
