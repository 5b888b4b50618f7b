"""The runtime spec: what parse_spec accepts, what it rejects and how, and the dossier it renders."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.spec import DEFAULT_TAGS, AgentSpec, SpecError, TagSpec, ToolSpec, build_dossier, parse_spec
from core.tagstream import TagStreamParser
from providers.grammar import tags_grammar

FULL_STATE = {
    "name": "Mira",
    "description": "The village blacksmith, broad-shouldered and soot-stained.",
    "persona": "Gruff but kind. Speaks in short sentences.",
    "goals": ["Finish the mayor's sword", "Find her missing brother"],
    "location": "The forge",
    "inventory": ["hammer", {"name": "sword", "damage": 5, "enchanted": True}],
    "relationships": {"Tom": "old friend", "Ana": {"trust": 0.8, "mood": "wary"}, "Mayor": 3},
    "facts": ["The forge fire never goes out"],
    "system_prompt": None,
    "prompt_parts": [
        {"title": "Current quest", "text": "Deliver the sword by dusk."},
        {"title": "Rumours", "text": "Wolves were seen near the mill."},
    ],
    "tags": [
        {"name": "say", "description": "spoken words"},
        {"name": "emote", "description": "a gesture", "attrs": {"kind": "which gesture"}},
    ],
    "tools": [{"name": "open_door", "description": "Open a door", "parameters": {"type": "object"}}],
    "mood": "tired",
    "stats": {"hp": 10, "tags": ["strong"]},
}

FULL_DOSSIER = """\
# Mira

## Description
The village blacksmith, broad-shouldered and soot-stained.

## Persona
Gruff but kind. Speaks in short sentences.

## Goals
- Finish the mayor's sword
- Find her missing brother

## Location
The forge

## Inventory
- hammer
- sword (damage: 5, enchanted: true)

## Relationships
- Tom: old friend
- Ana: trust: 0.8, mood: wary
- Mayor: 3

## Facts
- The forge fire never goes out

## Current quest
Deliver the sword by dusk.

## Rumours
Wolves were seen near the mill.

## Other details
- mood: tired
- stats: {"hp":10,"tags":["strong"]}"""


def test_full_spec_is_parsed():
    spec = parse_spec(FULL_STATE)
    assert spec == AgentSpec(
        name="Mira",
        description="The village blacksmith, broad-shouldered and soot-stained.",
        persona="Gruff but kind. Speaks in short sentences.",
        goals=("Finish the mayor's sword", "Find her missing brother"),
        location="The forge",
        inventory=("hammer", "sword (damage: 5, enchanted: true)"),
        relationships={"Tom": "old friend", "Ana": "trust: 0.8, mood: wary", "Mayor": "3"},
        facts=("The forge fire never goes out",),
        system_prompt=None,
        prompt_parts=(("Current quest", "Deliver the sword by dusk."), ("Rumours", "Wolves were seen near the mill.")),
        tags=(TagSpec("say", "spoken words", {}), TagSpec("emote", "a gesture", {"kind": "which gesture"})),
        tools=(ToolSpec("open_door", "Open a door", {"type": "object"}),),
        groups=(),
        fallback_lines=(),
        model_tier=None,
        extra={"mood": "tired", "stats": {"hp": 10, "tags": ["strong"]}},
    )


def test_full_dossier():
    assert build_dossier(parse_spec(FULL_STATE)) == FULL_DOSSIER


def test_minimal_spec_and_dossier():
    spec = parse_spec({"name": "Mira"})
    assert spec == AgentSpec("Mira", "", "", (), "", (), {}, (), None, (), DEFAULT_TAGS, (), (), (), None, {})
    assert build_dossier(spec) == "# Mira"


def test_dossier_skips_empty_sections_and_strips_text():
    spec = parse_spec(
        {
            "name": "Mira",
            "description": "  ",
            "persona": "\nGruff.\n",
            "goals": [],
            "prompt_parts": [{"title": "Empty", "text": ""}],
        }
    )
    assert build_dossier(spec) == "# Mira\n\n## Persona\nGruff."


def test_extra_keys_keep_input_order():
    spec = parse_spec({"zeta": 1, "name": "Mira", "alpha": None, "mood": "calm"})
    assert list(spec.extra) == ["zeta", "alpha", "mood"]
    assert build_dossier(spec).endswith("## Other details\n- zeta: 1\n- alpha: null\n- mood: calm")


def test_default_tags():
    assert [(tag.name, tuple(tag.attrs)) for tag in DEFAULT_TAGS] == [
        ("thought", ()),
        ("say", ()),
        ("action", ("name",)),
    ]
    assert parse_spec({"name": "Mira", "tags": []}).tags == DEFAULT_TAGS


@pytest.mark.parametrize(
    ("state", "allowed"),
    [
        ({"name": "M"}, ("thought", "say", "action")),
        ({"name": "M", "tools": [{"name": "open_door"}]}, ("thought", "say", "action", "tool")),
        ({"name": "M", "tags": ["say", "tool"], "tools": [{"name": "open_door"}]}, ("say", "tool")),
        ({"name": "M", "tags": ["say"], "tools": []}, ("say",)),
    ],
)
def test_allowed_tags(state, allowed):
    assert parse_spec(state).allowed_tags == allowed


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"name": 7}, {"name": "7"}),
        ({"name": "M", "goals": "Survive"}, {"goals": ("Survive",)}),
        ({"name": "M", "facts": 42}, {"facts": ("42",)}),
        ({"name": "M", "goals": ["a", 2.5]}, {"goals": ("a", "2.5")}),
        ({"name": "M", "location": 3}, {"location": "3"}),
        ({"name": "M", "inventory": "a key"}, {"inventory": ("a key",)}),
        (
            {"name": "M", "inventory": [{"name": "rope"}, {"name": "ale", "count": 2, "note": "cold"}]},
            {"inventory": ("rope", "ale (count: 2, note: cold)")},
        ),
        (
            {"name": "M", "relationships": {"Tom": {"friend": True, "since": [1, 2]}}},
            {"relationships": {"Tom": "friend: true, since: [1,2]"}},
        ),
        ({"name": "M", "tags": "say"}, {"tags": (TagSpec("say", "", {}),)}),
        (
            {"name": "M", "tags": [{"name": "emote", "attrs": ["kind", "target"]}]},
            {"tags": (TagSpec("emote", "", {"kind": "", "target": ""}),)},
        ),
        (
            {"name": "M", "tags": [{"name": "a.b-c_1", "description": None, "attrs": {"x": None}}]},
            {"tags": (TagSpec("a.b-c_1", "", {"x": ""}),)},
        ),
        ({"name": "M", "tools": [{"name": "_rest", "description": 1}]}, {"tools": (ToolSpec("_rest", "1", None),)}),
        ({"name": "M", "system_prompt": ""}, {"system_prompt": None}),
        ({"name": "M", "system_prompt": "Be a cat."}, {"system_prompt": "Be a cat."}),
        ({"name": "M", "persona": None, "goals": None}, {"persona": "", "goals": ()}),
    ],
)
def test_leniency(state, expected):
    spec = parse_spec(state)
    assert {key: getattr(spec, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([], "state must be an object"),
        ({}, "state.name must be a non-empty string"),
        ({"name": "  "}, "state.name must be a non-empty string"),
        ({"name": True}, "state.name must be a non-empty string"),
        ({"name": "M", "description": ["a"]}, "state.description must be a string"),
        ({"name": "M", "persona": {"a": 1}}, "state.persona must be a string"),
        ({"name": "M", "location": False}, "state.location must be a string"),
        ({"name": "M", "system_prompt": 1.5j}, "state.system_prompt must be a string"),
        ({"name": "M", "goals": {"a": 1}}, "state.goals must be a list of strings"),
        ({"name": "M", "goals": ["a", None]}, "state.goals[1] must be a string"),
        ({"name": "M", "facts": [["nested"]]}, "state.facts[0] must be a string"),
        ({"name": "M", "inventory": {"name": "key"}}, "state.inventory must be a list of strings or objects"),
        ({"name": "M", "inventory": ["a", True]}, "state.inventory[1] must be a string or an object"),
        ({"name": "M", "inventory": [{"count": 2}]}, "state.inventory[0].name must be a non-empty string"),
        ({"name": "M", "relationships": ["Tom"]}, "state.relationships must be an object"),
        (
            {"name": "M", "relationships": {"Old Tom": None}},
            'state.relationships["Old Tom"] must be a string, a number or an object',
        ),
        (
            {"name": "M", "relationships": {"Tom": ["x"]}},
            'state.relationships["Tom"] must be a string, a number or an object',
        ),
        ({"name": "M", "prompt_parts": "text"}, "state.prompt_parts must be a list of objects"),
        ({"name": "M", "prompt_parts": ["text"]}, "state.prompt_parts[0] must be an object"),
        ({"name": "M", "prompt_parts": [{"text": "x"}]}, "state.prompt_parts[0].title must be a non-empty string"),
        ({"name": "M", "prompt_parts": [{"title": "T"}]}, "state.prompt_parts[0].text must be a string"),
        ({"name": "M", "tags": {"say": {}}}, "state.tags must be a list of tag names or objects"),
        ({"name": "M", "tags": ["say", "think", 3]}, "state.tags[2] must be a tag name or an object"),
        (
            {"name": "M", "tags": ["say", "think", {"description": "x"}]},
            "state.tags[2].name must be a non-empty string",
        ),
        (
            {"name": "M", "tags": ["say", "2fast"]},
            "state.tags[1] must be a tag name (ASCII letters, digits, _ . : -, starting with a letter)",
        ),
        (
            {"name": "M", "tags": [{"name": "big say"}]},
            "state.tags[0].name must be a tag name (ASCII letters, digits, _ . : -, starting with a letter)",
        ),
        ({"name": "M", "tags": ["say", {"name": "say"}]}, "state.tags[1] repeats the name 'say'"),
        ({"name": "M", "tags": ["say", "Say"]}, "state.tags[1] repeats the name 'Say'"),
        (
            {"name": "M", "tags": ["_say"]},
            "state.tags[0] must be a tag name (ASCII letters, digits, _ . : -, starting with a letter)",
        ),
        ({"name": "M", "tags": [{"name": "say", "description": ["x"]}]}, "state.tags[0].description must be a string"),
        (
            {"name": "M", "tags": [{"name": "act", "attrs": "name"}]},
            "state.tags[0].attrs must be an object or a list of attribute names",
        ),
        (
            {"name": "M", "tags": [{"name": "act", "attrs": ["ok", "bad name"]}]},
            "state.tags[0].attrs[1] must be a name (ASCII letters, digits, _ . : -, not starting with a digit)",
        ),
        (
            {"name": "M", "tags": [{"name": "act", "attrs": {"1x": "d"}}]},
            'state.tags[0].attrs["1x"] must be a name (ASCII letters, digits, _ . : -, not starting with a digit)',
        ),
        ({"name": "M", "tags": [{"name": "act", "attrs": {"x": {}}}]}, 'state.tags[0].attrs["x"] must be a string'),
        ({"name": "M", "tools": "open_door"}, "state.tools must be a list of objects"),
        ({"name": "M", "tools": ["open_door"]}, "state.tools[0] must be an object"),
        ({"name": "M", "tools": [{"description": "x"}]}, "state.tools[0].name must be a non-empty string"),
        (
            {"name": "M", "tools": [{"name": "open door"}]},
            "state.tools[0].name must be a name (ASCII letters, digits, _ . : -, not starting with a digit)",
        ),
        (
            {"name": "M", "tools": [{"name": "t", "parameters": "{}"}]},
            "state.tools[0].parameters must be an object (a JSON schema)",
        ),
        ({"name": "M", "tools": [{"name": "t"}, {"name": "t"}]}, "state.tools[1] repeats the name 't'"),
        ({"name": "M", "fallback_lines": [""]}, "state.fallback_lines[0] must be a non-empty string"),
        ({"name": "M", "fallback_lines": {"a": 1}}, "state.fallback_lines must be a list of strings"),
        ({"name": "M", "fallback_lines": ["x" * 1001]}, "state.fallback_lines[0] must be at most 1000 characters long"),
        ({"name": "M", "fallback_lines": ["x"] * 101}, "state.fallback_lines must hold at most 100 lines, got 101"),
        (
            {"name": "M", "tags": ["action"], "fallback_lines": ["Hm."]},
            "state.fallback_lines are spoken in a 'say' tag, which state.tags lacks",
        ),
        ({"name": "M", "model_tier": ""}, "state.model_tier must be a non-empty string"),
        ({"name": "M", "model_tier": ["hero"]}, "state.model_tier must be a non-empty string"),
    ],
)
def test_spec_errors(state, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(state)
    assert str(caught.value) == message
    assert message.startswith(caught.value.field + " ")


def test_fallback_lines_and_model_tier():
    spec = parse_spec({"name": "M", "fallback_lines": "Not now.", "model_tier": "crowd", "mood": "x"})
    assert (spec.fallback_lines, spec.model_tier) == (("Not now.",), "crowd")
    assert "Not now" not in build_dossier(spec) and "crowd" not in build_dossier(spec)  # the model never sees them
    assert parse_spec({"name": "M", "fallback_lines": ["a", 2]}).fallback_lines == ("a", "2")


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
contract_keys = [
    "name",
    "description",
    "persona",
    "goals",
    "location",
    "inventory",
    "relationships",
    "facts",
    "system_prompt",
    "prompt_parts",
    "tags",
    "tools",
    "other",
]


@given(st.dictionaries(st.sampled_from(contract_keys), json_values))
def test_any_json_state_parses_or_raises_spec_error(state):
    try:
        spec = parse_spec(state)
    except SpecError as error:
        assert str(error).startswith("state.")
    else:
        assert build_dossier(spec).startswith(f"# {spec.name}")


@given(
    st.lists(
        st.from_regex(r"[A-Za-z][A-Za-z0-9_.:\-]{0,12}", fullmatch=True), min_size=1, max_size=4, unique_by=str.lower
    )
)
def test_a_tag_name_the_spec_accepts_is_parsed_and_constrained(names):
    """One rule for a tag name: parse_spec, the stream parser and the grammar agree (``look:at`` was
    accepted by the spec, then refused by the grammar, so every grammar-bound turn failed)."""
    spec = parse_spec({"name": "M", "tags": names})
    grammar = tags_grammar(spec.allowed_tags)
    parser = TagStreamParser(spec.allowed_tags)
    for name in spec.allowed_tags:
        assert f'"<{name}>"' in grammar
        events = parser.feed(f"<{name}>x</{name}>")
        assert [type(event).__name__ for event in events] == ["TagOpen", "TagChunk", "TagClose"]


@given(st.from_regex(r"[0-9_:.\-][A-Za-z0-9_.:\-]{0,12}|[A-Za-z]+[ <>\"'/=&][A-Za-z]*", fullmatch=True))
def test_a_name_the_spec_refuses_is_refused_everywhere(name):
    with pytest.raises(SpecError):
        parse_spec({"name": "M", "tags": [name]})
    with pytest.raises(ValueError):
        tags_grammar([name])
    with pytest.raises(ValueError):
        TagStreamParser([name])


def test_groups_are_names_shown_in_the_dossier():
    spec = parse_spec({"name": "Ana", "groups": ["town guard", "town guard", "Red Hand"]})
    assert spec.groups == ("town guard", "Red Hand")
    assert "## Groups\n- town guard\n- Red Hand" in build_dossier(spec)
    assert parse_spec({"name": "Ana", "groups": "town guard"}).groups == ("town guard",)


@pytest.mark.parametrize(
    ("groups", "field"),
    [
        ([""], "state.groups[0]"),
        ([{"x": 1}], "state.groups[0]"),
        ({"a": 1}, "state.groups"),
        ([str(i) for i in range(17)], "state.groups"),
    ],
)
def test_bad_groups_name_the_field(groups, field):
    with pytest.raises(SpecError) as caught:
        parse_spec({"name": "Ana", "groups": groups})
    assert caught.value.field == field
