"""One agent's LLM-input log, spooled to disk instead of held in memory.

Every turn that calls the LLM leaves a record of its whole prompt, written out as the agent's
``.llm_input.json`` when its Godot connection closes. Holding the newest 50 of them in memory cost
about 1 MB per NPC after 50 turns (docs/performance.md), so each record goes, as one JSON line,
to a spool file as its turn ends; memory keeps a line count. When the file reaches twice the
records to keep, it is rewritten with the newest ones, so it stays bounded on disk too.

The spool belongs to one life of the agent on one worker: a new log starts it afresh, ``close``
(deactivation, shutdown) deletes it, and its name carries the worker's index and the life's
number, so an agent deactivated and restored at once, on another worker or the same one, never
shares a file with its former self (whose spool the log writer may still be reading). Writes
are small appends on the worker's event loop; a disk error is logged once per agent and the turn
goes on without its record.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import orjson
from loguru import logger

SPOOL_DIR = ".llm_input"
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


def _safe(name: str) -> str:
    """A file-name-safe form of an id (ids come from the game and may contain anything).

    An id that had to change gets a short hash of the original, so two ids never share a file;
    so does an id of dots alone ("." and ".." are not file names).
    """
    safe = _UNSAFE_FILENAME.sub("_", name)[:100]
    if safe != name or not safe.strip("."):
        safe += "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return safe


def spool_path(log_dir: str, session: str, agent_id: str, worker: int, life: int) -> Path:
    """``<log_dir>/<session>/.llm_input/<agent_id>.w<worker>.<life>.jsonl``."""
    return Path(log_dir) / _safe(session) / SPOOL_DIR / f"{_safe(agent_id)}.w{worker}.{life}.jsonl"


class LlmInputLog:
    """The newest ``keep`` LLM-input records of one agent, in a JSON-lines file."""

    def __init__(self, path: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1 (0 means no LLM-input log: make none)")
        self.path = path
        self.keep = keep
        self.lines = 0  # records in the file: all this log holds in memory
        self._started = False  # the file of this life was created (truncating any leftover)
        self._closed = False
        self._failed = False

    def append(self, record: dict) -> None:
        """Add one record; compact the file to the newest ``keep`` when it holds twice that."""
        if self._closed:
            return
        try:
            line = orjson.dumps(record) + b"\n"
            if not self._started:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab" if self._started else "wb") as spool:
                spool.write(line)
            self._started = True
            self.lines += 1
            if self.lines >= 2 * self.keep:
                self._compact()
        except (OSError, TypeError) as exc:  # TypeError: orjson.JSONEncodeError
            self._fail("write", exc)

    def newest(self) -> list[dict]:
        """The newest ``keep`` records, oldest first (an unreadable line is skipped)."""
        if not self._started or self._closed:
            return []
        try:
            lines = self._read_lines()
        except OSError as exc:
            self._fail("read", exc)
            return []
        records = []
        for line in lines[-self.keep :]:
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                logger.warning("skipping an unreadable line of the LLM-input log {}", self.path)
        return records

    def close(self) -> None:
        """The agent is gone: delete its spool; later appends do nothing."""
        self._closed = True
        if self._started:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                self._fail("delete", exc)

    def _read_lines(self) -> list[bytes]:
        """The complete lines: the log writer's thread may read while the loop appends one."""
        data = self.path.read_bytes()
        return [line for line in data[: data.rfind(b"\n") + 1].split(b"\n") if line]

    def _compact(self) -> None:
        lines = self._read_lines()[-self.keep :]
        part = self.path.with_name(self.path.name + ".part")
        part.write_bytes(b"".join(line + b"\n" for line in lines))
        os.replace(part, self.path)
        self.lines = len(lines)

    def _fail(self, what: str, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            logger.error(
                "cannot {} the LLM-input log {} ({}); this agent's log may miss turns (further errors not logged)",
                what,
                self.path,
                exc,
            )
