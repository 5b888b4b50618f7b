"""Tests for core.tagjson: its rules, then the property that matters: the same tags written as
JSON or as markup give the same events, however either is split."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.tagjson import TagJsonReader, answer_schema
from core.tagstream import TagChunk, TagClose, TagEvent, TagOpen, TagRefused, TagStreamParser
from tests.test_tagstream import ALLOWED, check_invariants, normalise, tag


def read(*chunks: str, **options) -> list[list[TagEvent]]:
    """Feed ``chunks`` to a new reader; the events of each call, ``close()`` last."""
    reader = TagJsonReader(ALLOWED, **options)
    return [reader.feed(chunk) for chunk in chunks] + [reader.close()]


def events(*chunks: str, **options) -> list[TagEvent]:
    return normalise(read(*chunks, **options))


def answer(*items: dict) -> str:
    return json.dumps({"tags": list(items)})


def test_rule1_tags_stream_as_they_arrive():
    text = answer({"tag": "say", "text": "Halt!"}, {"tag": "action", "attrs": {"name": "wave"}, "text": ""})
    cut = text.index("Ha") + 2
    assert read(text[:cut], text[cut:]) == [
        [TagOpen(0, "say", {}), TagChunk(0, "say", "Ha")],
        [TagChunk(0, "say", "lt!"), TagClose(0, "say"), TagOpen(1, "action", {"name": "wave"}), TagClose(1, "action")],
        [],
    ]


def test_rule1_escapes_are_decoded_even_when_split():
    text = answer({"tag": "say", "text": 'a "b" \\ \n \u00e9 \U0001f600 </say>'})
    assert text.count("\\u") == 3  # é and the emoji's surrogate pair, escaped by json.dumps
    expected = tag(0, "say", 'a "b" \\ \n \u00e9 \U0001f600 </say>')
    for cut in range(len(text) + 1):
        assert events(text[:cut], text[cut:]) == expected


def test_rule1_text_before_tag_is_held_and_late_attrs_ignored():
    assert events('{"tags": [{"text": "hi", "tag": "SAY", "attrs": {"a": "1"}}]}') == tag(0, "say", "hi", a="1")
    assert events('{"tags": [{"tag": "say", "text": "x", "attrs": {"a": "1"}}]}') == tag(0, "say", "x")


def test_rule2_other_keys_and_values_are_ignored():
    text = '{"v": [1, {"tags": []}], "tags": [{"tag": "action", "x": null, "attrs": {"n": 2, "name": "w"}}, 7, "s"]}'
    assert events(text) == tag(0, "action", name="w")


def test_rule3_unknown_tag_is_stray_text():
    text = answer({"tag": "dance", "text": "  twirl"}, {"tag": "say", "text": "ok"})
    assert events(text) == tag(0, "say", "ok")
    assert events(text, untagged="say") == tag(0, "say", "twirl") + tag(1, "say", "ok")


def test_rule3_undeclared_tool_is_refused():
    text = answer({"tag": "tool", "attrs": {"name": "fly"}, "text": "{}"}, {"tag": "tool", "attrs": {"name": "go"}})
    assert events(text, tools=["go"]) == [TagRefused("tool", {"name": "fly"}), *tag(0, "tool", name="go")]


def test_rule4_not_json_is_read_as_markup():
    assert events("  I am <say>Grim</say>", untagged="say") == tag(0, "say", "I am ") + tag(1, "say", "Grim")
    assert read("  ", "\n") == [[], [], []]


def test_rule5_broken_json_ends_the_answer():
    assert events('{"tags": [{"tag": "say", "text": "a\\x"}, {"tag": "say", "text": "b"}]}') == tag(0, "say", "a")
    assert events('{"tags": [{"tag": "say", "text": "a"}]} {"tags": [{"tag": "say"}]}') == tag(0, "say", "a")
    assert events('{"tags": [{"tag": "say" "text": "a"}]}') == tag(0, "say")


def test_rule5_close_closes_a_cut_answer():
    assert read('{"tags": [{"tag": "say", "text": "cut \\u00') == [
        [TagOpen(0, "say", {}), TagChunk(0, "say", "cut ")],
        [TagClose(0, "say")],
    ]


def test_lone_surrogates_become_replacement_characters():
    assert events(answer({"tag": "say", "text": "\ud800x\udc00"})) == tag(0, "say", "\ufffdx\ufffd")


def test_feed_after_close_raises():
    reader = TagJsonReader(ALLOWED)
    reader.close()
    assert reader.close() == []
    with pytest.raises(RuntimeError):
        reader.feed("{")


def test_answer_schema():
    schema = answer_schema({"say": [], "action": ["name"], "tool": []}, ["open_door"])
    say, action, tool = schema["properties"]["tags"]["items"]["anyOf"]
    assert say["required"] == ["tag", "text"] and say["properties"]["tag"]["enum"] == ["say"]
    assert action["properties"]["attrs"]["required"] == ["name"]
    assert tool["properties"]["attrs"]["properties"]["name"]["enum"] == ["open_door"]
    assert all(item["additionalProperties"] is False for item in (schema, say, action, tool))


# The property: JSON and markup agree, for any split of either.

_TEXT = st.text(max_size=12) | st.sampled_from(["<say>", "&amp;", "a < b", "\U0001f600", '"', "\\", "</tool>"])
_ATTRS = st.dictionaries(st.sampled_from(["name", "a", "B"]), st.text(max_size=6) | st.sampled_from(["go", "fly"]))
_TAGS = st.lists(st.tuples(st.sampled_from([*ALLOWED, "tool"]), _ATTRS, _TEXT), max_size=5)
_OPTIONS = st.sampled_from([{}, {"untagged": "say"}, {"tools": ["go"]}, {"untagged": "thought", "tools": []}])


def _escape(text: str, quote: bool = False) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace('"', "&quot;") if quote else text


def as_markup(tags: list[tuple[str, dict, str]]) -> str:
    markup = []
    for name, attrs, text in tags:
        written = "".join(f' {key}="{_escape(value, True)}"' for key, value in attrs.items())
        markup.append(f"<{name}{written}>{_escape(text)}</{name}>")
    return "".join(markup)


def as_json(tags: list[tuple[str, dict, str]], ascii_only: bool) -> str:
    items = [{"tag": name, **({"attrs": attrs} if attrs else {}), "text": text} for name, attrs, text in tags]
    return json.dumps({"tags": items}, ensure_ascii=ascii_only)


def split(text: str, cuts: list[int]) -> list[str]:
    cuts = sorted(cuts)
    return [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)])]


@settings(max_examples=400, deadline=None)
@given(_TAGS, _OPTIONS, st.booleans(), st.data())
def test_json_and_markup_give_the_same_events_for_any_split(tags, options, ascii_only, data):
    markup, answer_json = as_markup(tags), as_json(tags, ascii_only)
    parser = TagStreamParser(ALLOWED, **options)
    cuts = data.draw(st.lists(st.integers(0, len(markup)), max_size=8))
    from_markup = [parser.feed(piece) for piece in split(markup, cuts)] + [parser.close()]
    from_json = read(*split(answer_json, data.draw(st.lists(st.integers(0, len(answer_json)), max_size=8))), **options)
    check_invariants(from_json)
    assert normalise(from_json) == normalise(from_markup)


@settings(max_examples=100, deadline=None)
@given(_TAGS, _OPTIONS)
def test_one_character_at_a_time_gives_the_same_events(tags, options):
    text = as_json(tags, ascii_only=True)
    assert normalise(read(*text, **options)) == normalise(read(text, **options))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]":,\\ u0aD8tagsxe', max_size=40), _OPTIONS, st.data())
def test_any_input_is_read_without_error_the_same_for_any_split(text, options, data):
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=6))
    whole, pieces = read(text, **options), read(*split(text, cuts), **options)
    check_invariants(whole)
    check_invariants(pieces)
    assert normalise(pieces) == normalise(whole)
