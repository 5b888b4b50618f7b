"""``python run.py journal``: look into the journal, export, delete and compact it.

It may run while the server runs on the same ``data_dir``: SQLite's WAL lets it read beside the
server, and its writes are short transactions (gateway/journal_upkeep.py). Whether the server
runs is told by the journal's lock (``gateway.journal.lock``): when the CLI gets it, no server
has the journal open, and none can start until the CLI is done.

Deleting while the server runs is refused without ``--force``, because the journal is not the
only copy then: an NPC the server holds in memory keeps its history (in its prompts, and in the
disconnect logs it writes later) until it is deactivated (``agent_idle_s``) or the server stops;
its new facts are journaled as usual. Stop the server first for a deletion that leaves nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from actors.logwriter import delete_logs
from config.settings import SettingsError, load_settings
from gateway import journal_upkeep as upkeep
from gateway.journal import FILE_NAME, connect, lock


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="run.py journal", description="Inspect, export, delete or compact the journal."
    )
    parser.add_argument("--config", help="TOML file of settings (see config/defaults.toml)")
    parser.add_argument("--data-dir", help="the journal's folder (default: the setting data_dir)")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="sessions (or one session's NPCs): facts, bytes, oldest, newest")
    inspect.add_argument("--session", help="list this session's NPCs")
    export = commands.add_parser("export", help="a session's or one NPC's facts as JSON lines, oldest first")
    _scope_arguments(export)
    export.add_argument("--out", help="write to this file (default: stdout)")
    delete = commands.add_parser("delete", help="delete a session or one NPC: journal and logs, overwritten")
    _scope_arguments(delete)
    delete.add_argument("--keep-logs", action="store_true", help="leave the disconnect logs in log_dir")
    delete.add_argument("--force", action="store_true", help="delete even though the server runs (see --help)")
    delete.add_argument("--vacuum", action="store_true", help="then shrink the file (only with the server stopped)")
    compact = commands.add_parser(
        "compact", help="apply retention now, and delete facts a summary covers once older than --days"
    )
    compact.add_argument("--days", type=float, help="default: the setting journal_compact_days")
    compact.add_argument("--vacuum", action="store_true", help="then shrink the file (only with the server stopped)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, overrides={"data_dir": args.data_dir})
    except SettingsError as exc:
        parser.error(str(exc))
    path = Path(settings.data_dir) / FILE_NAME
    if not path.exists():
        print(f"no journal at {path}", file=sys.stderr)
        return 1
    held = lock(path)
    running = held is None
    try:
        db = connect(path)
        if args.command == "inspect":
            return _inspect(db, path, args.session, running)
        if args.command == "export":
            with _output(args.out) as out:
                count = upkeep.export(db, out, args.session, args.npc)
            print(f"exported {count} facts", file=sys.stderr)
            return 0
        if args.vacuum and running:
            print("--vacuum needs the server stopped: it locks the whole journal while it copies it", file=sys.stderr)
            return 2
        if args.command == "delete":
            if running and not args.force:
                print(_RUNNING_NOTE, file=sys.stderr)
                return 2
            return _delete(db, args, settings.log_dir, running)
        retention_days = settings.journal_retention_days
        days = settings.journal_compact_days if args.days is None else args.days
        deleted = _compact(db, upkeep.Upkeep(retention_days, days))
        print(f"deleted {deleted} facts (retention {retention_days:g} days, compaction {days:g} days)")
        _finish(db, args.vacuum)
        return 0
    finally:
        if held is not None:
            os.close(held)


_RUNNING_NOTE = (
    "a server has this journal open. Deleting now removes the facts from the journal, but an NPC the "
    "server holds in memory keeps its history (its prompts, the disconnect logs it writes later) until "
    "it is deactivated (agent_idle_s) or the server stops. Stop the server first, or pass --force."
)


def _scope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session", required=True)
    parser.add_argument("--npc", help="one NPC (agent_id) of the session; default: the whole session")


def _inspect(db: sqlite3.Connection, path: Path, session: str | None, running: bool) -> int:
    sizes = {suffix or "db": _size(Path(str(path) + suffix)) for suffix in ("", "-wal")}
    print(f"{path}: {sizes['db']} bytes, WAL {sizes['-wal']} bytes; server running: {'yes' if running else 'no'}")
    rows = list(upkeep.inventory(db, session))
    if not rows:
        print("no facts" if session is None else f"no facts in session {session!r}")
        return 0
    label = "session" if session is None else "agent_id"
    print("\t".join([label, *(["npcs"] if session is None else []), "facts", "bytes", "oldest", "newest"]))
    for row in rows:
        row["oldest"], row["newest"] = _when(row["oldest"]), _when(row["newest"])
        print("\t".join(str(value) for value in row.values()))
    return 0


def _delete(db: sqlite3.Connection, args: argparse.Namespace, log_dir: str, running: bool) -> int:
    what = f"session {args.session!r}" if args.npc is None else f"NPC {args.npc!r} of session {args.session!r}"
    count, memories = upkeep.delete(db, args.session, args.npc)
    print(f"deleted {count} facts and {memories} memories of {what}")
    if not args.keep_logs:
        print(f"deleted {delete_logs(log_dir, args.session, args.npc)} log files under {log_dir}")
    _finish(db, args.vacuum)
    if running:
        print("the running server may still hold this history in memory (see --help)", file=sys.stderr)
    return 0


def _compact(db: sqlite3.Connection, upkeeper: upkeep.Upkeep) -> int:
    deleted, more = upkeeper.run(db, time.time())
    while more:
        count, more = upkeeper.run(db, time.time())
        deleted += count
    return deleted


def _finish(db: sqlite3.Connection, vacuum: bool) -> None:
    """Optionally shrink the file; then leave no copy of a deleted page in the WAL."""
    if vacuum:
        db.execute("vacuum")
    scrubbed = upkeep.scrub(db)
    if scrubbed.complete:
        print("WAL checkpointed and truncated: deleted rows and freed pages are overwritten with zeros")
    else:
        print(
            "the WAL could not be truncated (a reader holds an old snapshot): older page copies stay in it "
            "until the server's next checkpoint; run this again to scrub it",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    with open(path, "wb") as out:
        yield out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
