"""The durable side of history: the pure fold (``core.history.History``), the gateway's books of
open turns (``core.openturns``), and the SQLite journal itself, torn and unreadable files included."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.messages import Flush, Restore, ToAgent
from config.settings import load_settings
from core import protocol as p
from core.history import PENDING, History, fact_of
from core.openturns import OpenTurns
from gateway.journal import FILE_NAME, Journal
from gateway.memories import MemoryStore

# --- the fold ------------------------------------------------------------------------------


def event(turn_id, text="hi"):
    return fact_of(p.InteractionEvent("a", f"e-{turn_id}", {"text": text}), "a", turn_id)


def result(turn_id, text="played"):
    return fact_of(p.AgentTurnResult("a", turn_id, "completed", [{"tag": "say", "text": text}]), "a")


def test_a_turn_is_pending_until_confirmed_once():
    history = History(100)
    assert history.apply(event("t1")) is None
    assert [e["kind"] for e in history.entries] == ["event", "turn"]
    assert history.entries[1]["status"] == PENDING
    assert history.apply(result("t1")) is None
    assert history.entries[1]["status"] == "completed"
    again = history.apply(result("t1"))
    assert again.code == p.UNKNOWN_TURN and "already confirmed" in again.message
    assert history.apply(result("nope")).ref == {"type": "agent_turn_result", "turn_id": "nope"}


def test_tool_results_need_a_recent_turn_and_may_start_the_next():
    history = History(100)
    history.apply(event("t1"))
    fact = fact_of(p.ToolResults("a", "t1", [{"tool": "look", "output": "wolf"}], cont=True), "a", "t2")
    assert history.apply(fact) is None
    assert [e["kind"] for e in history.entries] == ["event", "turn", "tool_results", "turn"]
    assert "t2" in history.recent
    stray = fact_of(p.ToolResults("a", "zz", [], cont=False), "a")
    assert history.apply(stray).code == p.UNKNOWN_TURN and len(history.entries) == 4


facts = st.lists(
    st.one_of(
        st.builds(event, st.sampled_from(["t1", "t2", "t3", "t4"])),
        st.builds(result, st.sampled_from(["t1", "t2", "t3", "t4", "x"]), st.text(max_size=5)),
        st.builds(lambda text: fact_of(p.NotificationEvent(("a",), {"text": text}), "a"), st.text(max_size=5)),
        st.builds(
            lambda turn, nxt: fact_of(p.ToolResults("a", turn, [], cont=nxt is not None), "a", nxt),
            st.sampled_from(["t1", "t2", "x"]),
            st.sampled_from([None, "t5", "t6"]),
        ),
    ),
    max_size=40,
)


@given(facts, st.integers(min_value=1, max_value=12))
def test_replaying_the_journal_gives_the_live_history(sequence, max_entries):
    """What a restored agent has equals what the live agent had, whatever Godot sent (through
    JSON, as facts are stored)."""
    live = History(max_entries)
    for fact in sequence:
        live.apply(fact)
    restored = History(max_entries)
    restored.replay(orjson.loads(orjson.dumps(fact)) for fact in sequence)
    assert list(restored.entries) == list(live.entries)
    assert list(restored.recent) == list(live.recent)


# --- open turns ----------------------------------------------------------------------------


def frame(**fields):
    return orjson.dumps(fields)


def test_open_turns_follow_the_frames_and_end_what_a_lost_worker_left_open():
    books = OpenTurns()
    key = ("s", "a")
    books.assigned(key, "t1", "e1")
    assert books.running(key, "t1") and books.busy(key)
    books.frame("s", orjson.dumps(p.turn_started("a", "t1", "e1")))
    books.frame("s", orjson.dumps(p.tag_open("a", "t1", 0, "say", {})))
    books.frame("s", orjson.dumps(p.tag_chunk("a", "t1", 0, "say", "Hel")))
    books.assigned(key, "t2", "e2")  # a newer event: t1 is being interrupted; t2 never starts
    frames = books.end(key, "gone")
    assert frames == [
        p.tag_close("a", "t1", 0, "say"),
        p.error(p.WORKER_LOST, "gone", {"agent_id": "a", "turn_id": "t1"}),
        p.turn_finished("a", "t1", "error"),
        p.turn_started("a", "t2", "e2"),
        p.error(p.WORKER_LOST, "gone", {"agent_id": "a", "turn_id": "t2"}),
        p.turn_finished("a", "t2", "error"),
    ]
    assert not books.busy(key) and books.end(key, "gone") == []


def test_a_turn_ends_with_its_last_frame_only():
    books = OpenTurns()
    books.assigned(("s", "a"), "t1", None)
    books.assigned(("s", "a"), "t2", None)
    books.frame("s", orjson.dumps(p.turn_interrupted("a", "t1", "new_event", None)))
    assert not books.running(("s", "a"), "t1") and books.running(("s", "a"), "t2")
    books.frame("other", orjson.dumps(p.turn_finished("a", "t2", "completed")))  # another session
    assert books.running(("s", "a"), "t2")
    books.frame("s", orjson.dumps(p.turn_finished("a", "t2", "completed")))
    assert not books.busy(("s", "a"))


# --- the SQLite journal ----------------------------------------------------------------------


class Released:
    """The journal's hand-over, recorded; ``wait`` returns once ``count`` items came out."""

    def __init__(self) -> None:
        self.items: list[tuple] = []
        self.changed = asyncio.Event()

    def __call__(self, items) -> None:
        self.items.extend(items)
        self.changed.set()

    async def wait(self, count: int) -> list[tuple]:
        async with asyncio.timeout(10):
            while len(self.items) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.items


async def open_journal(path: Path, released: Released | None = None) -> Journal:
    journal = Journal(
        str(path),
        fsync=True,
        restore_limit=1000,
        release=released or Released(),
        memories=MemoryStore.of(load_settings(env={})),
    )
    await journal.open()
    return journal


def unseq(facts: list[dict]) -> list[dict]:
    """Facts as sent, without the ``seq`` the journal gives each one it wrote."""
    return [{key: value for key, value in fact.items() if key != "seq"} for fact in facts]


def send_fact(journal: Journal, session: str, agent_id: str, fact: dict) -> None:
    journal.record(0, ToAgent(session, agent_id, fact), (session, agent_id, fact))


@pytest.mark.timeout(30)
async def test_items_come_out_in_order_and_restores_see_every_earlier_fact(tmp_path):
    released = Released()
    journal = await open_journal(tmp_path, released)
    send_fact(journal, "s", "a", event("t1"))
    journal.send_in_order(1, Flush(1))  # no fact, but queued behind one: keeps its place
    send_fact(journal, "s", "b", event("t9"))
    send_fact(journal, "s", "a", result("t1"))
    journal.restore(1, "s", "a")
    send_fact(journal, "s", "a", event("t2"))  # after the restore: not in it
    items = await released.wait(6)
    assert [type(item) for _, item in items] == [ToAgent, Flush, ToAgent, ToAgent, Restore, ToAgent]
    assert items[4][0] == 1 and unseq(items[4][1].facts) == [event("t1"), result("t1")]
    seqs = [fact["seq"] for fact in items[4][1].facts]
    assert seqs == [items[0][1].message["seq"], items[3][1].message["seq"]]  # as the agent was given them
    journal.send_in_order(2, Flush(2))  # nothing queued: straight through
    assert released.items[-1] == (2, Flush(2))
    assert journal.known == {("s", "a"), ("s", "b")}
    await journal.close()

    reopened = await open_journal(tmp_path, released := Released())
    assert reopened.known == {("s", "a"), ("s", "b")}
    reopened.restore(0, "s", "a")
    assert unseq((await released.wait(1))[0][1].facts) == [event("t1"), result("t1"), event("t2")]
    await reopened.close()


@pytest.mark.timeout(30)
async def test_a_torn_last_commit_is_dropped_and_never_fatal(tmp_path):
    """A power cut mid-commit leaves a WAL whose last frame is incomplete: copy the files of a
    live journal (never checkpointed), cut the WAL short, and open the copy."""
    live_dir, cut_dir = tmp_path / "live", tmp_path / "cut"
    released = Released()
    journal = await open_journal(live_dir, released)
    for number in range(5):
        send_fact(journal, "s", "a", event(f"t{number}", "x" * 3000))  # a few pages each
        await released.wait(number + 1)
    cut_dir.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(live_dir / (FILE_NAME + suffix), cut_dir / (FILE_NAME + suffix))
    await journal.close()
    wal = cut_dir / (FILE_NAME + "-wal")
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 1000)

    restored = await open_journal(cut_dir, released := Released())
    restored.restore(0, "s", "a")
    facts = unseq((await released.wait(1))[0][1].facts)
    assert facts == [event(f"t{number}", "x" * 3000) for number in range(4)]
    await restored.close()


@pytest.mark.timeout(30)
async def test_an_unreadable_journal_is_kept_aside_and_a_new_one_started(tmp_path):
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database, it is a text file " * 200)
    journal = await open_journal(tmp_path)
    assert journal.known == set()
    assert [path.name for path in tmp_path.iterdir() if ".unreadable-" in path.name]
    await journal.close()


@pytest.mark.timeout(30)
async def test_a_failing_disk_loses_durability_not_the_game(tmp_path):
    """When a commit fails, the items still go on, in order: the game does not stall."""
    released = Released()
    journal = await open_journal(tmp_path, released)
    other = sqlite3.connect(tmp_path / FILE_NAME)
    other.execute("drop table facts")  # every later insert fails
    other.commit()
    other.close()
    send_fact(journal, "s", "a", event("t1"))
    journal.restore(0, "s", "a")
    send_fact(journal, "s", "a", event("t2"))
    items = await released.wait(3)
    assert [item for _, item in items] == [
        ToAgent("s", "a", event("t1")),
        Restore("s", "a", []),
        ToAgent("s", "a", event("t2")),
    ]
    assert [type(item) for _, item in items] == [ToAgent, Restore, ToAgent]
    journal.send_in_order(0, Flush(3))
    assert (await released.wait(4))[-1] == (0, Flush(3))
    await journal.close()
