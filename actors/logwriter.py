"""Disconnect logs, written on a thread of the worker's own, and deleted once old.

Why a thread: writing the logs on the worker's event loop stalled every session of that worker
(100,000 agents named by 5 notifications: 200,003 files per disconnect, an unrelated session's
turn 0.04 s -> 11 s). The loop only takes a snapshot of each record (list copies); this thread
serialises it, reads the LLM-input spool and writes. Its jobs run in order, so a spool deleted
when its agent closes goes after every log that reads it, and a FLUSH is answered once the logs
before it are on disk.

Why retention: nothing else ever deletes these logs. Once at start and then hourly, the files of
ours (conversation and LLM-input logs, spools left by a crashed worker) not modified for
``log_retention_days`` are deleted, then the folders they leave empty. Several workers of a node
share the folder: they may sweep it at once, which only costs a few failed deletions.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from loguru import logger

from actors.llm_input_log import SPOOL_DIR, LlmInputLog

SWEEP_INTERVAL_S = 3600.0
LOG_SUFFIXES = (".conversation.json", ".llm_input.json")
SPOOL_SUFFIXES = (".jsonl", ".jsonl.part")
_STOP = object()


class LogWriter:
    """One thread per worker: disconnect logs in order, and the retention sweep."""

    def __init__(self, log_dir: str, retention_days: float) -> None:
        self.log_dir = Path(log_dir)
        self.retention_s = retention_days * 86400.0
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="logs", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the thread after everything submitted before."""
        self._jobs.put(job)

    def write(self, folder: Path, stem: str, conversation: dict, llm_log: LlmInputLog | None) -> None:
        """Write ``<stem>.conversation.json`` and, with a log, ``<stem>.llm_input.json`` in ``folder``."""
        self.submit(lambda: _write(folder, stem, conversation, llm_log))

    def close(self) -> None:
        """Finish every job submitted, then stop (blocks: call it from a thread of an executor)."""
        self._jobs.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        next_sweep = time.monotonic()
        while True:
            if self.retention_s and time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + SWEEP_INTERVAL_S
            try:
                job = self._jobs.get(timeout=max(0.0, next_sweep - time.monotonic()) if self.retention_s else None)
            except queue.Empty:
                continue
            if job is _STOP:
                return
            try:
                job()
            except Exception:  # noqa: BLE001 - the thread must live on for the next logs
                logger.exception("log job failed")

    def _sweep(self) -> None:
        cutoff = time.time() - self.retention_s
        files = folders = 0
        for folder, _, names in os.walk(self.log_dir, topdown=False):
            in_spool = os.path.basename(folder) == SPOOL_DIR
            emptied = False
            for name in names:
                if not (name.endswith(LOG_SUFFIXES) or (in_spool and name.endswith(SPOOL_SUFFIXES))):
                    continue
                path = os.path.join(folder, name)
                try:
                    if os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        files += 1
                        emptied = True
                except FileNotFoundError:
                    pass
            if folder != str(self.log_dir) and (emptied or _older(folder, cutoff)):
                try:
                    os.rmdir(folder)  # only when empty
                    folders += 1
                except OSError:
                    pass
        if files or folders:
            logger.info(
                "log retention: deleted {} files and {} folders older than {:g} days under {}",
                files,
                folders,
                self.retention_s / 86400.0,
                self.log_dir,
            )


def _older(folder: str, cutoff: float) -> bool:
    try:
        return os.stat(folder).st_mtime < cutoff
    except FileNotFoundError:
        return False


def _write(folder: Path, stem: str, conversation: dict, llm_log: LlmInputLog | None) -> None:
    files = [(f"{stem}.conversation.json", conversation)]
    if llm_log is not None:  # None: llm_input_log_turns = 0
        head = {k: v for k, v in conversation.items() if k != "history"}
        files.append((f"{stem}.llm_input.json", {**head, "turns": llm_log.newest()}))
    error: OSError | None = None
    for _ in range(2):  # another worker's sweep may remove the folder between mkdir and write: once more
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, record in files:
                (folder / name).write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
            return
        except FileNotFoundError as exc:
            error = exc
        except OSError as exc:
            error = exc
            break
    logger.error("cannot write logs {} to {}: {}", stem, folder, error)
