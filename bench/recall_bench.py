"""Benchmark of recall (core/recall.py, gateway/memories.py) on the real journal.

Two figures of issue 19:

1. ``retrieval``: one NPC with ``--facts`` journaled facts (100,000), beside other NPCs with as
   many again, in a real journal file (WAL). The lookup of one turn, as the journal's thread runs
   it (``MemoryStore.recall``), timed for ``--queries`` events; and the same through
   ``Journal.recall`` from the event loop and back (the latency a turn's start gets: the
   snapshot waits for it), next to a snapshot that needs no recall (``send_in_order``).
2. ``index_cost``: what indexing adds to writing a fact in the journal's thread.
3. ``five_hundred``: 500 confirmed turns through the real ``Journal`` and ``History``; the fact
   of turn 3 is in the prompt of turn 500 when that event refers to it (default budgets).

Texts are drawn from a made-up vocabulary of 5,000 words with Zipf-like frequencies (a few
words in most facts, most words rare), 8-20 words a fact, as NPC conversations go.

Wall-clock percentiles on a shared machine include the time other processes held the CPU; the
lookup's own CPU time (``time.thread_time``) is printed beside them.

Run: ``python bench/recall_bench.py [--facts 100000] [--queries 500] [--data DIR]`` (``--data``
keeps the journal there and reuses it on the next run, instead of filling it again)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from actors.messages import SnapshotRecall, ToAgent  # noqa: E402
from config.settings import load_settings  # noqa: E402
from core import memory as m  # noqa: E402
from core import protocol as p  # noqa: E402
from core.history import History, fact_of  # noqa: E402
from core.prompt import build_messages  # noqa: E402
from core.recall import RecallQuery, query_words  # noqa: E402
from core.spec import parse_spec  # noqa: E402
from gateway.journal import SCHEMA, Journal  # noqa: E402
from gateway.memories import MemoryStore  # noqa: E402

SESSION = "bench"
SYLLABLES = "ba ke mo ti sel dor vy qu ne ha lu ri sto pen gra wil fo ja ze cu".split()
VOCABULARY = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES][:5000]
WEIGHTS = [1 / (rank + 1) for rank in range(len(VOCABULARY))]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(VOCABULARY, WEIGHTS, k=rng.randint(8, 20)))


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def event_fact(agent_id: str, text: str, turn_id: str) -> dict:
    fact = fact_of(
        p.InteractionEvent(agent_id, None, {"kind": "speech", "source": "player", "text": text}), agent_id, turn_id
    )
    assert fact is not None
    return fact


async def fill(journal: Journal, agent_id: str, facts: int, rng: random.Random) -> None:
    """Journal ``facts`` facts of ``agent_id`` (events and the turns that answered them)."""
    for n in range(facts):
        if n % 2 == 0:
            fact = event_fact(agent_id, sentence(rng), f"t{n}")
        else:
            tags = [{"tag": "say", "attrs": {}, "text": sentence(rng)}]
            fact = {"type": "agent_turn_result", "turn_id": f"t{n - 1}", "status": "completed", "tags": tags}
        journal.record(("w", 0), ToAgent(SESSION, agent_id, fact), (SESSION, agent_id, fact))
        if n % 5000 == 4999:
            await journal_idle(journal)
    await journal_idle(journal)


async def journal_idle(journal: Journal) -> None:
    while journal._queued:  # noqa: SLF001 - a benchmark waits for the thread to catch up
        await asyncio.sleep(0.01)


async def retrieval(args: argparse.Namespace, settings, data_dir: str) -> None:
    rng = random.Random(19)
    store = MemoryStore.of(settings)
    journal = Journal(data_dir, False, 1000, lambda items: None, memories=store)
    await journal.open()
    if not journal.known:
        started = time.perf_counter()
        await fill(journal, "npc", args.facts, rng)
        for other in range(4):
            await fill(journal, f"other{other}", args.facts // 4, rng)
        took = time.perf_counter() - started
        print(f"journaled {args.facts} facts of one NPC and {args.facts} of four others in {took:.1f} s")
    await journal.close()

    db = journal._open(journal.path)  # noqa: SLF001 - the thread's own connection, timed in this thread
    queries = []
    for _ in range(args.queries):
        said, context = query_words({"kind": "speech", "source": "player", "text": sentence(rng)}, "the mill")
        owners = (m.owner_of("npc", m.AGENT_SCOPE),)
        queries.append(RecallQuery("npc", owners, said, context, settings.history_budget_chars))
    times, cpu, found = [], [], []  # wall clock, and this thread's CPU time (what other processes cannot stretch)
    for query in queries:
        begun, begun_cpu = time.perf_counter(), time.thread_time()
        recall = store.recall(db, SESSION, query)
        cpu.append((time.thread_time() - begun_cpu) * 1e3)
        times.append((time.perf_counter() - begun) * 1e3)
        found.append(len(recall.matches))
    db.close()
    looked_up = statistics.mean(len(q.said) + len(q.context) for q in queries)
    print(
        f"MemoryStore.recall at {args.facts} facts ({args.queries} events, {looked_up:.1f} words each): "
        f"p50 {percentile(times, 0.5):.2f} ms, p99 {percentile(times, 0.99):.2f} ms, max {max(times):.2f} ms; "
        f"CPU p50 {percentile(cpu, 0.5):.2f} ms, p99 {percentile(cpu, 0.99):.2f} ms; "
        f"{statistics.mean(found):.1f} matches each"
    )

    back = asyncio.Event()  # set on the loop when the journal hands the item on, as to a worker
    journal = Journal(data_dir, False, 1000, lambda items: back.set(), memories=store)
    await journal.open()
    snapshot = p.AgentStateSnapshot("r", "npc", {"name": "N"})
    through, plain = [], []
    for query in queries[: args.queries // 2]:
        for timed, send in ((through, True), (plain, False)):
            back.clear()
            begun = time.perf_counter()
            if send:
                journal.recall(("w", 0), ToAgent(SESSION, "npc", SnapshotRecall(snapshot, query, None)))
            else:
                journal.send_in_order(("w", 0), ToAgent(SESSION, "npc", snapshot))
            await back.wait()
            timed.append((time.perf_counter() - begun) * 1e3)
    await journal.close()
    print(
        f"a turn's snapshot, loop to thread and back with its recall: p50 {percentile(through, 0.5):.2f} ms, "
        f"p99 {percentile(through, 0.99):.2f} ms; without recall (send_in_order): p50 {percentile(plain, 0.5):.3f} ms"
    )


def index_cost(settings, data_dir: str, facts: int = 20_000) -> None:
    """What indexing adds to writing a fact, in the journal's thread (transactions of 20, no fsync)."""
    store, rng = MemoryStore.of(settings), random.Random(1)
    blobs = [orjson.dumps(event_fact("npc", sentence(rng), "t")) for _ in range(facts)]
    for indexed in (False, True):
        db = sqlite3.connect(Path(data_dir) / f"cost-{indexed}.sqlite3", isolation_level=None)
        db.execute("pragma journal_mode=wal")
        db.executescript(SCHEMA)
        store.create(db)
        begun = time.perf_counter()
        for start in range(0, facts, 20):
            db.execute("begin")
            for blob in blobs[start : start + 20]:
                written = db.execute("insert into facts (session, agent_id, fact) values (?, ?, ?)", ("s", "npc", blob))
                if indexed:
                    store.index_fact(db, written.lastrowid, "s", "npc", blob)
            db.execute("commit")
        db.close()
        each = (time.perf_counter() - begun) / facts * 1e6
        print(f"writing a fact {'with' if indexed else 'without'} its recall index: {each:.0f} us")


async def five_hundred(settings, data_dir: str) -> None:
    rng = random.Random(3)
    released: list = []
    store = MemoryStore.of(settings)
    journal = Journal(data_dir, False, 1000, released.extend, memories=store)
    await journal.open()
    history = History(settings.history_max_entries)
    # Both share the most common words of the other turns too: the rare ones must win.
    common = " ".join(VOCABULARY[:3])
    fact_of_turn_3 = f"{common} I buried the silver amulet beneath the crooked willow by the mill pond"
    for turn in range(1, 500):
        text = fact_of_turn_3 if turn == 3 else sentence(rng)
        for fact in (
            event_fact("oren", text, f"t{turn}"),
            {
                "type": "agent_turn_result",
                "turn_id": f"t{turn}",
                "status": "completed",
                "tags": [{"tag": "say", "attrs": {}, "text": sentence(rng)}],
            },
        ):
            history.apply(fact)
            journal.record(("w", 0), ToAgent(SESSION, "oren", fact), (SESSION, "oren", fact))
    question = f"{common} Where did I bury the silver amulet?"
    history.apply(event_fact("oren", question, "t500"))
    said, context = query_words({"kind": "speech", "source": "player", "text": question}, "the mill")
    owners = (m.owner_of("oren", m.AGENT_SCOPE),)
    query = RecallQuery("oren", owners, said, context, settings.history_budget_chars)
    released.clear()
    journal.recall(
        ("w", 0), ToAgent(SESSION, "oren", SnapshotRecall(p.AgentStateSnapshot("r", "oren", {}), query, None))
    )
    while not released:
        await asyncio.sleep(0.01)
    await journal.close()
    recall = released[-1][1].message.recall
    messages = build_messages(
        parse_spec({"name": "Oren", "location": "the mill"}),
        history.entries,
        budget_chars=settings.history_budget_chars,
        recall=recall,
        recall_budget_chars=settings.recall_budget_chars,
    )
    system, window = messages[0]["content"], "\n".join(message["content"] for message in messages[1:])
    rank = next((n for n, match in enumerate(recall.matches) if "crooked willow" in match.text), None)
    print(
        f"500 turns (history_budget_chars {settings.history_budget_chars}, recall_budget_chars "
        f"{settings.recall_budget_chars}): turn 3's fact in the window: {'crooked willow' in window}; "
        f"in 'What you remember': {'crooked willow' in system} (match {rank} of {len(recall.matches)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--data", help="a folder to keep the journal of the retrieval figure in, and reuse")
    args = parser.parse_args()
    settings = load_settings(env={})
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        await five_hundred(settings, first)
        index_cost(settings, first)
        await retrieval(args, settings, args.data or second)


if __name__ == "__main__":
    asyncio.run(main())
