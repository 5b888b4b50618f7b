"""Recall: the old facts and memories relevant to a new event, fitted into the prompt's own section.

A prompt holds the newest history that fits its budget (``core.prompt``); everything older is
in the journal. When a turn starts, the journal's thread looks up, in a full-text index of the
agent's facts and memories, the ones that share words with the event (its text, who is
involved, where), and hands them to the agent with the turn's spec (``gateway/memories.py``).
The agent drops those already in the prompt's window and fits the rest, best first, into
``recall_budget_chars``: the "What you remember" section. Pinned memories are always in it.

Everything deciding *what* is recalled is here, pure: the words of a text (``words``), the
index's terms (one per owner and word, so one agent's lookup never reads another's postings:
``terms``), the ranking of the index's hits (``rank``) and the selection (``remembered``).
The index only lists, per term, the newest hits: ranking scores a hit by the rarer words it
shares with the event (a word with fewer hits weighs more), newer first among equals.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from core.history import INTERRUPTED_NOTE, render_tags, to_messages
from core.memory import Memory
from core.spec import as_text

HEADING = "# What you remember"
MAX_QUERY_WORDS = 16  # words of an event looked up (the rarest-looking: longest first)
MAX_WORD_CHARS = 32
_WORD = re.compile(r"[^\W_]+")  # letters and digits: what the index's tokenizer keeps together
STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have he her here him his how i if "
    "in into is it its me my no not now of on or our out she so than that the their them then there they this to "
    "too up us was we were what when where which who why will with would you your yes".split()
)


def words(text: str) -> list[str]:
    """The words of ``text`` worth looking up: lower case, no stop words or single letters."""
    found = (word[:MAX_WORD_CHARS] for word in _WORD.findall(text.lower()))
    return [word for word in found if len(word) > 1 and word not in STOPWORDS]


def owner_token(session: str, owner: str) -> str:
    """A short token naming (session, owner) inside the index's terms."""
    return hashlib.blake2b(f"{session}\0{owner}".encode(), digest_size=8).hexdigest()


def terms(token: str, text: str) -> str:
    """What the index stores for ``text`` of the owner ``token``: one term per distinct word."""
    return " ".join(f"{token}x{word}" for word in dict.fromkeys(words(text)))


def query_words(event: Mapping, location: str = "") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The words a turn's lookup uses: what the event says (its text and data), and its context
    (its kind, who it is from, where the NPC is), which only adds weight to what the event says:
    a fact that shares only "player" with the event is not about it. The longest first."""
    said = _longest(" ".join(as_text(event[key]) for key in ("text", "data") if event.get(key) not in (None, "")))
    context = [as_text(event[key]) for key in ("kind", "source") if event.get(key) not in (None, "")]
    around = [word for word in _longest(" ".join([*context, location])) if word not in said]
    return said, tuple(around[: max(0, MAX_QUERY_WORDS - len(said))])


def _longest(text: str) -> tuple[str, ...]:
    return tuple(sorted(dict.fromkeys(words(text)), key=len, reverse=True)[:MAX_QUERY_WORDS])


def rank(hits: Mapping[str, Sequence[int]], said: Iterable[str], cap: int, k: int) -> list[int]:
    """The ``k`` best of the index's hits, ``{word: [rowid, ...]}`` (at most ``cap`` per word),
    among those that have a word the event ``said``: a hit scores the sum over the words it has
    of ``log(1 + cap / hits of that word)``, so a word found everywhere adds little; newer (higher
    rowid) first among equal scores."""
    eligible = {rowid for word in said for rowid in hits.get(word, ())}
    scores: dict[int, float] = {}
    for found in hits.values():
        if not found:
            continue
        weight = math.log1p(cap / len(found))
        for rowid in found:
            if rowid in eligible:
                scores[rowid] = scores.get(rowid, 0.0) + weight
    return sorted(scores, key=lambda rowid: (-scores[rowid], -rowid))[:k]


# --- what the index shows for a fact -------------------------------------------------------------


def fact_line(fact: Mapping) -> str | None:
    """The line a history fact is recalled as (None: nothing to recall), as the prompt writes it."""
    kind = fact.get("type")
    if kind == "interaction_event":
        return _user_line({"kind": "event", "event": fact.get("event") or {}})
    if kind == "notification_event":
        return _user_line({"kind": "notification", "event": fact.get("event") or {}})
    if kind == "tool_results":
        return _user_line({"kind": "tool_results", "results": fact.get("results") or []})
    if kind == "agent_turn_result":
        said = render_tags(fact.get("tags") or [])
        if not said:
            return None
        return f"[you] {said}" + (f" {INTERRUPTED_NOTE}" if fact.get("status") == "interrupted" else "")
    return None


def _user_line(entry: dict) -> str:
    messages = to_messages([entry])
    return messages[0]["content"] if messages else ""


def window_lines(entries: Iterable[dict]) -> set[str]:
    """The lines of the history entries in the prompt's window, as ``fact_line`` writes them."""
    lines = set()
    for entry in entries:
        if entry["kind"] == "turn":
            fact = {"type": "agent_turn_result", "status": entry.get("status"), "tags": entry.get("tags")}
        elif entry["kind"] == "event":
            fact = {"type": "interaction_event", "event": entry.get("event")}
        elif entry["kind"] == "notification":
            fact = {"type": "notification_event", "event": entry.get("event")}
        else:
            fact = {"type": "tool_results", "results": entry.get("results")}
        line = fact_line(fact)
        if line:
            lines.add(line)
    return lines


# --- what reaches the agent, and what it shows ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecallQuery:
    """What the gateway looks up for a turn: the agent's owners (own, groups), the words the event
    said and its context's (``query_words``), and the prompt's history budget: the agent's newest
    facts that surely fit it are in the window, so never worth a match."""

    agent_id: str
    owners: tuple[str, ...]
    said: tuple[str, ...]
    context: tuple[str, ...]
    window_chars: int


@dataclass(frozen=True, slots=True)
class Match:
    """One old fact or memory that matched; ``order`` is when it was journaled (memories and facts
    are counted apart: memories come first)."""

    text: str
    order: int
    memory: bool = False


@dataclass(frozen=True, slots=True)
class Recall:
    """What the journal found for a turn: every pinned memory the agent knows, and the best matches."""

    pinned: tuple[Memory, ...]
    matches: tuple[Match, ...]


def remembered(recall: Recall, window: Iterable[dict], budget_chars: int) -> str:
    """The "What you remember" section: pinned memories, whatever their size, then the best matches
    not already in the window while they fit ``budget_chars`` (best first); shown pinned first, then
    memories, then facts, each in the order they were journaled."""
    shown = window_lines(window)
    chosen: list[tuple[int, int, str]] = []  # (pinned 0 / memory 1 / fact 2, order, text)
    for memory in recall.pinned:
        if memory.text not in shown:
            shown.add(memory.text)
            chosen.append((0, memory.seq, memory.text))
    room = budget_chars - sum(len(text) + 3 for _, _, text in chosen)
    for match in recall.matches:
        if match.text in shown or len(match.text) + 3 > room:
            continue
        shown.add(match.text)
        chosen.append((1 if match.memory else 2, match.order, match.text))
        room -= len(match.text) + 3
    if not chosen:
        return ""
    chosen.sort()
    return "\n".join([HEADING, *(f"- {text}" for _, _, text in chosen)])


NOTHING_RECALLED = Recall((), ())
