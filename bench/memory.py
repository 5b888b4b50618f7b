"""Server memory per known NPC: N NPCs with K confirmed turns each, held in memory.

Starts a scripted LLM (short replies, as fast as possible) and the server, plays K turns for each
of N NPCs over one Godot connection (answering state requests, confirming every turn), then
reports the RSS of every server process, before and after, and the growth per NPC. Not part of
the test run.

    python bench/memory.py [--npcs 1000] [--turns 50] [--workers 2] [--concurrency 100]

Virtual actors (``--known``): fills the journal with a synthetic history for N known NPCs x K turns
(written directly with sqlite3, in the gateway's fact format), starts the server on it, gives
``--active`` of them one real turn each (so each is restored from the journal), and reports the
server's start time, a restore's first-turn latency against a fresh NPC's, the RSS of all server
processes, the journal's size, and the RSS once the active NPCs went idle and were deactivated.

    python bench/memory.py --known 100000 --active 1000 --turns 50 [--idle-s 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import protocol as p  # noqa: E402
from core.history import fact_of  # noqa: E402
from gateway.godot import DEFAULT_SESSION  # noqa: E402
from gateway.journal import FILE_NAME, SCHEMA  # noqa: E402
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
            await self.send(
                {
                    "type": "agent_state_snapshot",
                    "request_id": frame["request_id"],
                    "agent_id": agent_id,
                    "state": {"name": agent_id, "persona": "a villager", "inventory": ["bread", "a coin"]},
                }
            )
        elif agent_id in self.queues:
            self.queues[agent_id].put_nowait(frame)

    async def play_turn(self, agent_id: str, text: str) -> tuple[float, float]:
        """One confirmed turn; returns the seconds to its first frame and to its last."""
        queue = self.queues.setdefault(agent_id, asyncio.Queue())
        sent = time.perf_counter()
        await self.send({"type": "interaction_event", "agent_id": agent_id, "event": {"kind": "speech", "text": text}})
        frames = []
        while not frames or frames[-1]["type"] not in END_TYPES:
            frames.append(await asyncio.wait_for(queue.get(), 60))
            if len(frames) == 1:
                first = time.perf_counter() - sent
        last = time.perf_counter() - sent
        turn = [f for f in frames if f.get("turn_id") == frames[-1]["turn_id"]]
        await self.send(
            {
                "type": "agent_turn_result",
                "agent_id": agent_id,
                "turn_id": turn[0]["turn_id"],
                "status": "completed",
                "tags": played_tags(turn),
            }
        )
        return first, last


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


# --- virtual actors: many known NPCs in the journal, a few active -------------------------------

TURN_ID_MARK = "TURN_ID_MARK_16c"  # as long as a real turn id (16 characters)


def fill_journal(path: Path, known: int, turns: int) -> None:
    """A synthetic journal: what ``known`` NPCs x ``turns`` confirmed turns leave in it.

    Per turn the gateway's two facts (``core.history.fact_of``): the interaction event, with the
    turn's id, and the game's agent_turn_result for that id, with tags shaped as the scripted LLM's
    stamped replies; interleaved turn by turn across the NPCs, as a game plays them. Written
    directly with executemany, one transaction per turn of all NPCs; the index is built once at
    the end (faster than millions of scattered inserts; the same index the server creates).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("pragma journal_mode=off")
    db.execute("pragma synchronous=off")
    db.execute("pragma cache_size=-1000000")
    db.executescript(SCHEMA)
    db.execute("drop index facts_by_agent")
    db.execute("begin")
    db.executemany("insert into agents values (?, ?)", ((DEFAULT_SESSION, f"npc{i}") for i in range(known)))
    db.execute("commit")
    mark = TURN_ID_MARK.encode()
    words = [f" w{n}@{1795323786780185 + 97 * n}" for n in range(8)]
    tags = [
        {"tag": "thought", "attrs": {}, "text": "".join(words[:2])},
        {"tag": "say", "attrs": {}, "text": "".join(words[2:])},
    ]
    began = time.monotonic()
    for turn in range(turns):
        event = orjson.dumps(
            fact_of(
                p.InteractionEvent("npc", None, {"kind": "speech", "text": f"Good day, how is the harvest? ({turn})"}),
                "npc",
                TURN_ID_MARK,
            )
        )
        result = orjson.dumps(fact_of(p.AgentTurnResult("npc", TURN_ID_MARK, "completed", tags), "npc"))

        def rows(event=event, result=result, turn=turn):
            for i in range(known):
                agent_id, turn_id = f"npc{i}", f"{i:08x}{turn:08x}".encode()
                yield DEFAULT_SESSION, agent_id, event.replace(mark, turn_id)
                yield DEFAULT_SESSION, agent_id, result.replace(mark, turn_id)

        db.execute("begin")
        db.executemany("insert into facts (session, agent_id, fact) values (?, ?, ?)", rows())
        db.execute("commit")
        if turn % 10 == 9 or turn == turns - 1:
            print(f"  {turn + 1} of {turns} turns written ({time.monotonic() - began:.0f} s)", flush=True)
    db.executescript(SCHEMA)  # the index
    db.execute("pragma journal_mode=wal")  # as the server keeps it
    db.close()


def journal_mb(data_dir: Path) -> float:
    return sum(f.stat().st_size for f in data_dir.glob(FILE_NAME + "*")) / 2**20


def healthz(url: str) -> dict:
    with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
        return json.load(response)


def process_rss(server) -> str:
    return " + ".join(f"{proc.memory_info().rss / 2**20:.0f}" for proc in server.processes())


def started(tmp: Path, llm_url: str, workers: int) -> tuple[object, str, float]:
    began = time.monotonic()
    server, url = start_server(tmp, llm_url, workers, baseline=False)
    return server, url, time.monotonic() - began


def ms(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
    return f"p50 {statistics.median(values) * 1000:.1f} / p99 {p99 * 1000:.1f} ms"


async def activate(url: str, restored: list[str], fresh: list[str], sample: int, concurrency: int) -> None:
    """One real turn each: ``sample`` restored and fresh NPCs one at a time (alternating), then
    the rest of the restored ones ``concurrency`` at a time."""
    game = await Game.open(url, "/ws")
    try:
        for agent_id in fresh[:4]:  # warm up: each worker's first turn opens its LLM connection
            await game.play_turn(agent_id, "Good day, how is the harvest?")
        timed: dict[str, list[tuple[float, float]]] = {"restored": [], "fresh": []}
        for agent_id, kind in zip(
            [a for pair in zip(restored[:sample], fresh[4 : 4 + sample]) for a in pair], ["restored", "fresh"] * sample
        ):
            timed[kind].append(await game.play_turn(agent_id, "Good day, how is the harvest?"))
        for kind, runs in timed.items():
            if not runs:
                continue
            print(
                f"  {kind:8} NPC, one at a time ({len(runs)}): first frame {ms([r[0] for r in runs])}, "
                f"turn end {ms([r[1] for r in runs])}"
            )
        slots = asyncio.Semaphore(concurrency)
        rest = restored[sample:]

        async def one(agent_id: str) -> tuple[float, float]:
            async with slots:
                return await game.play_turn(agent_id, "Good day, how is the harvest?")

        began = time.monotonic()
        runs = await asyncio.gather(*(one(agent_id) for agent_id in rest))
        print(
            f"  {'the other ' if sample else ''}{len(rest)} restored NPCs, {concurrency} at a time: "
            f"{time.monotonic() - began:.1f} s, "
            f"first frame {ms([r[0] for r in runs])}, turn end {ms([r[1] for r in runs])}"
        )
        await asyncio.sleep(2)  # the last results reach their agents
    finally:
        await game.close()


def virtual(args: argparse.Namespace) -> int:
    known, active, turns = args.known, args.active, args.turns
    sample = min(20, active)
    os.environ["GAME_AGENT_AGENT_IDLE_S"] = str(args.idle_s)
    # one session holds every NPC here: keep max_agents_per_session out of the way
    os.environ["GAME_AGENT_MAX_AGENTS_PER_SESSION"] = str(known + sample + 10)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        llm, llm_url = start_llm(tmp, ttft=0, tps=0, tokens=12)
        try:
            empty = tmp / "empty"
            empty.mkdir()
            server, _, empty_start_s = started(empty, llm_url, args.workers)
            empty_rss = rss_mb(server)
            server.stop()
            print(
                f"SYNTHETIC journal fill: {known:,} NPCs x {turns} confirmed turns = {2 * known * turns:,} facts "
                "written directly with sqlite3 executemany (not played through the server)"
            )
            began = time.monotonic()
            fill_journal(tmp / "npc-data" / FILE_NAME, known, turns)
            print(
                f"  filled in {time.monotonic() - began:.0f} s; journal {journal_mb(tmp / 'npc-data'):,.0f} MB on disk"
            )
            server, url, start_s = started(tmp, llm_url, args.workers)
            try:
                health = healthz(url)
                idle_rss = rss_mb(server)
                print(
                    f"server start (run.py to /healthz): {start_s:.1f} s with {health['known_agents']:,} known NPCs, "
                    f"{empty_start_s:.1f} s with an empty journal"
                )
                print(
                    f"server RSS at start: {idle_rss:.0f} MB ({process_rss(server)}), {empty_rss:.0f} MB with an "
                    f"empty journal: {(idle_rss - empty_rss) * 1024 / known:.2f} KB per known NPC"
                )
                restored = [f"npc{i * (known // active)}" for i in range(active)]
                fresh = [f"fresh{i}" for i in range(4 + sample)]
                print(f"activating {active:,} known NPCs (spread over the {known:,}) and {len(fresh)} fresh ones:")
                asyncio.run(activate(url, restored, fresh, sample, args.concurrency))
                health = healthz(url)
                active_rss = rss_mb(server)
                print(
                    f"server RSS with {health['agents']:,} active NPCs ({health['known_agents']:,} known): "
                    f"{active_rss:.0f} MB ({process_rss(server)}): "
                    f"{(active_rss - idle_rss) * 1024 / health['agents']:.0f} KB per active NPC"
                )
                began = time.monotonic()
                while healthz(url)["agents"] and time.monotonic() - began < 120:
                    time.sleep(0.5)
                time.sleep(1)
                health = healthz(url)
                after_rss = rss_mb(server)
                print(
                    f"{health['agents']} active after {time.monotonic() - began:.0f} s idle (agent_idle_s = "
                    f"{args.idle_s:g}): server RSS {after_rss:.0f} MB ({process_rss(server)})"
                )
                # Python keeps freed memory for reuse rather than giving it back: another 1,000 show
                # whether the first ones' memory was freed (flat RSS) or kept (RSS grows again).
                others = [f"npc{i * (known // active) + known // active // 2}" for i in range(active)]
                print(f"activating {active:,} other known NPCs:")
                asyncio.run(activate(url, others, [], 0, args.concurrency))
                health = healthz(url)
                print(
                    f"server RSS with {health['agents']:,} active NPCs, the first {active:,} deactivated: "
                    f"{rss_mb(server):.0f} MB ({process_rss(server)})"
                )
            finally:
                server.stop()
            print(f"journal after the run: {journal_mb(tmp / 'npc-data'):,.0f} MB on disk")
        finally:
            llm.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npcs", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument(
        "--known",
        type=int,
        default=0,
        help="virtual actors: NPCs in a synthetic journal (--turns each); 0: the plain bench",
    )
    parser.add_argument("--active", type=int, default=1000, help="with --known: NPCs given one real turn")
    parser.add_argument(
        "--idle-s",
        type=float,
        default=30.0,
        help="with --known: agent_idle_s for the run; longer than the activation takes, or the "
        "first NPCs are deactivated before the active RSS is read",
    )
    args = parser.parse_args()
    if args.known:
        return virtual(args)
    with tempfile.TemporaryDirectory() as tmp:
        llm, llm_url = start_llm(Path(tmp), ttft=0, tps=0, tokens=12)
        try:
            server, url = start_server(Path(tmp), llm_url, args.workers, baseline=False)
            try:
                before = rss_mb(server)
                asyncio.run(play(url, args.npcs, args.turns, args.concurrency))
                after = rss_mb(server)
                per_npc_kb = (after - before) * 1024 / args.npcs
                print(
                    f"server RSS {before:.0f} MB before, {after:.0f} MB after {args.npcs} NPCs x {args.turns} "
                    f"confirmed turns: {per_npc_kb:.0f} KB per NPC; 10,000 NPCs would need about "
                    f"{before + per_npc_kb * 10_000 / 1024:.0f} MB"
                )
            finally:
                server.stop()
        finally:
            llm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
