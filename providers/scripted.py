"""A scripted OpenAI-compatible chat server for tests, demos and load tests.

Why: the NPC server has to be exercised against what real providers do (rate limits,
resets, stalls, malformed lines, missing `[DONE]`, odd but legal SSE) and under
hundreds of concurrent paced streams: deterministically, without a GPU or a bill.
Replies are queued as JSON objects (HTTP control endpoints or the Python API); with
none queued, a default generator answers in the NPC tag format. Every chat request is
recorded, with how it ended, so tests can assert that an interrupted turn really
closed its connection.

For load tests, `stamp_tokens` makes every text token carry its sequence number and
the moment it was written (`stamp_token`), so a client measures each token's latency
and checks that none was lost, repeated or reordered without asking this server, and
a last user message holding `[[tool:NAME]]` makes the default answer end with a call
of that tool, so tool calls happen without scripting each reply.

Run it with `serve()` (or `main(argv)`), or any aiohttp runner created with
`handler_cancellation=True`: a client that leaves is then noticed at once, even by a
stalled or slowly paced stream, without polling.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import re
import signal
import socket
import struct
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import web
from loguru import logger

from config import event_loop

VARIANTS: Final = frozenset(
    {
        "keepalive",  # `: keep-alive` comment lines between events
        "null_content",  # an extra delta with `content: null` after the role delta
        "crlf",  # CRLF line ends
        "cr",  # CR line ends
        "no_space",  # `data:{...}` without the space
        "event_fields",  # `event:`, `id:` and `retry:` lines around the data
        "split_writes",  # every event written in two halves (UTF-8 may be split)
        "usage",  # a usage chunk even when the request did not ask for one
        "finish_with_content",  # finish_reason on the last content chunk, no separate chunk
        "multi_choice",  # an interleaved choice with index 1 after each content chunk
    }
)
_SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"})
_TOKEN: Final = re.compile(r"\s*\S+|\s+$")  # a word with the spaces before it
_THOUGHT_WORDS: Final = ("I", "should", "answer", "this", "traveller", "plainly", "and", "kindly.")
_SAY_WORDS: Final = (
    "Well",
    "met,",
    "friend.",
    "The",
    "road",
    "is",
    "long",
    "and",
    "the",
    "night",
    "cold,",
    "so",
    "rest",
    "by",
    "the",
    "fire",
    "a",
    "while.",
)
_ECHO_WORDS: Final = 6
_TOOL_DIRECTIVE: Final = re.compile(r"\[\[tool:([A-Za-z][A-Za-z0-9_.:-]*)\]\]")
TOOL_ARGUMENTS: Final = '{"asked":true}'  # the arguments of a tool call asked for with [[tool:NAME]]
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Defaults:
    """How the default generator answers when no scripted reply applies, and what is recorded."""

    default_tokens: int = 60  # >= 6: four tags and at least one word in each
    first_token_delay_s: float = 0.0
    tokens_per_s: float = 0.0  # 0 = as fast as possible
    record_chunk_times: bool = False
    stamp_tokens: bool = False  # see Reply.stamp_tokens
    model: str = "scripted"
    status: int | None = None  # answer every request that no scripted reply serves with this HTTP error

    def __post_init__(self) -> None:
        if self.status is not None and not 400 <= self.status < 600:
            raise ValueError("status must be an HTTP error status (400-599)")
        if self.default_tokens < 6:
            raise ValueError("default_tokens must be at least 6")
        if self.first_token_delay_s < 0 or self.tokens_per_s < 0:
            raise ValueError("delays and rates cannot be negative")


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a JSON object with these fields, queued by `POST /_control/script`
    or `ScriptedLLM.script`. The `*_after_chunks` faults count content chunks already sent."""

    content: str = ""
    chunks: tuple[str, ...] | None = None  # explicit chunks; else `chunk_size` chars, else one word each
    chunk_size: int | None = None
    first_token_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    tokens_per_s: float = 0.0  # alternative to chunk_delay_s: a chunk of n words takes n / tokens_per_s
    match: str | None = None  # serve only a request whose messages contain this text
    finish_reason: str = "stop"
    status: int | None = None  # answer this HTTP error instead
    retry_after: float | str | None = None
    error_body: Any = None
    reset_after_chunks: int | None = None
    stall_after_chunks: int | None = None
    malformed_after_chunks: int | None = None
    error_after_chunks: int | None = None  # an in-stream error object, as OpenRouter sends
    no_done: bool = False
    variants: frozenset[str] = frozenset()
    # Streamed answers only: each chunk that is not markup (does not start with "<") is sent as
    # stamp_token(n) instead, n = 0, 1, 2... over the reply, stamped as it is written; the pacing
    # is unchanged.
    stamp_tokens: bool = False

    def __post_init__(self) -> None:
        if self.chunks is not None:
            object.__setattr__(self, "chunks", tuple(self.chunks))
            object.__setattr__(self, "content", "".join(self.chunks))
        object.__setattr__(self, "variants", frozenset(self.variants))
        if unknown := self.variants - VARIANTS:
            raise ValueError(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if self.chunk_delay_s and self.tokens_per_s:
            raise ValueError("give chunk_delay_s or tokens_per_s, not both")
        if min(self.first_token_delay_s, self.chunk_delay_s, self.tokens_per_s) < 0:
            raise ValueError("delays and rates cannot be negative")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Reply:
        """Build from a JSON object, refusing unknown keys (a typo must not pass silently)."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"a reply must be a JSON object, not {type(obj).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(obj) - known:
            raise ValueError(f"unknown reply keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**obj)

    def split(self) -> list[str]:
        """The content cut into the chunks to stream."""
        if self.chunks is not None:
            return list(self.chunks)
        if self.chunk_size is not None:
            return [self.content[i : i + self.chunk_size] for i in range(0, len(self.content), self.chunk_size)]
        return _TOKEN.findall(self.content)

    def schedule(self, chunks: list[str]) -> list[float]:
        """Send time of each chunk, in seconds after the request arrived."""
        offsets, tokens = [], 0
        for index, chunk in enumerate(chunks):
            if self.tokens_per_s:
                offsets.append(self.first_token_delay_s + tokens / self.tokens_per_s)
            else:
                offsets.append(self.first_token_delay_s + index * self.chunk_delay_s)
            tokens += count_tokens(chunk)
        return offsets


@dataclass
class RequestRecord:
    """One chat request as the server saw it. Times are `time.time()` seconds."""

    id: int
    started_at: float
    body: Any
    headers: dict[str, str]
    reply: str = ""  # "scripted" or "default"
    end: str | None = None  # completed | client_closed | reset | error; None while running
    closed_at: float | None = None  # when it ended; for client_closed, when the close was seen
    chunks_sent: int = 0
    chunk_times: list[float] | None = None  # write time of each content chunk, if asked for

    def finish(self, end: str) -> None:
        """Record how the exchange ended; the first cause seen wins."""
        if self.end is None:
            self.end = end
            self.closed_at = time.time()


def stamp_token(seq: int) -> str:
    """A stamped token, `" w<seq>@<time.time() in integer microseconds>"`, taken as it is written.

    The 16-digit stamp has a fixed width (until the year 2286), so a reader can tell a whole
    token from a cut one.
    """
    return f" w{seq}@{time.time_ns() // 1000}"


def count_tokens(text: str) -> int:
    """Tokens as this server counts them: one per whitespace-separated word, at least one."""
    return max(1, len(text.split()))


def default_answer(last_user_text: str, tokens: int) -> list[str]:
    """A deterministic `<thought>…</thought><say>…</say>` answer of exactly `tokens` tokens.

    It echoes the start of the user's last message, so a test can tell answers apart. When that
    message holds `[[tool:NAME]]`, one more chunk follows: `<tool name="NAME">{"asked":true}</tool>`.
    """
    echo = re.sub(r"[<>&]", "", last_user_text).split()[:_ECHO_WORDS]
    words = tokens - 4
    thought = list(itertools.islice(itertools.cycle(_THOUGHT_WORDS), max(1, words // 3)))
    say_start = ["You", "said:", *echo] if echo else []
    say = list(itertools.islice(itertools.chain(say_start, itertools.cycle(_SAY_WORDS)), words - len(thought)))
    answer = ["<thought>", *_spaced(thought), "</thought>", "<say>", *_spaced(say), "</say>"]
    if tool := _TOOL_DIRECTIVE.search(last_user_text):
        answer.append(f'<tool name="{tool[1]}">{TOOL_ARGUMENTS}</tool>')
    return answer


def _spaced(words: list[str]) -> list[str]:
    return words[:1] + [" " + word for word in words[1:]]


class ScriptedLLM:
    """The scripted model: a FIFO of replies, the default generator, and the request records."""

    def __init__(self, max_records: int = 10_000, **defaults: Any) -> None:
        self.defaults = Defaults(**defaults)
        self._replies: list[Reply] = []
        self._records: deque[RequestRecord] = deque(maxlen=max_records)
        self._ids = itertools.count(1)

    def script(self, *replies: Mapping[str, Any] | Reply) -> None:
        """Queue replies (objects as in `POST /_control/script`); all are checked before any is queued."""
        parsed = [reply if isinstance(reply, Reply) else Reply.from_json(reply) for reply in replies]
        self._replies.extend(parsed)

    def reset(self) -> None:
        """Forget queued replies and records."""
        self._replies.clear()
        self._records.clear()

    def set_defaults(self, **changes: Any) -> Defaults:
        """Change the default generator's settings; returns them."""
        self.defaults = dataclasses.replace(self.defaults, **changes)
        return self.defaults

    @property
    def pending(self) -> int:
        """Scripted replies not yet served."""
        return len(self._replies)

    @property
    def requests(self) -> list[RequestRecord]:
        """The records, oldest first."""
        return list(self._records)

    def _record(self, body: Any, headers: Mapping[str, str]) -> RequestRecord:
        record = RequestRecord(
            id=next(self._ids),
            started_at=time.time(),
            body=body,
            headers={str(k): "REDACTED" if k.lower() in _SECRET_HEADERS else v for k, v in headers.items()},
            chunk_times=[] if self.defaults.record_chunk_times else None,
        )
        self._records.append(record)
        return record

    def _reply_for(self, messages: list[Any]) -> tuple[Reply, str]:
        """The first queued reply that applies (taken off the queue), else the default answer; and which."""
        text = "\n".join(_text(message) for message in messages)
        for index, reply in enumerate(self._replies):
            if reply.match is None or reply.match in text:
                return self._replies.pop(index), "scripted"
        last_user = next((_text(m) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), "")
        defaults = self.defaults
        answer = Reply(
            chunks=tuple(default_answer(last_user, defaults.default_tokens)),
            first_token_delay_s=defaults.first_token_delay_s,
            tokens_per_s=defaults.tokens_per_s,
            stamp_tokens=defaults.stamp_tokens,
            status=defaults.status,
        )
        return answer, "default"


def _text(message: Any) -> str:
    """The text of a chat message, whether its content is a string or a list of parts."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def make_app(llm: ScriptedLLM) -> web.Application:
    """The aiohttp application; run it with `handler_cancellation=True` (see the module doc)."""
    routes = _Routes(llm)
    app = web.Application(client_max_size=64 << 20)
    app.add_routes(
        [
            web.post("/v1/chat/completions", routes.chat),
            web.get("/v1/models", routes.models),
            web.post("/_control/script", routes.script),
            web.post("/_control/reset", routes.reset),
            web.get("/_control/requests", routes.requests),
            web.post("/_control/defaults", routes.defaults),
        ]
    )
    return app


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _openai_error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return _json({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


class _Routes:
    def __init__(self, llm: ScriptedLLM) -> None:
        self._llm = llm

    async def chat(self, request: web.Request) -> web.StreamResponse:
        started = asyncio.get_running_loop().time()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        record = self._llm._record(body, request.headers)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            record.finish("error")
            return _openai_error(400, "the body must be a JSON object with a `messages` list")
        reply, record.reply = self._llm._reply_for(messages)
        if reply.status is not None:
            record.finish("error")
            return _error_response(reply)
        model = body.get("model") if isinstance(body.get("model"), str) else self._llm.defaults.model
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        exchange = _Exchange(request, record, reply, model, messages, started, include_usage)
        return await (exchange.stream() if body.get("stream") else exchange.complete())

    async def models(self, request: web.Request) -> web.Response:
        model = self._llm.defaults.model
        listed = {"id": model, "object": "model", "created": 0, "owned_by": "scripted"}
        return _json({"object": "list", "data": [listed]})

    async def script(self, request: web.Request) -> web.Response:
        try:
            replies = await request.json(loads=orjson.loads)
            self._llm.script(*(replies if isinstance(replies, list) else [replies]))
        except (TypeError, ValueError) as exc:
            return _openai_error(400, str(exc))
        return _json({"pending": self._llm.pending})

    async def reset(self, request: web.Request) -> web.Response:
        self._llm.reset()
        return _json({"pending": 0})

    async def requests(self, request: web.Request) -> web.Response:
        return _json([dataclasses.asdict(record) for record in self._llm.requests])

    async def defaults(self, request: web.Request) -> web.Response:
        try:
            defaults = self._llm.set_defaults(**await request.json(loads=orjson.loads))
        except (TypeError, ValueError) as exc:
            return _openai_error(400, str(exc))
        return _json(dataclasses.asdict(defaults))


def _error_response(reply: Reply) -> web.Response:
    headers = {} if reply.retry_after is None else {"Retry-After": str(reply.retry_after)}
    assert reply.status is not None
    if isinstance(reply.error_body, str):
        return web.Response(text=reply.error_body, status=reply.status, headers=headers)
    body = (
        reply.error_body
        if reply.error_body is not None
        else {
            "error": {
                "message": f"scripted error {reply.status}",
                "type": "scripted_error",
                "param": None,
                "code": None,
            }
        }
    )
    return _json(body, reply.status, headers)


class _Stop(Exception):
    """Ends a stream early once its fault has been applied and recorded."""


class _Exchange:
    """Answers one chat request as scripted: paced, with the reply's variants and faults."""

    def __init__(
        self,
        request: web.Request,
        record: RequestRecord,
        reply: Reply,
        model: str,
        messages: list[Any],
        started: float,
        include_usage: bool,
    ) -> None:
        self._request = request
        self._record = record
        self._reply = reply
        self._include_usage = include_usage
        self._loop = asyncio.get_running_loop()
        self._started = started
        self._response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        variants = reply.variants
        self._newline = b"\r\n" if "crlf" in variants else b"\r" if "cr" in variants else b"\n"
        self._data = b"data:" if "no_space" in variants else b"data: "
        self._chunks = reply.split()
        self._offsets = reply.schedule(self._chunks)
        completion_tokens = sum(map(count_tokens, self._chunks))
        prompt_tokens = sum(count_tokens(_text(message)) for message in messages)
        self._usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        self._head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_scripted",
        }

    async def complete(self) -> web.StreamResponse:
        """The non-streaming answer, sent when the last chunk would have been."""
        reply = self._reply
        try:
            await self._sleep_until(self._offsets[-1] if self._offsets else reply.first_token_delay_s)
        except asyncio.CancelledError:
            self._record.finish("client_closed")
            raise
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None, "annotations": []}
        self._record.finish("completed")
        return _json(
            {
                **self._head,
                "object": "chat.completion",
                "service_tier": "default",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
                "usage": self._usage,
            }
        )

    async def stream(self) -> web.StreamResponse:
        """The SSE answer, chunk by chunk on schedule."""
        reply, record, response = self._reply, self._record, self._response
        variants = reply.variants
        await response.prepare(self._request)
        try:
            await self._event(self._choice({"role": "assistant", "content": "", "refusal": None}))
            if "null_content" in variants:
                await self._event(self._choice({"content": None}))
            last = len(self._chunks) - 1
            stamped = itertools.count() if reply.stamp_tokens else None
            for index, (chunk, offset) in enumerate(zip(self._chunks, self._offsets)):
                await self._fault(index)
                await self._sleep_until(offset)
                if stamped is not None and not chunk.startswith("<"):
                    chunk = stamp_token(next(stamped))
                finish = reply.finish_reason if index == last and "finish_with_content" in variants else None
                await self._event(self._choice({"content": chunk}, finish))
                record.chunks_sent += 1
                if record.chunk_times is not None:
                    record.chunk_times.append(time.time())
                if "multi_choice" in variants:
                    await self._event(self._choice({"content": "(choice 1)"}, index=1))
            await self._fault(len(self._chunks))
            if not (self._chunks and "finish_with_content" in variants):
                await self._event(
                    self._choice({"content": None} if "null_content" in variants else {}, reply.finish_reason)
                )
            if self._include_usage or "usage" in variants:
                await self._event(self._chunk(choices=[], usage=self._usage))
            if not reply.no_done:
                await response.write(self._data + b"[DONE]" + self._newline * 2)
            await response.write_eof()
            record.finish("completed")
        except asyncio.CancelledError:  # the client left: aiohttp cancels the handler at once
            record.finish("client_closed")
            raise
        except ConnectionResetError:  # the client left, noticed by a write
            record.finish("client_closed")
        except _Stop:
            pass
        return response

    async def _fault(self, sent: int) -> None:
        """Apply the reply's fault due after `sent` content chunks."""
        reply = self._reply
        if reply.malformed_after_chunks == sent:
            await self._response.write(self._data + b'{"id": "broken", "choices": [' + self._newline * 2)
        if reply.error_after_chunks == sent:
            await self._event(
                self._chunk(
                    error={"code": 502, "message": "scripted provider error"},
                    choices=[{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
                )
            )
            await self._response.write_eof()
            self._record.finish("error")
            raise _Stop
        if reply.reset_after_chunks == sent:
            transport = self._request.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
            self._record.finish("reset")
            transport.abort()
            raise _Stop
        if reply.stall_after_chunks == sent:
            await asyncio.Future()  # until the client leaves and aiohttp cancels us

    def _chunk(self, **fields: Any) -> dict[str, Any]:
        return {**self._head, "object": "chat.completion.chunk", **fields}

    def _choice(self, delta: dict[str, Any], finish_reason: str | None = None, index: int = 0) -> dict[str, Any]:
        """A chunk for one choice; with include_usage, OpenAI adds `usage: null` to all but the last."""
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = self._chunk(choices=[choice])
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    async def _event(self, chunk: dict[str, Any]) -> None:
        newline, variants = self._newline, self._reply.variants
        event = self._data + orjson.dumps(chunk) + newline + newline
        if "event_fields" in variants:
            event = b"event: message" + newline + b"id: %d" % self._record.chunks_sent + newline + event
            if self._record.chunks_sent == 0:
                event = b"retry: 3000" + newline + event
        if "keepalive" in variants:
            event = b": keep-alive" + newline + newline + event
        if "split_writes" in variants:
            middle = len(event) // 2
            await self._response.write(event[:middle])
            await asyncio.sleep(0.001)  # let the halves travel as separate segments
            event = event[middle:]
        await self._response.write(event)

    async def _sleep_until(self, offset: float) -> None:
        """Sleep until `offset` s after the request arrived (no drift); always yield once."""
        await asyncio.sleep(max(0.0, self._started + offset - self._loop.time()))


async def serve(host: str = "127.0.0.1", port: int = 8099, *, max_records: int = 10_000, **defaults: Any) -> None:
    """Serve a ScriptedLLM until SIGINT/SIGTERM or cancellation."""
    llm = ScriptedLLM(max_records=max_records, **defaults)
    runner = web.AppRunner(make_app(llm), handler_cancellation=True, access_log=None)
    await runner.setup()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        logger.info("scripted LLM listening", host=host, port=port, **dataclasses.asdict(llm.defaults))
        await stop.wait()
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `serve()`, with the same names."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8099, help="port (default 8099)")
    parser.add_argument(
        "--default-tokens",
        type=int,
        default=Defaults.default_tokens,
        help="tokens of the default answer (default %(default)s)",
    )
    parser.add_argument(
        "--first-token-delay-s",
        type=float,
        default=Defaults.first_token_delay_s,
        help="default delay before the first token (default %(default)s)",
    )
    parser.add_argument(
        "--tokens-per-s",
        type=float,
        default=Defaults.tokens_per_s,
        help="default pace; 0 = as fast as possible (default %(default)s)",
    )
    parser.add_argument("--record-chunk-times", action="store_true", help="record each chunk's write time")
    parser.add_argument(
        "--stamp-tokens",
        action="store_true",
        help="send each text token of the default answer as ' w<seq>@<write time in µs>'",
    )
    parser.add_argument("--model", default=Defaults.model, help="model name listed by /v1/models")
    parser.add_argument("--max-records", type=int, default=10_000, help="request records kept (newest)")


def main(argv: list[str]) -> int:
    """`python run.py llm-server [options]`."""
    parser = argparse.ArgumentParser(prog="run.py llm-server", description="Run the scripted OpenAI-compatible LLM.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        event_loop.run(serve(**vars(args)))  # uvloop: less of the cores a load test measures
    except ValueError as exc:
        parser.error(str(exc))
    return 0
