"""Streamed chat completions from any OpenAI-compatible endpoint, robust to provider faults.

Why it is built this way:

- The openai SDK is kept for what it does well (auth, base URL, typed HTTP errors), but
  its parsed stream costs ~150 µs of CPU per chunk; we open its *streaming response*
  and decode the raw body with `providers.sse` instead, several times cheaper.
- An NPC must never say a sentence twice, so a failure is retried (backoff with full
  jitter, honouring Retry-After) only until the first content token has been yielded;
  later it surfaces as `LLMError`.
- Deadlines (first token, stall, whole turn) live in one lazily re-armed timer: a chunk
  costs an attribute write instead of a timer reschedule, and the timer interrupts the
  stream only while it waits on the network, never the caller's code running between
  two yielded deltas in the same task.
- Cancelling the caller's task or closing the generator exits the response context, so
  the connection is closed at once and the provider stops generating (and billing).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import httpx2
import openai
from loguru import logger

from core.metrics import endpoint_label
from providers.slots import Busy, Slots
from providers.sse import DONE, Delta, MalformedChunk, ProviderError, SSEDecoder, excerpt, parse_chunk

_MESSAGE_LIMIT: Final = 300
_DRAIN_GRACE_S: Final = 1.0
_RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})
# The SDK leaves the body unread:
_STREAMED_BODY: Final[openai.RequestOptions] = {"headers": {"X-Stainless-Raw-Response": "stream"}}
_STREAM_ERRORS: Final = (openai.APIError, httpx2.HTTPError, MalformedChunk, ProviderError)


@dataclass(frozen=True)
class LLMSettings:
    """Where and how to call the model; picklable, and its repr never shows the key."""

    base_url: str
    api_key: str = field(repr=False)
    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    connect_timeout_s: float = 10
    first_token_timeout_s: float = 60  # from sending the request to the first content token
    stall_timeout_s: float = 30  # longest silence once the body has started
    turn_timeout_s: float = 300  # the whole stream() call, retries and waits included
    max_retries: int = 4
    retry_base_s: float = 0.5
    retry_max_s: float = 20
    max_concurrent: int = 0  # requests in flight per ChatStreamer; 0 = unlimited
    max_background: int = 1  # background requests (summaries) in flight, within max_concurrent
    include_usage: bool = True

    def __post_init__(self) -> None:
        timeouts = (self.connect_timeout_s, self.first_token_timeout_s, self.stall_timeout_s, self.turn_timeout_s)
        if min(timeouts) <= 0:
            raise ValueError("LLM timeouts must be positive")
        if self.max_retries < 0 or self.max_concurrent < 0 or self.retry_base_s < 0 or self.retry_max_s < 0:
            raise ValueError("LLM retry and concurrency settings cannot be negative")


class LLMError(Exception):
    """A failed completion with a stable `code`; its message never holds a secret.

    Codes: llm_connect_timeout, llm_first_token_timeout, llm_stall, llm_timeout (turn
    budget spent), llm_connection, llm_http_<status>, llm_bad_stream, llm_provider_error,
    llm_error. `retryable` tells whether the failure is transient.
    """

    def __init__(self, code: str, message: str, retryable: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, self.message, self.retryable, self.retry_after_s)


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """How one ``stream()`` call ended, for the metrics (actors/metrics.py): one report per call."""

    endpoint: str  # the base URL without credentials, query or fragment (core.metrics.endpoint_label)
    model: str
    outcome: str  # "ok", "cancelled" (the caller stopped it), or the LLMError code
    queue_wait_s: float | None  # waiting for a request slot (max_concurrent); None: never got one
    first_token_s: float | None  # from the first request sent to the first content token, retries included
    retries: int
    usage: dict[str, Any] | None


class ChatStreamer:
    """One OpenAI-compatible client per worker process, streaming many turns concurrently."""

    def __init__(self, settings: LLMSettings, on_request_end: Callable[[RequestEnded], None] | None = None) -> None:
        self._settings = settings
        self._on_request_end = on_request_end
        self._endpoint = endpoint_label(settings.base_url)
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key or "not-needed",
            max_retries=0,
            # Only connecting is left to the transport; every other wait is bounded by _Deadlines.
            timeout=httpx2.Timeout(None, connect=settings.connect_timeout_s),
            # The SDK's aiohttp transport: 2.5x less CPU per streamed chunk than its default one
            # (bench/llm_chunk_bench.py). Its pool never queues (limit 0 = none): concurrency is
            # bounded by max_concurrent alone.
            http_client=openai.DefaultAioHttpClient(
                limits=httpx2.Limits(max_connections=0, max_keepalive_connections=None)
            ),
        )
        self._slots = Slots(settings.max_concurrent, settings.max_background)  # turns first
        self._params: dict[str, Any] = {"model": settings.model, "stream": True}
        if settings.temperature is not None:
            self._params["temperature"] = settings.temperature
        if settings.max_tokens is not None:
            self._params["max_tokens"] = settings.max_tokens
        if settings.include_usage:
            self._params["stream_options"] = {"include_usage": True}
        self._log = logger.bind(llm_model=settings.model)

    async def __aenter__(self) -> ChatStreamer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def endpoint(self) -> str:
        """Its base URL without credentials, query or fragment: the metrics' ``endpoint`` label."""
        return self._endpoint

    @property
    def model(self) -> str:
        return self._settings.model

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()

    async def stream(
        self, messages: list[dict[str, Any]], *, extra_body: dict[str, Any] | None = None, background: bool = False
    ) -> AsyncIterator[Delta]:
        """Yield the reply's text as `Delta`s, then one final Delta with finish_reason/usage if known.

        Content deltas have finish_reason and usage None. Raises `LLMError`. Iterate it from
        one task, and close it (e.g. `contextlib.aclosing`) if you stop early, so that the
        connection closes now rather than at garbage collection.

        A ``background`` request gives way to turns (providers/slots.py): it raises
        `LLMError` ``llm_busy`` at once when it cannot start, is never retried, and its task is
        cancelled when a turn needs its slot.
        """
        settings = self._settings
        slot = self._slots.background if background else self._slots.turn
        retries = 0 if background else settings.max_retries
        request = {**self._params, "messages": messages, **(extra_body or {})}
        deadlines = _Deadlines(settings)
        delay = 0.0
        yielded = complete = busy = False
        attempt, usage = 0, None
        try:
            for attempt in range(retries + 1):
                try:
                    if delay:
                        await asyncio.sleep(delay)
                    deadlines.arm()
                    async with slot(), deadlines.request(), self._post(request) as response:
                        body = response.aiter_bytes()
                        reply = _Reply(self._log_malformed)
                        async for data in body:
                            deadlines.got_bytes()
                            for delta in reply.feed(data):
                                deadlines.got_content()
                                yielded = True
                                deadlines.suspend()
                                yield delta
                                deadlines.resume()
                            if reply.done:
                                break
                        final = reply.final()
                        complete = True
                        if final is not None:
                            usage = final.usage
                            deadlines.suspend()
                            yield final
                            deadlines.resume()
                        if reply.done:  # read the rest so the connection can be reused
                            deadlines.limit(_DRAIN_GRACE_S)
                            async for _ in body:
                                pass
                    return
                except asyncio.CancelledError:
                    error = deadlines.expired_error()
                    if error is None:
                        raise
                except LLMError as exc:
                    error = exc
                except Busy:
                    busy = True
                    raise LLMError("llm_busy", "no LLM slot free for a background request") from None
                except _STREAM_ERRORS as exc:
                    error = self._llm_error(exc)
                if complete:  # the reply was whole; a failure while draining changes nothing
                    return
                if yielded or not error.retryable or attempt == retries:
                    raise error
                delay = self._retry_delay(attempt, error)
                if not deadlines.allows(delay):
                    raise error
                self._log.warning(
                    "LLM request failed; retrying",
                    code=error.code,
                    error=error.message,
                    attempt=attempt + 1,
                    max_retries=settings.max_retries,
                    delay_s=round(delay, 3),
                )
        finally:
            deadlines.close()
            if self._on_request_end is not None and not busy:  # a request never sent is none
                self._on_request_end(
                    RequestEnded(
                        self._endpoint,
                        settings.model,
                        "ok" if complete else _outcome(sys.exc_info()[1]),
                        deadlines.queue_wait_s,
                        deadlines.first_token_s,
                        attempt,
                        usage,
                    )
                )

    @contextlib.asynccontextmanager
    async def _post(self, request: dict[str, Any]) -> AsyncIterator[httpx2.Response]:
        """POST /chat/completions and hand over the unread streaming response.

        The SDK's documented low-level ``post`` keeps its auth, base URL and status errors but
        skips ``chat.completions.create``'s typed transform of the messages, which cost ~40% of
        a worker's CPU at 500 NPCs (a recursive walk of every message, on every request).
        """
        response = await self._client.post(
            "/chat/completions", body=request, cast_to=httpx2.Response, options=_STREAMED_BODY
        )
        try:
            yield response
        finally:
            await response.aclose()

    def _retry_delay(self, attempt: int, error: LLMError) -> float:
        """Retry-After when the server sent one, else exponential backoff with full jitter."""
        settings = self._settings
        if error.retry_after_s is not None:
            return min(error.retry_after_s, settings.retry_max_s)
        return random.uniform(0, min(settings.retry_max_s, settings.retry_base_s * 2**attempt))

    def _llm_error(self, exc: Exception) -> LLMError:
        """Our own description of a failure: the SDK's text may carry request details."""
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            return LLMError(
                f"llm_http_{status}",
                self._scrub(f"HTTP {status}: {_provider_message(exc.body)}"),
                retryable=status in _RETRYABLE_STATUSES or status >= 500,
                retry_after_s=_retry_after_s(exc.response.headers),
            )
        if isinstance(exc, openai.APITimeoutError) and not _disconnected(exc):  # only connecting has a timeout
            return LLMError(
                "llm_connect_timeout", f"no connection within {self._settings.connect_timeout_s:g} s", retryable=True
            )
        if isinstance(exc, ProviderError):
            message = exc.message if exc.code is None else f"{exc.code}: {exc.message}"
            return LLMError("llm_provider_error", self._scrub(message), retryable=True)
        if isinstance(exc, (MalformedChunk, httpx2.DecodingError)):
            return LLMError("llm_bad_stream", self._scrub(str(exc)), retryable=True)
        if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
            cause = exc.__cause__ if isinstance(exc, openai.APIConnectionError) and exc.__cause__ else exc
            return LLMError("llm_connection", self._scrub(f"{type(cause).__name__}: {cause}"), retryable=True)
        return LLMError("llm_error", self._scrub(f"{type(exc).__name__}: {exc}"))

    def _scrub(self, text: str) -> str:
        """Replace the API key wherever it appears, then truncate."""
        if self._settings.api_key:
            text = text.replace(self._settings.api_key, "***")
        return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "…"

    def _log_malformed(self, payload: bytes, first: bool) -> None:
        level = "WARNING" if first else "DEBUG"
        self._log.log(level, "Skipping malformed stream chunk", payload=self._scrub(excerpt(payload)))


def _outcome(exc: BaseException | None) -> str:
    """What a ``stream()`` call that did not complete ended with (the exception leaving it)."""
    if isinstance(exc, LLMError):
        return exc.code
    if exc is None or isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return "llm_error"


def _disconnected(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by a refused or lost connection rather than a timeout (the
    aiohttp transport reports every aiohttp connection error as a connect timeout)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectionError):
            return not isinstance(cause, asyncio.TimeoutError)
        cause = cause.__cause__
    return False


class _Reply:
    """What one response body has said so far: its content deltas, then how it finished."""

    __slots__ = ("done", "_decoder", "_on_malformed", "_payloads", "_malformed", "_finish_reason", "_usage", "_error")

    def __init__(self, on_malformed: Callable[[bytes, bool], None]) -> None:
        self.done = False  # [DONE] seen
        self._decoder = SSEDecoder()
        self._on_malformed = on_malformed
        self._payloads = self._malformed = 0
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._error: ProviderError | None = None  # raised once the text before it is handed over

    def feed(self, data: bytes) -> list[Delta]:
        """The content deltas these body bytes complete, stripped of finish_reason and usage.

        A provider error raises, but only after the text that came before it in the same read
        has been returned, so no streamed text is lost (the next call raises it).
        """
        if self._error is not None:
            raise self._error
        contents: list[Delta] = []
        for payload in self._decoder.feed(data):
            self._payloads += 1
            try:
                delta = parse_chunk(payload)
            except ProviderError as exc:
                if not contents:
                    raise
                self._error = exc
                break
            except MalformedChunk:
                self._on_malformed(payload, not self._malformed)
                self._malformed += 1
                continue
            if delta is DONE:
                self.done = True
                break
            if delta is None:
                continue
            if delta.content:
                contents.append(delta if delta.finish_reason is None and delta.usage is None else Delta(delta.content))
            self._finish_reason = delta.finish_reason or self._finish_reason
            self._usage = delta.usage or self._usage
        return contents

    def final(self) -> Delta | None:
        """The closing Delta once the body has ended, if finish_reason or usage is known."""
        if self._error is not None:
            raise self._error
        if not self._payloads:
            raise LLMError("llm_bad_stream", "the response held no SSE data line", retryable=True)
        if self._finish_reason is None and self._usage is None:
            return None
        return Delta("", self._finish_reason, self._usage)


class _Deadlines:
    """The deadlines of one `stream()` call, enforced by cancelling its task.

    Progress is recorded with attribute writes; the single timer, when it fires early,
    re-arms itself for the deadline as it now stands (only a deadline moving earlier
    re-arms it at once). While the generator is suspended at a `yield` the task runs the
    caller's code, so the timer leaves it alone and `resume()` checks the deadlines.
    """

    def __init__(self, settings: LLMSettings) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task: asyncio.Task = task
        self._baseline_cancels = self._task.cancelling()
        self._settings = settings
        self._called = self._loop.time()
        self._sent: float | None = None  # the first request, once a slot was free
        self._first_content: float | None = None
        self._turn_deadline = self._called + settings.turn_timeout_s
        self._first_token_deadline = math.inf
        self._last_progress = math.inf  # no stall clock before the first body byte
        self._suspended = False
        self._expired: str | None = None
        self._timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        """Start the timer if it is not running; raise LLMError if a deadline has passed."""
        if self._timer is None:
            deadline, code = self._next()
            if deadline <= self._loop.time():
                raise self._error(code)
            self._timer = self._loop.call_at(deadline, self._fire)

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """One HTTP request: the first-token clock runs, the stall clock from the first byte."""
        now = self._loop.time()
        self._sent = self._sent or now
        self._first_token_deadline = now + self._settings.first_token_timeout_s
        self._tighten()
        try:
            yield
        finally:
            self._first_token_deadline = self._last_progress = math.inf

    def got_bytes(self) -> None:
        first = self._last_progress == math.inf
        self._last_progress = self._loop.time()
        if first:
            self._tighten()

    def got_content(self) -> None:
        self._first_token_deadline = math.inf
        if self._first_content is None:
            self._first_content = self._loop.time()

    @property
    def queue_wait_s(self) -> float | None:
        return None if self._sent is None else self._sent - self._called

    @property
    def first_token_s(self) -> float | None:
        return None if self._sent is None or self._first_content is None else self._first_content - self._sent

    def suspend(self) -> None:
        self._suspended = True

    def resume(self) -> None:
        """Back from the caller: its time does not count as a stall."""
        self._suspended = False
        self._last_progress = self._loop.time()
        self.arm()

    def limit(self, seconds: float) -> None:
        """Bring the turn deadline forward to at most `seconds` from now."""
        self._turn_deadline = min(self._turn_deadline, self._loop.time() + seconds)
        self._tighten()

    def allows(self, delay: float) -> bool:
        """Whether waiting `delay` seconds still leaves time before the turn deadline."""
        return self._loop.time() + delay < self._turn_deadline

    def expired_error(self) -> LLMError | None:
        """After a CancelledError: our LLMError if a deadline caused it, None if the caller cancelled."""
        code, self._expired = self._expired, None
        if code is None or self._task.uncancel() > self._baseline_cancels:
            return None
        return self._error(code)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _next(self) -> tuple[float, str]:
        deadline, code = self._turn_deadline, "llm_timeout"
        if self._first_token_deadline < deadline:
            deadline, code = self._first_token_deadline, "llm_first_token_timeout"
        stall_deadline = self._last_progress + self._settings.stall_timeout_s
        if stall_deadline < deadline:
            deadline, code = stall_deadline, "llm_stall"
        return deadline, code

    def _tighten(self) -> None:
        """Re-arm the timer if a deadline moved earlier than it (the timer only chases later ones)."""
        deadline, _ = self._next()
        if self._timer is None or deadline < self._timer.when():
            self.close()
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._suspended:
            return
        deadline, code = self._next()
        if deadline > self._loop.time():
            self._timer = self._loop.call_at(deadline, self._fire)
            return
        self._expired = code
        self._task.cancel()

    def _error(self, code: str) -> LLMError:
        settings = self._settings
        if code == "llm_first_token_timeout":
            message = f"no content within {settings.first_token_timeout_s:g} s of the request"
            return LLMError(code, message, retryable=True)
        if code == "llm_stall":
            return LLMError(code, f"no data for {settings.stall_timeout_s:g} s", retryable=True)
        return LLMError(code, f"the turn's {settings.turn_timeout_s:g} s budget is spent")


def _provider_message(body: object) -> str:
    """The error message from a provider's error body (the SDK has unwrapped `error`)."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return "" if body is None else str(body)


def _retry_after_s(headers: httpx2.Headers) -> float | None:
    """Seconds requested by a Retry-After header, given as seconds or as an HTTP date."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
