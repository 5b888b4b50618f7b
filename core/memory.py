"""What an NPC remembers beyond its history: memories the game adds, and summaries the server writes.

A memory is a short text kept durably in the journal (``gateway/memories.py``), apart from the
history facts: history is what was played, trimmed to the prompt's window and retrieved again
by relevance (``core/recall.py``); a memory is something the NPC is *told* to know. A pinned
memory is in every prompt; any other is recalled like an old fact, when the new event refers to it.

A memory belongs to a *scope*: one NPC (``agent``), or a group named in the NPC's spec
(``groups``: a faction, the town guard), so that what one guard is told every guard knows, and
nobody else. Storage names a scope by its *owner*: ``agent:<agent_id>`` or ``group:<name>``,
per session. An NPC knows its own scope and those of its spec's groups (``scopes_of``).

The operations (``AddMemory``, ``ForgetMemories``, ``ListMemories``) are plain data the journal's
thread carries out in order with the history facts, so a memory added before an event is
recalled by that event's turn. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core import protocol as p

NOTE = "note"  # added by the game (memory_add)
SUMMARY = "summary"  # written by the server's summariser
KINDS = (NOTE, SUMMARY)
AGENT_SCOPE = p.AGENT_SCOPE
GROUP_PREFIX = p.GROUP_PREFIX


class MemoryRefused(ValueError):
    """A memory operation the server refuses; ``code`` is the ``error`` frame's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of what the game may store (settings memory_*); every one is checked before a write."""

    max_text_chars: int  # one memory's text
    max_per_scope: int  # memories of one NPC or one group
    max_per_session: int  # memories of all NPCs and groups of one session
    max_pinned_per_scope: int  # of those, pinned (all of them are in every prompt)
    max_query_chars: int  # a list's or forget's query
    max_forget: int  # memories one forget by query may delete


@dataclass(frozen=True, slots=True)
class Memory:
    """One memory as stored: ``seq`` orders memories by when they were added (the journal's order)."""

    memory_id: str
    text: str
    kind: str
    pinned: bool
    scope: str  # "agent" or "group:<name>", as the game named it
    agent_id: str  # the NPC the game named when it added the memory
    seq: int

    def wire(self) -> dict[str, Any]:
        """The memory in ``memory_list_result``."""
        return {
            "memory_id": self.memory_id,
            "text": self.text,
            "kind": self.kind,
            "pinned": self.pinned,
            "scope": self.scope,
            "agent_id": self.agent_id,
        }


# --- scopes ---------------------------------------------------------------------------------


def owner_of(agent_id: str, scope: str) -> str:
    """The storage owner of ``scope`` as seen by ``agent_id``: its own, or the group's."""
    return f"agent:{agent_id}" if scope == AGENT_SCOPE else scope


def scopes_of(groups: tuple[str, ...]) -> tuple[str, ...]:
    """Every scope whose memories an NPC of ``groups`` knows: its own, then its groups'."""
    return (AGENT_SCOPE, *(f"{GROUP_PREFIX}{group}" for group in groups))


# --- operations (carried out by the journal's thread, in order) -----------------------------


@dataclass(frozen=True, slots=True)
class AddMemory:
    session: str
    agent_id: str
    scope: str
    memory_id: str  # assigned by the gateway, like a turn id
    text: str
    kind: str = NOTE  # one of KINDS
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class ForgetMemories:
    """Forget one memory by id, or those matching ``query`` (at most ``Limits.max_forget``)."""

    session: str
    agent_id: str
    scope: str
    memory_id: str | None
    query: str | None


@dataclass(frozen=True, slots=True)
class ListMemories:
    """The memories of ``scopes`` (as ``agent_id`` sees them), matching ``query`` if given."""

    session: str
    agent_id: str
    scopes: tuple[str, ...]
    query: str | None


MemoryOp = AddMemory | ForgetMemories | ListMemories
TYPE_OF = {AddMemory: "memory_add", ForgetMemories: "memory_forget", ListMemories: "memory_list"}  # on the wire


def check_add(op: AddMemory, limits: Limits, in_scope: int, pinned_in_scope: int, in_session: int) -> None:
    """Raise ``MemoryRefused`` when ``op`` would go over a bound (``in_scope`` memories are there)."""
    if not op.text.strip():
        raise MemoryRefused(p.BAD_FIELD, "memory_add.text must be a non-empty string")
    if len(op.text) > limits.max_text_chars:
        raise MemoryRefused(
            p.MEMORY_TOO_LARGE,
            f"memory_add.text is {len(op.text)} characters, over the limit of {limits.max_text_chars} "
            "(setting memory_max_text_chars)",
        )
    if in_scope >= limits.max_per_scope:
        raise MemoryRefused(
            p.TOO_MANY_MEMORIES,
            f"{op.scope} of agent {op.agent_id!r} already holds {in_scope} memories, the limit "
            "(setting memory_max_per_scope): forget some first",
        )
    if in_session >= limits.max_per_session:
        raise MemoryRefused(
            p.TOO_MANY_MEMORIES,
            f"session {op.session!r} already holds {in_session} memories, the limit "
            "(setting memory_max_per_session): forget some first",
        )
    if op.pinned and pinned_in_scope >= limits.max_pinned_per_scope:
        raise MemoryRefused(
            p.TOO_MANY_MEMORIES,
            f"{op.scope} of agent {op.agent_id!r} already holds {pinned_in_scope} pinned memories, the limit "
            "(setting memory_max_pinned_per_scope): every pinned memory is in every prompt",
        )


def check_query(query: str | None, limits: Limits, what: str) -> None:
    if query is not None and len(query) > limits.max_query_chars:
        raise MemoryRefused(
            p.BAD_FIELD,
            f"{what}.query is {len(query)} characters, over the limit of {limits.max_query_chars} "
            "(setting memory_max_query_chars)",
        )
