"""The Godot wire protocol (``/ws``): validating what Godot sends, building what the server sends.

Pure code. ``parse_frame`` turns one text frame into a typed message or a ``ProtocolError`` that
names the problem precisely enough for a game developer to fix their client; the builders below
are the only place outbound frames are shaped. See docs/protocol.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import orjson

from core.tagstream import TagChunk, TagClose, TagOpen, TagRefused

# --- inbound messages ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    id: Any = None


@dataclass(frozen=True, slots=True)
class InteractionEvent:
    agent_id: str
    event_id: str | None
    event: dict


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    agent_ids: tuple[str, ...]
    event: dict


@dataclass(frozen=True, slots=True)
class AgentStateSnapshot:
    request_id: str
    agent_id: str
    state: dict


@dataclass(frozen=True, slots=True)
class AgentTurnResult:
    agent_id: str
    turn_id: str
    status: str
    tags: list[dict]


@dataclass(frozen=True, slots=True)
class ToolResults:
    agent_id: str
    turn_id: str
    results: list[dict]
    cont: bool = True


@dataclass(frozen=True, slots=True)
class MemoryAdd:
    agent_id: str
    text: str
    pinned: bool
    scope: str


@dataclass(frozen=True, slots=True)
class MemoryForget:
    agent_id: str
    memory_id: str | None
    query: str | None
    scope: str


@dataclass(frozen=True, slots=True)
class MemoryList:
    agent_id: str
    query: str | None
    scope: str | None  # None: the NPC's own and its latest spec's groups


MemoryMessage = MemoryAdd | MemoryForget | MemoryList
ClientMessage = (
    Ping | InteractionEvent | NotificationEvent | AgentStateSnapshot | AgentTurnResult | ToolResults | MemoryMessage
)
AgentMessage = InteractionEvent | NotificationEvent | AgentStateSnapshot | AgentTurnResult | ToolResults


@dataclass(frozen=True, slots=True)
class ProtocolError(Exception):
    """A frame the server cannot act on; becomes an ``error`` frame, the connection stays open."""

    code: str
    message: str
    ref: dict = field(default_factory=dict)

    def frame(self) -> dict:
        return error(self.code, self.message, self.ref)


# Error codes (docs/protocol.md lists them with their meaning).
BAD_JSON = "bad_json"
BAD_FRAME = "bad_frame"
UNKNOWN_TYPE = "unknown_type"
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
UNKNOWN_AGENT = "unknown_agent"
UNKNOWN_TURN = "unknown_turn"
TURN_NOT_ENDED = "turn_not_ended"
UNKNOWN_REQUEST = "unknown_request"
BAD_STATE = "bad_state"
FRAME_TOO_LARGE = "frame_too_large"
TURN_ERROR = "turn_error"
SNAPSHOT_TIMEOUT = "snapshot_timeout"
LLM_ERROR = "llm_error"
WORKER_LOST = "worker_lost"
RATE_LIMITED = "rate_limited"
TOO_MANY_AGENTS = "too_many_agents"
TOO_MANY_WORKERS = "too_many_workers"
UNDECLARED_TOOL = "undeclared_tool"
JOURNAL_ERROR = "journal_error"
TOO_MANY_RECIPIENTS = "too_many_recipients"
EVENT_TOO_LARGE = "event_too_large"
JOURNAL_LIMIT = "journal_limit"
MEMORY_TOO_LARGE = "memory_too_large"
TOO_MANY_MEMORIES = "too_many_memories"
UNKNOWN_MEMORY = "unknown_memory"

TURN_STATUSES = ("completed", "interrupted")
RECENT_TURNS = 64  # an agent's turns that agent_turn_result / tool_results may still name
MAX_DEPTH = 64  # JSON nesting a frame may have: orjson reads 1024 levels but writes only ~254
EVENT_STRING_FIELDS = ("kind", "source", "text")
AGENT_SCOPE = "agent"  # a memory of one NPC (core.memory)
GROUP_PREFIX = "group:"  # a memory of every NPC whose spec names the group


def parse_frame(raw: str | bytes) -> ClientMessage:
    """Validate one frame from Godot; raise ``ProtocolError`` when it cannot be acted on."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(BAD_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_FRAME, f"frame must be a JSON object, got {_kind(obj)}")
    if _too_deep(obj):
        raise ProtocolError(BAD_FRAME, f"frame is nested deeper than {MAX_DEPTH} levels", _ref(obj))
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_FRAME, "frame needs a string field 'type'", _ref(obj))
    parser = _PARSERS.get(kind)
    if parser is None:
        known = ", ".join(_PARSERS)
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind!r}; known: {known}", _ref(obj))
    return parser(obj)


def _too_deep(obj: dict) -> bool:
    """Whether ``obj`` nests lists and objects deeper than MAX_DEPTH (iterative: no recursion)."""
    level: list[dict | list] = [obj]
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            return True
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
        depth += 1
    return False


def _ref(obj: dict) -> dict:
    """What an error concerns: the frame's type and whichever ids it carried."""
    return {k: obj[k] for k in ("type", "agent_id", "request_id", "turn_id", "event_id") if isinstance(obj.get(k), str)}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


@overload
def _string(obj: dict, key: str) -> str: ...
@overload
def _string(obj: dict, key: str, *, required: Literal[False]) -> str | None: ...
def _string(obj: dict, key: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ProtocolError(MISSING_FIELD, f"{obj['type']} needs a string field {key!r}", _ref(obj))
        return None
    if not isinstance(value, str) or (required and not value):
        raise ProtocolError(BAD_FIELD, f"{obj['type']}.{key} must be a non-empty string, got {_kind(value)}", _ref(obj))
    return value


def _object(obj: dict, key: str) -> dict:
    value = obj.get(key)
    if value is None:
        raise ProtocolError(MISSING_FIELD, f"{obj['type']} needs an object field {key!r}", _ref(obj))
    if not isinstance(value, dict):
        raise ProtocolError(BAD_FIELD, f"{obj['type']}.{key} must be an object, got {_kind(value)}", _ref(obj))
    return value


def _list_of_objects(obj: dict, key: str) -> list[dict]:
    value = obj.get(key)
    if value is None:
        raise ProtocolError(MISSING_FIELD, f"{obj['type']} needs a list field {key!r}", _ref(obj))
    if not isinstance(value, list):
        raise ProtocolError(BAD_FIELD, f"{obj['type']}.{key} must be a list, got {_kind(value)}", _ref(obj))
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ProtocolError(BAD_FIELD, f"{obj['type']}.{key}[{i}] must be an object, got {_kind(item)}", _ref(obj))
    return value


def _event(obj: dict) -> dict:
    event = _object(obj, "event")
    for key in EVENT_STRING_FIELDS:
        if key in event and event[key] is not None and not isinstance(event[key], str):
            raise ProtocolError(
                BAD_FIELD, f"{obj['type']}.event.{key} must be a string, got {_kind(event[key])}", _ref(obj)
            )
    return {k: event[k] for k in (*EVENT_STRING_FIELDS, "data") if event.get(k) is not None}


def _parse_ping(obj: dict) -> Ping:
    return Ping(obj.get("id"))


def _parse_interaction(obj: dict) -> InteractionEvent:
    return InteractionEvent(_string(obj, "agent_id"), _string(obj, "event_id", required=False), _event(obj))


def _parse_notification(obj: dict) -> NotificationEvent:
    if "agent_ids" in obj and obj["agent_ids"] is not None:
        ids = obj["agent_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise ProtocolError(
                BAD_FIELD, "notification_event.agent_ids must be a non-empty list of strings", _ref(obj)
            )
        agent_ids = tuple(dict.fromkeys(ids))
    elif "agent_id" in obj:
        agent_ids = (_string(obj, "agent_id"),)
    else:
        raise ProtocolError(MISSING_FIELD, "notification_event needs 'agent_id' or 'agent_ids'", _ref(obj))
    return NotificationEvent(agent_ids, _event(obj))


def _parse_snapshot(obj: dict) -> AgentStateSnapshot:
    return AgentStateSnapshot(_string(obj, "request_id"), _string(obj, "agent_id"), _object(obj, "state"))


def _parse_turn_result(obj: dict) -> AgentTurnResult:
    agent_id, turn_id = _string(obj, "agent_id"), _string(obj, "turn_id")
    status = obj.get("status")
    if status not in TURN_STATUSES:
        raise ProtocolError(
            BAD_FIELD if obj.get("status") is not None else MISSING_FIELD,
            f"agent_turn_result.status must be one of {', '.join(TURN_STATUSES)}, got {status!r}",
            _ref(obj),
        )
    tags = []
    for i, tag in enumerate(_list_of_objects(obj, "tags")):
        name, attrs, text = tag.get("tag"), tag.get("attrs"), tag.get("text", "")
        attrs = {} if attrs is None else attrs
        if not isinstance(name, str) or not name:
            raise ProtocolError(BAD_FIELD, f"agent_turn_result.tags[{i}].tag must be a non-empty string", _ref(obj))
        if not isinstance(attrs, dict):
            raise ProtocolError(BAD_FIELD, f"agent_turn_result.tags[{i}].attrs must be an object", _ref(obj))
        if not isinstance(text, str):
            raise ProtocolError(BAD_FIELD, f"agent_turn_result.tags[{i}].text must be a string", _ref(obj))
        tags.append({"tag": name, "attrs": {str(k): _attr_text(v) for k, v in attrs.items()}, "text": text})
    return AgentTurnResult(agent_id, turn_id, status, tags)


def _attr_text(value: Any) -> str:
    """Attribute values are strings on the wire; be exact about the ones Godot sends otherwise."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode()


def _parse_tool_results(obj: dict) -> ToolResults:
    agent_id, turn_id = _string(obj, "agent_id"), _string(obj, "turn_id")
    results = _list_of_objects(obj, "results")
    for i, result in enumerate(results):
        if not isinstance(result.get("tool"), str) or not result["tool"]:
            raise ProtocolError(BAD_FIELD, f"tool_results.results[{i}].tool must be a non-empty string", _ref(obj))
    cont = obj.get("continue", True)
    if not isinstance(cont, bool):
        raise ProtocolError(BAD_FIELD, "tool_results.continue must be a boolean", _ref(obj))
    return ToolResults(agent_id, turn_id, results, cont)


def _scope(obj: dict) -> str:
    """A memory's scope: absent or ``"agent"``, or ``"group:<name>"``."""
    value = obj.get("scope")
    if value is None or value == AGENT_SCOPE:
        return AGENT_SCOPE
    if isinstance(value, str) and value.startswith(GROUP_PREFIX) and value[len(GROUP_PREFIX) :].strip():
        return value
    raise ProtocolError(
        BAD_FIELD, f'{obj["type"]}.scope must be "agent" or "group:<name>", got {_kind(value)} {value!r}', _ref(obj)
    )


def _parse_memory_add(obj: dict) -> MemoryAdd:
    pinned = obj.get("pinned", False)
    if not isinstance(pinned, bool):
        raise ProtocolError(BAD_FIELD, "memory_add.pinned must be a boolean", _ref(obj))
    return MemoryAdd(_string(obj, "agent_id"), _string(obj, "text"), pinned, _scope(obj))


def _parse_memory_forget(obj: dict) -> MemoryForget:
    memory_id, query = _string(obj, "memory_id", required=False), _string(obj, "query", required=False)
    if (memory_id is None) == (query is None):
        code = MISSING_FIELD if memory_id is None else BAD_FIELD
        raise ProtocolError(code, "memory_forget needs exactly one of 'memory_id' or 'query'", _ref(obj))
    return MemoryForget(_string(obj, "agent_id"), memory_id, query, _scope(obj))


def _parse_memory_list(obj: dict) -> MemoryList:
    scope = None if obj.get("scope") is None else _scope(obj)
    return MemoryList(_string(obj, "agent_id"), _string(obj, "query", required=False), scope)


_PARSERS: dict[str, Callable[[dict], ClientMessage]] = {
    "ping": _parse_ping,
    "interaction_event": _parse_interaction,
    "notification_event": _parse_notification,
    "agent_state_snapshot": _parse_snapshot,
    "agent_turn_result": _parse_turn_result,
    "tool_results": _parse_tool_results,
    "memory_add": _parse_memory_add,
    "memory_forget": _parse_memory_forget,
    "memory_list": _parse_memory_list,
}
TYPE_NAMES = {
    Ping: "ping",
    InteractionEvent: "interaction_event",
    NotificationEvent: "notification_event",
    AgentStateSnapshot: "agent_state_snapshot",
    AgentTurnResult: "agent_turn_result",
    ToolResults: "tool_results",
    MemoryAdd: "memory_add",
    MemoryForget: "memory_forget",
    MemoryList: "memory_list",
}

# --- outbound frames -------------------------------------------------------------------------


def pong(ping_id: Any = None) -> dict:
    return {"type": "pong"} if ping_id is None else {"type": "pong", "id": ping_id}


def get_agent_state(request_id: str, agent_id: str, event_id: str | None) -> dict:
    frame = {"type": "get_agent_state", "request_id": request_id, "agent_id": agent_id}
    if event_id is not None:
        frame["event_id"] = event_id
    return frame


def turn_started(agent_id: str, turn_id: str, event_id: str | None) -> dict:
    frame = {"type": "agent_turn_started", "agent_id": agent_id, "turn_id": turn_id}
    if event_id is not None:
        frame["event_id"] = event_id
    return frame


def tag_open(agent_id: str, turn_id: str, index: int, tag: str, attrs: dict) -> dict:
    return {
        "type": "agent_tag_open",
        "agent_id": agent_id,
        "turn_id": turn_id,
        "index": index,
        "tag": tag,
        "attrs": attrs,
    }


def tag_chunk(agent_id: str, turn_id: str, index: int, tag: str, text: str) -> dict:
    return {
        "type": "agent_tag_chunk",
        "agent_id": agent_id,
        "turn_id": turn_id,
        "index": index,
        "tag": tag,
        "text": text,
    }


def tag_close(agent_id: str, turn_id: str, index: int, tag: str) -> dict:
    return {"type": "agent_tag_close", "agent_id": agent_id, "turn_id": turn_id, "index": index, "tag": tag}


def tag_frames(agent_id: str, turn_id: str, events: list) -> list[dict]:
    """The frames of the tag parser's events (core.tagstream); a ``tool`` tag without a
    ``call_id`` gets ``<turn_id>.<index>``, so its results can name it, and a refused tool is
    an ``error`` frame instead, so the game never runs a tool it did not declare. A list, not a
    generator: called per streamed token, and cheaper so."""
    frames = []
    for ev in events:
        kind = type(ev)
        if kind is TagChunk:
            frames.append(tag_chunk(agent_id, turn_id, ev.index, ev.tag, ev.text))
        elif kind is TagOpen:
            attrs = ev.attrs
            if ev.tag == "tool" and "call_id" not in attrs:
                attrs = {**attrs, "call_id": f"{turn_id}.{ev.index}"}
            frames.append(tag_open(agent_id, turn_id, ev.index, ev.tag, attrs))
        elif kind is TagClose:
            frames.append(tag_close(agent_id, turn_id, ev.index, ev.tag))
        elif kind is TagRefused:
            name = ev.attrs.get("name")
            frames.append(
                error(
                    UNDECLARED_TOOL,
                    f"the model called tool {name!r}, which the agent's spec does not declare; the call was dropped",
                    {"agent_id": agent_id, "turn_id": turn_id, "tool": name},
                )
            )
    return frames


def turn_interrupted(agent_id: str, turn_id: str, reason: str, by_event_id: str | None) -> dict:
    frame = {"type": "agent_turn_interrupted", "agent_id": agent_id, "turn_id": turn_id, "reason": reason}
    if by_event_id is not None:
        frame["by_event_id"] = by_event_id
    return frame


def turn_finished(
    agent_id: str, turn_id: str, reason: str, usage: dict | None = None, fallback: dict | None = None
) -> dict:
    """``fallback``: how the turn stepped down the fallback ladder, when it did (docs/protocol.md)."""
    frame: dict[str, Any] = {"type": "agent_turn_finished", "agent_id": agent_id, "turn_id": turn_id, "reason": reason}
    if usage:
        frame["usage"] = usage
    if fallback:
        frame["fallback"] = fallback
    return frame


def memory_added(agent_id: str, memory_id: str, scope: str) -> dict:
    return {"type": "memory_added", "agent_id": agent_id, "memory_id": memory_id, "scope": scope}


def memory_forgotten(agent_id: str, memory_ids: list[str]) -> dict:
    return {"type": "memory_forgotten", "agent_id": agent_id, "memory_ids": memory_ids, "count": len(memory_ids)}


def memory_list_result(agent_id: str, memories: list[dict], scopes: tuple[str, ...]) -> dict:
    """``scopes``: whose memories are listed ("agent", "group:<name>")."""
    return {"type": "memory_list_result", "agent_id": agent_id, "memories": memories, "scopes": list(scopes)}


def error(code: str, message: str, ref: dict | None = None) -> dict:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref:
        frame["ref"] = ref
    return frame
