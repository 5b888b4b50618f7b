"""The gateway's outbox of WebSocket frames: frames queued together leave in one write, and every
client still reads each of them whole and in order, whatever its size or the connection's
compression. A real aiohttp server and client over TCP."""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType, web
from loguru import logger

from gateway.writer import FrameWriter, text_frames

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
    assert writes[0] == len(text_frames(_payloads()))  # then only the answer to the client's close


async def test_a_compressing_connection_sends_each_frame_through_aiohttp(aiohttp_client):
    got, writes = await _received(aiohttp_client, compress=15)
    assert got == _payloads()
    assert len(writes) >= len(SIZES)  # one write or more per frame: none joined


def test_text_frames_have_the_header_of_their_length():
    assert text_frames([b"hi"]) == b"\x81\x02hi"
    assert text_frames([b"x" * 126])[:4] == b"\x81\x7e\x00\x7e"
    assert text_frames([b"x" * 65536])[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
