"""Gateway memory under clients that do not read, and over many short sessions. Not part of the tests.

Starts the scripted LLM and the server (default settings), then reports the gateway's RSS:

1. a /ws game that answers its NPC's first state request and never reads again, sending an
   interaction event every 0.25 s for ``--turns`` turns of about 1 MB each;
2. an /events spectator that never reads while ``--spectated-turns`` turns stream replies that
   carry a 300 KB description each;
3. ``--sessions`` Godot sessions, each naming one NPC once and closing (the per-session /events map).

    python bench/slow_clients.py [--turns 120] [--spectated-turns 6] [--sessions 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ScriptedLLM, ServerProcess  # noqa: E402
from tests.godot_peer import GodotPeer  # noqa: E402
from tests.raw_ws import RawWebSocket  # noqa: E402

MEGABYTE_REPLY = {"chunks": ["<say>"] + ["x" * 8000] * 125 + ["</say>"]}


def gateway_of(server: ServerProcess) -> psutil.Process:
    """The server process listening on the HTTP port."""
    for proc in server.processes():
        try:
            if any(c.laddr.port == server.port and c.status == psutil.CONN_LISTEN for c in proc.net_connections()):
                return proc
        except psutil.Error:
            continue
    raise RuntimeError("no gateway process found")


def interaction(n: int) -> dict:
    event = {"kind": "speech", "source": "player", "text": "more"}
    return {"type": "interaction_event", "agent_id": "a", "event_id": f"e{n}", "event": event}


async def game_that_never_reads(server: ServerProcess, llm: ScriptedLLM, rss, turns: int) -> str:
    for _ in range(0, turns + 1, 25):  # the scripted server takes at most 64 MB per request
        await llm.script(*[MEGABYTE_REPLY] * 25)
    before = peak = rss()
    game = RawWebSocket(server.port, "/ws?session=stuck")
    game.send_json(interaction(0))
    while (frame := orjson.loads(game.read_frame()[1]))["type"] != "get_agent_state":
        pass
    state = {"name": "A"}
    game.send_json({"type": "agent_state_snapshot", "request_id": frame["request_id"], "agent_id": "a", "state": state})
    for n in range(1, turns + 1):
        await asyncio.sleep(0.25)
        try:
            game.send_json(interaction(n))
        except OSError:
            break
        peak = max(peak, rss())
    await asyncio.sleep(3)
    game.close()
    dropped = "Godot connection dropped" in server.server_log()
    memory = f"{before:.0f} -> peak {peak:.0f} -> {rss():.0f} MB"
    return f"/ws game that never reads, {turns} turns: {memory}, dropped {dropped}"


async def spectator_that_never_reads(server: ServerProcess, llm: ScriptedLLM, rss, turns: int) -> str:
    godot = await GodotPeer.connect(server.url, "?session=huge")
    spectator = RawWebSocket(server.port, "/events?session=huge")
    godot.specs["crier"] = {"name": "Crier", "location": "Square", "description": "loud " * 60000}
    before = peak = rss()
    for _ in range(turns):
        await llm.script({"chunks": [f"<say>Hear ye, number {n}!</say>" for n in range(40)]})
        await godot.turn("crier", "News?", timeout=120)
        peak = max(peak, rss())
    spectator.close()
    await godot.close()
    dropped = "/events client dropped" in server.server_log()
    return f"/events spectator that never reads, {turns} turns: {before:.0f} -> peak {peak:.0f} MB, dropped {dropped}"


async def short_sessions(server: ServerProcess, rss, sessions: int) -> str:
    before = rss()
    for i in range(sessions):
        peer = await GodotPeer.connect(server.url, f"?session=s{i}")
        await peer.send({"type": "notification_event", "agent_id": "x", "event": {"text": "hi"}})
        await peer.send({"type": "ping", "id": "p"})
        await peer.wait_type("pong", id="p")
        await peer.close()
    await asyncio.sleep(5)
    growth = (rss() - before) * 1024 / sessions
    return f"{sessions} short sessions: {before:.1f} -> {rss():.1f} MB, {growth:.2f} KB per session"


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    llm = ScriptedLLM(tmp)
    server = ServerProcess(tmp, llm.url, GAME_AGENT_LOG_LEVEL="INFO", GAME_AGENT_SNAPSHOT_TIMEOUT_S="0.1")
    try:
        gateway = gateway_of(server)

        def rss() -> float:
            return gateway.memory_info().rss / 2**20

        print(await short_sessions(server, rss, args.sessions))  # first: before the others grow the heap
        print(await game_that_never_reads(server, llm, rss, args.turns))
        print(await spectator_that_never_reads(server, llm, rss, args.spectated_turns))
    finally:
        server.stop(check=False)
        llm.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=120)
    parser.add_argument("--spectated-turns", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=3000)
    asyncio.run(main(parser.parse_args()))
