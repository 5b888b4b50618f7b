"""An NPC's summary of the history that left its prompt: when one is due, what it asks, what it keeps.

The prompt holds the newest history that fits ``history_budget_chars``; what falls out of it would
never reach the model again. So once enough of it has fallen out (``summary_min_chars``), the
agent asks the LLM, at low priority, to fold it into the NPC's summary: the previous summary plus
the entries it does not cover yet, rewritten as one text of at most ``summary_max_chars``. A
summary of summaries, so it stays bounded however long the NPC lives. It is journaled as a fact
(``summary_fact``) that ``core.history.History`` keeps as the NPC's latest summary, shown in the
system message after the dossier (``core.prompt``); compaction may then delete the facts it covers.

What a summary covers is named by journal order: every fact the journal wrote has a ``seq``
(stamped on the fact as it goes to the agent, and on a restored one), every history entry the
``seq`` of the fact that made it, and a summary the newest ``seq`` it holds (``through_seq``).
Entries with no seq (the journal could not write them) count as covered once a later one is.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.history import SUMMARY, entry_size, to_messages

NOTE_TITLE = "## Your summary of what happened before"

INSTRUCTIONS = (
    "You keep the memory of {name}, a character in a video game. Rewrite the memory below so that it also "
    "holds the new events: who {name} met, what was said and done, promises, items, feelings. Write plain "
    "sentences about {name} in the third person, at most {words} words, the most important first; drop "
    "what no longer matters. Answer with the memory's text only."
)


def summary_fact(text: str, through_seq: int) -> dict:
    """The journal fact of a summary: its text and the newest fact it covers."""
    return {"type": SUMMARY, "text": text, "through_seq": through_seq}


def due(entries: Sequence[dict], start: int, through_seq: int | None, min_chars: int) -> list[dict]:
    """The entries before the prompt's window (``entries[:start]``) that the summary does not cover
    yet, when together they are at least ``min_chars`` (else none: not worth a request yet)."""
    first = 0
    if through_seq is not None:
        for index in range(start - 1, -1, -1):
            seq = entries[index].get("seq")
            if seq is not None and seq <= through_seq:
                first = index + 1
                break
    fallen = list(entries[first:start])
    if not any(entry.get("seq") is not None for entry in fallen):
        return []  # nothing a summary could name as covered
    return fallen if sum(map(entry_size, fallen)) >= min_chars else []


def covered_through(entries: Sequence[dict]) -> int:
    """The ``through_seq`` of a summary of ``entries`` (``due`` gives only entries with a seq)."""
    return max(entry["seq"] for entry in entries if entry.get("seq") is not None)


def request_messages(name: str, previous: str | None, entries: Sequence[dict], max_chars: int) -> list[dict]:
    """The chat messages that ask for the new summary."""
    lines = []
    for message in to_messages(entries):
        speaker = name if message["role"] == "assistant" else "Events"
        lines.append(f"{speaker}: {message['content']}")
    events = "\n".join(lines)
    memory = previous or "(nothing yet)"
    return [
        {"role": "system", "content": INSTRUCTIONS.format(name=name, words=max(10, max_chars // 6))},
        {"role": "user", "content": f"# Memory so far\n{memory}\n\n# New events\n{events}"},
    ]


def clip(answer: str, max_chars: int) -> str:
    """The answer as a summary: stripped, at most ``max_chars`` (cut at a word when one is near)."""
    text = " ".join(answer.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[:space] if space > max_chars // 2 else cut


def shown(text: str) -> str:
    """The summary as the system message shows it, after the dossier."""
    return f"{NOTE_TITLE}\n{text}"
