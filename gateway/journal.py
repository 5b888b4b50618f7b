"""The journal: every history fact made durable before any agent sees it.

The gateway receives every fact first (events, notifications, turn results, tool results: see
``core.history``), so it is where history lives durably; agents hold a working copy that a
worker crash, a restart, a lost node or a deactivation may take, and get it back from here.

SQLite in WAL mode, from the standard library. Why: a commit is one fsync'd append to the WAL
(about 0.5 ms here), a torn last commit after a power cut fails its frame checksum and is
dropped by SQLite's own recovery (never fatal), and an agent's newest facts are one indexed range
query away, which restoring an agent needs.

One thread owns the connection. The gateway's loop hands it items in order (``record``: an item
with the fact to make durable first; ``restore``: an agent's facts to read); the thread writes
the facts of everything queued meanwhile in one transaction (group commit), fills in restores,
and hands the items back to the loop, still in order, to go to the workers. An item that
carries no fact (``send_in_order``) skips the thread when nothing is queued before it, so the
thread adds no latency to snapshots and nothing waits on a disk it does not need.

Each fact it wrote goes on to its agent stamped with its ``seq``, and so does each restored one:
an NPC's summary (``keep_summary``, core/summary.py) names by it the facts it covers, which
compaction may then delete; a restore brings the latest summary even when it is older than the
facts it reads.

Between batches the thread also applies retention and compaction (``gateway.journal_upkeep``),
a bounded pass at a time, at start and hourly. While it runs it holds an flock on
``journal.sqlite3.lock``: ``python run.py journal`` tells from it whether a server has the journal
open, and a second server on the same ``data_dir`` refuses to start.

A write that fails (the disk is full) loses no item: availability over durability, the items go
on to the workers. But nobody is left unaware: each fact that is not durable is reported
(``lost``: the gateway tells the game with a ``journal_error``), and ``failure`` says why until a
write succeeds again (``probe`` tries one: /healthz asks while it fails).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from loguru import logger

from actors.messages import Restore, SnapshotRecall, ToAgent, ToWorker
from core import protocol as p
from core.memory import TYPE_OF, MemoryOp
from core.recall import NOTHING_RECALLED
from gateway.journal_upkeep import Upkeep
from gateway.memories import MEMORY_SCHEMA, MemoryStore

FILE_NAME = "journal.sqlite3"
SCHEMA = """
create table if not exists facts (
    seq integer primary key,
    session text not null,
    agent_id text not null,
    fact blob not null,
    at real not null  -- when it was written (time.time()): retention and compaction read it
);
create index if not exists facts_by_agent on facts (session, agent_id, seq);
create table if not exists agents (
    session text not null,
    agent_id text not null,
    primary key (session, agent_id)
) without rowid;
create table if not exists probe (id integer primary key, at real not null);
create table if not exists covered (
    session text not null,
    agent_id text not null,
    through_seq integer not null,  -- the newest fact the NPC's latest summary holds
    summary_seq integer not null,  -- that summary's own fact
    primary key (session, agent_id)
) without rowid;
"""
LOCK_SUFFIX = ".lock"  # flock'd by the server's journal thread while it runs, and by `run.py journal`
UPKEEP_INTERVAL_S = 3600.0  # retention and compaction: at start, then hourly
UPKEEP_AGAIN_S = 1.0  # or this soon while a pass left more to do
NO_SEQ = 2**63 - 1  # greater than any seq
_STOP = object()
_PROBE = object()
REF_KEYS = ("turn_id", "event_id")  # of a fact, named in the error about it


class MemoryRequest(NamedTuple):
    """A memory operation of the game, carried out in order; ``done(reply)`` on the loop once committed."""

    op: MemoryOp
    done: Callable[[dict], None]
    reply: dict | None


Release = Callable[[list[tuple[Hashable, ToWorker]]], None]
Lost = Callable[[list[tuple[str, str, dict]], str], None]  # (session, agent_id, ref) each, and why


class Journal:
    """Durable facts per (session, agent); ordered hand-over of items to the workers."""

    def __init__(
        self,
        data_dir: str,
        fsync: bool,
        restore_limit: int,
        release: Release,
        lost: Lost = lambda facts, why: None,
        upkeep: Upkeep | None = None,
        *,
        memories: MemoryStore,
    ) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._fsync = fsync
        self._upkeep = upkeep or Upkeep(retention_days=0, compact_days=0)
        self._restore_limit = restore_limit
        self._release = release
        self._lost = lost
        self._memories = memories  # used by the thread only
        self.failure: str | None = None  # why the latest write failed; None once one succeeds (loop side)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0  # items handed to the thread and not yet back (loop side)
        self._thread: threading.Thread | None = None
        self.known: set[tuple[str, str]] = set()  # agents with facts (loop side)
        self.facts_written = 0
        self.facts_deleted = 0  # by retention and compaction (thread side)
        self.commits = 0
        self.committed: Callable[[float], None] = lambda seconds: None  # each commit's duration (thread side)

    async def open(self) -> None:
        """Open (or create) the journal and load the known agents; start the writer thread."""
        ready: Future = Future()
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(ready, loop), name="journal", daemon=True)
        self._thread.start()
        self.known = await asyncio.wrap_future(ready)
        logger.info("journal {} open: {} known agents", self.path, len(self.known))

    async def close(self) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)

    # --- loop side ---------------------------------------------------------------------------

    def record(self, destination: Hashable, item: ToWorker, fact: tuple[str, str, dict]) -> None:
        """Write ``fact`` (session, agent_id, fact) durably, then hand ``item`` on to ``destination``,
        in order with every item handed to the journal before it."""
        session, agent_id, body = fact
        self.known.add((session, agent_id))
        self._queued += 1
        self._queue.put((destination, item, (session, agent_id, orjson.dumps(body))))

    def send_in_order(self, destination: Hashable, item: ToWorker) -> None:
        """Hand ``item``, which carries no fact, on to ``destination`` after every item handed to
        the journal before it: at once when none is still being written."""
        if not self._queued:
            self._release([(destination, item)])
            return
        self._queued += 1
        self._queue.put((destination, item, None))

    def restore(self, destination: Hashable, session: str, agent_id: str) -> None:
        """Send ``Restore(session, agent_id, facts)``: the agent's newest facts, read after every
        fact queued before this call."""
        self._queued += 1
        self._queue.put((destination, Restore(session, agent_id, None), None))

    def recall(self, destination: Hashable, item: ToAgent) -> None:
        """Send ``item`` (a ``SnapshotRecall``) with what its query finds, looked up after every
        fact queued before this call."""
        self._queued += 1
        self._queue.put((destination, item, None))

    def memory(self, op: MemoryOp, done: Callable[[dict], None]) -> None:
        """Carry out the game's memory operation ``op`` in order with the facts, then ``done(reply)``
        on the loop: the reply frame once durable, or the ``error`` frame that refuses it."""
        self._queued += 1
        self._queue.put((None, MemoryRequest(op, done, None), None))

    def probe(self) -> None:
        """Try a write in order with the rest; its outcome sets ``failure``."""
        self._queue.put(_PROBE)

    def _released(self, items: list[tuple[Hashable, Any]], failure: str | None, lost: list) -> None:
        self._queued -= len(items)
        self.failure = failure
        if lost:
            assert failure is not None  # facts are lost only by a write that failed
            self._lost(lost, failure)
        self._release(self._answer_memories(items, failure))

    def _answer_memories(self, items: list[tuple[Hashable, Any]], failure: str | None) -> list[tuple[Hashable, Any]]:
        """Answer the batch's memory requests (an ``error`` if its write failed); the rest go on."""
        rest = []
        for destination, item in items:
            if type(item) is not MemoryRequest:
                rest.append((destination, item))
            elif failure is None and item.reply is not None:
                item.done(item.reply)
            else:
                ref = {"type": TYPE_OF[type(item.op)], "agent_id": item.op.agent_id}
                item.done(p.error(p.JOURNAL_ERROR, f"memory not saved: the journal cannot write ({failure})", ref))
        return rest

    # --- the thread --------------------------------------------------------------------------

    def _run(self, ready: Future, loop: asyncio.AbstractEventLoop) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        held = lock(self.path)
        if held is None:
            ready.set_exception(JournalInUse(f"journal {self.path} is in use by another server or `run.py journal`"))
            return
        try:
            db = self._connect()
            known = {tuple(row) for row in db.execute("select session, agent_id from agents")}
        except Exception as exc:  # noqa: BLE001 - reported to open()
            os.close(held)
            ready.set_exception(exc)
            return
        ready.set_result(known)
        upkeep_at = time.monotonic() if self._upkeep.enabled else None  # at start, then periodically
        stopping = False
        while not stopping:
            wait = None if upkeep_at is None else max(0.0, upkeep_at - time.monotonic())
            try:
                batch = [self._queue.get(timeout=wait)]
            except queue.Empty:
                batch = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch and batch[-1] is _STOP:
                batch.pop()
                stopping = True
            if batch:
                loop.call_soon_threadsafe(self._released, *self._write(db, batch))
            if upkeep_at is not None and not stopping and time.monotonic() >= upkeep_at:
                upkeep_at = self._tend(db)
        db.close()
        os.close(held)

    def _tend(self, db: sqlite3.Connection) -> float:
        """One bounded pass of retention and compaction, between batches; returns when the next
        is due: soon while there is more to do, else after ``UPKEEP_INTERVAL_S``."""
        try:
            deleted, more = self._upkeep.run(db, time.time())
        except sqlite3.Error as exc:  # a full disk: the next pass tries again
            logger.error("journal retention and compaction failed: {}", exc)
            deleted, more = 0, False
        if deleted:
            self.facts_deleted += deleted
            logger.info("journal: {} facts past retention or compaction deleted", deleted)
        return time.monotonic() + (UPKEEP_AGAIN_S if more else UPKEEP_INTERVAL_S)

    def _connect(self) -> sqlite3.Connection:
        try:
            db = self._open(self.path)
        except sqlite3.DatabaseError as exc:  # not a database at all: keep it for inspection
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            logger.error("journal {} is unreadable ({}): moved to {}; starting an empty journal", self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                part = Path(str(self.path) + suffix)
                if part.exists():
                    part.rename(str(aside) + suffix)
            db = self._open(self.path)
        return db

    def _open(self, path: Path) -> sqlite3.Connection:
        return connect(path, self._fsync)

    def _write(self, db: sqlite3.Connection, batch: list) -> tuple[list[tuple[Hashable, ToWorker]], str | None, list]:
        """One transaction for the batch's facts and probes; restores read inside it, in order.
        Returns the items to hand on, why the write failed (None: it did not), and the facts
        that are not durable."""
        summaries = [entry for entry in batch if type(entry) is _Summary]
        entries = [entry for entry in batch if entry is not _PROBE and type(entry) is not _Summary]
        out: list[tuple[Hashable, ToWorker]] = []
        written: list[tuple[ToWorker, int]] = []  # (item, the seq of its fact)
        now = time.time()
        started = time.monotonic()
        try:
            db.execute("begin")
            if len(entries) + len(summaries) < len(batch):
                db.execute("insert or replace into probe values (1, ?)", (time.time(),))
            self._write_summaries(db, summaries, now)
            for destination, item, fact in entries:
                if fact is not None:
                    cursor = db.execute(
                        "insert into facts (session, agent_id, fact, at) values (?, ?, ?, ?)", (*fact, now)
                    )
                    db.execute("insert or ignore into agents values (?, ?)", fact[:2])
                    assert cursor.lastrowid is not None  # an insert
                    self._memories.index_fact(db, cursor.lastrowid, *fact)
                    written.append((item, cursor.lastrowid))
                elif type(item) is Restore:
                    item = item._replace(facts=self._read(db, item.session, item.agent_id))
                elif type(item) is ToAgent and type(item.message) is SnapshotRecall:
                    item = self._recall(db, item)
                elif type(item) is MemoryRequest:
                    item = item._replace(reply=self._memories.run(db, item.op))
                out.append((destination, item))
            db.execute("commit")
            self.committed(time.monotonic() - started)
            _stamp(written)
            self.facts_written += len(written) + len(summaries)
            self.commits += 1
            return out, None, []
        except Exception as exc:  # noqa: BLE001 - the thread must live on, or every item would wait forever
            why = str(exc) or repr(exc)
            lost = [(fact[0], fact[1], _ref(fact[2])) for _, _, fact in entries if fact is not None]
            # Availability over durability: the game goes on, and is told (``lost``).
            logger.error("journal write failed ({} facts not durable): {}", len(lost), why)
            if db.in_transaction:
                try:
                    db.execute("rollback")
                except sqlite3.Error:
                    pass
            for destination, item, _ in entries[len(out) :]:
                if type(item) is Restore and item.facts is None:  # a full disk still reads
                    item = item._replace(facts=self._read_or_nothing(db, item.session, item.agent_id))
                elif type(item) is ToAgent and type(item.message) is SnapshotRecall and item.message.recall is None:
                    item = self._recall(db, item)
                out.append((destination, item))
            return out, why, lost

    def _recall(self, db: sqlite3.Connection, item: ToAgent) -> ToAgent:
        """``item`` with what its ``SnapshotRecall`` finds (nothing when the read fails: the turn
        goes on without recall)."""
        asked = item.message
        assert type(asked) is SnapshotRecall
        try:
            found = self._memories.recall(db, item.session, asked.query)
        except sqlite3.Error as exc:
            logger.error(
                "recall failed: {} of session {} gets no recall this turn: {}", item.agent_id, item.session, exc
            )
            found = NOTHING_RECALLED
        return item._replace(message=asked._replace(recall=found))

    def _read_or_nothing(self, db: sqlite3.Connection, session: str, agent_id: str) -> list[dict]:
        try:
            return self._read(db, session, agent_id)
        except sqlite3.Error as exc:
            logger.error("journal read failed: {} of session {} starts without history: {}", agent_id, session, exc)
            return []

    def _read(self, db: sqlite3.Connection, session: str, agent_id: str) -> list[dict]:
        """The agent's newest facts, each with its ``seq``; its latest summary first when it is
        older than those."""
        rows = db.execute(
            "select seq, fact from facts where session = ? and agent_id = ? order by seq desc limit ?",
            (session, agent_id, self._restore_limit),
        ).fetchall()
        rows.reverse()
        rows[:0] = self._older_summary(db, session, agent_id, rows[0][0] if rows else None)
        facts = []
        for seq, blob in rows:
            try:
                fact = orjson.loads(blob)
            except orjson.JSONDecodeError:
                logger.warning("skipping an unreadable fact of agent {} in session {}", agent_id, session)
                continue
            fact["seq"] = seq
            facts.append(fact)
        return facts

    # --- summaries (core.summary) ----------------------------------------------------------------

    def keep_summary(self, session: str, agent_id: str, fact: dict) -> None:
        """Journal an agent's summary (it has it already: no item goes anywhere), in order with
        the rest; compaction may then delete the facts it covers."""
        self._queue.put(_Summary(session, agent_id, orjson.dumps(fact), fact["through_seq"]))

    def _write_summaries(self, db: sqlite3.Connection, summaries: list[_Summary], now: float) -> None:
        for session, agent_id, blob, through_seq in summaries:
            cursor = db.execute(
                "insert into facts (session, agent_id, fact, at) values (?, ?, ?, ?)", (session, agent_id, blob, now)
            )
            db.execute(
                "insert into covered values (?, ?, ?, ?) on conflict (session, agent_id) do update set "
                "through_seq = excluded.through_seq, summary_seq = excluded.summary_seq "
                "where excluded.through_seq >= covered.through_seq",
                (session, agent_id, through_seq, cursor.lastrowid),
            )

    def _older_summary(
        self, db: sqlite3.Connection, session: str, agent_id: str, oldest: int | None
    ) -> list[tuple[int, bytes]]:
        """The agent's latest summary as a row, when it is older than ``oldest`` (the first fact read)."""
        return db.execute(
            "select f.seq, f.fact from covered c join facts f on f.seq = c.summary_seq "
            "where c.session = ? and c.agent_id = ? and c.summary_seq < ?",
            (session, agent_id, NO_SEQ if oldest is None else oldest),
        ).fetchall()

    def stats(self) -> dict[str, Any]:
        return {"path": str(self.path), "known_agents": len(self.known), "facts_written": self.facts_written}


class _Summary(NamedTuple):
    session: str
    agent_id: str
    fact: bytes
    through_seq: int


def _stamp(written: list[tuple[ToWorker, int]]) -> None:
    """Give each fact on its way to an agent the seq the journal wrote it under (once committed:
    a seq of a rolled-back write may be given again)."""
    for item, seq in written:
        if type(item) is ToAgent and type(item.message) is dict:
            item.message["seq"] = seq


class JournalInUse(RuntimeError):
    """Another process holds the journal's lock: a server on the same data_dir, or ``run.py journal``."""


def lock(path: Path) -> int | None:
    """Take the journal's lock (an flock on ``<journal>.lock``, held until closed or the process
    ends); None when another process holds it."""
    fd = os.open(str(path) + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def connect(path: Path, fsync: bool = True) -> sqlite3.Connection:
    """The journal at ``path`` (created if missing), in WAL mode, its schema up to date; in
    autocommit mode (``begin`` where a transaction is wanted); usable from one thread at a time."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("pragma journal_mode=wal")
    db.execute(f"pragma synchronous={'full' if fsync else 'normal'}")
    db.execute("pragma secure_delete=on")  # what is deleted is overwritten, not left in free pages
    db.executescript(SCHEMA)
    db.executescript(MEMORY_SCHEMA)  # gateway/memories.py: its tables are the journal's too
    _add_write_times(db)
    return db


def _add_write_times(db: sqlite3.Connection) -> None:
    """A journal from before write times were kept: its facts count as written now."""
    if "at" not in {row[1] for row in db.execute("pragma table_info(facts)")}:
        db.execute("alter table facts add column at real not null default 0")
        db.execute("update facts set at = ?", (time.time(),))
        logger.info("journal: write times added, the facts already there count as written now")


def _ref(blob: bytes) -> dict:
    """What an error about the fact ``blob`` names: its type and its turn or event id."""
    fact = orjson.loads(blob)
    return {"type": fact["type"], **{key: fact[key] for key in REF_KEYS if fact.get(key) is not None}}
