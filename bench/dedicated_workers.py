"""What one dedicated worker costs (placement "dedicated"): its start-up and its memory.

Starts a scripted LLM (short replies, at once) and the server once per placement, gives N NPCs one
confirmed turn each, one after another (each NPC's first message: with "dedicated" it waits for
its own process to start), then a second turn each (its worker already runs), and reports the
time from interaction_event to agent_turn_started for both, and each worker process's memory:
RSS, and USS (the pages only it holds: what one more worker adds; a worker is forked from the
pool, so much of its RSS is shared). Not part of the test run.

    python bench/dedicated_workers.py [--npcs 8] [--report bench/results/dedicated.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.memory import Game  # noqa: E402
from config.settings import PLACEMENTS  # noqa: E402
from loadtest.processes import start_llm, start_server  # noqa: E402

TOKEN = "bench-dedicated"  # /healthz names the worker pids only with the token


def worker_pids(url: str) -> list[int]:
    request = urllib.request.Request(url + "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["worker_pids"]


async def first_frames(game: Game, agents: list[str], text: str) -> list[float]:
    """One confirmed turn per agent, in turn; the seconds to each turn's first frame."""
    return [(await game.play_turn(agent, text))[0] for agent in agents]


def ms(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values) * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


def measure(tmp: Path, llm_url: str, placement: str, npcs: int) -> dict:
    os.environ.update(GAME_AGENT_PLACEMENT=placement, GAME_AGENT_TOKEN=TOKEN)
    (tmp / placement).mkdir()
    server, url = start_server(tmp / placement, llm_url, workers=2, baseline=False)
    try:

        async def play() -> tuple[list[float], list[float]]:
            game = await Game.open(url, f"/ws?token={TOKEN}")
            try:
                agents = [f"npc{i}" for i in range(npcs)]
                first = await first_frames(game, agents, "Good day")
                second = await first_frames(game, agents, "And again")
                return first, second
            finally:
                await game.close()

        first, second = asyncio.run(play())
        time.sleep(1)  # the last results reach their agents
        memory = [psutil.Process(pid).memory_full_info() for pid in worker_pids(url)]
    finally:
        server.stop()
    return {
        "placement": placement,
        "workers": len(memory),
        "first_message_to_turn_started": ms(first),
        "later_message_to_turn_started": ms(second),
        "worker_rss_mb": round(statistics.mean(m.rss for m in memory) / 2**20, 1),
        "worker_uss_mb": round(statistics.mean(m.uss for m in memory) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npcs", type=int, default=8)
    parser.add_argument("--report", help="write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        llm, llm_url = start_llm(tmp, ttft=0, tps=0, tokens=12)
        try:
            results = [measure(tmp, llm_url, placement, args.npcs) for placement in PLACEMENTS]
        finally:
            llm.stop()
    print(json.dumps(results, indent=2))
    if args.report:
        Path(args.report).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
