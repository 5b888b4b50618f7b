"""Hostile or broken clients are bounded, end to end on the real server: a game or a spectator
that never reads is closed as too slow (its queue freed, its NPCs' turns ended as on a
disconnect), half-open handshakes are released, oversize /events frames refused, and client
text cannot forge a log line."""

from __future__ import annotations

import asyncio
import select
import socket
import time

import aiohttp
import orjson
import pytest

from tests.conftest import ServerProcess
from tests.godot_peer import GodotPeer
from tests.raw_ws import RawWebSocket

pytestmark = pytest.mark.timeout(120)

WS_BUFFER = 65536
EVENTS_BUFFER_BYTES = 262144
IDLE_TIMEOUT_S = 2
HALF_OPEN = 300
BIG_REPLY = ["<say>"] + ["x" * 8000] * 750 + ["</say>"]  # 6 MB of text: more than any socket holds


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory) -> ServerProcess:
    proc = ServerProcess(
        tmp_path_factory.mktemp("bounds"),
        llm.url,
        GAME_AGENT_WS_SEND_BUFFER_BYTES=str(WS_BUFFER),
        GAME_AGENT_EVENTS_CLIENT_BUFFER_BYTES=str(EVENTS_BUFFER_BYTES),
        GAME_AGENT_HTTP_IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S),
        GAME_AGENT_SLOW_CLIENT_CLOSE_TIMEOUT_S="60",  # generous: the test reads the close frame itself
    )
    yield proc
    proc.stop()
    assert "Traceback" not in proc.server_log(), "the server logged an exception"


async def logged(server: ServerProcess, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := server.server_log()):
        assert time.monotonic() < deadline, f"not logged within {timeout} s: {text!r}"
        await asyncio.sleep(0.1)
    return log


def interaction(agent_id: str) -> dict:
    return {
        "type": "interaction_event",
        "agent_id": agent_id,
        "event_id": "e1",
        "event": {"kind": "speech", "source": "player", "text": "Talk to me."},
    }


def answer_state(game: RawWebSocket, agent_id: str) -> None:
    """Read up to the turn's get_agent_state and answer it, as a game does before it stops reading."""
    while True:
        _, payload = game.read_frame()
        frame = orjson.loads(payload)
        if frame["type"] == "get_agent_state":
            break
    state = {"name": "Talker", "description": "talks a lot"}
    game.send_json(
        {"type": "agent_state_snapshot", "request_id": frame["request_id"], "agent_id": agent_id, "state": state}
    )


async def test_a_game_that_never_reads_is_closed_and_its_npc_turn_ends(server, llm):
    await llm.reset()
    await llm.script({"chunks": BIG_REPLY})
    game = RawWebSocket(server.port, "/ws?session=stuck")
    try:
        game.send_json(interaction("talker"))
        await asyncio.to_thread(answer_state, game, "talker")  # and from now on it never reads
        log = await logged(server, "Godot connection dropped: over")
        assert "ws_send_buffer_bytes" in log and "close code 4001" in log
        # Whatever the socket held still arrives (how much depends on how the frames came in
        # bursts), then the close frame with the documented code.
        _, code = await asyncio.to_thread(game.read_until_close)
        assert code == 4001
    finally:
        game.close()
    # Its NPC's turn ended as on a disconnect: the agent wrote its logs for that connection.
    await logged(server, "Godot disconnected")
    deadline = time.monotonic() + 30
    while not list(server.log_dir.glob("stuck/*/talker.conversation.json")):
        assert time.monotonic() < deadline, "the NPC of the dropped game wrote no disconnect log"
        await asyncio.sleep(0.1)


async def test_a_spectator_is_bounded_in_bytes_and_a_finished_session_is_freed(server, llm):
    """Few, huge events (a 300 KB description is in every reply) stay far below the count limit."""
    await llm.reset()
    godot = await GodotPeer.connect(server.url, "?session=huge")
    spectator = RawWebSocket(server.port, "/events?session=huge")
    try:
        godot.specs["crier"] = {"name": "Crier", "location": "Square", "description": "loud " * 60000}
        await llm.script({"chunks": [f"<say>Hear ye, number {n}!</say>" for n in range(20)]})
        frames = await godot.turn("crier", "News?", timeout=30)
        assert frames[-1]["reason"] == "completed"
        log = await logged(server, "/events client dropped")
        assert "events_client_buffer_bytes" in log and "close code 4001" in log
        _, code = await asyncio.to_thread(spectator.read_until_close)
        assert code == 4001
        # A newcomer whose replay alone is over the limit is dropped at once, not kept silent.
        late = RawWebSocket(server.port, "/events?session=huge")
        try:
            _, code = await asyncio.to_thread(late.read_until_close)
            assert code == 4001
        finally:
            late.close()
    finally:
        spectator.close()
        await godot.close()
    # Nobody follows the session any more and no game holds it: its feed is freed.
    await logged(server, "/events feed freed: no client follows it and no game holds it session=huge")


def still_held(socks: list[socket.socket], timeout: float) -> int:
    """Wait until the server has closed every socket of ``socks``; how many it still held at ``timeout``."""
    open_ = set(socks)
    deadline = time.monotonic() + timeout
    while open_ and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(list(open_), [], [], left)
        for sock in readable:
            try:
                if sock.recv(1) == b"":
                    open_.discard(sock)
            except ConnectionResetError:
                open_.discard(sock)
    return len(open_)


async def test_half_open_handshakes_are_released_and_open_sockets_are_not(server):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url.replace("http", "ws", 1) + "/ws?session=alive") as game:
            held = []
            try:
                for _ in range(HALF_OPEN):
                    sock = socket.create_connection(("127.0.0.1", server.port))
                    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: webs".encode())
                    held.append(sock)
                # generous: all are released soon after the timeout, unless they are held
                left = await asyncio.to_thread(still_held, held, IDLE_TIMEOUT_S * 15)
            finally:
                for sock in held:
                    sock.close()
            assert left == 0, f"{left} of {HALF_OPEN} half-open handshakes still held"
            # A WebSocket open for longer than the timeout is not touched by it.
            await game.send_json({"type": "ping", "id": "still"})
            assert await game.receive_json(timeout=10) == {"type": "pong", "id": "still"}


async def test_an_oversize_events_frame_closes_with_1009(server):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url.replace("http", "ws", 1) + "/events?session=big") as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "id"
            await ws.send_str(orjson.dumps({"type": "input", "input": "x" * 100_000}).decode())
            while (msg := await ws.receive(timeout=10)).type is aiohttp.WSMsgType.TEXT:
                pass
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009


async def test_a_line_break_in_a_session_name_or_agent_id_forges_no_log_line(server, llm):
    await llm.reset()
    forged = "12:00:00.000 CRITICAL gateway FORGED"
    peer = await GodotPeer.connect(server.url, "?session=evil%0A" + forged.replace(" ", "%20"))
    try:
        await peer.send({"type": "notification_event", "agent_id": "npc\n" + forged, "event": {"text": "hi"}})
        await peer.send({"type": "ping", "id": "p"})
        await peer.wait_type("pong", id="p")
        log = await logged(server, "session=evil\\n12:00:00.000")
        await logged(server, "npc\\n12:00:00.000")
    finally:
        await peer.close()
    log = server.server_log()
    assert not [line for line in log.splitlines() if line.startswith(forged)], "a client forged a log line"


async def test_neither_socket_takes_compression_a_browser_offers(server):
    async with aiohttp.ClientSession() as http:
        for path in ("/ws?session=deflate", "/events?session=deflate"):
            async with http.ws_connect(server.url.replace("http", "ws", 1) + path, compress=15) as ws:
                assert ws.compress == 0, path
