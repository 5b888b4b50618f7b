"""An NPC's confirmed history, rendered as the chat messages the model reads before each turn.

The history holds what the game confirmed: the events the NPC reacted to, notifications, its
turns as Godot actually played them (an interrupted turn only up to the cut) and tool results.
Entries stay plain JSON-ready dicts so they are logged and journaled as they are:

- ``{"kind": "event", "event_id": str | None, "event": {"kind"?, "source"?, "text"?, "data"?}}``
- ``{"kind": "notification", "event": {...}}``
- ``{"kind": "turn", "turn_id": str, "status": "completed" | "interrupted" | "pending",
  "tags": [{"tag": str, "attrs": {...}, "text": str}]}``: a turn enters the history as "pending"
  when it starts (so it keeps its place before any event that interrupts it) and is filled in by
  Godot's ``agent_turn_result``; a turn Godot never confirmed is not shown to the model.
- ``{"kind": "tool_results", "turn_id": str, "results": [{"call_id"?, "tool", "ok"?, "output"}]}``

Each entry also has the ``seq`` of the journal fact that made it, when the journal wrote one.
Besides the entries, a ``History`` keeps the NPC's latest summary (a ``summary`` fact,
``core.summary``) of what left the prompt.

A turn becomes an assistant message written exactly as the model writes turns, so the model sees
its past self in the format it must keep using; everything else is user-side.

``History`` holds the rules that change it. Its inputs are *facts*: plain dicts made by
``fact_of`` from the four Godot messages that change history, with the turn ids the gateway
assigned. The gateway journals each fact before an agent sees it, so folding a journal's facts
into a fresh ``History`` gives back the same history the agent had (``History.replay``): after a
worker crash, a restart, a lost node or a deactivation. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from core import protocol as p
from core.memory import SUMMARY  # the type of a summary fact (core.summary): the memory kind of its name
from core.spec import as_text

INTERRUPTED_NOTE = "[your previous turn was interrupted here]"
PENDING = "pending"  # a turn not (yet) confirmed by Godot
_ATTR_ESCAPES = {'"': "&quot;"}
_ABSENT: tuple[object, ...] = (None, "", {}, [])


def render_tags(tags: Sequence[dict]) -> str:
    """Played tags as the XML the model wrote, e.g. ``<say>Hi &amp; bye</say><action name="wave"></action>``."""
    return "".join(_render_tag(tag) for tag in tags)


def _render_tag(tag: dict) -> str:
    name = tag["tag"]
    attrs = "".join(
        f' {attr}="{escape(as_text(value), _ATTR_ESCAPES)}"' for attr, value in (tag.get("attrs") or {}).items()
    )
    return f"<{name}{attrs}>{escape(as_text(tag.get('text') or ''))}</{name}>"


def to_messages(entries: Sequence[dict]) -> list[dict]:
    """OpenAI chat messages: a turn is an assistant message, runs of other entries one user message."""
    messages: list[dict] = []
    user_lines: list[str] = []
    for entry in entries:
        if entry["kind"] == "turn":
            if entry.get("status") == PENDING:
                continue
            _append(messages, "user", "\n".join(user_lines))
            _append(messages, "assistant", render_tags(entry.get("tags") or []))
            user_lines = [INTERRUPTED_NOTE] if entry.get("status") == "interrupted" else []
        else:
            user_lines.append(_user_text(entry))
    _append(messages, "user", "\n".join(user_lines))
    return messages


def entry_size(entry: dict) -> int:
    """An upper bound of the characters ``entry`` adds to the contents of ``to_messages``."""
    if entry["kind"] != "turn":
        return len(_user_text(entry)) + 1  # + the newline joining it to its neighbour
    if entry.get("status") == PENDING:
        return 0
    note = len(INTERRUPTED_NOTE) + 1 if entry.get("status") == "interrupted" else 0
    return len(render_tags(entry.get("tags") or [])) + note


def _append(messages: list[dict], role: str, content: str) -> None:
    """Append a message unless it would be empty."""
    if content:
        messages.append({"role": role, "content": content})


def _user_text(entry: dict) -> str:
    """A user-side entry as readable lines, e.g. ``[speech from player] Hello there``."""
    if entry["kind"] == "tool_results":
        lines = [_tool_result_line(result) for result in entry.get("results") or []]
        return "\n".join(lines) or "[no tool results]"
    if entry["kind"] not in ("event", "notification"):
        raise ValueError(f"unknown history entry kind {entry['kind']!r}")
    event = entry.get("event") or {}
    kind, source = event.get("kind"), event.get("source")
    if entry["kind"] == "notification":
        label = f"notification: {as_text(kind)}" if kind else "notification"
    else:
        label = as_text(kind) if kind else "event"
    if source:
        label = f"{label} from {as_text(source)}"
    return _line(label, event.get("text"), event.get("data"))


def _tool_result_line(result: dict) -> str:
    """``[tool result call_id=c1 tool=open_door ok=true] output``."""
    fields = "".join(
        f" {key}={as_text(result[key])}" for key in ("call_id", "tool", "ok") if result.get(key) not in _ABSENT
    )
    return _line(f"tool result{fields}", result.get("output"))


def _line(label: str, *parts: object) -> str:
    """``[label] part part``, leaving out absent parts."""
    return " ".join([f"[{label}]", *(as_text(part) for part in parts if part not in _ABSENT)])


# --- the rules that change history -----------------------------------------------------------


FACT_TYPES = frozenset(("interaction_event", "notification_event", "agent_turn_result", "tool_results"))


def fact_of(message: p.AgentMessage, agent_id: str, turn_id: str | None = None) -> dict | None:
    """The journal fact of a message that changes ``agent_id``'s history, or None.

    ``turn_id`` is the id of the turn the message starts (an interaction event, or tool results
    asking for a continuation); the gateway assigns it so the journal knows it before the agent.
    """
    match message:
        case p.InteractionEvent():
            return {
                "type": "interaction_event",
                "event_id": message.event_id,
                "event": message.event,
                "turn_id": turn_id,
            }
        case p.NotificationEvent():
            return {"type": "notification_event", "event": message.event}
        case p.AgentTurnResult():
            return {
                "type": "agent_turn_result",
                "turn_id": message.turn_id,
                "status": message.status,
                "tags": message.tags,
            }
        case p.ToolResults():
            return {
                "type": "tool_results",
                "turn_id": message.turn_id,
                "results": message.results,
                "next_turn_id": turn_id if message.cont else None,
            }
    return None


def starts_turn(message: p.AgentMessage) -> bool:
    """Whether the gateway must assign a turn id for ``message``."""
    return isinstance(message, p.InteractionEvent) or (isinstance(message, p.ToolResults) and message.cont)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A fact the history refused; the agent tells Godot with an ``error`` frame."""

    code: str
    message: str
    ref: dict


class History:
    """An agent's history entries (the newest ``max_entries``) and its recent turns by id."""

    def __init__(self, max_entries: int) -> None:
        self.entries: deque[dict] = deque(maxlen=max_entries)
        self.recent: OrderedDict[str, dict] = OrderedDict()  # turn_id -> its entry, newest last
        self.summary: dict | None = None  # {"text", "through_seq"}: the latest (core.summary)

    def apply(self, fact: dict) -> Rejected | None:
        """Apply one fact; a refused fact changes nothing. A fact the journal wrote carries its
        ``seq``, which the entries it makes keep (what a summary covers is named by it)."""
        kind = fact["type"]
        seq = fact.get("seq")
        if kind == "interaction_event":
            self._append({"kind": "event", "event_id": fact["event_id"], "event": fact["event"]}, seq)
            self._start(fact["turn_id"], seq)
        elif kind == "notification_event":
            self._append({"kind": "notification", "event": fact["event"]}, seq)
        elif kind == SUMMARY:
            if self.summary is None or fact["through_seq"] >= self.summary["through_seq"]:
                self.summary = {"text": fact["text"], "through_seq": fact["through_seq"]}
        elif kind == "agent_turn_result":
            entry = self.recent.get(fact["turn_id"])
            if entry is None or entry["status"] != PENDING:
                why = "was already confirmed" if entry else "is not a recent turn of this agent"
                return Rejected(
                    p.UNKNOWN_TURN,
                    f"agent_turn_result: turn {fact['turn_id']!r} {why}",
                    {"type": kind, "turn_id": fact["turn_id"]},
                )
            entry["status"], entry["tags"] = fact["status"], fact["tags"]
        elif kind == "tool_results":
            if fact["turn_id"] not in self.recent:
                return Rejected(
                    p.UNKNOWN_TURN,
                    f"tool_results: turn {fact['turn_id']!r} is not a recent turn of this agent",
                    {"type": kind, "turn_id": fact["turn_id"]},
                )
            self._append({"kind": "tool_results", "turn_id": fact["turn_id"], "results": fact["results"]}, seq)
            if fact["next_turn_id"] is not None:
                self._start(fact["next_turn_id"], seq)
        else:
            raise ValueError(f"unknown history fact {kind!r}")
        return None

    def replay(self, facts: Iterable[dict]) -> None:
        """Fold journaled facts in order (refused ones were refused live too)."""
        for fact in facts:
            self.apply(fact)

    def _append(self, entry: dict, seq: int | None) -> None:
        if seq is not None:
            entry["seq"] = seq
        self.entries.append(entry)

    def _start(self, turn_id: str, seq: int | None) -> None:
        """A turn takes its place in history when it starts, pending until Godot confirms it."""
        entry = {"kind": "turn", "turn_id": turn_id, "status": PENDING, "tags": []}
        self._append(entry, seq)
        self.recent[turn_id] = entry
        while len(self.recent) > p.RECENT_TURNS:
            self.recent.popitem(last=False)
