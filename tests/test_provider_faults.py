"""Provider faults through the whole stack: the scripted LLM misbehaves the ways real providers do,
and every turn still ends cleanly for Godot, never with text twice, never with the key shown.

One server with short timeouts: 1 worker, at most 1 LLM request at a time, stall timeout 1 s."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import TEST_API_KEY, ServerProcess
from tests.godot_peer import END_TYPES, GodotPeer, played_tags
from tests.test_turns import check_turn_order

STALL_TIMEOUT_S = 1.0
MAX_RETRIES = 3


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory):
    proc = ServerProcess(
        tmp_path_factory.mktemp("faults"),
        llm.url,
        workers=1,
        GAME_AGENT_LLM_STALL_TIMEOUT_S=str(STALL_TIMEOUT_S),
        GAME_AGENT_LLM_MAX_RETRIES=str(MAX_RETRIES),
        GAME_AGENT_LLM_RETRY_BASE_S="0.05",
        GAME_AGENT_LLM_RETRY_MAX_S="30",  # Retry-After is honoured up to this (one test waits 15 s)
        GAME_AGENT_LLM_MAX_CONCURRENT_PER_WORKER="1",
    )
    yield proc
    proc.stop()
    assert TEST_API_KEY not in proc.server_log()
    for path in proc.log_dir.rglob("*"):
        if path.is_file():
            assert TEST_API_KEY not in path.read_text(), path


async def agent_requests(llm, name: str) -> list[dict]:
    return [r for r in await llm.requests() if name in r["body"]["messages"][0]["content"]]


async def answered(llm, name: str, count: int) -> bool:
    """Whether the scripted LLM has finished answering ``count`` requests of agent ``name``."""
    return sum(r["end"] is not None for r in await agent_requests(llm, name)) >= count


async def wait_until(condition, timeout: float = 30.0) -> None:
    """Poll the async ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def error_for(peer: GodotPeer, turn_id: str) -> dict:
    return next(f for f in peer.frames if f["type"] == "error" and f.get("ref", {}).get("turn_id") == turn_id)


async def test_429_then_503_then_success_completes_once(godot: GodotPeer, llm):
    godot.specs["r1"] = {"name": "Retrya"}
    await llm.script(
        {"match": "Retrya", "status": 429, "retry_after": 0.3},
        {"match": "Retrya", "status": 503},
        {"match": "Retrya", "content": "<say>Third time lucky.</say>", "chunk_size": 4},
    )
    frames = await godot.turn("r1")
    check_turn_order(frames)
    assert frames[-1]["reason"] == "completed"
    assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": "Third time lucky."}]
    records = await agent_requests(llm, "Retrya")
    assert [r["end"] for r in records][-3:] == ["error", "error", "completed"]
    assert records[-2]["started_at"] - records[-3]["started_at"] >= 0.3  # Retry-After honoured


async def test_5xx_until_retries_are_exhausted_ends_with_an_error(godot: GodotPeer, llm):
    godot.specs["r2"] = {"name": "Failia"}
    await llm.script(
        *[{"match": "Failia", "status": 500, "error_body": {"error": {"message": "boom"}}}] * (MAX_RETRIES + 1)
    )
    frames = await godot.turn("r2")
    assert [f["type"] for f in frames] == ["agent_turn_started", "agent_turn_finished"]
    assert frames[-1]["reason"] == "error"
    error = error_for(godot, frames[0]["turn_id"])
    assert error["code"] == "llm_error" and "500" in error["message"]
    assert len(await agent_requests(llm, "Failia")) == MAX_RETRIES + 1


async def test_reset_after_tokens_closes_the_tag_and_never_repeats_text(godot: GodotPeer, llm):
    godot.specs["r3"] = {"name": "Resetta"}
    await llm.script(
        {
            "match": "Resetta",
            "content": "<say>One two three four five six</say>",
            "chunk_size": 4,
            "reset_after_chunks": 3,
        }
    )
    frames = await godot.turn("r3")
    check_turn_order(frames)
    assert frames[-1]["type"] == "agent_turn_finished" and frames[-1]["reason"] == "error"
    assert played_tags(frames)[0]["text"] == "One two"  # chunks "<say", ">One", " two", then the reset
    assert error_for(godot, frames[0]["turn_id"])["code"] == "llm_error"
    assert len(await agent_requests(llm, "Resetta")) == 1  # no retry once text has streamed


async def test_a_stalled_stream_ends_within_the_stall_timeout(godot: GodotPeer, llm):
    godot.specs["r4"] = {"name": "Stallo"}
    await llm.script(
        {"match": "Stallo", "content": "<say>I will never finish this</say>", "chunk_size": 5, "stall_after_chunks": 2}
    )
    start = len(godot.frames)
    began = time.monotonic()
    await godot.interact("r4")
    first_chunk = await godot.wait_type("agent_tag_chunk", start=start, agent_id="r4")
    stalled_since = time.monotonic()
    end = await godot.wait_for(
        lambda f: f["type"] in END_TYPES and f["turn_id"] == first_chunk["turn_id"], timeout=10, start=start
    )
    waited = time.monotonic() - stalled_since
    assert end["type"] == "agent_turn_finished" and end["reason"] == "error"
    assert STALL_TIMEOUT_S * 0.8 < waited < STALL_TIMEOUT_S + 2, (waited, time.monotonic() - began)
    check_turn_order(godot.turn_frames(first_chunk["turn_id"]))
    assert "stall" in error_for(godot, first_chunk["turn_id"])["message"]


@pytest.mark.parametrize(
    "variant",
    [
        "keepalive",
        "null_content",
        "crlf",
        "cr",
        "no_space",
        "event_fields",
        "split_writes",
        "usage",
        "finish_with_content",
        "multi_choice",
        "malformed",
        "no_done",
    ],
)
async def test_stream_variants_seen_in_the_wild(godot: GodotPeer, llm, variant):
    name = f"Variant{variant.title().replace('_', '')}"
    godot.specs["v"] = {"name": name}
    reply = {"match": name, "content": "<say>Ünïcode ✓ survives — all of it.</say>", "chunk_size": 3}
    if variant == "malformed":
        reply["malformed_after_chunks"] = 2
    elif variant == "no_done":
        reply["no_done"] = True
    else:
        reply["variants"] = [variant]
    await llm.script(reply)
    frames = await godot.turn("v")
    check_turn_order(frames)
    assert frames[-1]["reason"] == "completed"
    assert played_tags(frames) == [{"tag": "say", "attrs": {}, "text": "Ünïcode ✓ survives — all of it."}]


async def test_usage_reaches_the_finished_frame(godot: GodotPeer, llm):
    godot.specs["u"] = {"name": "Usagio"}
    await llm.script({"match": "Usagio", "content": "<say>Counted.</say>"})
    frames = await godot.turn("u")
    usage = frames[-1]["usage"]
    assert usage["completion_tokens"] > 0 and usage["total_tokens"] >= usage["prompt_tokens"] > 0


async def test_interrupt_while_waiting_for_a_retry(godot: GodotPeer, llm):
    godot.specs["w1"] = {"name": "Waity"}
    await llm.script(
        # The retry would wait far longer than the test takes: only the interruption can end the wait.
        {"match": "Waity", "status": 429, "retry_after": 15},
        {"match": "Waity", "content": "<say>Sorry, you were saying?</say>"},
    )
    start = len(godot.frames)
    await godot.interact("w1", "First")
    started = await godot.wait_type("agent_turn_started", start=start, agent_id="w1")
    await wait_until(lambda: answered(llm, "Waity", 1))  # the 429 came back; the agent waits to retry
    frames = await godot.turn("w1", "Second")
    interrupted = godot.turn_frames(started["turn_id"])[-1]
    assert interrupted["type"] == "agent_turn_interrupted"
    assert frames[-1]["reason"] == "completed"
    assert played_tags(frames)[0]["text"] == "Sorry, you were saying?"
    assert len(await agent_requests(llm, "Waity")) == 2  # the retry of the first turn never went out


async def test_interrupt_while_waiting_for_a_concurrency_slot(godot: GodotPeer, llm):
    godot.specs["slow"] = {"name": "Slowpoke"}
    godot.specs["queued"] = {"name": "Queuey"}
    await llm.script(
        # Holds the only slot for 8 s, far longer than the steps below need, whatever the machine's load.
        {"match": "Slowpoke", "content": "<say>" + "la " * 40 + "</say>", "chunk_size": 3, "chunk_delay_s": 0.2},
        {"match": "Queuey", "content": "<say>My turn now.</say>"},
    )
    start = len(godot.frames)
    await godot.interact("slow")
    await godot.wait_type("agent_tag_chunk", start=start, agent_id="slow")  # holds the only slot
    await godot.interact("queued", "First")
    queued = await godot.wait_type("agent_turn_started", start=start, agent_id="queued")
    assert not await agent_requests(llm, "Queuey")  # waiting for the slot
    await godot.interact("queued", "Second")  # interrupts the waiting turn at once
    interrupted = await godot.wait_type("agent_turn_interrupted", start=start, turn_id=queued["turn_id"], timeout=1)
    assert interrupted["reason"] == "new_event"
    slow_end = await godot.wait_for(lambda f: f["type"] in END_TYPES and f["agent_id"] == "slow", start=start)
    assert slow_end["reason"] == "completed"
    second = await godot.wait_for(
        lambda f: f["type"] in END_TYPES and f["agent_id"] == "queued" and f["turn_id"] != queued["turn_id"],
        start=start,
    )
    assert second["reason"] == "completed"
    assert len(await agent_requests(llm, "Queuey")) == 1  # the interrupted turn never sent its request


async def test_the_key_is_not_in_a_provider_error_that_echoes_it(godot: GodotPeer, llm):
    godot.specs["k"] = {"name": "Keyholder"}
    body = {"error": {"message": f"Incorrect API key provided: {TEST_API_KEY}", "type": "invalid_request_error"}}
    await llm.script({"match": "Keyholder", "status": 401, "error_body": body})
    frames = await godot.turn("k")
    assert frames[-1]["reason"] == "error"
    error = error_for(godot, frames[0]["turn_id"])
    assert "401" in error["message"] and TEST_API_KEY not in error["message"]
    assert all(TEST_API_KEY not in str(frame) for frame in godot.frames)
    headers = (await agent_requests(llm, "Keyholder"))[0]["headers"]
    assert TEST_API_KEY not in str(headers)  # the scripted server redacts what it records too
