"""Console logging for every process: loguru, structured, level from GAME_AGENT_LOG_LEVEL.

Each record carries its context (agent_id, turn_id, worker...) as ``extra`` fields, printed as
``key=value`` after the message, or as one JSON object per line with GAME_AGENT_LOG_FORMAT=json.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[process_role]}</cyan> {message}{extra[kv]}"
)


# Line breaks and other control characters, which would let a client's text (a session name, an
# agent id) start a forged log line or rewrite the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``)."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def _add_kv(record: Record) -> None:
    """Escape control characters in the message and the context (a traceback keeps its lines:
    it is printed apart, from ``record["exception"]``), and render the context as key=value."""
    extra = record["extra"]
    extra.setdefault("process_role", "main")
    record["message"] = _printable(record["message"])
    extra["kv"] = "".join(f" {k}={_printable(str(v))}" for k, v in extra.items() if k not in ("process_role", "kv"))


def configure_logging(level: str, role: str) -> None:
    """(Re)configure the console sink of this process; ``role`` names the process in each line."""
    level = os.environ.get("GAME_AGENT_LOG_LEVEL", level).upper()
    logger.remove()
    logger.configure(extra={"process_role": role}, patcher=_add_kv)
    if os.environ.get("GAME_AGENT_LOG_FORMAT", "").lower() == "json":
        logger.add(sys.stderr, level=level, serialize=True)
    else:
        logger.add(sys.stderr, level=level, format=_FORMAT, colorize=None)
