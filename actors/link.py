"""The asyncio ends of a worker's stream (``core/link.py``): the worker listens, the gateway connects.

Each side queues items with ``send``; everything queued during one turn of the event loop leaves
as one record, so at low load an item leaves at once and under load records grow by themselves,
with no acknowledgement to wait for. A worker's end also writes at most every ``frame_batch_s``
(``flush_interval_s``): what follows a write within it waits for the next one, so that tokens
arriving half a millisecond apart share a write and its read (a system call and a wake-up each).
Either side learns that the other is gone from the end of
the stream: the gateway ends the worker's turns at once; a worker stops itself (its gateway is
gone, or declared it lost).

A worker on the leader's machine listens on a Unix socket in a directory only the server's user
can open; a worker on another node listens on its node's address (see docs/deploy.md for the
trust model). Either way it accepts exactly one authenticated gateway, then stops listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable

from loguru import logger

from core.link import (
    CLIENT_ANSWER_BYTES,
    SERVER_HELLO_BYTES,
    SERVER_PROOF_BYTES,
    LinkRefused,
    Records,
    client_answer,
    client_check,
    encode,
    server_check,
    server_hello,
)

HANDSHAKE_TIMEOUT_S = 10.0
READ_BYTES = 1 << 18

OnItems = Callable[[list], None]
OnLost = Callable[[], None]


class Link:
    """One authenticated stream: items out, batched per loop turn (and at most one write per
    ``flush_interval_s``, if given); item lists in, in order."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_items: OnItems,
        on_lost: OnLost,
        flush_interval_s: float = 0.0,
    ) -> None:
        self._writer = writer
        self._pending: list = []
        self._scheduled = False
        self._interval = flush_interval_s
        self._flushed_at = 0.0
        self._open = True
        self._loop = asyncio.get_running_loop()
        self._on_lost = on_lost
        self._reading = self._loop.create_task(self._read(reader, on_items))

    @property
    def open(self) -> bool:
        return self._open

    def send(self, item: object) -> None:
        if not self._open:
            return  # the peer is gone: what it would have had is journaled or ends with its turns
        self._pending.append(item)
        if not self._scheduled:
            self._scheduled = True
            wait = self._flushed_at + self._interval - self._loop.time()
            if wait > 0:
                self._loop.call_later(wait, self._flush)
            else:
                self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        self._flushed_at = self._loop.time()
        items, self._pending = self._pending, []
        if items and self._open:
            self._writer.write(encode(items))

    async def _read(self, reader: asyncio.StreamReader, on_items: OnItems) -> None:
        records = Records()
        try:
            while data := await reader.read(READ_BYTES):
                for items in records.feed(data):
                    on_items(items)
        except (OSError, LinkRefused, pickle.UnpicklingError) as exc:
            logger.warning("worker link broken: {}", exc)
        # Not on cancellation: a process winding down keeps its streams until it exits, so that
        # its peers are stopped by Thespian, in order, rather than by the end of their stream.
        self._lose()

    def _lose(self) -> None:
        if not self._open:
            return
        self._open = False
        self._pending.clear()
        self._writer.close()
        self._on_lost()

    async def aclose(self) -> None:
        """Close the stream (the peer sees its end); ``on_lost`` is not called for this side."""
        self._on_lost = lambda: None
        if self._open:
            self._flush()
            self._open = False
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading


class LinkListener:
    """The worker's end: listens until one gateway proves itself, then serves only that one."""

    def __init__(
        self,
        secret: bytes,
        index: int,
        generation: int,
        on_items: OnItems,
        on_lost: OnLost,
        flush_interval_s: float = 0.0,
    ) -> None:
        self._secret, self._index, self._generation = secret, index, generation
        self._flush_interval_s = flush_interval_s
        self._on_items, self._on_lost = on_items, on_lost
        self._server: asyncio.Server | None = None
        self._folder: str | None = None
        self.link: Link | None = None
        self.connected = asyncio.Event()
        self._early: list = []  # sent before the gateway connected (a pool notice)

    def send(self, item: object) -> None:
        if self.link is not None:
            self.link.send(item)
        else:
            self._early.append(item)

    async def start(self, host: str | None) -> str:
        """Listen: on a private Unix socket (``host`` None) or on ``host`` (TCP); return the address."""
        if host is None:
            self._folder = tempfile.mkdtemp(prefix="npc-link-")  # mode 0700: only this user gets in
            path = os.path.join(self._folder, f"w{self._index}")
            self._server = await asyncio.start_unix_server(self._accept, path)
            return f"unix:{path}"
        self._server = await asyncio.start_server(self._accept, host, 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"tcp:{host}:{port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello, nonce = server_hello()
            writer.write(hello)
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                answer = await reader.readexactly(CLIENT_ANSWER_BYTES)
                proof = server_check(self._secret, nonce, answer, self._index, self._generation)
                if self.link is not None:
                    raise LinkRefused("this worker already has its gateway")
                writer.write(proof)
                await writer.drain()
        except (OSError, EOFError, TimeoutError, LinkRefused) as exc:
            logger.warning("worker {} refused a link: {}", self._index, exc)
            writer.close()
            return
        self.link = Link(reader, writer, self._on_items, self._on_lost, self._flush_interval_s)
        for item in self._early:
            self.link.send(item)
        self._early.clear()
        self.connected.set()
        self._stop_listening()

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    async def aclose(self) -> None:
        self._stop_listening()
        if self.link is not None:
            await self.link.aclose()


async def connect(address: str, secret: bytes, index: int, generation: int, on_items: OnItems, on_lost: OnLost) -> Link:
    """The gateway's end: connect to a worker's ``address`` and prove who we are to each other."""
    kind, _, where = address.partition(":")
    async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
        if kind == "unix":
            reader, writer = await asyncio.open_unix_connection(where)
        elif kind == "tcp":
            host, _, port = where.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
        else:
            raise LinkRefused(f"not a link address: {address!r}")
        try:
            hello = await reader.readexactly(SERVER_HELLO_BYTES)
            answer, expected = client_answer(secret, hello, index, generation)
            writer.write(answer)
            client_check(expected, await reader.readexactly(SERVER_PROOF_BYTES))
        except BaseException:
            writer.close()
            raise
    return Link(reader, writer, on_items, on_lost)
