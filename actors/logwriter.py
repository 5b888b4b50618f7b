"""Disconnect logs, written on a thread of the worker's own, and deleted once old.

Why a thread: writing the logs on the worker's event loop stalled every session of that worker
(100,000 agents named by 5 notifications: 200,003 files per disconnect, an unrelated session's
turn 0.04 s -> 11 s). The loop only takes a snapshot of each record (list copies); this thread
serialises it, reads the LLM-input spool and writes. Its jobs run in order, so a spool deleted
when its agent closes goes after every log that reads it, and a FLUSH is answered once the logs
before it are on disk.

Why retention: nothing else ever deletes these logs, and a client that connects, notifies and
closes in a loop makes a folder each time. Once at start, then hourly and after each sixteenth
of ``log_max_bytes`` written, the files of ours (conversation and LLM-input logs, spools left by
a crashed worker) not modified for ``log_retention_days`` are deleted, then the oldest logs while
all of them together are over ``log_max_bytes``, then the folders left empty. Several workers of a node
share the folder: they may sweep it at once, which only costs a few failed deletions.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from loguru import logger

from actors.llm_input_log import SPOOL_DIR, LlmInputLog, _safe

SWEEP_INTERVAL_S = 3600.0
BUDGET_SLACK = 16  # a sweep after each log_max_bytes / 16 written: the logs stay within 1/16 over budget
LOG_SUFFIXES = (".conversation.json", ".llm_input.json")
SPOOL_SUFFIXES = (".jsonl", ".jsonl.part")
_STOP = object()


class LogWriter:
    """One thread per worker: disconnect logs in order, and the retention sweep."""

    def __init__(self, log_dir: str, retention_days: float, max_bytes: int) -> None:
        self.log_dir = Path(log_dir)
        self.retention_s = retention_days * 86400.0
        self.max_bytes = max_bytes
        self._written = 0  # bytes written since the last sweep (thread side)
        self._sweeping = bool(self.retention_s or max_bytes)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="logs", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], object]) -> None:
        """Run ``job`` on the thread after everything submitted before."""
        self._jobs.put(job)

    def write(self, folder: Path, stem: str, conversation: dict, llm_log: LlmInputLog | None) -> None:
        """Write ``<stem>.conversation.json`` and, with a log, ``<stem>.llm_input.json`` in ``folder``."""
        self.submit(lambda: self._logged(_write(folder, stem, conversation, llm_log)))

    def _logged(self, size: int) -> None:
        self._written += size
        if self.max_bytes and self._written >= self.max_bytes / BUDGET_SLACK:
            self._sweep()

    def close(self) -> None:
        """Finish every job submitted, then stop (blocks: call it from a thread of an executor)."""
        self._jobs.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        next_sweep = time.monotonic()
        while True:
            if self._sweeping and time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + SWEEP_INTERVAL_S
            try:
                job = self._jobs.get(timeout=max(0.0, next_sweep - time.monotonic()) if self._sweeping else None)
            except queue.Empty:
                continue
            if job is _STOP:
                return
            try:
                job()
            except Exception:  # noqa: BLE001 - the thread must live on for the next logs
                logger.exception("log job failed")

    def _sweep(self) -> None:
        """Delete our files older than the retention, then the oldest logs over the byte budget,
        then the folders this left empty (up to, not including, log_dir)."""
        self._written = 0
        cutoff = time.time() - self.retention_s if self.retention_s else None
        logs: list[tuple[float, int, str]] = []  # (mtime, size, path) of the disconnect logs kept
        emptied: set[str] = set()
        deleted = 0
        for folder, _, names in os.walk(self.log_dir):
            in_spool = os.path.basename(folder) == SPOOL_DIR
            for name in names:
                log = name.endswith(LOG_SUFFIXES)
                if not (log or (in_spool and name.endswith(SPOOL_SUFFIXES))):
                    continue
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue
                if cutoff is not None and stat.st_mtime < cutoff:
                    deleted += _unlink(path, folder, emptied)
                elif log:
                    logs.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in logs)
        if self.max_bytes and total > self.max_bytes:
            logs.sort()
            for _, size, path in logs:
                if total <= self.max_bytes:
                    break
                deleted += _unlink(path, os.path.dirname(path), emptied)
                total -= size
        root = os.path.abspath(self.log_dir)
        for folder in sorted(emptied, key=len, reverse=True):
            folder = os.path.abspath(folder)
            while folder != root and folder.startswith(root + os.sep):
                try:
                    os.rmdir(folder)  # only when empty
                except OSError:
                    break
                folder = os.path.dirname(folder)
        if deleted:
            logger.info(
                "log retention: deleted {} files under {} (older than {:g} days or over {} bytes)",
                deleted,
                self.log_dir,
                self.retention_s / 86400.0,
                self.max_bytes,
            )


def _unlink(path: str, folder: str, emptied: set[str]) -> int:
    try:
        os.unlink(path)
    except FileNotFoundError:  # another worker's sweep was first
        return 0
    emptied.add(folder)
    return 1


def _write(folder: Path, stem: str, conversation: dict, llm_log: LlmInputLog | None) -> int:
    """Write the agent's log files; return the bytes written."""
    files = [(f"{stem}.conversation.json", conversation)]
    if llm_log is not None:  # None: llm_input_log_turns = 0
        head = {k: v for k, v in conversation.items() if k != "history"}
        files.append((f"{stem}.llm_input.json", {**head, "turns": llm_log.newest()}))
    error: OSError | None = None
    for _ in range(2):  # another worker's sweep may remove the folder between mkdir and write: once more
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return sum(
                (folder / name).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2)) for name, record in files
            )
        except FileNotFoundError as exc:
            error = exc
        except OSError as exc:
            error = exc
            break
    logger.error("cannot write logs {} to {}: {}", stem, folder, error)
    return 0


def delete_logs(log_dir: str, session: str, agent_id: str | None = None) -> int:
    """Delete the disconnect logs and LLM-input spools of ``session`` (or of one NPC of it) under
    ``log_dir`` (``python run.py journal delete``: what a player asked to have deleted is in the
    logs too). Returns the files deleted."""
    folder = Path(log_dir) / _safe(session)
    if agent_id is None:
        paths = [path for path in folder.rglob("*") if path.is_file()] if folder.is_dir() else []
    else:
        stem = _safe(agent_id)
        spool = re.compile(rf"{re.escape(stem)}\.w\d+\.\d+\.jsonl(\.part)?")  # spool_path's names
        paths = [path for suffix in LOG_SUFFIXES for path in folder.glob(f"*/{stem}{suffix}")]
        paths += [path for path in folder.glob(f"{SPOOL_DIR}/{stem}.w*") if spool.fullmatch(path.name)]
    emptied: set[str] = set()
    deleted = sum(_unlink(str(path), str(path.parent), emptied) for path in paths)
    for path in sorted(emptied, key=len, reverse=True):
        try:
            os.rmdir(path)
        except OSError:
            pass
    if agent_id is None:
        try:
            os.rmdir(folder)
        except OSError:
            pass
    return deleted
