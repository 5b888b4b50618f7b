"""Incremental reader for an NPC answer written as JSON, giving the tag parser's events.

A provider that can enforce only a JSON schema (OpenAI's ``response_format: json_schema``, vLLM,
Ollama) is asked for the NPC's tags as ``{"tags": [{"tag": "say", "text": "..."}, ...]}``, in the
shape `answer_schema` describes. ``TagJsonReader`` turns that answer, fed in pieces split
anywhere, into exactly the events ``core.tagstream.TagStreamParser`` gives for the same tags
written as markup (``<say>...</say>``), so nothing after it can tell the two apart. Sans-I/O.

Rules (names, indexes, ``untagged`` and refused tools as in ``core.tagstream``)
-----
1.  Each item of ``tags`` is one tag. It opens when its ``text`` begins, with the ``tag`` and
    ``attrs`` read so far, or at the item's end if it has no ``text``; the text streams as chunks
    while it arrives, JSON escapes decoded, and the item's end closes the tag.  The schema puts
    ``tag`` and ``attrs`` first: ``attrs`` after ``text`` are ignored, and a ``text`` that comes
    before ``tag`` is held back until the item's end, where the tag opens.
2.  Other keys, and ``attrs`` values that are not strings, are ignored, whatever they hold.
3.  An item whose ``tag`` is not allowed is stray text: from its first non-whitespace character
    its text goes to the ``untagged`` tag, if there is one, or is discarded.  As in markup, stray
    text of consecutive items shares one untagged tag, closed by the next allowed tag.  A ``tool`` naming an
    undeclared tool gives one `TagRefused` and its text is dropped.
4.  An answer that does not start with ``{`` (after whitespace) is not JSON, from a model that
    ignored the schema: the whole answer goes through ``TagStreamParser`` instead, as markup.
5.  At the first character that breaks the JSON syntax the answer ends: the open tag is closed and
    the rest is ignored (the LLM-input log keeps the raw answer).  So is anything after the root
    object.  `close` ends the turn: held-back text is read, then the open tag is closed.
6.  One `feed` gives at most one chunk per tag's text, and no empty chunk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from core.tagstream import TOOL_TAG, TagChunk, TagClose, TagEvent, TagOpen, TagRefused, TagStreamParser

__all__ = ["TagJsonReader", "answer_schema"]

# The role a value or string plays for the reader.
_ROOT, _TAGS, _ITEM, _ATTRS, _KEY, _NAME, _TEXT, _ATTR, _SKIP = range(9)
# What the reader expects next.
_VALUE, _KEY_OR_END, _COLON, _COMMA_OR_END, _STRING, _LITERAL, _DONE = range(7)
# Where an item's text goes: held back (tag not known yet), into its open tag, to the untagged
# tag from the first non-space character, or nowhere.
_HELD, _OPEN, _STRAY, _DROP = range(4)

_SPACE = re.compile(r"[ \t\r\n]*")
_NOT_SPACE = re.compile(r"\S")
_STRING_SPECIAL = re.compile(r'["\\]')
_LITERAL_CHARS = re.compile(r"[-+.0-9A-Za-z]*")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_LOW_SURROGATE = re.compile(r"\\u[dD][c-fC-F][0-9A-Fa-f]{2}")


def _skip(run: re.Pattern[str], data: str, pos: int) -> int:
    """Where the run of ``run`` (a pattern that also matches nothing) starting at ``pos`` ends."""
    match = run.match(data, pos)
    assert match is not None  # a starred pattern matches the empty string
    return match.end()


def answer_schema(tags: Mapping[str, Iterable[str]], tools: Iterable[str] | None) -> dict:
    """The JSON schema of an answer: ``tags`` maps each allowed tag to its attribute names;
    a ``tool`` tag's ``name`` is one of ``tools``. Strict-mode ready (every key required)."""
    items = []
    for name, attrs in tags.items():
        attr_names = list(attrs)
        properties: dict = {"tag": {"type": "string", "enum": [name]}}
        if name == TOOL_TAG and tools is not None:
            attr_names = ["name", *(attr for attr in attr_names if attr != "name")]
        if attr_names:
            attr_props: dict[str, dict[str, object]] = {attr: {"type": "string"} for attr in attr_names}
            if name == TOOL_TAG and tools is not None:
                attr_props["name"] = {"type": "string", "enum": list(tools)}
            properties["attrs"] = {
                "type": "object",
                "properties": attr_props,
                "required": attr_names,
                "additionalProperties": False,
            }
        properties["text"] = {"type": "string"}
        items.append(
            {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
        )
    return {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"anyOf": items}, "minItems": 1}},
        "required": ["tags"],
        "additionalProperties": False,
    }


class TagJsonReader:
    """Turn one turn's JSON answer, fed in pieces split anywhere, into tag events."""

    def __init__(
        self, allowed_tags: Iterable[str], *, untagged: str | None = None, tools: Iterable[str] | None = None
    ) -> None:
        if isinstance(allowed_tags, str):
            raise TypeError("allowed_tags must be an iterable of tag names, not a str")
        allowed_tags = tuple(allowed_tags)
        tools = None if tools is None else frozenset(tools)
        self._markup = TagStreamParser(allowed_tags, untagged=untagged, tools=tools)  # validates; rule 4
        self._names = {name.lower(): name for name in allowed_tags}
        if tools is not None:
            self._names.setdefault(TOOL_TAG, TOOL_TAG)
        self._untagged = untagged
        self._tools = tools
        self._is_json: bool | None = None  # decided by the first non-space character
        self._pending = ""  # leading whitespace, or an escape the feed split
        self._stack: list[tuple[int, bool]] = []  # open containers: (role, is an object)
        self._expect = _VALUE
        self._role = _ROOT  # of the value expected, or of the string being read
        self._key = ""  # the key whose value comes next
        self._chars: list[str] = []  # the key, tag name or attribute value being read
        self._tag: str | None = None  # the current item's tag as written
        self._attrs: dict[str, str] = {}
        self._sink: int | None = None  # where the current item's text goes; None: no item
        self._held: list[str] = []
        self._open: TagOpen | None = None
        self._implicit = False  # the open tag holds stray text, and outlives its item
        self._run: list[str] = []  # text of the open tag not emitted yet
        self._opened = 0
        self._events: list[TagEvent] = []
        self._closed = False

    def feed(self, text: str) -> list[TagEvent]:
        """Read the next piece of the answer; return the events it completes."""
        if self._closed:
            raise RuntimeError("feed() called after close()")
        data, self._pending = self._pending + text, ""
        if self._is_json is None:
            start = _skip(_SPACE, data, 0)
            if start == len(data):
                self._pending = data
                return []
            self._is_json = data[start] == "{"
        if not self._is_json:
            return self._markup.feed(data)
        self._read(data, final=False)
        return self._take()

    def close(self) -> list[TagEvent]:
        """End the turn: read what was held back, close the open tag.  Idempotent."""
        if self._closed:
            return []
        self._closed = True
        if not self._is_json:
            return self._markup.feed(self._pending) + self._markup.close()
        self._read(self._pending, final=True)
        self._end_item()
        self._close_tag()
        return self._take()

    # --- JSON ----------------------------------------------------------------------------------

    def _read(self, data: str, final: bool) -> None:
        self._pending = ""
        pos, end = 0, len(data)
        while pos < end and self._expect != _DONE:
            expect = self._expect
            if expect == _STRING:
                pos = self._string_part(data, pos, final)
                continue
            if expect == _LITERAL:
                pos = _skip(_LITERAL_CHARS, data, pos)
                if pos < end:
                    self._value_done()
                continue
            pos = _skip(_SPACE, data, pos)
            if pos == end:
                break
            char = data[pos]
            pos += 1
            if expect == _VALUE:
                self._value(char)
            elif expect == _KEY_OR_END:
                if char == '"':
                    self._string(_KEY)
                elif char == "}":
                    self._container_end()
                else:
                    self._fail()
            elif expect == _COLON:
                if char == ":":
                    self._expect, self._role = _VALUE, self._role_of(self._key)
                else:
                    self._fail()
            else:
                is_object = self._stack[-1][1]
                if char == ",":
                    self._expect = _KEY_OR_END if is_object else _VALUE
                    self._role = self._role if is_object else self._item_role()
                elif char == ("}" if is_object else "]"):
                    self._container_end()
                else:
                    self._fail()

    def _value(self, char: str) -> None:
        role = self._role
        if char == "{":
            kind = role if role in (_ROOT, _ITEM, _ATTRS) else _SKIP
            self._stack.append((kind, True))
            self._expect = _KEY_OR_END
            if kind == _ITEM:
                self._tag, self._attrs, self._sink = None, {}, _HELD
        elif not self._stack:
            self._fail()  # the root must be an object
        elif char == "[":
            self._stack.append((_TAGS if role == _TAGS else _SKIP, False))
            self._expect, self._role = _VALUE, self._item_role()
        elif char == "]" and not self._stack[-1][1]:
            self._container_end()  # an empty array
        elif char == '"':
            self._string(role if role in (_NAME, _TEXT, _ATTR) else _SKIP)
        elif char.isalnum() or char == "-":
            self._expect = _LITERAL
        else:
            self._fail()

    def _string(self, role: int) -> None:
        self._expect, self._role = _STRING, role
        self._chars.clear()
        if role == _TEXT and self._sink == _HELD and self._tag is not None:
            self._start_item()

    def _string_part(self, data: str, pos: int, final: bool) -> int:
        """Read string content from ``pos``; return where reading resumes."""
        special = _STRING_SPECIAL.search(data, pos)
        stop = len(data) if special is None else special.start()
        if stop > pos:
            self._string_text(data[pos:stop])
        if special is None:
            return stop
        if data[stop] == '"':
            self._string_done()
            return stop + 1
        return self._escape(data, stop, final)

    def _escape(self, data: str, start: int, final: bool) -> int:
        """Decode the escape at ``start``; hold it back when the feed split it."""
        kind = data[start + 1 : start + 2]
        if kind in _ESCAPES:
            self._string_text(_ESCAPES[kind])
            return start + 2
        digits = data[start + 2 : start + 6]
        if kind == "u" and _HEX4.fullmatch(digits):
            code = int(digits, 16)
            if not 0xD800 <= code <= 0xDFFF:
                self._string_text(chr(code))
                return start + 6
            low = _LOW_SURROGATE.match(data, start + 6)
            if code <= 0xDBFF and low is not None:
                self._string_text(chr(0x10000 + (code - 0xD800) * 0x400 + int(low[0][2:], 16) - 0xDC00))
                return start + 12
            if code <= 0xDBFF and len(data) < start + 12 and not final:
                return self._hold(data, start)
            self._string_text("\ufffd")  # a lone surrogate
            return start + 6
        if not final and (not kind or (kind == "u" and len(data) < start + 6 and _HEX4.match(digits + "0000"))):
            return self._hold(data, start)
        self._fail()
        return len(data)

    def _hold(self, data: str, start: int) -> int:
        self._pending = data[start:]
        return len(data)

    def _string_text(self, text: str) -> None:
        role = self._role
        if role == _TEXT:
            self._item_text(text)
        elif role != _SKIP:
            self._chars.append(text)

    def _string_done(self) -> None:
        text = "".join(self._chars)
        self._chars.clear()
        if self._role == _KEY:
            self._key, self._expect = text, _COLON
            return
        if self._sink == _HELD:
            if self._role == _NAME:
                self._tag = text
            elif self._role == _ATTR:
                self._attrs[self._key] = text
        self._value_done()

    def _role_of(self, key: str) -> int:
        """The role of the value of ``key`` in the innermost object."""
        container = self._stack[-1][0]
        if container == _ROOT:
            return _TAGS if key == "tags" else _SKIP
        if container == _ITEM:
            return {"tag": _NAME, "text": _TEXT, "attrs": _ATTRS}.get(key, _SKIP)
        return _ATTR if container == _ATTRS else _SKIP

    def _item_role(self) -> int:
        """The role of the values of the innermost array."""
        return _ITEM if self._stack[-1][0] == _TAGS else _SKIP

    def _value_done(self) -> None:
        self._expect = _COMMA_OR_END if self._stack else _DONE

    def _container_end(self) -> None:
        kind, _ = self._stack.pop()
        if kind == _ITEM:
            self._end_item()
        self._value_done()

    def _fail(self) -> None:
        """Broken JSON: the answer ends here (rule 5)."""
        self._end_item()
        self._close_tag()
        self._expect = _DONE

    # --- tags ----------------------------------------------------------------------------------

    def _start_item(self) -> None:
        """The item's tag is decided: open it, refuse it, or treat its text as stray."""
        name = self._names.get(self._tag.lower()) if self._tag is not None else None
        if name is None:
            self._sink = _STRAY if self._untagged is not None else _DROP
            return self._release_held()
        self._close_tag()  # stray text of earlier items
        if name == TOOL_TAG and self._tools is not None and self._attrs.get("name") not in self._tools:
            self._events.append(TagRefused(name, self._attrs))
            self._sink = _DROP
        else:
            self._open_tag(name, self._attrs)
        self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for text in held:
            self._item_text(text)

    def _open_tag(self, name: str, attrs: dict[str, str], implicit: bool = False) -> None:
        self._open = TagOpen(self._opened, name, attrs)
        self._implicit = implicit
        self._opened += 1
        self._events.append(self._open)
        self._sink = _OPEN

    def _item_text(self, text: str) -> None:
        sink = self._sink
        if sink == _HELD:
            self._held.append(text)
        elif sink == _OPEN:
            self._run.append(text)
        elif sink == _STRAY:
            if self._open is not None:  # stray text goes on in the untagged tag
                self._run.append(text)
            elif (first := _NOT_SPACE.search(text)) is not None:
                assert self._untagged is not None  # text is stray only when untagged text is spoken
                self._open_tag(self._untagged, {}, implicit=True)
                self._sink = _STRAY
                self._run.append(text[first.start() :])

    def _end_item(self) -> None:
        """The item ends: its tag closes, but stray text's untagged tag stays open for more."""
        if self._sink is None:
            return
        if self._sink == _HELD:
            self._start_item()
        if not self._implicit:
            self._close_tag()
        self._sink = None

    def _close_tag(self) -> None:
        self._flush()
        if self._open is not None:
            self._events.append(TagClose(self._open.index, self._open.tag))
        self._open, self._implicit = None, False

    def _flush(self) -> None:
        if self._open is not None and self._run:
            self._events.append(TagChunk(self._open.index, self._open.tag, "".join(self._run)))
        self._run.clear()

    def _take(self) -> list[TagEvent]:
        self._flush()
        events, self._events = self._events, []
        return events
