"""The gateway's outbox of WebSocket frames: frames queued together leave in one write, and every
client still reads each of them whole and in order, whatever its size or the connection's
compression. A real aiohttp server and client over TCP."""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType, web
from loguru import logger

from gateway.writer import MAX_JOINED_BYTES, FrameWriter, text_frames

# Around each boundary of the frame header's length field (125 / 126, 65535 / 65536).
SIZES = (0, 1, 125, 126, 127, 65535, 65536, 70000, 3)


def _payloads() -> list[bytes]:
    return [bytes([ord("a") + n]) * size for n, size in enumerate(SIZES)]


def _app(queued: list[bytes], writes: list[int]) -> web.Application:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        write = transport.write

        def counted(data) -> None:
            writes.append(len(data))
            write(data)

        transport.write = counted  # type: ignore[method-assign]  # counts the writes, changes nothing
        writer = FrameWriter(ws, transport, logger, max_bytes=1 << 22)
        for data in queued:  # all queued before the writer runs
            assert writer.send(data)
        await ws.receive()  # the client's close
        await writer.stop()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    return app


async def _received(aiohttp_client, compress: int) -> tuple[list[bytes], list[int]]:
    queued, writes = _payloads(), []
    client = await aiohttp_client(_app(queued, writes))
    ws = await client.ws_connect("/ws", compress=compress, max_msg_size=0)
    got = []
    for _ in queued:
        message = await asyncio.wait_for(ws.receive(), 10)
        assert message.type is WSMsgType.TEXT
        got.append(message.data.encode())
    await ws.close()
    return got, writes


async def test_frames_queued_together_leave_in_one_write_and_arrive_whole(aiohttp_client):
    got, writes = await _received(aiohttp_client, compress=0)
    assert got == _payloads()
    # One write joins frames until it holds MAX_JOINED_BYTES: here the first six.
    assert writes[0] == len(text_frames(_payloads()[:6])) and sum(SIZES[:6]) >= MAX_JOINED_BYTES > sum(SIZES[:5])


async def test_a_compressing_connection_sends_each_frame_through_aiohttp(aiohttp_client):
    got, writes = await _received(aiohttp_client, compress=15)
    assert got == _payloads()
    assert len(writes) >= len(SIZES)  # one write or more per frame: none joined


async def test_a_client_that_does_not_read_fills_the_bound_and_no_more(aiohttp_client):
    """Once the socket is full, frames wait in the outbox (counted) and not in the transport's
    buffer: a client that never reads is over the bound, and the transport holds little."""
    result: dict = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        writer = FrameWriter(ws, request.transport, logger, max_bytes=1 << 20)
        for _ in range(2000):  # 32 MB, far over what the kernel buffers
            if not writer.send(b"x" * 16384):
                break
            await asyncio.sleep(0)
        assert request.transport is not None
        result["full"], result["buffered"] = writer.full, request.transport.get_write_buffer_size()
        await writer.stop()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    client = await aiohttp_client(app)
    ws = await client.ws_connect("/ws")
    async with asyncio.timeout(60):
        while "full" not in result:  # never reads
            await asyncio.sleep(0.05)
    assert result["full"], result
    assert result["buffered"] < 2 << 20, result
    await ws.close()


def test_text_frames_have_the_header_of_their_length():
    assert text_frames([b"hi"]) == b"\x81\x02hi"
    assert text_frames([b"x" * 126])[:4] == b"\x81\x7e\x00\x7e"
    assert text_frames([b"x" * 65536])[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
