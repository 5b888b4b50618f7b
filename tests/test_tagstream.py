"""Tests for core.tagstream: one test per documented rule, then split-invariance properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.tagstream import MAX_MARKUP, TagChunk, TagClose, TagEvent, TagOpen, TagRefused, TagStreamParser

ALLOWED = ("thought", "say", "action")


def parse(*chunks: str, allowed: tuple[str, ...] = ALLOWED, **options) -> list[TagEvent]:
    """Feed ``chunks`` to a new parser, close it, and return all events."""
    parser = TagStreamParser(allowed, **options)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events + parser.close()


def per_feed(*chunks: str, **options) -> list[list[TagEvent]]:
    """Feed ``chunks`` to a new parser and return the events of each call, ``close()`` last."""
    parser = TagStreamParser(ALLOWED, **options)
    return [parser.feed(chunk) for chunk in chunks] + [parser.close()]


def tag(index: int, name: str, text: str | None = None, /, **attrs: str) -> list[TagEvent]:
    """Events of a whole tag: open, optional chunk, close."""
    chunk = [] if text is None else [TagChunk(index, name, text)]
    return [TagOpen(index, name, attrs), *chunk, TagClose(index, name)]


# Rule 1: flat structure.


def test_rule1_at_most_one_tag_open():
    assert parse("<thought>a<say>b</say>c</thought>") == tag(0, "thought", "a") + tag(1, "say", "b")


def test_rule1_open_tag_property():
    parser = TagStreamParser(ALLOWED)
    assert parser.open_tag is None
    parser.feed("<say>hi")
    assert parser.open_tag == "say"
    parser.feed("</say>")
    assert parser.open_tag is None


# Rule 2: case-insensitive names, spelled as allowed.


def test_rule2_names_match_case_insensitively():
    assert parse("<SAY>x</sAy><say>y", allowed=("Say",)) == tag(0, "Say", "x") + tag(1, "Say", "y")


# Rule 3: outside a tag only allowed opening tags count.


def test_rule3_outside_everything_else_is_discarded():
    text = 'Sure! <em>no</em> </say> <b x="1"/>&amp; <think>hm</think><say>hi</say> bye </thought>'
    assert parse(text) == tag(0, "say", "hi")


def test_rule3_stray_text_is_spoken_with_untagged():
    text = 'Sure! <em>no</em> </say> <b x="1"/>&amp; <think>hm</think><say>hi</say> bye </thought>'
    assert parse(text, untagged="say") == tag(0, "say", "Sure! no  & hm") + tag(1, "say", "hi") + tag(2, "say", "bye ")


def test_rule3_untagged_streams_as_it_arrives():
    assert per_feed("  \n", "I am", " Grimbold.", untagged="say") == [
        [],
        [TagOpen(0, "say", {}), TagChunk(0, "say", "I am")],
        [TagChunk(0, "say", " Grimbold.")],
        [TagClose(0, "say")],
    ]


def test_rule3_whitespace_between_tags_opens_nothing():
    assert parse("<thought>a</thought>\n <say>b</say>\n", untagged="say") == tag(0, "thought", "a") + tag(1, "say", "b")


def test_rule3_allowed_tag_closes_the_implicit_tag():
    expected = tag(0, "say", "Hi ") + tag(1, "action", name="wave") + tag(2, "say", "there &")
    assert parse('Hi <action name="wave"/> there &amp;', untagged="say") == expected


def test_rule3_literal_lt_and_held_back_markup_are_stray_text():
    assert parse("<3 you", untagged="say") == tag(0, "say", "<3 you")
    assert parse("<sa", untagged="say") == tag(0, "say", "<sa")


def test_rule3_untagged_must_be_allowed():
    with pytest.raises(ValueError):
        TagStreamParser(ALLOWED, untagged="speech")


# Rule 4: inside a tag.


def test_rule4_text_streams_entity_decoded():
    assert parse("<say>a &lt; b</say>") == tag(0, "say", "a < b")


def test_rule4_explicit_close():
    assert per_feed("<say>a</say>") == [tag(0, "say", "a"), []]


def test_rule4_allowed_opening_tag_closes_open_tag():
    expected = tag(0, "say", "a") + tag(1, "thought", "b") + tag(2, "thought", "c")
    assert parse("<say>a<thought>b<THOUGHT>c") == expected


def test_rule4_closing_tag_of_other_allowed_tag_is_dropped():
    assert parse("<say>a</thought>b</action >c</say>") == tag(0, "say", "abc")


def test_rule4_unknown_markup_is_kept_verbatim():
    text = "I <em class='x'>really</em> <br/>mean<BR /> it</Em >"
    assert parse(f"<say>{text}</say>") == tag(0, "say", text)


# Rule 5: self-closing allowed tags.


def test_rule5_self_closing_tag_gives_open_then_close():
    assert parse('<say>hi<action name="wave"/>after<action />') == (
        tag(0, "say", "hi") + tag(1, "action", name="wave") + tag(2, "action")
    )


# Rule 6: attributes and malformed markup.


def test_rule6_attribute_forms():
    text = """<action a="x" b='y z' c=z d e = "f" h="&lt;&#65;&amp" i=p/q C=Z a='last'/>"""
    attrs = {"a": "last", "b": "y z", "c": "z", "d": "", "e": "f", "h": "<A&amp", "i": "p/q", "C": "Z"}
    assert parse(text) == [TagOpen(0, "action", attrs), TagClose(0, "action")]


def test_rule6_unquoted_value_before_self_closing_slash():
    assert parse("<action name=wave/>") == tag(0, "action", name="wave")


def test_rule6_malformed_markup_is_literal_inside_a_tag():
    text = """1 <em a="b>2 </say x> 3 <say x="y>4 <action name="a>b"/>"""
    assert parse(f"<say>{text}") == tag(0, "say", text)


def test_rule6_malformed_markup_is_discarded_outside():
    assert parse('<action name="wave>hi</action><say a=1 b>ok</say>') == tag(0, "say", "ok", a="1", b="")


# Rule 7: literal "<".


def test_rule7_lt_that_cannot_start_markup_is_literal():
    text = "a < b, <3, <<, <!x, <?q?>, </ >, <1a>, <é>"
    assert parse(f"<say>{text}</say>") == tag(0, "say", text)


def test_rule7_lt_meeting_another_lt_is_literal():
    assert parse("<say>x <b c <thought>y") == tag(0, "say", "x <b c ") + tag(1, "thought", "y")


def test_rule7_markup_is_bounded():
    value = "v" * (MAX_MARKUP - len('<action a=""/>'))
    assert parse(f'<action a="{value}"/>') == tag(0, "action", a=value)
    too_long = f'<action a="{value}x"/>'
    assert parse(too_long) == []
    assert parse(f"<say>{too_long}") == tag(0, "say", too_long)


def test_rule7_lone_lt_holds_back_at_most_the_bound():
    almost = "<b " + "x" * (MAX_MARKUP - 4)
    assert per_feed("<say>", almost, "x", "y") == [
        [TagOpen(0, "say", {})],
        [],
        [TagChunk(0, "say", almost + "x")],
        [TagChunk(0, "say", "y")],
        [TagClose(0, "say")],
    ]


# Rule 8: entities.


def test_rule8_entities_are_decoded():
    text = "&amp;&lt;&gt;&quot;&apos;&#65;&#x42;&#X43;&#00000068;&#x1F600;"
    assert parse(f"<say>{text}</say>") == tag(0, "say", "&<>\"'ABCD\U0001f600")


def test_rule8_other_entities_are_literal():
    text = "&nbsp; &AMP; &amp &#; &#x; &#xD800; &#x110000; &#0; &#000000065; &#x00000041; & ;"
    assert parse(f"<say>{text}</say>") == tag(0, "say", text)


# Rule 9: comments.


def test_rule9_comments_are_dropped_anywhere():
    assert parse("<!-- <say>no</say> --><say>a<!-- x > <y> -->b</say>") == tag(0, "say", "ab")


def test_rule9_comment_split_across_feeds():
    assert per_feed("<say>a<!-", "- x --", "-", ">b") == [
        [TagOpen(0, "say", {}), TagChunk(0, "say", "a")],
        [],
        [],
        [TagChunk(0, "say", "b")],
        [TagClose(0, "say")],
    ]


def test_rule9_comment_is_not_bounded_like_markup():
    assert parse("<say>a<!--" + "x" * (3 * MAX_MARKUP) + "-->b") == tag(0, "say", "ab")


def test_rule9_comment_needs_its_own_dashes_to_end():
    assert parse("<say>a<!-->b-->c<!--->d-->e") == tag(0, "say", "ace")


def test_rule9_unterminated_comment_drops_the_rest():
    assert per_feed("<say>a<!-- b", "<say>c") == [
        [TagOpen(0, "say", {}), TagChunk(0, "say", "a")],
        [],
        [TagClose(0, "say")],
    ]


# Rule 10: eager, coalesced output.


def test_rule10_text_is_emitted_eagerly():
    assert per_feed("<say>Hel", "lo &am", "p; <", "b>x</s", "ay>") == [
        [TagOpen(0, "say", {}), TagChunk(0, "say", "Hel")],
        [TagChunk(0, "say", "lo ")],
        [TagChunk(0, "say", "& ")],
        [TagChunk(0, "say", "<b>x")],
        [TagClose(0, "say")],
        [],
    ]


def test_rule10_one_chunk_per_text_run():
    events = per_feed("<say>a&amp;b<!--c-->d</thought>e<em>f<3")
    assert events == [[TagOpen(0, "say", {}), TagChunk(0, "say", "a&bde<em>f<3")], [TagClose(0, "say")]]


def test_rule10_no_empty_chunks():
    assert per_feed("<say>", "", "<!--x-->", "</say>") == [[TagOpen(0, "say", {})], [], [], [TagClose(0, "say")], []]


# Rule 11: close().


def test_rule11_close_flushes_partial_markup_and_entity_as_text():
    assert per_feed("<say>a <b x=", "&am") == [
        [TagOpen(0, "say", {}), TagChunk(0, "say", "a ")],
        [],
        [TagChunk(0, "say", "<b x=&am"), TagClose(0, "say")],
    ]
    assert per_feed("<say>a <!-") == [
        [TagOpen(0, "say", {}), TagChunk(0, "say", "a ")],
        [TagChunk(0, "say", "<!-"), TagClose(0, "say")],
    ]


def test_rule11_close_discards_partial_markup_outside():
    assert parse("<sa") == []


def test_rule11_close_closes_the_open_tag():
    assert per_feed("<say>hi") == [[TagOpen(0, "say", {}), TagChunk(0, "say", "hi")], [TagClose(0, "say")]]


def test_rule11_feed_after_close_raises_and_close_is_idempotent():
    parser = TagStreamParser(ALLOWED)
    parser.feed("<say>x")
    parser.close()
    assert parser.close() == []
    with pytest.raises(RuntimeError):
        parser.feed("more")


# Rule 12: undeclared tools.


def test_rule12_undeclared_tool_is_refused_and_its_content_dropped():
    text = '<say>a</say><tool name="fly">{"x": 1}</tool><tool name="open_door">{}</tool><tool>?<say>b'
    assert parse(text, tools=["open_door"]) == [
        *tag(0, "say", "a"),
        TagRefused("tool", {"name": "fly"}),
        *tag(1, "tool", "{}", name="open_door"),
        TagRefused("tool", {}),
        *tag(2, "say", "b"),
    ]


def test_rule12_tool_is_recognised_with_no_tools_declared():
    assert parse('<say>x<tool name="a"/>y', tools=[]) == [*tag(0, "say", "x"), TagRefused("tool", {"name": "a"})]


def test_rule12_refused_tool_then_stray_text_is_spoken():
    assert parse('<tool name="a">{}</tool> ok', tools=[], untagged="say") == [
        TagRefused("tool", {"name": "a"}),
        *tag(0, "say", "ok"),
    ]


# Tags split anywhere.


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (["<say>hi</sa", "y>"], tag(0, "say", "hi")),
        (['<action name="wa', 've"/>'], tag(0, "action", name="wave")),
        (["<say>&am", "p;</say>"], tag(0, "say", "&")),
        (["<", "say>x</say>"], tag(0, "say", "x")),
        (["<say>x<", "/", "say", ">"], tag(0, "say", "x")),
    ],
)
def test_tags_split_anywhere(chunks, expected):
    assert parse(*chunks) == expected


# Constructor.


@pytest.mark.parametrize(("allowed", "error"), [("say", TypeError), (["1x"], ValueError), (["say", "Say"], ValueError)])
def test_rejects_bad_allowed_tags(allowed, error):
    with pytest.raises(error):
        TagStreamParser(allowed)


# Properties: any split gives the same events as the whole text.

_NAMES = st.sampled_from(["thought", "say", "action", "SAY", "Thought", "em", "b", "br", "sayx", "tool"])
_ATTRIBUTES = st.lists(
    st.builds(
        "{}{}{}".format,
        st.sampled_from([" ", "  ", "\n"]),
        st.sampled_from(["name", "a", "B"]),
        st.sampled_from(["", "=x", ' = "v 1"', "='q'", '="&lt;&#x41;&bogus;"', "=a/b", "=wave"]),
    ),
    max_size=2,
).map("".join)
_OPENING_TAGS = st.builds("<{}{}{}>".format, _NAMES, _ATTRIBUTES, st.sampled_from(["", "", "", "/", " /"]))
_CONTENT = st.one_of(
    st.text(alphabet="ab \n-;#=\"'/xé", min_size=1, max_size=10),
    st.text(min_size=1, max_size=4),
    st.sampled_from(["&amp;", "&lt;", "&apos;", "&#65;", "&#00000065;", "&#x0000041;", "&#x1F600;", "&#X41;"]),
    st.sampled_from(["&nbsp;", "&amp", "&#xD800;", "&#0;", "&#000000065;", "&#x110000;", "&"]),
    st.sampled_from(["<", "</", "<!", "<!-", "<!--", "-->", "<3", "<<", " < ", ">", "<!x>", '<say x="y>', "</ >"]),
    st.builds("<!--{}-->".format, st.text(alphabet="ab-<>& ", max_size=8)),
    st.builds("</{}{}>".format, _NAMES, st.sampled_from(["", "", " ", " x"])),
    _OPENING_TAGS,
    st.integers(MAX_MARKUP - 6, MAX_MARKUP + 2).map(lambda size: "<b " + "y" * size),
)
_SECTIONS = st.builds("{}{}".format, _OPENING_TAGS, st.lists(_CONTENT, max_size=8).map("".join))
_DOCUMENTS = st.builds(
    "{}{}".format, st.lists(_CONTENT, max_size=3).map("".join), st.lists(_SECTIONS, max_size=5).map("".join)
)


def normalise(calls: list[list[TagEvent]]) -> list[TagEvent]:
    """Flatten the events of all calls, merging consecutive chunks of the same tag."""
    merged: list[TagEvent] = []
    for event in (event for events in calls for event in events):
        last = merged[-1] if merged else None
        if isinstance(event, TagChunk) and isinstance(last, TagChunk) and last.index == event.index:
            merged[-1] = TagChunk(last.index, last.tag, last.text + event.text)
        else:
            merged.append(event)
    return merged


def check_invariants(calls: list[list[TagEvent]]) -> None:
    """Indexes count up from 0; each open is closed once, in order; chunks are non-empty and coalesced."""
    open_event: TagOpen | None = None
    opened = 0
    for events in calls:
        for previous, event in zip([None, *events], events):
            if isinstance(event, TagRefused):
                assert open_event is None
            elif isinstance(event, TagOpen):
                assert open_event is None and event.index == opened
                open_event, opened = event, opened + 1
            else:
                assert open_event is not None and (event.index, event.tag) == (open_event.index, open_event.tag)
                if isinstance(event, TagChunk):
                    assert event.text and not isinstance(previous, TagChunk)
                else:
                    open_event = None
    assert open_event is None


OPTIONS = st.sampled_from([{}, {"untagged": "say"}, {"tools": ["wave"]}, {"untagged": "thought", "tools": []}])


def check_split(text: str, chunks: list[str], options: dict) -> None:
    """Feeding ``chunks`` gives the same events as feeding ``text`` whole, and both are well-formed."""
    whole = per_feed(text, **options)
    split = per_feed(*chunks, **options)
    check_invariants(whole)
    check_invariants(split)
    assert normalise(split) == normalise(whole)


@settings(max_examples=400, deadline=None)
@given(_DOCUMENTS, OPTIONS, st.data())
def test_any_split_gives_the_same_events(text, options, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    check_split(text, [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)])], options)


@settings(max_examples=160, deadline=None)
@given(_DOCUMENTS, OPTIONS)
def test_one_character_at_a_time_gives_the_same_events(text, options):
    check_split(text, list(text), options)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="<&"), min_size=1).filter(str.strip), st.data())
def test_prose_is_spoken_whole_for_any_split(prose, data):
    """A model that ignores the format still speaks: all its prose, in one say tag."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(prose)), max_size=8)))
    chunks = [prose[start:end] for start, end in zip([0, *cuts], [*cuts, len(prose)])]
    assert normalise(per_feed(*chunks, untagged="say")) == tag(0, "say", prose.lstrip())
