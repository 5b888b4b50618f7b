"""core.protocol: every inbound message validated, every bad frame named precisely."""

from __future__ import annotations

import orjson
import pytest

from core import protocol as p


def parse(frame) -> p.ClientMessage:
    return p.parse_frame(orjson.dumps(frame))


def rejects(frame, code: str, *words: str) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_frame(frame if isinstance(frame, (str, bytes)) else orjson.dumps(frame))
    assert info.value.code == code, info.value
    for word in words:
        assert word in info.value.message
    return info.value


def test_ping_keeps_any_id():
    assert parse({"type": "ping", "id": 7}) == p.Ping(7)
    assert parse({"type": "ping"}) == p.Ping(None)
    assert p.pong(7) == {"type": "pong", "id": 7}
    assert p.pong() == {"type": "pong"}


def test_interaction_event_keeps_known_event_fields_and_ignores_extras():
    msg = parse(
        {
            "type": "interaction_event",
            "agent_id": "guard",
            "event_id": "e1",
            "x": 1,
            "event": {"kind": "speech", "source": "player", "text": "hi", "data": {"a": [1]}, "junk": 2},
        }
    )
    assert msg == p.InteractionEvent(
        "guard", "e1", {"kind": "speech", "source": "player", "text": "hi", "data": {"a": [1]}}
    )
    assert parse({"type": "interaction_event", "agent_id": "g", "event": {}}).event_id is None


def test_notification_event_single_or_list_deduplicated():
    assert parse({"type": "notification_event", "agent_id": "a", "event": {"text": "rain"}}).agent_ids == ("a",)
    msg = parse({"type": "notification_event", "agent_ids": ["a", "b", "a"], "event": {"text": "rain"}})
    assert msg.agent_ids == ("a", "b")


def test_snapshot_turn_result_tool_results():
    snap = parse({"type": "agent_state_snapshot", "request_id": "r", "agent_id": "a", "state": {"name": "A"}})
    assert snap == p.AgentStateSnapshot("r", "a", {"name": "A"})
    result = parse(
        {
            "type": "agent_turn_result",
            "agent_id": "a",
            "turn_id": "t",
            "status": "interrupted",
            "tags": [{"tag": "say", "text": "Hi"}, {"tag": "action", "attrs": {"name": "wave", "n": 2}}],
        }
    )
    assert result.tags == [
        {"tag": "say", "attrs": {}, "text": "Hi"},
        {"tag": "action", "attrs": {"name": "wave", "n": "2"}, "text": ""},
    ]
    tools = parse(
        {
            "type": "tool_results",
            "agent_id": "a",
            "turn_id": "t",
            "results": [{"tool": "open", "output": "ok"}],
            "continue": False,
        }
    )
    assert tools.cont is False and tools.results == [{"tool": "open", "output": "ok"}]
    assert parse({"type": "tool_results", "agent_id": "a", "turn_id": "t", "results": []}).cont is True


@pytest.mark.parametrize(
    "frame, code, words",
    [
        ("{nope", p.BAD_JSON, ["not valid JSON"]),
        (b"\xff\xfe", p.BAD_JSON, []),
        ("[1, 2]", p.BAD_FRAME, ["a list"]),
        ('"text"', p.BAD_FRAME, ["a string"]),
        ({"no_type": 1}, p.BAD_FRAME, ["'type'"]),
        ({"type": 3}, p.BAD_FRAME, ["'type'"]),
        ({"type": "dance"}, p.UNKNOWN_TYPE, ["'dance'", "interaction_event"]),
        ({"type": "interaction_event", "event": {}}, p.MISSING_FIELD, ["agent_id"]),
        ({"type": "interaction_event", "agent_id": 5, "event": {}}, p.BAD_FIELD, ["agent_id", "a number"]),
        ({"type": "interaction_event", "agent_id": "", "event": {}}, p.BAD_FIELD, ["agent_id"]),
        ({"type": "interaction_event", "agent_id": "a"}, p.MISSING_FIELD, ["event"]),
        ({"type": "interaction_event", "agent_id": "a", "event": "hi"}, p.BAD_FIELD, ["event", "a string"]),
        ({"type": "interaction_event", "agent_id": "a", "event": {"text": 3}}, p.BAD_FIELD, ["event.text"]),
        ({"type": "interaction_event", "agent_id": "a", "event_id": 9, "event": {}}, p.BAD_FIELD, ["event_id"]),
        ({"type": "notification_event", "event": {}}, p.MISSING_FIELD, ["agent_ids"]),
        ({"type": "notification_event", "agent_ids": [], "event": {}}, p.BAD_FIELD, ["agent_ids"]),
        ({"type": "notification_event", "agent_ids": ["a", 2], "event": {}}, p.BAD_FIELD, ["agent_ids"]),
        ({"type": "agent_state_snapshot", "agent_id": "a", "state": {}}, p.MISSING_FIELD, ["request_id"]),
        ({"type": "agent_state_snapshot", "request_id": "r", "agent_id": "a", "state": []}, p.BAD_FIELD, ["state"]),
        ({"type": "agent_turn_result", "agent_id": "a", "turn_id": "t", "tags": []}, p.MISSING_FIELD, ["status"]),
        (
            {"type": "agent_turn_result", "agent_id": "a", "turn_id": "t", "status": "done", "tags": []},
            p.BAD_FIELD,
            ["completed"],
        ),
        (
            {"type": "agent_turn_result", "agent_id": "a", "turn_id": "t", "status": "completed"},
            p.MISSING_FIELD,
            ["tags"],
        ),
        (
            {"type": "agent_turn_result", "agent_id": "a", "turn_id": "t", "status": "completed", "tags": [1]},
            p.BAD_FIELD,
            ["tags[0]"],
        ),
        (
            {
                "type": "agent_turn_result",
                "agent_id": "a",
                "turn_id": "t",
                "status": "completed",
                "tags": [{"text": "x"}],
            },
            p.BAD_FIELD,
            ["tags[0].tag"],
        ),
        (
            {
                "type": "agent_turn_result",
                "agent_id": "a",
                "turn_id": "t",
                "status": "completed",
                "tags": [{"tag": "say", "text": 1}],
            },
            p.BAD_FIELD,
            ["tags[0].text"],
        ),
        (
            {"type": "tool_results", "agent_id": "a", "turn_id": "t", "results": [{"output": 1}]},
            p.BAD_FIELD,
            ["results[0].tool"],
        ),
        (
            {"type": "tool_results", "agent_id": "a", "turn_id": "t", "results": [], "continue": "yes"},
            p.BAD_FIELD,
            ["continue"],
        ),
    ],
)
def test_bad_frames_are_named(frame, code, words):
    rejects(frame, code, *words)


def test_error_ref_names_the_frame():
    error = rejects({"type": "agent_turn_result", "agent_id": "a", "turn_id": "t", "tags": []}, p.MISSING_FIELD)
    assert error.frame() == {
        "type": "error",
        "code": "missing_field",
        "message": error.message,
        "ref": {"type": "agent_turn_result", "agent_id": "a", "turn_id": "t"},
    }


def test_outbound_frames_carry_the_contract_fields():
    assert p.turn_started("a", "t", None) == {"type": "agent_turn_started", "agent_id": "a", "turn_id": "t"}
    assert p.turn_started("a", "t", "e")["event_id"] == "e"
    assert p.get_agent_state("r", "a", "e") == {
        "type": "get_agent_state",
        "request_id": "r",
        "agent_id": "a",
        "event_id": "e",
    }
    assert p.tag_open("a", "t", 0, "say", {}) == {
        "type": "agent_tag_open",
        "agent_id": "a",
        "turn_id": "t",
        "index": 0,
        "tag": "say",
        "attrs": {},
    }
    assert p.tag_chunk("a", "t", 0, "say", "x")["text"] == "x"
    assert p.tag_close("a", "t", 0, "say")["type"] == "agent_tag_close"
    assert p.turn_interrupted("a", "t", "new_event", "e2")["by_event_id"] == "e2"
    assert "usage" not in p.turn_finished("a", "t", "completed")
    assert p.turn_finished("a", "t", "completed", {"total_tokens": 3})["usage"] == {"total_tokens": 3}


def test_memory_frames():
    assert p.parse_frame('{"type":"memory_add","agent_id":"a","text":"t"}') == p.MemoryAdd("a", "t", False, "agent")
    add = '{"type":"memory_add","agent_id":"a","text":"t","pinned":true,"scope":"group:guard"}'
    assert p.parse_frame(add) == p.MemoryAdd("a", "t", True, "group:guard")
    forget = '{"type":"memory_forget","agent_id":"a","query":"key"}'
    assert p.parse_frame(forget) == p.MemoryForget("a", None, "key", "agent")
    assert p.parse_frame('{"type":"memory_list","agent_id":"a"}') == p.MemoryList("a", None, None)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "memory_add", "agent_id": "a", "text": "t", "scope": "group:"}, p.BAD_FIELD),
        ({"type": "memory_add", "agent_id": "a", "text": "t", "scope": 3}, p.BAD_FIELD),
        ({"type": "memory_add", "agent_id": "a"}, p.MISSING_FIELD),
        ({"type": "memory_forget", "agent_id": "a"}, p.MISSING_FIELD),
        ({"type": "memory_list", "agent_id": "a", "query": 5}, p.BAD_FIELD),
    ],
)
def test_bad_memory_frames_are_named(frame, code):
    with pytest.raises(p.ProtocolError) as caught:
        p.parse_frame(orjson.dumps(frame))
    assert caught.value.code == code
    assert caught.value.ref["type"] == frame["type"]
