"""The journal's life after a fact is written: what it holds, export, deletion, retention, compaction.

Statements on one SQLite connection to the journal, used by the journal's thread (the periodic
retention and compaction pass, ``Upkeep``) and by ``python run.py journal`` (gateway/journal_cli.py),
which may run beside the server: SQLite's WAL lets a second connection read while the server
writes, and writes queue on SQLite's lock. So every write here is a short transaction of at most
``CHUNK`` rows: a server commit waits behind one at most (about 35 ms measured, docs/performance.md),
never its 5 s busy timeout.

Deleted data must be gone, not merely unlinked (players may ask for their data to be deleted):
both connections set ``secure_delete``, so SQLite overwrites deleted rows and freed pages with
zeros, and ``scrub`` checkpoints the WAL into the main file and truncates it, so no older copy
of a page stays in the WAL either. What the rules are (what is old enough, what a summary
covers) is ``core.retention``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

import orjson

from core import retention
from core.memory import AGENT_SCOPE, owner_of
from core.retention import Key, Row
from gateway.memories import MEMORY_ROWIDS

CHUNK = 1000  # rows per transaction and per pass


class Scrubbed(NamedTuple):
    complete: bool  # False: a reader held an old snapshot, old pages may still be in the WAL
    wal_pages: int


def delete(db: sqlite3.Connection, session: str, agent_id: str | None = None) -> tuple[int, int]:
    """Delete every fact of ``session`` (or of one NPC of it) with its line in the recall index,
    ``CHUNK`` rows per transaction; then the NPCs' rows and their memories (an NPC's: those it
    owns, not its groups'); then merge the recall index, whose segments keep a deleted entry's
    words until merged. Returns the facts and the memories deleted."""
    where, args = _scope(session, agent_id)
    deleted = 0
    while True:
        with _transaction(db):
            seqs = [(seq,) for (seq,) in db.execute(f"select seq from facts where {where} limit {CHUNK}", args)]
            _unindex(db, seqs)
            db.executemany("delete from facts where seq = ?", seqs)
        deleted += len(seqs)
        if len(seqs) < CHUNK:
            break
    owned = "session = ?" if agent_id is None else "session = ? and owner = ?"
    owners = (session,) if agent_id is None else (session, owner_of(agent_id, AGENT_SCOPE))
    with _transaction(db):
        db.execute(f"delete from agents where {where}", args)
        db.execute(f"delete from covered where {where}", args)
        memories = [(MEMORY_ROWIDS + seq,) for (seq,) in db.execute(f"select seq from memories where {owned}", owners)]
        db.executemany("delete from recall_index where rowid = ?", memories)
        db.execute(f"delete from memories where {owned}", owners)
    with _transaction(db):
        db.execute("insert into recall_index (recall_index) values ('optimize')")
    return deleted, len(memories)


def scrub(db: sqlite3.Connection) -> Scrubbed:
    """Copy the WAL into the main file and truncate it, so deleted data is in neither."""
    busy, pages, _ = db.execute("pragma wal_checkpoint(truncate)").fetchone()
    return Scrubbed(not busy, pages)


def export(db: sqlite3.Connection, out: IO[bytes], session: str, agent_id: str | None = None) -> int:
    """Write the facts of ``session`` (or of one NPC) to ``out`` as JSON lines, oldest first:
    ``{"seq", "at", "session", "agent_id", "fact"}``. Returns how many."""
    where, args = _scope(session, agent_id)
    count = 0
    rows = db.execute(f"select seq, at, session, agent_id, fact from facts where {where} order by seq", args)
    for seq, at, row_session, row_agent, blob in rows:
        record = {"seq": seq, "at": at, "session": row_session, "agent_id": row_agent, "fact": orjson.Fragment(blob)}
        out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


def inventory(db: sqlite3.Connection, session: str | None = None) -> Iterator[dict[str, Any]]:
    """Per session (or, given one, per NPC of it): NPCs, facts, bytes of facts, oldest and newest write."""
    names: tuple[str, ...]
    if session is None:
        names = ("session", "npcs", "facts", "bytes", "oldest", "newest")
        rows = db.execute(
            "select session, count(distinct agent_id), count(*), sum(length(fact)), min(at), max(at) "
            "from facts group by session order by session"
        )
    else:
        names = ("agent_id", "facts", "bytes", "oldest", "newest")
        rows = db.execute(
            "select agent_id, count(*), sum(length(fact)), min(at), max(at) "
            "from facts where session = ? group by agent_id order by agent_id",
            (session,),
        )
    for row in rows:
        yield dict(zip(names, row, strict=True))


class Upkeep:
    """Retention and compaction, one bounded pass at a time (the journal's thread calls ``run``)."""

    def __init__(self, retention_days: float, compact_days: float) -> None:
        self.retention_days = retention_days
        self.compact_days = compact_days
        self._cursors: dict[str, int] = {}  # walk -> the seq its next pass starts after

    @property
    def enabled(self) -> bool:
        return bool(self.retention_days or self.compact_days)

    def run(self, db: sqlite3.Connection, now: float) -> tuple[int, bool]:
        """One pass of each walk: at most ``CHUNK`` rows read each, one transaction. Returns the
        facts deleted and whether a walk has more to do (then the next pass should come soon)."""
        deleted, more = 0, False
        with _transaction(db):
            for walk, days in (("retention", self.retention_days), ("compaction", self.compact_days)):
                before = retention.cutoff(now, days)
                if before is None:
                    continue
                start = self._cursors.pop(walk, 0)
                rows = [
                    Row(seq, (session, agent_id), at)
                    for seq, session, agent_id, at in db.execute(
                        "select seq, session, agent_id, at from facts where seq > ? order by seq limit ?",
                        (start, CHUNK),
                    )
                ]
                covered = _covered(db, {row.key for row in rows}) if walk == "compaction" else None
                doomed, cursor = retention.sweep(rows, CHUNK, before, covered)
                if cursor is not None:
                    self._cursors[walk] = cursor
                    more = True
                if doomed:
                    _unindex(db, [(seq,) for seq in doomed])
                    db.executemany("delete from facts where seq = ?", ((seq,) for seq in doomed))
                    _forget_empty(db, {row.key for row in rows if row.seq in set(doomed)})
                    deleted += len(doomed)
        return deleted, more


def _unindex(db: sqlite3.Connection, seqs: list[tuple[int]]) -> None:
    """The facts' lines leave the recall index with them (gateway/memories.py: rowid = seq)."""
    db.executemany("delete from recall_index where rowid = ?", seqs)


def _covered(db: sqlite3.Connection, keys: set[Key]) -> dict[Key, int]:
    """The newest seq each of ``keys``'s summary covers (NPCs without a summary are left out)."""
    covered = {}
    for key in keys:
        row = db.execute("select through_seq from covered where session = ? and agent_id = ?", key).fetchone()
        if row is not None:
            covered[key] = row[0]
    return covered


def _forget_empty(db: sqlite3.Connection, keys: set[Key]) -> None:
    """NPCs left without facts are no longer known (the next start does not count them)."""
    for key in keys:
        if db.execute("select 1 from facts where session = ? and agent_id = ? limit 1", key).fetchone() is None:
            db.execute("delete from agents where session = ? and agent_id = ?", key)
            db.execute("delete from covered where session = ? and agent_id = ?", key)


def _scope(session: str, agent_id: str | None) -> tuple[str, tuple[str, ...]]:
    if agent_id is None:
        return "session = ?", (session,)
    return "session = ? and agent_id = ?", (session, agent_id)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``begin immediate`` ... ``commit`` (``rollback`` on an error), on an autocommit connection."""
    db.execute("begin immediate")
    try:
        yield
    except BaseException:
        db.execute("rollback")
        raise
    db.execute("commit")
