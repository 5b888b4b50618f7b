"""The journal's life: retention and compaction (pure rules, then a real file), and
``python run.py journal`` on a real journal, with the server stopped and while it runs."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from config.settings import load_settings
from core.history import History
from core.memory import AddMemory
from core.retention import DAY_S, Row, Sweep, cutoff, sweep
from core.summary import summary_fact
from gateway import journal_upkeep as upkeep
from gateway.journal import FILE_NAME, Journal, JournalInUse, connect, lock
from gateway.memories import MemoryStore
from tests.conftest import ROOT, ServerProcess
from tests.godot_peer import GodotPeer
from tests.test_journal import Released, event, open_journal, result, send_fact, unseq
from tests.test_recovery import confirmed_turn, prompt_of_next_turn

MEMORIES = MemoryStore.of(load_settings(env={}))

# --- the rules -----------------------------------------------------------------------------


def rows(*ats: float, key=("s", "a")) -> list[Row]:
    return [Row(seq, key, at) for seq, at in enumerate(ats, 1)]


def test_nothing_is_old_enough_when_the_setting_is_zero():
    assert cutoff(10 * DAY_S, 0) is None
    assert cutoff(10 * DAY_S, 2) == 8 * DAY_S


def test_retention_takes_the_old_prefix_and_stops_at_the_first_young_fact():
    assert sweep(rows(1, 2, 9, 3), limit=10, before=5) == Sweep([1, 2], None)  # 3 after 9: a clock set back
    assert sweep(rows(1, 2, 3), limit=3, before=5) == Sweep([1, 2, 3], 3)  # a full page: more may follow
    assert sweep([], limit=3, before=5) == Sweep([], None)


def test_compaction_takes_only_what_a_summary_covers():
    page = [Row(1, ("s", "a"), 1), Row(2, ("s", "b"), 1), Row(3, ("s", "a"), 1), Row(4, ("s", "a"), 9)]
    assert sweep(page, limit=10, before=5, covered={("s", "a"): 1}) == Sweep([1], None)
    assert sweep(page, limit=4, before=5, covered={("s", "a"): 3, ("s", "b"): 2}) == Sweep([1, 2, 3], None)


# --- a real file -----------------------------------------------------------------------------


def age(path: Path, days: float, agent_id: str | None = None) -> None:
    """Make facts look ``days`` older, as a second connection (the server's may be open)."""
    db = sqlite3.connect(path / FILE_NAME)
    where = "" if agent_id is None else " where agent_id = ?"
    db.execute(f"update facts set at = at - ?{where}", (days * DAY_S, *([agent_id] if agent_id else [])))
    db.commit()
    db.close()


async def write(path: Path, facts: list[tuple[str, str, dict]]) -> None:
    released = Released()
    journal = await open_journal(path, released)
    for session, agent_id, fact in facts:
        send_fact(journal, session, agent_id, fact)
    await released.wait(len(facts))
    await journal.close()


@pytest.mark.timeout(60)
async def test_passes_are_bounded_and_retention_forgets_npcs_left_without_facts(tmp_path):
    await write(tmp_path, [("s", "old", event(f"t{n}")) for n in range(2 * upkeep.CHUNK + 500)])
    await write(tmp_path, [("s", "new", event("t1"))])
    age(tmp_path, 3, "old")
    db = connect(tmp_path / FILE_NAME)
    keeper = upkeep.Upkeep(retention_days=2, compact_days=0)
    assert [keeper.run(db, time.time()) for _ in range(3)] == [
        (upkeep.CHUNK, True),
        (upkeep.CHUNK, True),
        (500, False),
    ]
    assert db.execute("select agent_id, count(*) from facts group by agent_id").fetchall() == [("new", 1)]
    assert db.execute("select agent_id from agents").fetchall() == [("new",)]
    db.close()


@pytest.mark.timeout(30)
async def test_compaction_deletes_old_facts_a_summary_covers_and_nothing_else(tmp_path):
    await write(tmp_path, [("s", agent, event(f"t{n}")) for n in range(4) for agent in ("a", "b")])
    age(tmp_path, 40)
    db = connect(tmp_path / FILE_NAME)
    a_seqs = [seq for (seq,) in db.execute("select seq from facts where agent_id = 'a' order by seq")]
    db.execute("insert into covered values ('s', 'a', ?, ?)", (a_seqs[2], a_seqs[3]))
    assert upkeep.Upkeep(retention_days=0, compact_days=30).run(db, time.time()) == (3, False)
    assert [seq for (seq,) in db.execute("select seq from facts where agent_id = 'a'")] == a_seqs[3:]
    assert db.execute("select count(*) from facts where agent_id = 'b'").fetchone() == (4,)
    assert upkeep.Upkeep(retention_days=0, compact_days=50).run(db, time.time()) == (0, False)  # too young
    db.close()


@pytest.mark.timeout(30)
async def test_the_journal_applies_retention_at_start_in_its_thread(tmp_path):
    await write(tmp_path, [("s", "a", event("t1")), ("s", "a", result("t1")), ("s", "b", event("t2"))])
    age(tmp_path, 10, "a")
    released = Released()
    journal = Journal(
        str(tmp_path), True, 1000, released, upkeep=upkeep.Upkeep(retention_days=7, compact_days=0), memories=MEMORIES
    )
    await journal.open()
    async with asyncio.timeout(10):
        while journal.facts_deleted < 2:
            await asyncio.sleep(0.01)
    journal.restore(0, "s", "a")
    journal.restore(0, "s", "b")
    items = await released.wait(2)
    assert [unseq(item.facts) for _, item in items] == [[], [event("t2")]]
    await journal.close()


@pytest.mark.timeout(30)
async def test_a_journal_without_write_times_gets_them_and_one_in_use_is_refused(tmp_path):
    old = sqlite3.connect(tmp_path / FILE_NAME)
    old.executescript(
        "create table facts (seq integer primary key, session text, agent_id text, fact blob);"
        "create table agents (session text, agent_id text, primary key (session, agent_id)) without rowid;"
    )
    old.execute("insert into facts (session, agent_id, fact) values ('s', 'a', ?)", (orjson.dumps(event("t1")),))
    old.execute("insert into agents values ('s', 'a')")
    old.commit()
    old.close()
    before = time.time()
    db = connect(tmp_path / FILE_NAME)
    assert db.execute("select at >= ? from facts", (before,)).fetchone() == (1,)
    db.close()

    held = lock(tmp_path / FILE_NAME)
    assert held is not None
    with pytest.raises(JournalInUse, match="in use by another server or `run.py journal`"):
        await open_journal(tmp_path)
    os.close(held)
    journal = await open_journal(tmp_path)  # free again
    assert journal.known == {("s", "a")}
    assert lock(tmp_path / FILE_NAME) is None  # and held by the open journal
    await journal.close()


# --- python run.py journal -----------------------------------------------------------------

SECRET = "the-player-told-me-their-address-42"


def cli(data_dir: Path, *args: str, log_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAME_AGENT_")}
    env["GAME_AGENT_LOG_DIR"] = str(log_dir or data_dir / "logs")
    return subprocess.run(
        [sys.executable, "run.py", "journal", "--data-dir", str(data_dir), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def journal_bytes(data_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in data_dir.glob(FILE_NAME + "*") if path.is_file())


@pytest.mark.timeout(60)
async def test_the_cli_inspects_exports_and_deletes_for_good(tmp_path):
    data = tmp_path / "data"
    facts = [("save1", "ann", event(f"a{n}", SECRET)) for n in range(3)]
    facts += [("save1", "bob", event("b1", "bob's own")), ("save2", "ann", event("c1"))]
    await write(data, facts)
    db = connect(data / FILE_NAME)  # a memory the game gave ann, and one of her group's
    db.execute("begin")
    for scope, text in (("agent", SECRET), ("group:guards", "the guards change at dawn")):
        assert MEMORIES.run(db, AddMemory("save1", "ann", scope, scope, text))["type"] != "error"
    db.execute("commit")
    db.close()
    logs = tmp_path / "logs"
    for name in (
        "c1/ann.conversation.json",
        "c1/ann.llm_input.json",
        ".llm_input/ann.w0.3.jsonl",
        "c1/ann.b.conversation.json",
        "c1/bob.conversation.json",
    ):
        (logs / "save1" / name).parent.mkdir(parents=True, exist_ok=True)
        (logs / "save1" / name).write_text(SECRET)

    listed = cli(data, "inspect")
    assert listed.returncode == 0, listed.stderr
    assert "server running: no" in listed.stdout
    assert [line.split("\t")[:3] for line in listed.stdout.splitlines()[2:]] == [
        ["save1", "2", "4"],
        ["save2", "1", "1"],
    ]
    npcs = cli(data, "inspect", "--session", "save1").stdout
    assert [line.split("\t")[:2] for line in npcs.splitlines()[2:]] == [["ann", "3"], ["bob", "1"]]

    out = tmp_path / "ann.jsonl"
    exported = cli(data, "export", "--session", "save1", "--npc", "ann", "--out", str(out))
    assert exported.returncode == 0 and "exported 3 facts" in exported.stderr
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [record["fact"] for record in records] == unseq([fact for _, _, fact in facts[:3]])
    assert {(record["session"], record["agent_id"]) for record in records} == {("save1", "ann")}
    whole = cli(data, "export", "--session", "save1").stdout  # to stdout
    assert len(whole.splitlines()) == 4

    assert SECRET.encode() in journal_bytes(data)  # so that its absence below means something
    deleted = cli(data, "delete", "--session", "save1", "--npc", "ann", log_dir=logs)
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted 3 facts and 1 memories" in deleted.stdout and "deleted 3 log files" in deleted.stdout
    assert "checkpointed and truncated" in deleted.stdout
    everything = journal_bytes(data)  # not in a free page, not in the WAL, not in the recall index
    assert SECRET.encode() not in everything
    assert b"the guards change at dawn" in everything  # the group's memory is the group's: kept
    assert sorted(p.name for p in logs.rglob("*") if p.is_file()) == [
        "ann.b.conversation.json",
        "bob.conversation.json",
    ]
    npcs = cli(data, "inspect", "--session", "save1").stdout
    assert [line.split("\t")[:2] for line in npcs.splitlines()[2:]] == [["bob", "1"]]
    assert cli(data, "inspect", "--session", "save2").stdout.count("ann") == 1  # another session's ann stays

    gone = cli(data, "delete", "--session", "save2", "--vacuum", log_dir=logs)
    assert gone.returncode == 0 and "deleted 1 facts" in gone.stdout
    released = Released()
    journal = await open_journal(data, released)
    assert journal.known == {("save1", "bob")}
    await journal.close()
    assert cli(tmp_path / "nowhere", "inspect").returncode == 1


@pytest.mark.timeout(120)
async def test_beside_a_running_server_the_cli_reads_and_deletes_only_when_forced(llm, tmp_path):
    await llm.reset()
    server = await asyncio.to_thread(ServerProcess, tmp_path, llm.url, workers=1)
    godot = await GodotPeer.connect(server.url, "?session=save1")
    try:
        godot.specs["keeper"] = {"name": "Kee"}
        await confirmed_turn(godot, llm, "keeper", SECRET)
        listed = await asyncio.to_thread(cli, server.data_dir, "inspect")
        assert "server running: yes" in listed.stdout and "save1\t1\t" in listed.stdout, listed
        refused = await asyncio.to_thread(cli, server.data_dir, "delete", "--session", "save1")
        assert refused.returncode == 2 and "a server has this journal open" in refused.stderr
        assert SECRET.encode() in journal_bytes(server.data_dir)

        forced = await asyncio.to_thread(cli, server.data_dir, "delete", "--session", "save1", "--force")
        assert forced.returncode == 0 and "checkpointed and truncated" in forced.stdout, forced
        assert SECRET.encode() not in journal_bytes(server.data_dir)
        # As documented: the NPC the server holds still remembers, and what follows is journaled.
        assert SECRET in await prompt_of_next_turn(godot, llm, "keeper")
        after = await asyncio.to_thread(cli, server.data_dir, "inspect", "--session", "save1")
        assert "keeper\t" in after.stdout
    finally:
        await godot.close()
        server.stop()
    again = await asyncio.to_thread(ServerProcess, tmp_path, llm.url, workers=1, data_dir=server.data_dir)
    godot = await GodotPeer.connect(again.url, "?session=save1")
    try:
        godot.specs["keeper"] = {"name": "Kee"}
        remembered = await prompt_of_next_turn(godot, llm, "keeper")
        assert SECRET not in remembered and "what do you remember" in remembered
    finally:
        await godot.close()
        again.stop()


@pytest.mark.timeout(30)
async def test_a_restore_brings_the_summary_older_than_its_facts_and_compaction_keeps_it(tmp_path):
    released = Released()
    journal = Journal(str(tmp_path), True, restore_limit=2, release=released, memories=MEMORIES)
    await journal.open()
    send_fact(journal, "s", "a", event("t1"))
    covered = (await released.wait(1))[0][1].message["seq"]  # as the agent was given it
    journal.keep_summary("s", "a", summary_fact("Kee met Ann.", covered))
    for turn in ("t2", "t3"):
        send_fact(journal, "s", "a", event(turn))
    journal.restore(0, "s", "a")
    facts = (await released.wait(4))[3][1].facts
    assert unseq(facts) == [summary_fact("Kee met Ann.", covered), event("t2"), event("t3")]
    history = History(10)
    history.replay(facts)
    assert history.summary == {"text": "Kee met Ann.", "through_seq": covered}
    await journal.close()

    age(tmp_path, 40)
    db = connect(tmp_path / FILE_NAME)
    assert upkeep.Upkeep(retention_days=0, compact_days=30).run(db, time.time()) == (1, False)  # t1 alone
    assert [orjson.loads(blob)["type"] for (blob,) in db.execute("select fact from facts order by seq")] == [
        "summary",
        "interaction_event",
        "interaction_event",
    ]
    db.close()
