"""What a ``GET /metrics`` scrape costs, with no NPCs and with 10,000 active NPCs.

Starts a scripted LLM and the server (``--workers``), plays a few turns (so the histograms hold
data), scrapes ``--scrapes`` times back to back, then places ``--npcs`` NPCs with notifications
(each NPC becomes active on a worker and known to the journal, without a turn) and scrapes again.
Reports per scrape: wall time (p50, p99), the CPU of all server processes (gateway and workers,
less what they use idle over as long), and the size of the text. Not part of the test run.

    python bench/metrics_scrape.py [--npcs 10000] [--workers 2] [--scrapes 200] [--json FILE]
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
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest.processes import start_llm, start_server  # noqa: E402
from tests.godot_peer import GodotPeer  # noqa: E402

BATCH = 250  # recipients per notification_event (max_notification_agents is 256)


def cpu_s(server) -> float:
    total = 0.0
    for proc in server.processes():
        try:
            times = proc.cpu_times()
        except Exception:  # noqa: BLE001 - a process that just exited
            continue
        total += times.user + times.system
    return total


async def settle(server, limit_s: float = 60) -> None:
    """Wait until the server idles (below 10% of a core over half a second): the NPCs' set-up,
    and the disconnect logs of the game that placed them, are done."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_s(server)
        await asyncio.sleep(0.5)
        if cpu_s(server) - before < 0.05:
            return


async def scrapes(url: str, count: int, server) -> dict:
    """``count`` scrapes back to back; then as long idle, to take the idle CPU out."""
    walls, sizes = [], []
    async with aiohttp.ClientSession() as http:
        cpu_before, started = cpu_s(server), time.monotonic()
        for _ in range(count):
            begun = time.perf_counter()
            async with http.get(url + "/metrics") as response:
                body = await response.read()
                assert response.status == 200, body
            walls.append(time.perf_counter() - begun)
            sizes.append(len(body))
        elapsed, cpu_busy = time.monotonic() - started, cpu_s(server) - cpu_before
    cpu_before = cpu_s(server)
    await asyncio.sleep(elapsed)
    cpu_idle = cpu_s(server) - cpu_before
    walls.sort()
    return {
        "scrapes": count,
        "wall_ms_p50": round(statistics.median(walls) * 1000, 2),
        "wall_ms_p99": round(walls[min(len(walls) - 1, int(0.99 * len(walls)))] * 1000, 2),
        "server_cpu_ms_per_scrape": round((cpu_busy - cpu_idle) / count * 1000, 2),
        "bytes": sizes[-1],
        "series": body.count(b"\n") - body.count(b"\n#"),
    }


async def place(url: str, npcs: int) -> None:
    """Make ``npcs`` NPCs active: notifications, ``BATCH`` recipients each; wait until all are placed."""
    game = await GodotPeer.connect(url)
    try:
        for first in range(0, npcs, BATCH):
            ids = [f"npc{i}" for i in range(first, min(npcs, first + BATCH))]
            await game.send({"type": "notification_event", "agent_ids": ids, "event": {"kind": "tick", "text": "."}})
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(url + "/healthz") as response:
                    if (await response.json())["agents"] >= npcs:
                        break
                errors = [f for f in game.frames if f["type"] == "error"]
                assert not errors, errors[:3]
                await asyncio.sleep(0.2)
        # A few turns so that every histogram has samples.
        for i in range(20):
            game.specs[f"npc{i}"] = {"name": f"N{i}"}
            await game.turn(f"npc{i}")
    finally:
        await game.close()


async def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    # Place the NPCs fast: no rate limit of the game's session gets in the way of the set-up.
    os.environ["GAME_AGENT_RATE_LIMIT_NOTIFICATIONS_PER_S"] = "1000000"
    os.environ["GAME_AGENT_RATE_LIMIT_NOTIFICATIONS_BURST"] = "1000000"
    llm, llm_url = start_llm(tmp, 0.0, 0.0, 20)
    server = None
    try:
        server, url = start_server(tmp, llm_url, args.workers, False)
        await settle(server)
        empty = await scrapes(url, args.scrapes, server)
        await place(url, args.npcs)
        await settle(server)
        full = await scrapes(url, args.scrapes, server)
    finally:
        if server is not None:
            server.stop()
        llm.stop()
    return {"workers": args.workers, "npcs": args.npcs, "no_npcs": empty, "with_npcs": full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npcs", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--json", metavar="FILE", help="write the figures here too")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
