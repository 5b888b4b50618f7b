"""An ordered outbox of text frames for one WebSocket, written by a task of its own.

Whoever sends (the router, per token; the /events feed) only appends: it never waits on a
socket. ``stalled`` tells whether the writer is waiting for the socket to take more, which is how
/events recognises a spectator too slow to keep up.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiohttp import WSMsgType, web


class FrameWriter:
    def __init__(self, ws: web.WebSocketResponse, log) -> None:
        self._ws = ws
        self._log = log
        self._outbox: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.stalled = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def send(self, data: bytes) -> None:
        self._outbox.append(data)
        self._wake.set()

    def __len__(self) -> int:
        return len(self._outbox)

    async def _run(self) -> None:
        outbox, ws = self._outbox, self._ws
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while outbox:
                    self.stalled = True  # seen by senders only if send_frame waits for the socket
                    await ws.send_frame(outbox.popleft(), WSMsgType.TEXT)
                    self.stalled = False
        except (ConnectionError, RuntimeError) as exc:
            self._log.debug("writer stopped: {}", exc)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
