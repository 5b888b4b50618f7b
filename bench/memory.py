"""Server memory per known NPC: N NPCs with K confirmed turns each, held in memory.

Starts a scripted LLM (short replies, as fast as possible) and the server, plays K turns for each
of N NPCs over one Godot connection (answering state requests, confirming every turn), then
reports the RSS of every server process, before and after, and the growth per NPC. Not part of
the test run.

    python bench/memory.py [--npcs 1000] [--turns 50] [--workers 2] [--concurrency 100]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest.processes import start_llm, start_server  # noqa: E402
from tests.godot_peer import END_TYPES, JsonPeer, played_tags  # noqa: E402


def rss_mb(server) -> float:
    return sum(proc.memory_info().rss for proc in server.processes()) / 2**20


class Game(JsonPeer):
    """A game for many NPCs: answers state requests and hands each agent its own frames."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.queues: dict[str, asyncio.Queue] = {}

    async def received(self, frame: dict) -> None:
        self.frames.clear()  # nothing here reads the record; keep the bench's own memory flat
        agent_id = frame.get("agent_id")
        if frame["type"] == "get_agent_state":
            await self.send({"type": "agent_state_snapshot", "request_id": frame["request_id"], "agent_id": agent_id,
                             "state": {"name": agent_id, "persona": "a villager", "inventory": ["bread", "a coin"]}})
        elif agent_id in self.queues:
            self.queues[agent_id].put_nowait(frame)

    async def play_turn(self, agent_id: str, text: str) -> None:
        queue = self.queues.setdefault(agent_id, asyncio.Queue())
        await self.send({"type": "interaction_event", "agent_id": agent_id, "event": {"kind": "speech", "text": text}})
        frames = []
        while not frames or frames[-1]["type"] not in END_TYPES:
            frames.append(await asyncio.wait_for(queue.get(), 60))
        turn = [f for f in frames if f.get("turn_id") == frames[-1]["turn_id"]]
        await self.send({"type": "agent_turn_result", "agent_id": agent_id, "turn_id": turn[0]["turn_id"],
                         "status": "completed", "tags": played_tags(turn)})


async def play(url: str, npcs: int, turns: int, concurrency: int) -> None:
    game = await Game.open(url, "/ws")
    try:
        slots = asyncio.Semaphore(concurrency)

        async def one(agent_id: str) -> None:
            async with slots:
                for turn in range(turns):
                    await game.play_turn(agent_id, f"Good day, how is the harvest? ({turn})")

        began = time.monotonic()
        await asyncio.gather(*(one(f"npc{i}") for i in range(npcs)))
        print(f"{npcs * turns} turns in {time.monotonic() - began:.0f} s")
        await asyncio.sleep(2)  # the last results reach their agents
    finally:
        await game.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npcs", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        llm, llm_url = start_llm(Path(tmp), ttft=0, tps=0, tokens=12)
        try:
            server, url = start_server(Path(tmp), llm_url, args.workers, baseline=False)
            try:
                before = rss_mb(server)
                asyncio.run(play(url, args.npcs, args.turns, args.concurrency))
                after = rss_mb(server)
                per_npc_kb = (after - before) * 1024 / args.npcs
                print(f"server RSS {before:.0f} MB before, {after:.0f} MB after {args.npcs} NPCs x {args.turns} "
                      f"confirmed turns: {per_npc_kb:.0f} KB per NPC; 10,000 NPCs would need about "
                      f"{before + per_npc_kb * 10_000 / 1024:.0f} MB")
            finally:
                server.stop()
        finally:
            llm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
