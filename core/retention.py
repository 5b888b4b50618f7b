"""Which journaled facts have had their time: retention and compaction, as pure rules.

The journal keeps every fact forever unless the operator says otherwise. ``journal_retention_days``
deletes any fact once that old (player data kept no longer than promised); ``journal_compact_days``
deletes a fact once that old if a summary of its NPC covers it (what it said lives on in the
summary). Both walk the facts oldest first, in their write order (``seq``), a bounded number of
rows per pass, so the journal's thread never holds up the game for long: a pass reads the next
rows after its cursor and this module says which of them go and where the next pass starts.
Pure: the caller passes the cut-off times and the rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

DAY_S = 86400.0

Key = tuple[str, str]  # (session, agent_id)


class Row(NamedTuple):
    seq: int
    key: Key
    at: float  # when the journal wrote it (time.time())


class Sweep(NamedTuple):
    doomed: list[int]  # the seqs to delete
    cursor: int | None  # where the next pass of this walk starts; None: the walk is done


def cutoff(now: float, days: float) -> float | None:
    """The write time before which a fact is old enough; None when ``days`` is 0 (never)."""
    return now - days * DAY_S if days > 0 else None


def sweep(rows: Sequence[Row], limit: int, before: float, covered: Mapping[Key, int] | None = None) -> Sweep:
    """Of ``rows`` (the next at most ``limit`` facts of the walk, oldest first), those written
    before ``before`` and, for compaction, covered by a summary (``covered``: the newest seq each
    summarised NPC's summary holds; None: retention, every old fact goes).

    Facts are written in seq order, so the first fact too young ends the walk: every fact after
    it is younger still (a clock set back only keeps facts longer). A full page of old facts
    means more may follow: the next pass starts after it."""
    doomed: list[int] = []
    for row in rows:
        if row.at >= before:
            return Sweep(doomed, None)
        if covered is None or row.seq <= covered.get(row.key, -1):
            doomed.append(row.seq)
    return Sweep(doomed, rows[-1].seq if len(rows) >= limit else None)
