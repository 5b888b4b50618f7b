"""Summaries of the history that left the prompt: the pure rules, the turns-first LLM slots on a
real event loop, and a real server with the scripted LLM (journaled, shown, restored, folded)."""

from __future__ import annotations

import asyncio
import sqlite3

import orjson
import pytest

from core.history import History
from core.prompt import build_messages, window_start
from core.spec import parse_spec
from core.summary import NOTE_TITLE, clip, covered_through, due, request_messages, summary_fact
from gateway.journal import FILE_NAME
from providers.slots import Busy, Slots
from tests.conftest import ServerProcess
from tests.godot_peer import GodotPeer
from tests.test_recovery import confirmed_turn
from tests.test_turns import user_text

SPEC = parse_spec({"name": "Kee"})


def event(seq: int | None, text: str = "x" * 50) -> dict:
    entry = {"kind": "event", "event_id": None, "event": {"text": text}}
    return entry if seq is None else {**entry, "seq": seq}


# --- the rules -----------------------------------------------------------------------------


def test_a_summary_is_due_once_enough_uncovered_history_left_the_window():
    entries = [event(1), event(2), event(3), event(4)]
    assert due(entries, start=2, through_seq=None, min_chars=100) == entries[:2]
    assert due(entries, start=2, through_seq=None, min_chars=200) == []  # not enough yet
    assert due(entries, start=3, through_seq=1, min_chars=100) == entries[1:3]  # what it covers is left out
    assert due(entries, start=3, through_seq=3, min_chars=1) == []
    unsaved = [event(None), event(None)]  # the journal could not write them: nothing to name as covered
    assert due(unsaved, start=2, through_seq=None, min_chars=1) == []
    mixed = [event(1), event(None), event(3)]
    assert due(mixed, start=3, through_seq=1, min_chars=1) == mixed[1:]
    assert covered_through(mixed[1:]) == 3


def test_the_request_folds_the_previous_summary_in_and_the_answer_is_bounded():
    messages = request_messages("Kee", "Kee owes Ann a coin.", [event(1, "Ann asks for the coin")], 300)
    assert "Kee" in messages[0]["content"] and "at most 50 words" in messages[0]["content"]
    assert "Kee owes Ann a coin." in messages[1]["content"] and "Ann asks for the coin" in messages[1]["content"]
    assert clip("  a  b\nc ", 10) == "a b c"
    assert clip("word " * 10, 12) == "word word"


def test_history_keeps_the_newest_summary_and_the_prompt_shows_it():
    history = History(10)
    history.apply({"type": "interaction_event", "event_id": None, "event": {"text": "hi"}, "turn_id": "t", "seq": 7})
    assert [entry["seq"] for entry in history.entries] == [7, 7]  # the event and its turn
    history.apply(summary_fact("new", 9))
    history.apply(summary_fact("old", 5))  # an older one, replayed after: ignored
    assert history.summary == {"text": "new", "through_seq": 9}
    entries = list(history.entries)
    start = window_start(entries, 1000)
    system = build_messages(SPEC, entries, budget_chars=1000, start=start, summary="new")[0]["content"]
    assert system.endswith(f"{NOTE_TITLE}\nnew")
    assert NOTE_TITLE not in build_messages(SPEC, entries, budget_chars=1000)[0]["content"]


# --- turns first ---------------------------------------------------------------------------


async def test_a_turn_takes_a_background_slot_and_background_never_waits():
    slots = Slots(limit=1, background_limit=1)
    holding = asyncio.Event()

    async def background() -> None:
        async with slots.background():
            holding.set()
            await asyncio.Event().wait()  # a long summary

    summary = asyncio.create_task(background())
    await holding.wait()
    with pytest.raises(Busy):  # one at a time
        async with slots.background():
            pass
    async with asyncio.timeout(5), slots.turn():  # the only slot is the summary's: it gives way
        with pytest.raises(Busy):  # a turn holds the slot: no background starts
            async with slots.background():
                pass
    assert summary.cancelled()
    async with slots.background():  # free again
        pass


async def test_without_a_limit_background_is_bounded_alone():
    slots = Slots(limit=0, background_limit=1)
    async with slots.background(), slots.turn(), slots.turn():
        with pytest.raises(Busy):
            async with slots.background():
                pass


# --- a real server -------------------------------------------------------------------------

FIRST, SECOND = "Kee promised the player a silver key.", "Kee gave the silver key away to Bo."
WORDS = ["apples " * 20, "bridges " * 20, "candles " * 20, "daggers " * 20, "embers " * 20, "forges " * 20]


def summaries(data_dir) -> list[tuple[int, int]]:
    """The journal's (through_seq, summary_seq) rows, read as a second connection."""
    db = sqlite3.connect(data_dir / FILE_NAME)
    try:
        return db.execute("select through_seq, summary_seq from covered").fetchall()
    finally:
        db.close()


def latest_summary(data_dir) -> str:
    db = sqlite3.connect(data_dir / FILE_NAME)
    try:
        (blob,) = db.execute("select fact from facts where seq = (select summary_seq from covered)").fetchone()
    finally:
        db.close()
    return orjson.loads(blob)["text"]


async def covered_beyond(server: ServerProcess, through_seq: int) -> int:
    """Wait until the NPC's journaled summary covers more than ``through_seq``; return what it covers."""
    async with asyncio.timeout(20):
        while not (rows := summaries(server.data_dir)) or rows[0][0] <= through_seq:
            await asyncio.sleep(0.05)
    return rows[0][0]


async def summary_requests(llm) -> list[str]:
    return [user_text(r) for r in await llm.requests() if "# New events" in user_text(r)]


async def system_of_turn(godot: GodotPeer, llm, words: str) -> str:
    await llm.script({"content": "<say>ok</say>", "match": words})
    await godot.turn("kee", words)
    return next(r for r in reversed(await llm.requests()) if words in user_text(r))["body"]["messages"][0]["content"]


@pytest.mark.timeout(120)
async def test_summaries_are_asked_for_journaled_shown_folded_and_restored(llm, tmp_path):
    await llm.reset()
    env = {
        "GAME_AGENT_HISTORY_BUDGET_CHARS": "600",  # about three entries of WORDS
        "GAME_AGENT_SUMMARY_MIN_CHARS": "200",
        "GAME_AGENT_SUMMARY_MAX_CHARS": "300",
    }
    server = await asyncio.to_thread(ServerProcess, tmp_path, llm.url, workers=1, **env)
    godot = await GodotPeer.connect(server.url, "?session=s1")
    try:
        godot.specs["kee"] = {"name": "Kee"}
        await llm.script({"content": FIRST, "match": "# New events"})
        for words in WORDS[:3]:
            await confirmed_turn(godot, llm, "kee", words)
        first = await covered_beyond(server, 0)
        [asked] = await summary_requests(llm)
        assert "apples" in asked and "(nothing yet)" in asked and "candles" not in asked  # candles: in the window
        assert (await system_of_turn(godot, llm, "what now")).endswith(f"{NOTE_TITLE}\n{FIRST}")

        await llm.script({"content": SECOND, "match": "# New events"})
        for words in WORDS[3:5]:
            await confirmed_turn(godot, llm, "kee", words)
        await covered_beyond(server, first)
        second = (await summary_requests(llm))[1]
        assert FIRST in second and "bridges" in second and "apples" not in second  # a summary of the summary
        assert (await system_of_turn(godot, llm, "and now")).endswith(f"{NOTE_TITLE}\n{SECOND}")
    finally:
        await godot.close()
        server.stop()

    latest = latest_summary(server.data_dir)  # SECOND, or a newer one "and now" asked for (the default answer)
    again = await asyncio.to_thread(ServerProcess, tmp_path, llm.url, workers=1, data_dir=server.data_dir, **env)
    godot = await GodotPeer.connect(again.url, "?session=s1")
    try:
        godot.specs["kee"] = {"name": "Kee"}
        assert (await system_of_turn(godot, llm, "back again")).endswith(f"{NOTE_TITLE}\n{latest}")  # restored
    finally:
        await godot.close()
        again.stop()


@pytest.mark.timeout(120)
async def test_with_summaries_off_nothing_is_asked(llm, tmp_path):
    await llm.reset()
    env = {"GAME_AGENT_HISTORY_BUDGET_CHARS": "600", "GAME_AGENT_SUMMARY_MIN_CHARS": "200"}
    server = await asyncio.to_thread(ServerProcess, tmp_path, llm.url, workers=1, GAME_AGENT_SUMMARIES="false", **env)
    godot = await GodotPeer.connect(server.url, "?session=s1")
    try:
        godot.specs["kee"] = {"name": "Kee"}
        for words in WORDS:
            await confirmed_turn(godot, llm, "kee", words)
        # Each turn's prompt is built before its own request, so a summary would have been asked by now.
        assert not [r for r in await llm.requests() if "# New events" in user_text(r)]
        assert summaries(server.data_dir) == []
    finally:
        await godot.close()
        server.stop()


async def test_background_starts_only_with_headroom_for_turns():
    slots = Slots(limit=8, background_limit=8)  # HEADROOM 4: more than 2 of 8 slots must be free
    async with slots.turn(), slots.turn(), slots.turn(), slots.turn(), slots.turn():  # 3 free
        async with slots.background():  # 2 free now
            with pytest.raises(Busy):
                async with slots.background():
                    pass
