"""Incremental parser for the tag stream an NPC's LLM writes.

An NPC answers in flat, XML-like tags, ``<thought>..</thought><say>..</say>
<action name="wave"/>``, and the game shows each tag's text while tokens are
still arriving.  ``TagStreamParser`` turns the output, fed in pieces split
anywhere, into open/chunk/close events as early as it can.  LLM output is not
XML: tags are left unclosed, ``<`` and ``&`` appear as plain text, and a turn
can be cut off at any point.  So the parser never rejects input; it applies
the forgiving rules below, and loses nothing the model wrote inside a tag.

The module is sans-I/O (strings in, events out), so it is independent of the
transport and easy to test.  Feeding a text whole or split anywhere gives the
same events, up to how a tag's text is divided into chunks.

Rules
-----
1.  Flat structure: at most one tag is open at a time.  ``index`` counts the
    tags opened in the turn: 0, 1, 2, ...
2.  Allowed tag names match case-insensitively; events carry the name as
    spelled in ``allowed_tags``.  Tag names are ASCII: a letter, then letters,
    digits or ``_.:-``.
3.  Outside any tag, markup other than an allowed opening tag is discarded:
    unknown tags, stray closing tags, spans that do not parse as tags.  Stray
    text (what is left, with literal ``<`` and entities) is discarded too, or,
    when the parser has an ``untagged`` tag, spoken: its first non-whitespace
    character opens that tag (an *implicit* tag), which streams the stray text
    like any tag's text and is closed by the next allowed opening tag or the end
    of the turn.  Whitespace outside any tag never opens it, and inside the
    implicit tag markup is still discarded as outside, so a model that ignores
    the format, or writes prose around its tags, still speaks.
4.  Inside an allowed tag T, text streams as `TagChunk` events, entity-decoded.
    ``</T>`` closes T.  An opening tag of any allowed tag, T included, closes T
    first (models forget closing tags).  A closing tag of another allowed tag
    is dropped.  Markup with an unknown name (``<em>``, ``</em>``, ``<br/>``) is
    kept as text, verbatim.
5.  A self-closing allowed tag (``<action name="wave"/>``) closes the open tag,
    if any, then gives a `TagOpen` and a `TagClose` with no chunk between.
6.  Attributes: ``a="x"``, ``a='x'``, unquoted ``a=x``, bare ``a`` (value
    ""), with whitespace allowed around ``=``; names are kept as written,
    values are entity-decoded; the last of duplicate attributes wins.  An
    unquoted value stops at whitespace or at a ``/`` just before ``>``
    (``<action name=wave/>`` is self-closing).  Markup is the span from ``<``
    to the first ``>``, so a value cannot hold ``>`` (write ``&gt;``).  A span
    that does not parse as a tag (``<em a="b>``, ``</say x>``) is kept
    verbatim inside a tag and discarded outside.
7.  A ``<`` starts markup only when followed by an ASCII letter, ``/`` and a
    letter, or ``!--``.  Any other ``<`` (``a < b``, ``<3``, ``<<``) is a
    literal character, and so is a ``<`` that meets another ``<``, the end of
    the stream, or the 512-character limit before its ``>``; scanning then
    resumes right after it.  A lone ``<`` thus never holds back more than 512
    characters.
8.  Entities ``&amp; &lt; &gt; &quot; &apos; &#NN; &#xHH;`` (also ``&#XHH;``)
    are decoded.  Anything else is literal text: an unknown or differently
    cased name, no ``;`` within the 10 characters after ``&``, or a code point
    that is NUL, a surrogate or above U+10FFFF.
9.  Comments ``<!-- ... -->`` are dropped, inside and outside tags; the
    ``-->`` comes after the ``<!--`` (``<!-->`` does not end the comment).
    Their content is never buffered: only the last two characters are kept
    between feeds, to find ``-->``.  Hence an unterminated comment drops the
    rest of the turn, and no length limit applies.
10. Eager output: text is emitted as soon as it cannot begin markup or an
    entity; only an incomplete ``<...`` or ``&...`` at the end of the input so
    far is held back.  One `feed` call gives at most one `TagChunk` per text
    run: text around entities, comments and dropped tags is coalesced, and no
    chunk is empty.
11. `TagStreamParser.close` ends the turn (end of stream or interruption):
    held-back markup or entity becomes literal text, then the open tag gets
    its `TagClose`.  Every `TagOpen` is thus followed by its `TagClose`.  Once
    closed, the parser refuses further input; closing again does nothing.
12. Tools: when the parser is given the declared ``tools``, the tag ``tool`` is
    recognised and its ``name`` attribute must be one of them.  Any other
    ``<tool ...>`` closes the open tag and gives one `TagRefused` instead of a
    tag: it takes no index, and its content, up to ``</tool>`` or the next
    allowed opening tag, is dropped, so the game never sees an undeclared tool.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MAX_MARKUP", "TOOL_TAG", "TagChunk", "TagClose", "TagEvent", "TagOpen", "TagRefused", "TagStreamParser"]

MAX_MARKUP = 512
"""Length of the longest ``<...>`` span, both brackets included, taken as markup."""

TOOL_TAG = "tool"
"""The tag a tool call is written in: ``<tool name="open_door">{"door": "forge"}</tool>``."""


@dataclass(frozen=True, slots=True)
class TagOpen:
    """An allowed tag was opened."""

    index: int
    tag: str
    attrs: dict[str, str]


@dataclass(frozen=True, slots=True)
class TagChunk:
    """Decoded text of the open tag."""

    index: int
    tag: str
    text: str


@dataclass(frozen=True, slots=True)
class TagClose:
    """The open tag was closed: explicitly, implicitly, or by the end of the turn."""

    index: int
    tag: str


@dataclass(frozen=True, slots=True)
class TagRefused:
    """A ``tool`` tag naming a tool that was not declared (rule 12); its content is dropped."""

    tag: str
    attrs: dict[str, str]


TagEvent = TagOpen | TagChunk | TagClose | TagRefused

_NAME = r"[A-Za-z][A-Za-z0-9_.:-]*"
_ATTR = r"""([^\s"'=/>]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|((?:[^\s"'=/>]|/(?!>))+)))?"""
_NAME_RE = re.compile(_NAME)


def is_tag_name(name: str) -> bool:
    """The one rule for a tag name, shared by the parser, spec validation and the grammar: what one
    accepts, the others must handle."""
    return _NAME_RE.fullmatch(name) is not None


_ATTR_RE = re.compile(_ATTR)
_START_TAG = re.compile(rf"<(?P<name>{_NAME})(?P<attrs>(?:\s+{_ATTR})*)\s*(?P<self_closing>/?)>")
_END_TAG = re.compile(rf"</(?P<name>{_NAME})\s*>")

_MARKUP_OPENER = re.compile(r"<(?:[A-Za-z]|/[A-Za-z]|!--)")
_PARTIAL_MARKUP_OPENER = re.compile(r"<(?:/|!-?)?\Z")
_MARKUP_BOUNDARY = re.compile(r"[<>]")
_TEXT_SPECIAL = re.compile(r"[<&]")
_NOT_SPACE = re.compile(r"\S")

_NAMED_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
# Digit counts keep the ";" within the 10 characters after "&".
_ENTITY = re.compile(rf"&(?:({'|'.join(_NAMED_ENTITIES)})|#([0-9]{{1,8}})|#[xX]([0-9A-Fa-f]{{1,7}}));")
# What more input could still complete into an entity.
_PARTIAL_ENTITY = re.compile(
    r"&(?:#[0-9]{0,8}|#[xX][0-9A-Fa-f]{0,7}|"
    + "|".join(sorted({name[:size] for name in _NAMED_ENTITIES for size in range(len(name) + 1)}))
    + ")"
)


def _decode_entity(entity: re.Match[str]) -> str:
    """Return the character an entity match stands for, or the match itself if none."""
    name, decimal, hexadecimal = entity.groups()
    if name is not None:
        return _NAMED_ENTITIES[name]
    code = int(decimal) if decimal is not None else int(hexadecimal, 16)
    if code == 0 or 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
        return entity[0]
    return chr(code)


def _parse_attrs(text: str) -> dict[str, str]:
    """Parse the attribute part of a start tag already validated by ``_START_TAG``."""
    return {
        name: _ENTITY.sub(_decode_entity, double or single or unquoted)
        for name, double, single, unquoted in _ATTR_RE.findall(text)
    }


class TagStreamParser:
    """Turn one turn's LLM output, fed in pieces split anywhere, into tag events.

    ``untagged`` names the allowed tag that stray text goes to (rule 3; None: it is discarded);
    ``tools`` the declared tool names a ``tool`` tag may call (rule 12; None: no tool check).
    """

    __slots__ = (
        "_names",
        "_untagged",
        "_tools",
        "_open",
        "_implicit",
        "_refused",
        "_opened",
        "_run",
        "_pending",
        "_in_comment",
        "_closed",
    )

    def __init__(
        self, allowed_tags: Iterable[str], *, untagged: str | None = None, tools: Iterable[str] | None = None
    ) -> None:
        if isinstance(allowed_tags, str):
            raise TypeError("allowed_tags must be an iterable of tag names, not a str")
        self._names: dict[str, str] = {}
        for name in allowed_tags:
            if not is_tag_name(name):
                raise ValueError(f"invalid tag name: {name!r}")
            if self._names.setdefault(name.lower(), name) != name:
                raise ValueError(f"tag names differ only by case: {name!r}")
        if untagged is not None and self._names.get(untagged.lower()) != untagged:
            raise ValueError(f"untagged text must go to an allowed tag, not {untagged!r}")
        self._untagged = untagged
        self._tools = None if tools is None else frozenset(tools)
        if self._tools is not None:
            self._names.setdefault(TOOL_TAG, TOOL_TAG)
        self._open: TagOpen | None = None
        self._implicit = False  # the open tag holds stray text (rule 3)
        self._refused = False  # the open tag is a refused tool: its text goes nowhere (rule 12)
        self._opened = 0
        self._run: list[str] = []  # text of the open tag not emitted yet
        self._pending = ""  # undecided tail of the input: partial markup or entity, comment end
        self._in_comment = False
        self._closed = False

    @property
    def open_tag(self) -> str | None:
        """Name of the tag currently open, if any."""
        return None if self._open is None or self._refused else self._open.tag

    def feed(self, text: str) -> list[TagEvent]:
        """Parse the next piece of output; return the events it completes."""
        if self._closed:
            raise RuntimeError("feed() called after close()")
        return self._parse(self._pending + text, final=False)

    def close(self) -> list[TagEvent]:
        """End the turn: flush held-back text and close the open tag.  Idempotent."""
        if self._closed:
            return []
        self._closed = True
        events = self._parse(self._pending, final=True)
        self._close_tag(events)
        return events

    def _parse(self, data: str, final: bool) -> list[TagEvent]:
        """Process ``data``, holding back an undecided tail in ``_pending`` unless ``final``."""
        events: list[TagEvent] = []
        self._pending = ""
        pos = self._skip_comment(data, 0) if self._in_comment else 0
        end = len(data)
        while pos < end:
            if self._open is None:
                start = data.find("<", pos)
                if self._untagged is not None:
                    text = _NOT_SPACE.search(data, pos, end if start < 0 else start)
                    if text is not None:  # stray text: it opens the implicit tag
                        self._open_implicit(events)
                        pos = text.start()
                        continue
                if start < 0:
                    break
            else:
                special = _TEXT_SPECIAL.search(data, pos)
                if special is None:
                    self._run.append(data[pos:])
                    break
                start = special.start()
                if start > pos:
                    self._run.append(data[pos:start])
                if data[start] == "&":
                    pos = self._entity(data, start, final)
                    continue
            pos = self._markup(data, start, final, events)
        self._flush(events)
        return events

    def _entity(self, data: str, start: int, final: bool) -> int:
        """Handle the ``&`` at ``start`` inside a tag; return where scanning resumes."""
        entity = _ENTITY.match(data, start)
        if entity is not None:
            self._run.append(_decode_entity(entity))
            return entity.end()
        if not final and _PARTIAL_ENTITY.fullmatch(data, start):
            return self._hold(data, start)
        self._run.append("&")
        return start + 1

    def _markup(self, data: str, start: int, final: bool, events: list[TagEvent]) -> int:
        """Handle the ``<`` at ``start``; return where scanning resumes."""
        opener = _MARKUP_OPENER.match(data, start)
        if opener is None:
            undecided = _PARTIAL_MARKUP_OPENER.match(data, start) is not None
        elif opener[0] == "<!--":
            return self._skip_comment(data, opener.end())
        else:
            boundary = _MARKUP_BOUNDARY.search(data, start + 1, start + MAX_MARKUP)
            if boundary is not None and boundary[0] == ">":
                self._tag(data, start, boundary.end(), events)
                return boundary.end()
            undecided = boundary is None and len(data) < start + MAX_MARKUP
        if undecided and not final:
            return self._hold(data, start)
        if self._open is None and self._untagged is not None:
            self._open_implicit(events)
        if self._open is not None:
            self._run.append("<")
        return start + 1

    def _tag(self, data: str, start: int, end: int, events: list[TagEvent]) -> None:
        """Handle the complete markup ``data[start:end]``."""
        closing = data[start + 1] == "/"
        tag = (_END_TAG if closing else _START_TAG).fullmatch(data, start, end)
        if tag is None or (name := self._names.get(tag["name"].lower())) is None:
            if self._open is not None and not self._implicit:
                self._run.append(data[start:end])  # unknown markup inside a tag is text (rule 4)
        elif closing:
            if self._open is not None and self._open.tag == name and not self._implicit:
                self._close_tag(events)
        else:
            self._close_tag(events)
            attrs = _parse_attrs(tag["attrs"])
            if name == TOOL_TAG and self._tools is not None and attrs.get("name") not in self._tools:
                events.append(TagRefused(name, attrs))
                self._open, self._refused = TagOpen(-1, name, attrs), True
            else:
                self._open = TagOpen(self._opened, name, attrs)
                self._opened += 1
                events.append(self._open)
            if tag["self_closing"]:
                self._close_tag(events)

    def _open_implicit(self, events: list[TagEvent]) -> None:
        """Open the ``untagged`` tag for stray text."""
        assert self._untagged is not None  # opened only when untagged text is spoken
        self._open = TagOpen(self._opened, self._untagged, {})
        self._opened += 1
        self._implicit = True
        events.append(self._open)

    def _skip_comment(self, data: str, start: int) -> int:
        """Skip a comment whose body starts at ``start``; return where scanning resumes."""
        end = data.find("-->", start)
        self._in_comment = end < 0
        if self._in_comment:
            self._pending = data[max(start, len(data) - 2) :]  # may begin the "-->"
            return len(data)
        return end + len("-->")

    def _hold(self, data: str, start: int) -> int:
        """Keep ``data[start:]`` for the next feed; return the end of ``data``."""
        self._pending = data[start:]
        return len(data)

    def _flush(self, events: list[TagEvent]) -> None:
        """Emit the open tag's pending text as one chunk (a refused tool's is dropped)."""
        if self._open is not None and self._run:
            if not self._refused:
                events.append(TagChunk(self._open.index, self._open.tag, "".join(self._run)))
            self._run.clear()

    def _close_tag(self, events: list[TagEvent]) -> None:
        """Close the open tag, if any, after emitting its pending text."""
        if self._open is not None:
            self._flush(events)
            if not self._refused:
                events.append(TagClose(self._open.index, self._open.tag))
            self._open, self._implicit, self._refused = None, False, False
