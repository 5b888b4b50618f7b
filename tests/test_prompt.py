"""The turn prompt: output format, system message, and history trimmed to its budget."""

from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from core.history import entry_size, to_messages
from core.prompt import (
    CONTINUE_NOTE,
    DEFAULT_INSTRUCTIONS,
    JSON_ANSWER_NOTE,
    OMITTED_NOTE,
    build_messages,
    output_format,
)
from core.spec import build_dossier, parse_spec

SPEC = parse_spec({"name": "Mira", "persona": "Gruff."})
TOOL_SPEC = parse_spec(
    {
        "name": "Mira",
        "tags": ["say", {"name": "emote", "description": "a gesture", "attrs": {"kind": "which", "to": ""}}],
        "tools": [
            {
                "name": "open_door",
                "description": "Open a door",
                "parameters": {"type": "object", "properties": {"door": {"type": "string"}}},
            },
            {"name": "rest"},
        ],
    }
)

DEFAULT_FORMAT = """\
# Output format
Write your whole turn as a sequence of these tags and nothing else: thought, say, action.
Write a tag as <tag>text</tag>, attributes in double quotes: <tag attr="value">text</tag>; a tag \
without text may close itself: <tag attr="value"/>. Inside text write & as &amp; and < as &lt;.
- <thought>...</thought>: private reasoning, never shown to anyone
- <say>...</say>: words you speak aloud
- <action name="...">...</action>: a physical action you perform
  - name: what the action is, e.g. wave"""

TOOL_FORMAT = """\
# Output format
Write your whole turn as a sequence of these tags and nothing else: say, emote, tool.
Write a tag as <tag>text</tag>, attributes in double quotes: <tag attr="value">text</tag>; a tag \
without text may close itself: <tag attr="value"/>. Inside text write & as &amp; and < as &lt;.
- <say>...</say>
- <emote kind="..." to="...">...</emote>: a gesture
  - kind: which
  - to

## Tools
Call a tool with <tool name="NAME" call_id="UNIQUE_ID">{JSON arguments}</tool>, using a call_id you \
have not used before. After your tool calls, stop and end your turn: the results come back in the next message.
- open_door: Open a door
  parameters: {"type":"object","properties":{"door":{"type":"string"}}}
- rest
  parameters: none, write {}"""


def event(text):
    return {"kind": "event", "event_id": None, "event": {"kind": "speech", "source": "player", "text": text}}


def turn(text, status="completed"):
    return {"kind": "turn", "turn_id": "t", "status": status, "tags": [{"tag": "say", "attrs": {}, "text": text}]}


# Every entry below renders to exactly 100 characters of budget.
E1, E2, E3 = (event(letter * 78) for letter in "abc")
T1, T2 = (turn(letter * 89) for letter in "xy")
NOTE_COST = len(OMITTED_NOTE) + 1


def history_of(messages):
    """The non-system messages, as (role, content) pairs."""
    assert messages[0]["role"] == "system"
    return [(message["role"], message["content"]) for message in messages[1:]]


def test_entries_of_the_fixture_cost_100():
    assert {entry_size(entry) for entry in (E1, E2, E3, T1, T2)} == {100}


def test_output_format_of_default_tags():
    assert output_format(SPEC) == DEFAULT_FORMAT


def test_output_format_of_a_json_answer():
    assert output_format(SPEC, json_answer=True) == DEFAULT_FORMAT + "\n\n" + JSON_ANSWER_NOTE


def test_output_format_with_tools():
    assert output_format(TOOL_SPEC) == TOOL_FORMAT


def test_system_message_is_instructions_format_and_dossier():
    system = build_messages(SPEC, [E1], budget_chars=1000)[0]
    dossier = "# Mira\n\n## Persona\nGruff."
    assert system == {"role": "system", "content": f"{DEFAULT_INSTRUCTIONS}\n\n{DEFAULT_FORMAT}\n\n{dossier}"}


def test_system_prompt_replaces_only_the_instructions():
    spec = parse_spec({"name": "Mira", "system_prompt": "You are a cat."})
    content = build_messages(spec, [E1], budget_chars=1000)[0]["content"]
    assert content == "\n\n".join(["You are a cat.", output_format(spec), build_dossier(spec)])


def test_history_within_budget_is_kept_whole():
    history = [E1, T1, E2, T2, E3]
    assert build_messages(SPEC, history, budget_chars=500)[1:] == to_messages(history)


def test_trimming_drops_oldest_entries_and_leading_assistant_turns():
    messages = build_messages(SPEC, [E1, T1, E2, T2, E3], budget_chars=499)
    assert history_of(messages) == [
        ("user", f"{OMITTED_NOTE}\n{to_messages([E2])[0]['content']}"),
        ("assistant", to_messages([T2])[0]["content"]),
        ("user", to_messages([E3])[0]["content"]),
    ]


def test_trimming_counts_the_omission_note():
    history = [E1, T1, E2, T2, E3]
    assert len(build_messages(SPEC, history, budget_chars=300 + NOTE_COST)) == 4  # system, E2, T2, E3
    assert len(build_messages(SPEC, history, budget_chars=300 + NOTE_COST - 1)) == 2  # system, E3


def test_current_event_is_kept_whatever_its_size():
    big = event("z" * 1000)
    for budget in (0, 200, -5):
        assert history_of(build_messages(SPEC, [E1, T1, big], budget_chars=budget)) == [
            ("user", f"{OMITTED_NOTE}\n[speech from player] {'z' * 1000}")
        ]


def test_turns_after_the_last_user_entry_are_kept_and_followed_by_continue():
    messages = build_messages(SPEC, [E1, T1, E2, T2], budget_chars=0)
    assert history_of(messages) == [
        ("user", f"{OMITTED_NOTE}\n{to_messages([E2])[0]['content']}"),
        ("assistant", to_messages([T2])[0]["content"]),
        ("user", CONTINUE_NOTE),
    ]


def test_history_starting_with_a_turn_drops_it_and_says_so():
    assert history_of(build_messages(SPEC, [T1, E1], budget_chars=10_000)) == [
        ("user", f"{OMITTED_NOTE}\n{to_messages([E1])[0]['content']}")
    ]
    assert history_of(build_messages(SPEC, [T1], budget_chars=10_000)) == [("user", f"{OMITTED_NOTE}\n{CONTINUE_NOTE}")]


def test_empty_history_asks_to_continue():
    assert history_of(build_messages(SPEC, [], budget_chars=0)) == [("user", CONTINUE_NOTE)]


def test_history_ending_with_a_turn_gets_continue():
    assert history_of(build_messages(SPEC, [E1, T1], budget_chars=10_000))[-1] == ("user", CONTINUE_NOTE)


def test_history_ending_with_an_interrupted_turn_ends_with_the_note_not_continue():
    last = history_of(build_messages(SPEC, [E1, turn("Wait", "interrupted")], budget_chars=10_000))[-1]
    assert last == ("user", "[your previous turn was interrupted here]")


def test_long_deque_history():
    history = deque(([E1, T1] * 50_000) + [E3], maxlen=200_000)
    messages = build_messages(SPEC, history, budget_chars=1_000)
    assert messages[-1]["content"] == to_messages([E3])[0]["content"]
    assert sum(len(message["content"]) for message in messages[1:]) <= 1_000


texts = st.text(alphabet='ab <&"\n', max_size=40)
events = st.builds(
    lambda kind, text, data: {"kind": kind, "event": {"kind": "speech", "text": text, "data": data}},
    st.sampled_from(["event", "notification"]),
    texts,
    st.none() | st.dictionaries(texts, st.integers()),
)
turns = st.builds(
    lambda status, says: {
        "kind": "turn",
        "turn_id": "t",
        "status": status,
        "tags": [{"tag": "say", "attrs": {"to": text}, "text": text} for text in says],
    },
    st.sampled_from(["completed", "interrupted"]),
    st.lists(texts, max_size=3),
)
tool_results = st.builds(
    lambda outputs: {
        "kind": "tool_results",
        "turn_id": "t",
        "results": [{"call_id": "c", "tool": "open", "ok": True, "output": out} for out in outputs],
    },
    st.lists(texts | st.integers(), max_size=3),
)


@given(st.lists(events | turns | tool_results, max_size=30), st.integers(min_value=-10, max_value=3_000))
def test_prompt_shape_and_budget(history, budget):
    messages = build_messages(SPEC, history, budget_chars=budget)
    roles = [message["role"] for message in messages]
    assert roles[0] == "system" and roles[1] == "user" and roles[-1] == "user"
    assert set(roles[1:]) <= {"user", "assistant"}
    assert all(message["content"] for message in messages)
    size = sum(len(message["content"]) for message in messages[1:])
    assert size <= budget or messages == build_messages(SPEC, history, budget_chars=0)
    user_side = [entry for entry in history if entry["kind"] != "turn"]
    if user_side:
        assert to_messages([user_side[-1]])[0]["content"] in "\n".join(m["content"] for m in messages[1:])
