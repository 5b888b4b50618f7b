"""Recall's rules (core/recall.py) and the memory store it reads (gateway/memories.py, on a real
SQLite database): what is looked up, how hits rank, what the prompt's section shows."""

from __future__ import annotations

import sqlite3

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.settings import load_settings
from core import memory as m
from core import protocol as p
from core.history import History, fact_of
from core.prompt import build_messages
from core.recall import (
    HEADING,
    Match,
    Recall,
    RecallQuery,
    fact_line,
    query_words,
    rank,
    remembered,
    terms,
    window_lines,
    words,
)
from core.spec import parse_spec
from gateway.memories import MemoryStore


def test_words_drop_stop_words_single_letters_and_punctuation():
    assert words("Where did I put the Silver-Amulet, Bram?") == ["put", "silver", "amulet", "bram"]
    assert words("naïve café_au_lait") == ["naïve", "café", "au", "lait"]


def test_terms_carry_their_owner_once_per_word():
    assert terms("t1", "key, key and door") == "t1xkey t1xdoor"


def test_the_event_says_its_text_and_data_and_its_context_only_adds_weight():
    said, context = query_words(
        {"kind": "speech", "source": "player", "text": "Is the bridge safe?", "data": {"item": "lantern"}}, "the mill"
    )
    assert set(said) == {"bridge", "safe", "item", "lantern"}
    assert set(context) == {"speech", "player", "mill"}
    assert query_words({"text": "bridge"}, "bridge")[1] == ()  # a word is never in both


def test_rank_prefers_rarer_words_then_newer_and_needs_a_said_word():
    hits = {"amulet": [5], "silver": [9, 5, 3, 2], "player": [9, 8, 7, 5, 3, 2, 1]}
    assert rank(hits, ["amulet", "silver"], cap=8, k=10) == [5, 9, 3, 2]  # 8, 7, 1: only "player"
    assert rank(hits, ["amulet", "silver"], cap=8, k=2) == [5, 9]
    assert rank({"x": []}, ["x"], cap=8, k=3) == []


@given(st.dictionaries(st.sampled_from("abcdef"), st.lists(st.integers(1, 50), max_size=8, unique=True)))
def test_rank_returns_each_eligible_hit_once(hits):
    said = ["a", "b"]
    ranked = rank(hits, said, cap=8, k=100)
    assert sorted(ranked) == sorted({rowid for word in said for rowid in hits.get(word, [])})


def test_fact_lines_are_what_the_prompt_shows():
    assert fact_line({"type": "interaction_event", "event": {"kind": "speech", "source": "Ana", "text": "Hi"}}) == (
        "[speech from Ana] Hi"
    )
    played = {"type": "agent_turn_result", "status": "interrupted", "tags": [{"tag": "say", "text": "Wel"}]}
    assert fact_line(played) == "[you] <say>Wel</say> [your previous turn was interrupted here]"
    assert fact_line({"type": "agent_turn_result", "status": "completed", "tags": []}) is None
    assert fact_line({"type": "tool_results", "results": [{"tool": "look", "output": "a door"}]}) == (
        "[tool result tool=look] a door"
    )


def test_window_lines_match_the_facts_of_its_entries():
    history = History(50)
    event = {"kind": "speech", "source": "Ana", "text": "Hello"}
    history.apply({"type": "interaction_event", "event_id": "e1", "event": event, "turn_id": "t1"})
    tags = [{"tag": "say", "attrs": {}, "text": "Hi Ana"}]
    history.apply({"type": "agent_turn_result", "turn_id": "t1", "status": "completed", "tags": tags})
    assert window_lines(history.entries) == {
        fact_line({"type": "interaction_event", "event": event}),
        fact_line({"type": "agent_turn_result", "status": "completed", "tags": tags}),
    }


def memory(text: str, seq: int, pinned: bool = True) -> m.Memory:
    return m.Memory(f"m{seq}", text, m.NOTE, pinned, m.AGENT_SCOPE, "ana", seq)


def test_remembered_shows_pinned_always_then_the_best_that_fit_in_order():
    recall = Recall(
        (memory("You are the mayor's sister.", 2),),
        (Match("[speech from Bo] the key is in the well", 40), Match("x" * 100, 50), Match("the well is dry", 3, True)),
    )
    section = remembered(recall, [], budget_chars=100)
    assert section == "\n".join(
        [HEADING, "- You are the mayor's sister.", "- the well is dry", "- [speech from Bo] the key is in the well"]
    )
    assert remembered(Recall((memory("p" * 500, 1),), ()), [], budget_chars=10) == f"{HEADING}\n- {'p' * 500}"
    assert remembered(Recall((), ()), [], budget_chars=100) == ""


def test_remembered_leaves_out_what_the_window_shows():
    event = {"kind": "speech", "source": "Bo", "text": "the key is in the well"}
    window = [{"kind": "event", "event_id": None, "event": event}]
    recall = Recall((), (Match("[speech from Bo] the key is in the well", 7),))
    assert remembered(recall, window, budget_chars=1000) == ""


def test_the_prompt_has_the_section_after_the_dossier_and_never_what_its_window_shows():
    history = History(50)
    for n, text in enumerate(["the key is in the well", "nice weather", "where is the key?"]):
        message = fact_of(_event(text), "ana", f"t{n}")
        assert message is not None
        history.apply(message)
    recall = Recall((), (Match("[speech from Bo] the key is in the well", 1), Match("[speech from Bo] far back", 0)))
    spec = parse_spec({"name": "Ana"})
    messages = build_messages(spec, history.entries, budget_chars=60, recall=recall, recall_budget_chars=500)
    assert messages[0]["content"].endswith(
        f"# Ana\n\n{HEADING}\n- [speech from Bo] far back\n- [speech from Bo] the key is in the well"
    )
    everything = build_messages(spec, history.entries, budget_chars=10_000, recall=recall, recall_budget_chars=500)
    assert everything[0]["content"].endswith(f"# Ana\n\n{HEADING}\n- [speech from Bo] far back")


def _event(text: str) -> p.InteractionEvent:
    return p.InteractionEvent("ana", None, {"kind": "speech", "source": "Bo", "text": text})


# --- the store, on a real database -------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    settings = load_settings(env={}, overrides={"memory_max_per_scope": 3, "memory_max_forget": 2})
    memories = MemoryStore.of(settings)
    db = sqlite3.connect(tmp_path / "j.sqlite3", isolation_level=None)
    db.execute("create table facts (seq integer primary key, session, agent_id, fact)")
    memories.create(db)
    yield memories, db
    db.close()


def write_fact(store, session: str, agent_id: str, text: str) -> int:
    memories, db = store
    blob = orjson.dumps({"type": "interaction_event", "event_id": None, "event": {"text": text}, "turn_id": "t"})
    seq = db.execute(
        "insert into facts (session, agent_id, fact) values (?, ?, ?)", (session, agent_id, blob)
    ).lastrowid
    memories.index_fact(db, seq, session, agent_id, blob)
    return seq


def add(store, agent_id: str, text: str, scope: str = m.AGENT_SCOPE, pinned: bool = False, session: str = "s"):
    memories, db = store
    return memories.run(db, m.AddMemory(session, agent_id, scope, f"id-{text}", text, pinned=pinned))


def recall(
    store, agent_id: str, text: str, groups: tuple[str, ...] = (), session: str = "s", window_chars: int = 0
) -> Recall:
    memories, db = store
    said, context = query_words({"text": text})
    owners = tuple(m.owner_of(agent_id, scope) for scope in m.scopes_of(groups))
    return memories.recall(db, session, RecallQuery(agent_id, owners, said, context, window_chars))


def test_recall_reads_only_its_own_and_its_groups(store):
    write_fact(store, "s", "ana", "the key is under the mat")
    write_fact(store, "s", "bo", "the key is in bo's pocket")
    write_fact(store, "other", "ana", "the key of another session")
    add(store, "bo", "the key opens the guard tower", scope="group:guard")
    assert [match.text for match in recall(store, "ana", "key").matches] == ["[event] the key is under the mat"]
    found = recall(store, "ana", "key", groups=("guard",)).matches
    assert [(match.text, match.memory) for match in found] == [
        ("the key opens the guard tower", True),
        ("[event] the key is under the mat", False),
    ]


def test_pinned_memories_are_recalled_whatever_the_event(store):
    add(store, "ana", "you fear the dark", pinned=True)
    add(store, "ana", "you like apples")
    assert [memory.text for memory in recall(store, "ana", "hello").pinned] == ["you fear the dark"]
    assert recall(store, "ana", "hello").matches == ()


def test_the_store_refuses_over_its_bounds_and_forgets_what_it_says(store):
    memories, db = store
    for text in ("apple one", "apple two", "pear"):
        assert add(store, "ana", text)["type"] == "memory_added"
    assert add(store, "ana", "one more")["code"] == "too_many_memories"
    assert add(store, "ana", "in a group", scope="group:g")["type"] == "memory_added"  # a scope of its own
    refused = memories.run(db, m.ForgetMemories("s", "ana", m.AGENT_SCOPE, None, "apple OR pear"))
    assert refused["type"] == "memory_forgotten" and refused["memory_ids"] == []  # the words, never FTS syntax
    forgot = memories.run(db, m.ForgetMemories("s", "ana", m.AGENT_SCOPE, None, "apple"))
    assert forgot["count"] == 2
    listed = memories.run(db, m.ListMemories("s", "ana", m.scopes_of(("g",)), None))
    assert [memory["text"] for memory in listed["memories"]] == ["pear", "in a group"]
    assert recall(store, "ana", "apple").matches == ()  # forgotten from the index too


def test_facts_surely_in_the_window_are_never_matches(store):
    write_fact(store, "s", "ana", "the key is under the mat")
    for n in range(3):
        write_fact(store, "s", "ana", f"the key, again {n}")
    add(store, "ana", "the key opens the tower")
    line = len("[event] the key, again 0") + 1
    everything = recall(store, "ana", "key").matches
    assert len(everything) == 5
    found = recall(store, "ana", "key", window_chars=64 + 2 * line).matches  # the newest two fit
    assert [match.text for match in found] == [
        "the key opens the tower",
        "[event] the key, again 0",
        "[event] the key is under the mat",
    ]


def _lookups(store) -> list[str]:
    """The full-text lookups the store runs from now on (a list that grows)."""
    _, db = store
    ran: list[str] = []
    db.set_trace_callback(lambda sql: ran.append(sql) if " match " in sql else None)
    return ran


def test_a_history_the_window_shows_whole_leaves_only_memories_to_recall(store):
    memories, _ = store
    for n in range(3):
        write_fact(store, "s", "ana", f"the key, again {n}")
    lookups = _lookups(store)
    assert recall(store, "ana", "key", window_chars=10_000).matches == ()
    assert lookups == [], "nothing to find: no word is looked up"
    add(store, "bo", "the key opens the guard tower", scope="group:guard")
    found = recall(store, "ana", "key", groups=("guard",), window_chars=10_000).matches
    assert [(match.text, match.memory) for match in found] == [("the key opens the guard tower", True)]
    assert lookups
    add(store, "ana", "the key opens the tower")
    found = recall(store, "ana", "key", window_chars=10_000).matches
    assert [(match.text, match.memory) for match in found] == [("the key opens the tower", True)]
    # More facts than the window takes: the oldest is outside it, whatever room is left.
    memories.window_facts = 3
    write_fact(store, "s", "bo", "the key, once more")
    write_fact(store, "s", "bo", "the key, again")
    assert recall(store, "bo", "key", window_chars=10_000).matches == ()
    write_fact(store, "s", "bo", "the key, and again")
    write_fact(store, "s", "bo", "the key, one last time")
    found = recall(store, "bo", "key", window_chars=10_000).matches
    assert [match.text for match in found] == ["[event] the key, once more"]
