"""The asyncio loop the ``event_loop`` setting names: uvloop's (libuv) where installed, else the
standard library's. The gateway's and workers' loops are made here, and so are the load test's
own (its generator and scripted LLM), so that on one machine they take less of the cores the
server is measured on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from loguru import logger

T = TypeVar("T")


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new loop of ``kind`` ("uvloop" or "asyncio")."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:  # not built for this platform (Windows): the standard loop does the same work
            logger.warning("event_loop = uvloop, but uvloop is not installed: using asyncio's loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], kind: str = "uvloop") -> T:
    """``asyncio.run`` on a loop of ``kind``."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(kind)) as runner:
        return runner.run(main)
