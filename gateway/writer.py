"""An ordered outbox of text frames for one WebSocket, written by a task of its own, bounded.

Whoever sends (the router, per token; the /events feed) only appends: it never waits on a
socket. The outbox is bounded in bytes, always: that is the memory a client may hold. It may also
be bounded in frames, counted only while the socket is full (``stalled``: the writer waits for it
to take more), so that a burst of many small frames queued at once is not held against a client
that reads. Over a limit the client is too slow, and ``send`` refuses from then on so the caller
can drop it. Dropping frees the outbox at once,
queues the close frame behind what the socket already holds, and cuts the connection if the
client does not answer it in time: a client that does not read cannot read a close frame either.

What is queued during one turn of the event loop is written at its end, in one write, while the
socket takes everything (a write is a system call: at a few hundred NPCs one per token was a third
of the gateway's CPU), without waking a task. Once the socket is full, or when the connection
compresses, the writer's task sends each frame through aiohttp's ``send_frame``, whose flow control
makes it wait for the client.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque

from aiohttp import WSMsgType, web

TOO_SLOW_CLOSE_CODE = 4001  # the client did not read what it was sent fast enough
TOO_SLOW_REASON = b"too slow: send buffer full"
MAX_JOINED_BYTES = 1 << 16  # one write joins frames up to about this much: aiohttp's own write limit

_TEXT = 0x81  # FIN and the text opcode: a whole text message, uncompressed (RFC 6455, 5.2)
_SHORT, _MEDIUM, _LONG = struct.Struct("!BB"), struct.Struct("!BBH"), struct.Struct("!BBQ")


def text_frames(payloads: list[bytes]) -> bytes:
    """Unmasked text frames, one per payload, as a server sends them."""
    parts = []
    for data in payloads:
        size = len(data)
        if size < 126:
            parts.append(_SHORT.pack(_TEXT, size))
        elif size < 1 << 16:
            parts.append(_MEDIUM.pack(_TEXT, 126, size))
        else:
            parts.append(_LONG.pack(_TEXT, 127, size))
        parts.append(data)
    return b"".join(parts)


class FrameWriter:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        log,
        max_bytes: int,
        max_frames: int | None = None,
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._log = log
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self._outbox: deque[bytes] = deque()
        self.queued_bytes = 0
        self._wake = asyncio.Event()
        self.stalled = False
        self.full = False  # too slow: nothing is queued any more
        self._flushing = False  # a flush is due at the end of this turn of the loop
        self._writing = False  # the task has the outbox (the socket was full): it alone writes
        self._stopped = False
        self._dropping: asyncio.Task | None = None
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())

    def send(self, data: bytes) -> bool:
        """Queue ``data``; False when the client is too slow (then nothing more is queued)."""
        if self.full:
            return False
        if self.queued_bytes + len(data) > self.max_bytes or (
            self.stalled and self.max_frames is not None and len(self._outbox) >= self.max_frames
        ):
            self.full = True
            self._outbox.clear()
            self.queued_bytes = 0
            return False
        self._outbox.append(data)
        self.queued_bytes += len(data)
        if not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._flush)
        return True

    def __len__(self) -> int:
        return len(self._outbox)

    def _fast(self) -> bool:
        """Whether frames may go straight to the socket: it took everything so far, nothing
        compresses, and no close has begun."""
        transport = self._transport
        return (
            transport is not None
            and not self._ws.compress
            and not self._ws.closed
            and not transport.is_closing()
            and not transport.get_write_buffer_size()
        )

    def _flush(self) -> None:
        self._flushing = False
        if self._writing or self._stopped:
            return  # the task drains the outbox in order; a stopped writer writes nothing
        while self._outbox and self._fast():
            self._write_joined()
        if self._outbox:
            self._wake.set()

    async def _run(self) -> None:
        outbox, ws = self._outbox, self._ws
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._writing = True
                while outbox:
                    if self._fast():
                        self._write_joined()
                        continue
                    data = outbox.popleft()
                    self.queued_bytes -= len(data)
                    self.stalled = True  # seen by senders only if send_frame waits for the socket
                    await ws.send_frame(data, WSMsgType.TEXT)
                    self.stalled = False
                self._writing = False
        except (ConnectionError, RuntimeError) as exc:
            self._log.debug("writer stopped: {}", exc)

    def _write_joined(self) -> None:
        """The outbox's first frames, up to about MAX_JOINED_BYTES, in one write (``_fast`` said so)."""
        outbox, taken, size = self._outbox, [], 0
        while outbox and size < MAX_JOINED_BYTES:
            data = outbox.popleft()
            taken.append(data)
            size += len(data)
        self.queued_bytes -= size
        assert self._transport is not None  # checked by _fast
        self._transport.write(text_frames(taken))

    def drop(self, grace_s: float) -> None:
        """Close a client too slow to read with TOO_SLOW_CLOSE_CODE; cut it after ``grace_s``."""
        self.full = True
        self._outbox.clear()
        self.queued_bytes = 0
        if self._dropping is None:
            self._dropping = asyncio.get_running_loop().create_task(self._close_or_cut(grace_s))

    async def _close_or_cut(self, grace_s: float) -> None:
        await self.stop()
        try:
            # drain=False: the close frame is queued behind what the socket holds, not waited for.
            await asyncio.wait_for(
                self._ws.close(code=TOO_SLOW_CLOSE_CODE, message=TOO_SLOW_REASON, drain=False), grace_s
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            if self._transport is not None:
                self._transport.abort()

    async def stop(self) -> None:
        self._stopped = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
