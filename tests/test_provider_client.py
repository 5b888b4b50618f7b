"""ChatStreamer against the real scripted server over loopback HTTP: streams, faults, retries,
deadlines, cancellation, concurrency and secrecy."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import pickle
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import httpx2
import pytest
from loguru import logger

from providers.client import ChatStreamer, LLMError, LLMSettings, RequestEnded, _retry_after_s
from providers.scripted import VARIANTS, ScriptedLLM, make_app
from providers.sse import Delta

KEY = "sk-test-KEY-never-shown-0123456789"
USER = [{"role": "user", "content": "Hello there, guard."}]
TEXT = "Halt! Who goes there? Ünïcödé 🎉 and more words."


@pytest.fixture
def llm() -> ScriptedLLM:
    return ScriptedLLM(default_tokens=12)


@pytest.fixture
async def base_url(llm, aiohttp_server) -> str:
    server = await aiohttp_server(make_app(llm))  # handler_cancellation=True, as serve() runs it
    return str(server.make_url("/v1"))


@pytest.fixture
async def streamer(base_url) -> AsyncIterator[Callable[..., ChatStreamer]]:
    """Makes ChatStreamers with short test timeouts; closes them all afterwards."""
    made: list[ChatStreamer] = []

    def make(**overrides) -> ChatStreamer:
        settings = {
            "base_url": base_url,
            "api_key": KEY,
            "model": "test-model",
            "retry_base_s": 0.01,
            "retry_max_s": 0.05,
            "first_token_timeout_s": 2,
            "stall_timeout_s": 2,
            **overrides,
        }
        made.append(ChatStreamer(LLMSettings(**settings)))
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


@pytest.fixture
def logs() -> list[str]:
    """Everything loguru writes during the test, extras included."""
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{level} {message} {extra}")
    yield lines
    logger.remove(sink)


async def collect(chat: ChatStreamer, messages=USER) -> list[Delta]:
    return [delta async for delta in chat.stream(messages)]


def text_of(deltas: list[Delta]) -> str:
    return "".join(delta.content for delta in deltas)


async def eventually(condition: Callable[[], object], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


async def test_a_stream_yields_text_then_finish_and_usage(llm, streamer):
    deltas = await collect(streamer(temperature=0.5, max_tokens=50))
    *content, final = deltas
    assert text_of(content) == "<thought>I should</thought><say>You said: Hello there, guard. Well</say>"
    assert all(d.content and d.finish_reason is None and d.usage is None for d in content)
    assert final == Delta("", "stop", {"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15})
    [record] = llm.requests
    assert record.end == "completed" and record.headers["Authorization"] == "REDACTED"
    assert record.body == {
        "model": "test-model",
        "messages": USER,
        "stream": True,
        "temperature": 0.5,
        "max_tokens": 50,
        "stream_options": {"include_usage": True},
    }


async def test_without_include_usage_only_the_finish_reason_is_reported(llm, streamer):
    llm.script({"content": TEXT})
    deltas = await collect(streamer(include_usage=False))
    assert text_of(deltas) == TEXT and deltas[-1] == Delta("", "stop")
    assert "stream_options" not in llm.requests[0].body


async def test_extra_body_is_merged_into_the_request(llm, streamer):
    deltas = [delta async for delta in streamer().stream(USER, extra_body={"top_k": 5})]
    assert deltas[-1].finish_reason == "stop" and llm.requests[0].body["top_k"] == 5


async def test_rate_limit_is_retried_after_retry_after_and_text_comes_once(llm, streamer, logs):
    llm.script(
        {"status": 429, "retry_after": 0.3, "error_body": {"error": {"message": "slow down"}}}, {"content": TEXT}
    )
    started = time.monotonic()
    deltas = await collect(streamer(retry_max_s=5))
    assert time.monotonic() - started >= 0.3
    assert text_of(deltas) == TEXT
    assert [r.end for r in llm.requests] == ["error", "completed"]
    [warning] = [line for line in logs if line.startswith("WARNING")]
    assert "llm_http_429" in warning and "'attempt': 1" in warning and "'delay_s': 0.3" in warning


async def test_retry_after_is_capped_by_retry_max(llm, streamer):
    llm.script({"status": 503, "retry_after": 60}, {"content": TEXT})
    started = time.monotonic()
    assert text_of(await collect(streamer(retry_max_s=0.1))) == TEXT
    assert time.monotonic() - started < 1


def test_retry_after_header_forms():
    assert _retry_after_s(httpx2.Headers({"Retry-After": "2.5"})) == 2.5
    in_3s = email.utils.formatdate(time.time() + 3, usegmt=True)
    assert 1.5 < _retry_after_s(httpx2.Headers({"Retry-After": in_3s})) <= 3
    assert _retry_after_s(httpx2.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0
    assert _retry_after_s(httpx2.Headers({"Retry-After": "soon"})) is None
    assert _retry_after_s(httpx2.Headers()) is None


async def test_server_errors_are_retried_until_the_retries_run_out(llm, streamer):
    llm.script(*[{"status": 500}] * 5)
    with pytest.raises(LLMError) as caught:
        await collect(streamer(max_retries=3))
    assert caught.value.code == "llm_http_500" and caught.value.retryable
    assert "scripted error 500" in caught.value.message
    assert len(llm.requests) == 4


async def test_a_client_error_is_not_retried(llm, streamer):
    llm.script({"status": 400, "error_body": {"error": {"message": "bad model " + "x" * 1000}}})
    with pytest.raises(LLMError) as caught:
        await collect(streamer())
    assert caught.value.code == "llm_http_400" and not caught.value.retryable
    assert "bad model" in caught.value.message and len(caught.value.message) < 320
    assert len(llm.requests) == 1


async def test_a_reset_after_text_fails_without_retry(llm, streamer):
    llm.script({"content": TEXT, "chunk_size": 4, "reset_after_chunks": 3})
    received: list[Delta] = []
    with pytest.raises(LLMError) as caught:
        async for delta in streamer().stream(USER):
            received.append(delta)
    assert caught.value.code == "llm_connection"
    assert text_of(received) == TEXT[:12]
    assert [r.end for r in llm.requests] == ["reset"]


async def test_a_reset_before_text_is_retried(llm, streamer):
    llm.script({"content": "lost", "reset_after_chunks": 0}, {"content": TEXT})
    assert text_of(await collect(streamer())) == TEXT
    assert [r.end for r in llm.requests] == ["reset", "completed"]


async def test_a_stall_after_text_raises_within_the_stall_timeout(llm, streamer):
    llm.script({"content": TEXT, "stall_after_chunks": 2})
    received: list[Delta] = []
    started = time.monotonic()
    with pytest.raises(LLMError) as caught:
        async for delta in streamer(stall_timeout_s=0.3).stream(USER):
            received.append(delta)
    assert caught.value.code == "llm_stall"
    assert 0.3 <= time.monotonic() - started < 0.6
    assert len(received) == 2
    await eventually(lambda: llm.requests[0].end == "client_closed")


async def test_no_first_token_in_time_is_retried(llm, streamer):
    llm.script({"content": "late", "first_token_delay_s": 5}, {"content": TEXT})
    started = time.monotonic()
    assert text_of(await collect(streamer(first_token_timeout_s=0.3))) == TEXT
    assert 0.3 <= time.monotonic() - started < 0.8
    await eventually(lambda: llm.requests[0].end == "client_closed")


async def test_the_turn_budget_bounds_everything(llm, streamer):
    llm.script({"content": TEXT, "chunk_size": 1, "chunk_delay_s": 0.05})
    started = time.monotonic()
    with pytest.raises(LLMError) as caught:
        await collect(streamer(turn_timeout_s=0.4))
    assert caught.value.code == "llm_timeout" and not caught.value.retryable
    assert time.monotonic() - started < 0.6


async def test_a_slow_consumer_is_not_a_stall(llm, streamer):
    llm.script({"content": "one two three"})
    received = []
    async for delta in streamer(stall_timeout_s=0.1, first_token_timeout_s=0.1).stream(USER):
        received.append(delta)
        await asyncio.sleep(0.2)  # the caller's own awaits are never interrupted by our deadlines
    assert text_of(received) == "one two three"


async def test_malformed_lines_are_skipped_and_logged(llm, streamer, logs):
    llm.script({"content": TEXT, "malformed_after_chunks": 1})
    assert text_of(await collect(streamer())) == TEXT
    assert any(line.startswith("WARNING Skipping malformed") and "broken" in line for line in logs)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_every_stream_variant_gives_the_same_text(llm, streamer, variant):
    llm.script({"content": TEXT, "chunk_size": 3, "variants": [variant]})
    deltas = await collect(streamer())
    assert text_of(deltas) == TEXT
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage["completion_tokens"] > 0


async def test_a_stream_without_done_ends_normally(llm, streamer):
    llm.script({"content": TEXT, "no_done": True})
    deltas = await collect(streamer())
    assert text_of(deltas) == TEXT and deltas[-1].finish_reason == "stop"


async def test_a_response_without_sse_data_is_a_bad_stream(llm, streamer):
    llm.script(*[{"status": 200, "error_body": {"choices": []}}] * 2)
    with pytest.raises(LLMError) as caught:
        await collect(streamer(max_retries=1))
    assert caught.value.code == "llm_bad_stream" and len(llm.requests) == 2


async def test_a_provider_error_in_the_stream(llm, streamer):
    llm.script({"content": "lost", "error_after_chunks": 0}, {"content": TEXT, "error_after_chunks": 2})
    received: list[Delta] = []
    with pytest.raises(LLMError) as caught:
        async for delta in streamer().stream(USER):
            received.append(delta)
    assert caught.value.code == "llm_provider_error" and "scripted provider error" in caught.value.message
    assert len(received) == 2 and len(llm.requests) == 2  # retried before any text, not after


async def test_an_unreachable_server_is_a_connection_error(streamer):
    with socket_closed_port() as port:
        chat = streamer(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
        with pytest.raises(LLMError) as caught:
            await collect(chat)
    assert caught.value.code == "llm_connection" and caught.value.retryable


@contextlib.contextmanager
def socket_closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]  # bound but not listening: connections are refused


async def test_a_connection_that_never_completes_times_out(streamer):
    with socket.socket() as listener, contextlib.ExitStack() as fillers:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):  # fill the accept queue: further handshakes get no answer
            filler = fillers.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        started = time.monotonic()
        with pytest.raises(LLMError) as caught:
            await collect(streamer(base_url=f"http://127.0.0.1:{port}/v1", connect_timeout_s=0.2, max_retries=0))
    assert caught.value.code == "llm_connect_timeout" and caught.value.retryable
    assert time.monotonic() - started < 0.5


def test_settings_are_checked():
    with pytest.raises(ValueError):
        LLMSettings(base_url="http://x/v1", api_key="", model="m", stall_timeout_s=0)
    with pytest.raises(ValueError):
        LLMSettings(base_url="http://x/v1", api_key="", model="m", max_retries=-1)


async def cancel_mid_stream(llm: ScriptedLLM, chat: ChatStreamer) -> float:
    """Start a slow stream, cancel its task after two deltas; return when the cancel happened."""
    llm.script({"content": "word " * 100, "chunk_delay_s": 0.02})
    two = asyncio.Event()

    async def consume() -> None:
        count = 0
        async for _ in chat.stream(USER):
            count += 1
            if count == 2:
                two.set()

    task = asyncio.create_task(consume())
    await two.wait()
    cancelled_at = time.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return cancelled_at


async def test_cancelling_the_caller_closes_the_connection_at_once(llm, streamer):
    cancelled_at = await cancel_mid_stream(llm, streamer())
    await eventually(lambda: llm.requests[0].end == "client_closed")
    assert llm.requests[0].closed_at - cancelled_at < 0.1
    assert llm.requests[0].chunks_sent < 10


async def test_closing_the_generator_closes_the_connection_at_once(llm, streamer):
    llm.script({"content": "word " * 100, "chunk_delay_s": 0.02})
    stream = streamer().stream(USER)
    await anext(stream)
    closed_at = time.time()
    await stream.aclose()
    await eventually(lambda: llm.requests[0].end == "client_closed")
    assert llm.requests[0].closed_at - closed_at < 0.1


async def test_cancelling_during_a_retry_delay(llm, streamer):
    llm.script({"status": 429, "retry_after": 10}, {"content": TEXT})
    task = asyncio.create_task(collect(streamer(retry_max_s=10)))
    await eventually(lambda: llm.requests and llm.requests[0].end == "error")
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert len(llm.requests) == 1


async def test_cancelling_while_waiting_for_a_slot_and_fifo_order(llm, streamer):
    chat = streamer(max_concurrent=1)
    llm.script(
        {"match": "first", "content": "a b c", "chunk_delay_s": 0.1},
        {"match": "third", "content": "3"},
        {"match": "fourth", "content": "4"},
    )

    def ask(word: str) -> asyncio.Task:
        return asyncio.create_task(collect(chat, [{"role": "user", "content": word}]))

    first = ask("first")
    await eventually(lambda: llm.requests)
    second, third, fourth = ask("second"), ask("third"), ask("fourth")
    await asyncio.sleep(0.05)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert text_of(await first) == "a b c"
    assert text_of(await third) == "3" and text_of(await fourth) == "4"
    assert [r.body["messages"][0]["content"] for r in llm.requests] == ["first", "third", "fourth"]


async def test_the_key_never_shows(llm, streamer, logs):
    settings = LLMSettings(base_url="http://x/v1", api_key=KEY, model="m")
    assert KEY not in repr(settings) and KEY not in str(settings)
    assert pickle.loads(pickle.dumps(settings)) == settings
    message = f"Incorrect API key provided: {KEY}. Authorization: Bearer {KEY}"
    llm.script(
        {"status": 500, "error_body": {"error": {"message": message}}},
        {"status": 401, "error_body": {"error": {"message": message}}},
    )
    with pytest.raises(LLMError) as caught:
        await collect(streamer())
    error = caught.value
    assert error.code == "llm_http_401" and "Incorrect API key provided: ***" in error.message
    for text in (str(error), repr(error), error.message, *logs):
        assert KEY not in text
    assert logs  # the retry of the 500 was logged
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message, copy.retryable) == (error.code, error.message, error.retryable)


async def test_each_stream_reports_how_it_ended(llm, base_url):
    """The metrics' hook: one RequestEnded per stream() call (the endpoint label's scrubbing is in
    tests/test_metrics_core.py)."""
    ended: list[RequestEnded] = []
    settings = LLMSettings(base_url=base_url, api_key=KEY, model="m", retry_base_s=0.01, retry_max_s=0.05)
    async with ChatStreamer(settings, ended.append) as chat:
        llm.script({"status": 503}, {"content": TEXT})
        assert text_of(await collect(chat)) == TEXT
        llm.script({"status": 400})
        with pytest.raises(LLMError):
            await collect(chat)
        llm.script({"content": TEXT, "chunk_delay_s": 0.05})
        stream = chat.stream(USER)
        await anext(stream)
        await stream.aclose()  # the turn was interrupted
    async with ChatStreamer(replace(settings, max_background=0), ended.append) as chat:
        with pytest.raises(LLMError, match="llm_busy"):
            await anext(chat.stream(USER, background=True))  # never sent: not a request that ended
    ok, refused, cut = ended
    assert {r.endpoint for r in ended} == {base_url} and {r.model for r in ended} == {"m"}
    assert ok.outcome == "ok" and ok.retries == 1 and ok.usage is not None and ok.usage["completion_tokens"] > 0
    assert ok.first_token_s is not None and ok.first_token_s > 0 and ok.queue_wait_s is not None
    assert refused.outcome == "llm_http_400" and refused.retries == 0
    assert refused.usage is None and refused.first_token_s is None
    assert cut.outcome == "cancelled" and cut.first_token_s is not None and cut.usage is None
