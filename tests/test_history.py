"""History rendering: played tags back as XML, entries as merged chat messages."""

from __future__ import annotations

import pytest

from core.history import INTERRUPTED_NOTE, entry_size, render_tags, to_messages


def event(text, kind="speech", source="player", **more):
    return {"kind": "event", "event_id": "e1", "event": {"kind": kind, "source": source, "text": text, **more}}


def notification(text, kind="weather", **more):
    return {"kind": "notification", "event": {"kind": kind, "text": text, **more}}


def turn(*tags, status="completed"):
    return {"kind": "turn", "turn_id": "t1", "status": status, "tags": list(tags)}


def say(text):
    return {"tag": "say", "attrs": {}, "text": text}


def test_render_tags_escapes_text_and_attributes():
    tags = [say("Hi & bye <3 >"), {"tag": "action", "attrs": {"name": 'a"b<c&d>', "n": 2}, "text": ""}]
    assert render_tags(tags) == (
        '<say>Hi &amp; bye &lt;3 &gt;</say><action name="a&quot;b&lt;c&amp;d&gt;" n="2"></action>'
    )


def test_render_tags_without_attrs_or_text():
    assert render_tags([{"tag": "thought"}]) == "<thought></thought>"
    assert render_tags([]) == ""


def test_tool_call_renders_as_written():
    call = {"tag": "tool", "attrs": {"name": "open_door", "call_id": "c1"}, "text": '{"door": "north"}'}
    assert render_tags([call]) == '<tool name="open_door" call_id="c1">{"door": "north"}</tool>'


def test_consecutive_user_side_entries_merge():
    history = [
        notification("It starts to rain"),
        event("Hello there"),
        turn(say("Hi.")),
        {
            "kind": "tool_results",
            "turn_id": "t1",
            "results": [
                {"call_id": "c1", "tool": "open_door", "ok": True, "output": "opened"},
                {"tool": "look", "ok": False, "output": {"seen": ["wolf"]}},
                {"tool": "wait"},
            ],
        },
        event("Hm?", data={"volume": 3}),
    ]
    assert to_messages(history) == [
        {"role": "user", "content": "[notification: weather] It starts to rain\n[speech from player] Hello there"},
        {"role": "assistant", "content": "<say>Hi.</say>"},
        {
            "role": "user",
            "content": (
                "[tool result call_id=c1 tool=open_door ok=true] opened\n"
                '[tool result tool=look ok=false] {"seen":["wolf"]}\n'
                "[tool result tool=wait]\n"
                '[speech from player] Hm? {"volume":3}'
            ),
        },
    ]


@pytest.mark.parametrize(
    ("entry", "line"),
    [
        ({"kind": "event", "event": {}}, "[event]"),
        ({"kind": "event", "event_id": None, "event": {"source": "door"}}, "[event from door]"),
        ({"kind": "event", "event": {"kind": "bump", "data": [1, "é"]}}, '[bump] [1,"é"]'),
        ({"kind": "notification", "event": {"text": "Dusk."}}, "[notification] Dusk."),
        (
            {"kind": "notification", "event": {"kind": "time", "source": "world", "text": "Dusk."}},
            "[notification: time from world] Dusk.",
        ),
        ({"kind": "tool_results", "turn_id": "t", "results": []}, "[no tool results]"),
    ],
)
def test_user_side_lines(entry, line):
    assert to_messages([entry]) == [{"role": "user", "content": line}]


def test_interrupted_turn_is_noted_in_the_next_user_message():
    history = [event("Hello"), turn(say("Well, let me"), status="interrupted"), event("Look out!")]
    assert to_messages(history)[1:] == [
        {"role": "assistant", "content": "<say>Well, let me</say>"},
        {"role": "user", "content": f"{INTERRUPTED_NOTE}\n[speech from player] Look out!"},
    ]


def test_interrupted_note_never_lands_after_a_later_turn():
    history = [event("Hello"), turn(say("Well"), status="interrupted"), turn(say("Sorry."))]
    assert [message["content"] for message in to_messages(history)] == [
        "[speech from player] Hello",
        "<say>Well</say>",
        INTERRUPTED_NOTE,
        "<say>Sorry.</say>",
    ]


def test_history_ending_with_an_interrupted_turn_ends_with_the_note():
    history = [event("Hello"), turn(say("Well"), status="interrupted")]
    assert to_messages(history)[-1] == {"role": "user", "content": INTERRUPTED_NOTE}


def test_turn_without_tags_adds_no_empty_message():
    assert to_messages([event("Hi"), turn(), event("Hello?")]) == [
        {"role": "user", "content": "[speech from player] Hi"},
        {"role": "user", "content": "[speech from player] Hello?"},
    ]
    assert to_messages([event("Hi"), turn(status="interrupted")])[-1]["content"] == INTERRUPTED_NOTE


def test_unknown_entry_kind_is_a_bug():
    with pytest.raises(ValueError, match="unknown history entry kind 'memo'"):
        to_messages([{"kind": "memo"}])


def test_entry_size_bounds_the_rendered_content():
    history = [
        notification("Rain"),
        event("Hi"),
        turn(say("Hey"), status="interrupted"),
        event("Bye"),
        turn(say("Later & <soon>")),
    ]
    content = sum(len(message["content"]) for message in to_messages(history))
    assert content <= sum(map(entry_size, history)) <= content + len(history)


def test_a_turn_godot_has_not_confirmed_is_not_shown():
    history = [event("Hello"), turn(say("never played"), status="pending"), event("Anyone?")]
    assert to_messages(history) == [
        {"role": "user", "content": "[speech from player] Hello\n[speech from player] Anyone?"}
    ]
    assert entry_size(history[1]) == 0
