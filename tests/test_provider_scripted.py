"""The scripted OpenAI-compatible server as a client sees it: exact wire format, scripting,
pacing, records and control endpoints."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import re
import time

import aiohttp
import orjson
import pytest

from providers.scripted import ScriptedLLM, add_arguments, default_answer, make_app, serve

USER = [{"role": "system", "content": "You are Bram."}, {"role": "user", "content": "Who goes there?"}]


@pytest.fixture
def llm() -> ScriptedLLM:
    return ScriptedLLM(default_tokens=10)


@pytest.fixture
async def http(llm, aiohttp_client):
    return await aiohttp_client(make_app(llm))


async def events(http, **body) -> list[bytes]:
    """The `data:` payloads of a streamed answer, in order."""
    body = {"model": "gpt-test", "messages": USER, "stream": True, **body}
    async with http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-x"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        raw = await response.read()
    assert raw.endswith(b"\n\n")
    return [line[6:] for line in raw.split(b"\n") if line]


async def test_streamed_chunks_are_shaped_like_openai(http, llm):
    llm.script({"content": "Halt, stranger!", "chunk_size": 6})
    *chunks, done = await events(http, stream_options={"include_usage": True})
    assert done == b"[DONE]"
    chunks = [orjson.loads(chunk) for chunk in chunks]
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "gpt-test", "chat.completion.chunk")
    }
    assert chunks[0]["id"].startswith("chatcmpl-")
    role, *content, finish, usage = chunks
    assert role["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert [c["choices"][0]["delta"] for c in content] == [
        {"content": "Halt, "},
        {"content": "strang"},
        {"content": "er!"},
    ]
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert all(c["usage"] is None for c in [role, *content, finish])
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}


async def test_without_include_usage_there_is_no_usage_at_all(http, llm):
    llm.script({"content": "Halt!"})
    *chunks, done = await events(http)
    assert done == b"[DONE]" and all("usage" not in orjson.loads(c) for c in chunks)
    assert orjson.loads(chunks[-1])["choices"][0]["finish_reason"] == "stop"


async def test_a_non_streaming_answer(http, llm):
    llm.script({"content": "Halt, stranger!"})
    async with http.post("/v1/chat/completions", json={"model": "gpt-test", "messages": USER}) as response:
        answer = await response.json()
    assert answer["object"] == "chat.completion" and answer["model"] == "gpt-test"
    assert answer["choices"] == [
        {
            "index": 0,
            "finish_reason": "stop",
            "logprobs": None,
            "message": {"role": "assistant", "content": "Halt, stranger!", "refusal": None, "annotations": []},
        }
    ]
    assert answer["usage"]["completion_tokens"] == 2
    assert llm.requests[0].end == "completed"


async def test_a_reply_with_match_waits_for_its_request(http, llm):
    llm.script({"match": "Mira", "content": "for Mira"}, {"content": "for anyone"})
    answers = []
    for who in ("Bram", "Mira"):
        body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": f"I am {who}"}]}]}
        async with http.post("/v1/chat/completions", json=body) as response:
            answers.append((await response.json())["choices"][0]["message"]["content"])
    assert answers == ["for anyone", "for Mira"] and llm.pending == 0
    assert [r.reply for r in llm.requests] == ["scripted", "scripted"]


def test_the_default_answer_is_well_formed_and_echoes_the_user():
    tokens = default_answer("Who <goes> there, friend?", 20)
    text = "".join(tokens)
    assert len(tokens) == 20
    assert re.fullmatch(r"<thought>[^<]+</thought><say>You said: Who goes there, friend\?[^<]*</say>", text)
    assert default_answer("x", 20) == default_answer("x", 20)


async def test_the_default_generator_serves_unscripted_requests(http, llm):
    content = [orjson.loads(c)["choices"][0]["delta"].get("content") for c in (await events(http))[1:-2]]
    assert "".join(content) == "".join(default_answer("Who goes there?", 10))
    assert llm.requests[0].reply == "default"


async def test_pacing_follows_first_token_delay_and_rate(http, llm):
    llm.set_defaults(default_tokens=20, first_token_delay_s=0.2, tokens_per_s=50, record_chunk_times=True)
    started = time.time()
    await events(http)
    [record] = llm.requests
    assert len(record.chunk_times) == 20
    # Paced against the request's start: a busy machine may write a token late, never early.
    # Only lower bounds hold whatever the load: first token after 0.2 s, the 20th 19/50 s later.
    assert record.chunk_times == sorted(record.chunk_times)
    assert record.chunk_times[0] - started >= 0.2 - 0.005
    assert record.chunk_times[-1] - started >= 0.2 + 19 / 50 - 0.005


async def test_stamped_tokens_carry_their_order_and_write_time(http, llm):
    llm.set_defaults(default_tokens=10, tokens_per_s=200, stamp_tokens=True, record_chunk_times=True)
    before = time.time_ns() // 1000
    payloads = [orjson.loads(c) for c in (await events(http))[1:-2]]
    content = [p["choices"][0]["delta"]["content"] for p in payloads]
    tool_asked = default_answer("Open it [[tool:open_door]]", 10)
    assert tool_asked[-1] == '<tool name="open_door">{"asked":true}</tool>' and len(tool_asked) == 11
    assert [c for c in content if c.startswith("<")] == ["<thought>", "</thought>", "<say>", "</say>"]
    tokens = [re.fullmatch(r" w(\d+)@(\d{16})", c) for c in content if not c.startswith("<")]
    assert [int(t[1]) for t in tokens] == list(range(6))
    stamps = [int(t[2]) for t in tokens]
    assert before <= stamps[0] and stamps == sorted(stamps)
    written = [t for c, t in zip(content, llm.requests[0].chunk_times) if not c.startswith("<")]
    assert all(abs(w * 1e6 - s) < 5000 for w, s in zip(written, stamps))  # stamped as written


async def test_records_redact_secrets_and_tell_how_requests_ended(http, llm):
    llm.script({"content": "a b c", "reset_after_chunks": 1}, {"status": 429, "retry_after": 2})
    async with http.post("/v1/chat/completions", json={"messages": USER, "stream": True}) as response:
        with pytest.raises(aiohttp.ClientError):
            await response.read()
    async with http.post("/v1/chat/completions", json={"messages": USER}, headers={"api-key": "k"}) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "2"
        assert (await response.json())["error"]["message"] == "scripted error 429"
    async with http.post("/v1/chat/completions", data=b"{oops") as response:
        assert response.status == 400
    reset, limited, bad = llm.requests
    assert (reset.end, reset.chunks_sent, limited.end, bad.end, bad.body) == ("reset", 1, "error", "error", None)
    assert limited.headers["api-key"] == "REDACTED" and limited.closed_at >= limited.started_at


async def test_a_client_leaving_a_stalled_stream_is_seen_at_once(http, llm):
    llm.script({"content": "a b c", "stall_after_chunks": 1})
    response = await http.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    await response.content.readuntil(b'"a"')
    await asyncio.sleep(0.05)
    left_at = time.time()
    response.close()
    deadline = time.monotonic() + 1
    while llm.requests[0].end is None and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    assert llm.requests[0].end == "client_closed" and llm.requests[0].closed_at - left_at < 0.05


async def test_control_endpoints(http, llm):
    async with http.post("/_control/script", json=[{"content": "one"}, {"content": "two"}]) as response:
        assert await response.json() == {"pending": 2}
    async with http.post("/_control/script", json=[{"content": "x", "chunk_sise": 2}]) as response:
        assert response.status == 400 and "chunk_sise" in (await response.json())["error"]["message"]
    async with http.post("/_control/script", json=[{"variants": ["nope"]}]) as response:
        assert response.status == 400
    async with http.post("/_control/defaults", json={"tokens_per_s": 0, "default_tokens": 8}) as response:
        assert (await response.json())["default_tokens"] == 8
    async with http.post("/_control/defaults", json={"default_tokens": 2}) as response:
        assert response.status == 400
    await events(http)
    async with http.get("/_control/requests") as response:
        [record] = await response.json()
    assert record["end"] == "completed" and record["body"]["messages"] == USER and record["reply"] == "scripted"
    assert record["headers"]["Authorization"] == "REDACTED"
    async with http.post("/_control/reset") as response:
        assert response.status == 200
    assert llm.requests == [] and llm.pending == 0
    async with http.get("/v1/models") as response:
        assert (await response.json())["data"][0]["id"] == "scripted"


async def test_serve_takes_the_command_line_options(unused_tcp_port):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", str(unused_tcp_port), "--tokens-per-s", "40", "--record-chunk-times"])
    inspect.signature(serve).bind(**vars(args))
    task = asyncio.create_task(serve(**vars(args)))
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", unused_tcp_port)
            except OSError:
                await asyncio.sleep(0.01)
            else:
                writer.close()
                break
        else:
            pytest.fail("serve() did not listen")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
