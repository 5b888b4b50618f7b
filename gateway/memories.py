"""Memories and the recall index, in the journal's SQLite database, used only by the journal's thread.

Memories (``core.memory``) are rows of their own table, not history facts: durable like facts,
written in the same transactions, and read per turn, so nothing needs replaying after a restart.
The recall index is one FTS5 table over the lines of every history fact (rowid = the fact's
``seq``) and every memory (rowid = ``MEMORY_ROWIDS`` + its ``seq``), whose terms carry their
owner (``core.recall.terms``): one NPC's lookup reads only its own and its groups' postings,
however many facts the other NPCs have. Why FTS5: it is in the standard library's ``sqlite3``,
indexes in the journal's own transactions, and a term's newest hits are one reverse index scan.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import orjson

from config.settings import Settings
from core import memory as m
from core import protocol as p
from core.recall import Match, Recall, RecallQuery, fact_line, owner_token, rank, terms, words

MEMORY_SCHEMA = """
create table if not exists memories (
    seq integer primary key,
    session text not null,
    owner text not null,
    memory_id text not null,
    agent_id text not null,
    scope text not null,
    kind text not null,
    pinned integer not null,
    text text not null
);
create unique index if not exists memories_by_id on memories (session, owner, memory_id);
create index if not exists memories_pinned on memories (session, owner, pinned);
create virtual table if not exists recall_index using fts5(terms, line unindexed, tokenize = 'unicode61');
"""
MEMORY_ROWIDS = 1 << 60  # memories' rowids in the recall index: above every fact's seq, newest first
_COLUMNS = "seq, memory_id, text, kind, pinned, scope, agent_id"
_NEWEST_LINES = (  # an agent's newest facts and the size of their lines in the index (none: nothing shown)
    "select facts.seq, coalesce(length(recall_index.line), 0) from facts "
    "left join recall_index on recall_index.rowid = facts.seq "
    "where facts.session = ? and facts.agent_id = ? order by facts.seq desc limit ?"
)
_NOTES_CHARS = 64  # room the prompt keeps in its history budget for its own notes (core.prompt)


class MemoryStore:
    """Thread-side: every method runs in the journal's thread, inside its open transaction."""

    def __init__(self, limits: m.Limits, hits_per_word: int, matches: int, window_facts: int) -> None:
        self.limits = limits
        self.hits_per_word = hits_per_word  # newest index hits read per word of a lookup
        self.matches = matches  # best matches handed to the agent
        self.window_facts = window_facts  # at most this many of an agent's newest facts are in its window

    @classmethod
    def of(cls, settings: Settings) -> MemoryStore:
        window = 2 * settings.history_max_entries  # what an agent can hold, as the journal restores it
        return cls(settings.memory_limits, settings.recall_hits_per_word, settings.recall_matches, window)

    def create(self, db: sqlite3.Connection) -> None:
        db.executescript(MEMORY_SCHEMA)

    def index_fact(self, db: sqlite3.Connection, seq: int | None, session: str, agent_id: str, blob: bytes) -> None:
        """Make a history fact just written (as ``seq``) findable by the recall of its agent."""
        line = fact_line(orjson.loads(blob))
        if line and seq is not None:
            token = owner_token(session, m.owner_of(agent_id, m.AGENT_SCOPE))
            db.execute(
                "insert into recall_index (rowid, terms, line) values (?, ?, ?)", (seq, terms(token, line), line)
            )

    # --- the game's operations -----------------------------------------------------------------

    def run(self, db: sqlite3.Connection, op: m.MemoryOp) -> dict:
        """Carry out ``op``: its reply frame, or the ``error`` frame that refuses it (nothing changed)."""
        try:
            if isinstance(op, m.AddMemory):
                return self._add(db, op)
            if isinstance(op, m.ForgetMemories):
                return self._forget(db, op)
            return self._list(db, op)
        except m.MemoryRefused as exc:
            return p.error(exc.code, str(exc), {"type": m.TYPE_OF[type(op)], "agent_id": op.agent_id})

    def _add(self, db: sqlite3.Connection, op: m.AddMemory) -> dict:
        owner = m.owner_of(op.agent_id, op.scope)
        in_scope, pinned = db.execute(
            "select count(*), coalesce(sum(pinned), 0) from memories where session = ? and owner = ?",
            (op.session, owner),
        ).fetchone()
        (in_session,) = db.execute("select count(*) from memories where session = ?", (op.session,)).fetchone()
        m.check_add(op, self.limits, in_scope, pinned, in_session)
        seq = db.execute(
            "insert into memories (session, owner, memory_id, agent_id, scope, kind, pinned, text) "
            "values (?, ?, ?, ?, ?, ?, ?, ?)",
            (op.session, owner, op.memory_id, op.agent_id, op.scope, op.kind, int(op.pinned), op.text),
        ).lastrowid
        assert seq is not None
        db.execute(
            "insert into recall_index (rowid, terms, line) values (?, ?, ?)",
            (MEMORY_ROWIDS + seq, terms(owner_token(op.session, owner), op.text), op.text),
        )
        return p.memory_added(op.agent_id, op.memory_id, op.scope)

    def _forget(self, db: sqlite3.Connection, op: m.ForgetMemories) -> dict:
        owner = m.owner_of(op.agent_id, op.scope)
        if op.memory_id is not None:
            rows = db.execute(
                "select seq, memory_id from memories where session = ? and owner = ? and memory_id = ?",
                (op.session, owner, op.memory_id),
            ).fetchall()
            if not rows:
                raise m.MemoryRefused(
                    p.UNKNOWN_MEMORY, f"{op.scope} of agent {op.agent_id!r} has no memory {op.memory_id!r}"
                )
        else:
            assert op.query is not None  # core.protocol: an id or a query
            m.check_query(op.query, self.limits, "memory_forget")
            found = self._matching(db, op.session, (owner,), op.query)
            if len(found) > self.limits.max_forget:
                raise m.MemoryRefused(
                    p.TOO_MANY_MEMORIES,
                    f"memory_forget.query {op.query!r} matches {len(found)} memories, more than "
                    f"{self.limits.max_forget} at once (setting memory_max_forget): nothing was forgotten; "
                    "narrow the query or forget by memory_id",
                )
            rows = [(row[0], row[1]) for row in found]
        for seq, _ in rows:
            db.execute("delete from memories where seq = ?", (seq,))
            db.execute("delete from recall_index where rowid = ?", (MEMORY_ROWIDS + seq,))
        return p.memory_forgotten(op.agent_id, [memory_id for _, memory_id in rows])

    def _list(self, db: sqlite3.Connection, op: m.ListMemories) -> dict:
        owners = tuple(m.owner_of(op.agent_id, scope) for scope in op.scopes)
        if op.query is None:
            marks = ", ".join("?" * len(owners))
            rows = db.execute(
                f"select {_COLUMNS} from memories where session = ? and owner in ({marks}) order by seq",
                (op.session, *owners),
            ).fetchall()
        else:
            m.check_query(op.query, self.limits, "memory_list")
            rows = self._matching(db, op.session, owners, op.query)
        return p.memory_list_result(op.agent_id, [_memory(row).wire() for row in rows], op.scopes)

    def _matching(self, db: sqlite3.Connection, session: str, owners: Iterable[str], query: str) -> list[tuple]:
        """The memories of ``owners`` that have every word of ``query``, oldest first."""
        found = words(query)
        if not found:
            raise m.MemoryRefused(p.BAD_FIELD, f"query {query!r} has no word to look for (only stop words)")
        tokens = [owner_token(session, owner) for owner in owners]
        match = " OR ".join(
            "(" + " AND ".join(f'"{token}x{word}"' for word in dict.fromkeys(found)) + ")" for token in tokens
        )
        return db.execute(
            f"select {_COLUMNS} from memories where seq in "
            "(select rowid - ? from recall_index where recall_index match ? and rowid >= ?) order by seq",
            (MEMORY_ROWIDS, match, MEMORY_ROWIDS),
        ).fetchall()

    # --- a turn's recall -------------------------------------------------------------------------

    def recall(self, db: sqlite3.Connection, session: str, query: RecallQuery) -> Recall:
        """Every pinned memory of the query's owners, and the best matches of its words."""
        marks = ", ".join("?" * len(query.owners))
        pinned = db.execute(
            f"select {_COLUMNS} from memories where session = ? and owner in ({marks}) and pinned = 1 order by seq",
            (session, *query.owners),
        ).fetchall()
        tokens = [owner_token(session, owner) for owner in query.owners]
        window, whole = self._window_start(db, session, query.agent_id, query.window_chars)
        hits = {}
        # A history the window shows whole has nothing to recall but memories: without any, no
        # word is looked up (a new NPC's turns, and most turns of a short-lived one).
        looked_up = (*query.said, *query.context)
        if whole and not self._any_memory(db, session, marks, query.owners):
            looked_up = ()
        for word in looked_up:
            match = " OR ".join(f'"{token}x{word}"' for token in tokens)
            hits[word] = [
                rowid
                for (rowid,) in db.execute(
                    "select rowid from recall_index where recall_index match ? and (rowid >= ? or rowid < ?) "
                    "order by rowid desc limit ?",
                    (match, MEMORY_ROWIDS, window, self.hits_per_word),
                )
            ]
        best = rank(hits, query.said, self.hits_per_word, self.matches)
        lines = dict(
            db.execute(f"select rowid, line from recall_index where rowid in ({', '.join('?' * len(best))})", best)
        )
        matches = tuple(
            Match(lines[rowid], rowid - MEMORY_ROWIDS, True) if rowid >= MEMORY_ROWIDS else Match(lines[rowid], rowid)
            for rowid in best
            if rowid in lines
        )
        return Recall(tuple(_memory(row) for row in pinned), matches)

    def _window_start(self, db: sqlite3.Connection, session: str, agent_id: str, chars: int) -> tuple[int, bool]:
        """The oldest of the agent's newest facts whose lines together fit ``chars``: a line is at
        least as long as what the prompt shows of its fact (``core.recall.fact_line``), so these
        are all in the window (the agent drops any other match the window shows); and whether
        they are all of its facts."""
        start, seen = MEMORY_ROWIDS, 0
        chars -= _NOTES_CHARS
        for seq, size in db.execute(_NEWEST_LINES, (session, agent_id, self.window_facts)):
            chars -= size + 1
            if chars < 0:
                return start, False
            start, seen = seq, seen + 1
        return start, seen < self.window_facts

    @staticmethod
    def _any_memory(db: sqlite3.Connection, session: str, marks: str, owners: Iterable[str]) -> bool:
        return (
            db.execute(
                f"select 1 from memories where session = ? and owner in ({marks}) limit 1", (session, *owners)
            ).fetchone()
            is not None
        )


def _memory(row: tuple[Any, ...]) -> m.Memory:
    seq, memory_id, text, kind, pinned, scope, agent_id = row
    return m.Memory(memory_id, text, kind, bool(pinned), scope, agent_id, seq)
