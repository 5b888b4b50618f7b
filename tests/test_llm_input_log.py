"""The LLM-input log spools records to a file: the newest N come back, the file stays bounded, and a
disk error never reaches the turn."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from loguru import logger

from actors.llm_input_log import LlmInputLog, _safe, spool_path
from tests.conftest import ServerProcess
from tests.godot_peer import GodotPeer


def record(n: int) -> dict:
    return {
        "turn_id": f"t{n}",
        "time": 1700000000.25 + n,
        "model": "m",
        "messages": [{"role": "user", "content": f"hello {n} " * 50}],
        "usage": {"total_tokens": n},
    }


@pytest.fixture
def errors():
    seen: list[str] = []
    handler = logger.add(lambda message: seen.append(str(message)), level="ERROR", format="{message}")
    yield seen
    logger.remove(handler)


def test_records_come_back_as_they_were_sent(tmp_path):
    log = LlmInputLog(tmp_path / "s" / ".llm_input" / "a.w0.jsonl", keep=5)
    assert log.newest() == []
    for n in range(3):
        log.append(record(n))
    assert log.newest() == [record(0), record(1), record(2)]
    assert log.lines == 3


def test_newest_n_and_compaction_at_twice_n(tmp_path):
    path = tmp_path / "a.jsonl"
    log = LlmInputLog(path, keep=4)
    for n in range(7):
        log.append(record(n))
    assert len(path.read_bytes().splitlines()) == 7  # below twice 4: no rewrite yet
    assert [r["turn_id"] for r in log.newest()] == ["t3", "t4", "t5", "t6"]
    log.append(record(7))  # the 8th line: compacted to the newest 4
    assert len(path.read_bytes().splitlines()) == 4
    assert log.lines == 4
    assert [r["turn_id"] for r in log.newest()] == ["t4", "t5", "t6", "t7"]
    for n in range(8, 100):
        log.append(record(n))
        assert len(path.read_bytes().splitlines()) < 8
    assert log.newest() == [record(n) for n in range(96, 100)]
    assert not list(tmp_path.glob("*.part"))


def test_keep_one(tmp_path):
    log = LlmInputLog(tmp_path / "a.jsonl", keep=1)
    for n in range(5):
        log.append(record(n))
        assert log.newest() == [record(n)]


def test_zero_is_no_log():
    with pytest.raises(ValueError):
        LlmInputLog(os.devnull, keep=0)


def test_a_new_life_starts_afresh_and_close_deletes(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"turn_id": "left over by a crashed worker"}\n')
    log = LlmInputLog(path, keep=3)
    assert log.newest() == []  # nothing of this life yet
    log.append(record(1))
    assert log.newest() == [record(1)]
    log.close()
    assert not path.exists()
    log.append(record(2))  # a turn cancelled by the close ends later: not logged, no file again
    assert not path.exists()
    assert log.newest() == []


def test_unreadable_line_is_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    log = LlmInputLog(path, keep=3)
    log.append(record(1))
    with open(path, "ab") as spool:
        spool.write(b'{"turn_id": "torn\n')
    log.append(record(2))
    assert log.newest() == [record(1), record(2)]


def test_io_errors_are_logged_once_and_never_raise(tmp_path, errors):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool's folder should be")
    log = LlmInputLog(blocker / ".llm_input" / "a.jsonl", keep=2)
    for n in range(5):
        log.append(record(n))  # mkdir fails every time
    assert log.newest() == []
    log.close()
    assert len(errors) == 1 and "cannot write the LLM-input log" in errors[0]


def test_file_gone_midway_and_unserialisable_record(tmp_path, errors):
    path = tmp_path / "a.jsonl"
    log = LlmInputLog(path, keep=2)
    log.append(record(1))
    path.unlink()  # someone cleaned the log folder
    assert log.newest() == []
    log.append(record(2))  # appending recreates it
    log.append({"turn_id": "bad", "usage": {1: object()}})  # orjson refuses it
    log.append(record(3))
    assert log.newest() == [record(2), record(3)]
    assert len(errors) == 1  # once per log, whatever failed


def test_spool_path_is_safe(tmp_path):
    path = spool_path(str(tmp_path), "room/1", "../npc 7", 3, 5)
    assert path.parent == tmp_path / _safe("room/1") / ".llm_input"
    assert path.name == f"{_safe('../npc 7')}.w3.5.jsonl"
    assert "/" not in path.name
    for name in (".", "..", "", "x" * 300):  # never a folder that escapes, never an empty or endless name
        assert _safe(name) not in (".", "..", "") and len(_safe(name)) <= 109
        assert spool_path(str(tmp_path), name, name, 0, 0).resolve().is_relative_to(tmp_path.resolve())


# --- through the real server ------------------------------------------------------------------


async def disconnect_log(server: ServerProcess, session: str, agent_id: str, written: str) -> list:
    """The agent's disconnect logs once ``written`` is there (both files are written in one go)."""
    folder = server.log_dir / session
    deadline = time.monotonic() + 10
    while not list(folder.glob(f"*/{agent_id}.{written}.json")) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)
    return [json.loads(path.read_text()) for path in sorted(folder.glob(f"*/{agent_id}.*.json"))]


async def test_newest_turns_and_a_turn_cut_by_the_disconnect(tmp_path, llm):
    await llm.reset()
    server = ServerProcess(tmp_path, llm.url, workers=1, GAME_AGENT_LLM_INPUT_LOG_TURNS="2")
    try:
        peer = await GodotPeer.connect(server.url, "?session=spool")
        peer.specs["ada"] = {"name": "Ada"}
        for n in range(3):
            await llm.script({"content": f"<say>Answer {n}.</say>"})
            await peer.confirm(await peer.turn("ada", f"Question {n}"))
        spool = spool_path(str(server.log_dir), "spool", "ada", 0, 0)  # worker 0, its first agent life
        assert len(spool.read_bytes().splitlines()) == 3  # one line per ended turn, not yet 2 x 2
        await llm.script({"content": "<say>" + "word " * 200 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.02})
        start = len(peer.frames)
        await peer.interact("ada", "Question 3")
        await peer.wait_type("agent_tag_chunk", start=start, agent_id="ada")
        await peer.close()  # mid-stream: the turn is ended by the disconnect, and logged before the log is written
        conversation, llm_input = await disconnect_log(server, "spool", "ada", "llm_input")
        assert len(conversation["history"]) == 8
        assert set(llm_input) == {"session", "agent_id", "name", "written_at", "turns"}
        assert (llm_input["session"], llm_input["agent_id"], llm_input["name"]) == ("spool", "ada", "Ada")
        turns = llm_input["turns"]
        assert [t["messages"][-1]["content"].split("] ")[-1] for t in turns] == ["Question 2", "Question 3"]
        assert set(turns[0]) == {"turn_id", "time", "model", "messages", "answer", "finish_reason", "usage"}
        assert (turns[0]["answer"], turns[0]["finish_reason"]) == ("<say>Answer 2.</say>", "stop")
        assert turns[0]["usage"]["total_tokens"] > 0
        assert turns[1]["answer"].startswith("<say>word") and turns[1]["finish_reason"] is None
        assert turns[1]["usage"] is None
        assert len(spool.read_bytes().splitlines()) == 2  # the 4th line compacted it to the newest 2
        live = [line for line in server.server_log().splitlines() if "LLM answer" in line]
        assert len(live) == 4 and "'<say>Answer 2.</say>'" in live[2] and "finish_reason stop" in live[2]
    finally:
        server.stop()
    assert not spool.exists()  # the agents closed on shutdown took their spools with them


async def test_zero_turns_is_no_llm_input_log(tmp_path, llm):
    await llm.reset()
    server = ServerProcess(tmp_path, llm.url, workers=1, GAME_AGENT_LLM_INPUT_LOG_TURNS="0")
    try:
        peer = await GodotPeer.connect(server.url, "?session=nolog")
        peer.specs["bo"] = {"name": "Bo"}
        await llm.script({"content": "<say>Hi.</say>"})
        await peer.confirm(await peer.turn("bo"))
        await peer.close()
        [conversation] = await disconnect_log(server, "nolog", "bo", "conversation")
        assert conversation["name"] == "Bo"
        assert not (server.log_dir / "nolog" / ".llm_input").exists()
    finally:
        server.stop()
