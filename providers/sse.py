"""Decoding of OpenAI-compatible chat-completion streams, kept free of I/O.

The openai SDK builds a pydantic object per streamed chunk, which costs several times
the CPU of the rest of the pipeline (bench/llm_chunk_bench.py measures it). This module
works on the raw body bytes instead: `SSEDecoder` cuts them into `data:` payloads
whatever the network splits, and `parse_chunk` turns one payload into the little a
turn needs (text, finish reason, usage) with orjson. Being pure, both are tested
exhaustively without a server.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

_DATA_FIELD: Final = b"data:"
_DONE_PAYLOAD: Final = b"[DONE]"
_EXCERPT_BYTES: Final = 120


class MalformedChunk(ValueError):
    """A payload or line that is not a valid chat-completion chunk."""


class ProviderError(Exception):
    """An error object the provider sent inside an otherwise healthy stream (e.g. OpenRouter)."""

    def __init__(self, message: str, code: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _Sentinel(enum.Enum):
    DONE = "[DONE]"


DONE: Final = _Sentinel.DONE
"""Returned by `parse_chunk` for the `data: [DONE]` terminator."""


@dataclass(frozen=True, slots=True)
class Delta:
    """What one chunk contributes to the answer of choice 0."""

    content: str
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


class SSEDecoder:
    """Incremental Server-Sent Events decoder yielding the payload of each `data:` line.

    Lines may end in LF, CRLF or CR, and any of them (or a multi-byte UTF-8 character)
    may be split across `feed` calls. A payload is emitted as soon as its line ends
    rather than at the blank line closing the event: OpenAI-compatible servers put one
    JSON chunk per `data:` line, and this also tolerates servers that omit the blank
    line. Comments, `event:`, `id:`, `retry:` and empty `data:` lines carry nothing a
    chat stream needs and are dropped.
    """

    __slots__ = ("_partial", "_after_cr", "_max_line_bytes")

    def __init__(self, max_line_bytes: int = 4 << 20) -> None:
        self._partial = b""
        self._after_cr = False
        self._max_line_bytes = max_line_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Consume body bytes; return the payloads of the `data:` lines they complete."""
        if not data:
            return []
        if self._after_cr and data[0] == 0x0A:  # the LF of a CRLF split across feeds
            data = data[1:]
        self._after_cr = False
        if b"\r" in data:
            self._after_cr = data[-1] == 0x0D
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self._max_line_bytes:
            self._partial = b""
            raise MalformedChunk(f"SSE line longer than {self._max_line_bytes} bytes")
        payloads = []
        for line in lines:
            if line.startswith(_DATA_FIELD):
                payload = line[6:] if line[5:6] == b" " else line[5:]
                if payload:
                    payloads.append(payload)
        return payloads


def parse_chunk(payload: bytes) -> Delta | None | Literal[_Sentinel.DONE]:
    """Decode one `data:` payload.

    Returns `DONE` for the terminator, None for chunks with nothing for choice 0
    (role-only or `content: null` deltas, other choices, usage-less empty chunks),
    else a `Delta`. Raises `MalformedChunk` for invalid JSON or shapes, and
    `ProviderError` when the chunk carries an `error` object.
    """
    if payload == _DONE_PAYLOAD:
        return DONE
    try:
        chunk = orjson.loads(payload)
        error = chunk.get("error")
        if error:
            raise _provider_error(error)
        usage = chunk.get("usage") or None
        choice = _first_choice(chunk.get("choices"))
        if choice is None:
            return None if usage is None else Delta("", None, usage)
        content = (choice.get("delta") or {}).get("content") or ""
        finish_reason = choice.get("finish_reason")
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise MalformedChunk(f"not a chat-completion chunk: {excerpt(payload)}") from exc
    if not isinstance(content, str):
        raise MalformedChunk(f"non-text content: {excerpt(payload)}")
    if not content and finish_reason is None and usage is None:
        return None
    return Delta(content, finish_reason, usage)


def _first_choice(choices: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The choice with index 0; with n > 1 servers interleave one choice per chunk."""
    if not choices:
        return None
    choice = choices[0]
    if choice.get("index", 0) == 0:
        return choice
    return next((c for c in choices if c.get("index", 0) == 0), None)


def _provider_error(error: object) -> ProviderError:
    if isinstance(error, dict):
        return ProviderError(str(error.get("message") or error), error.get("code"))
    return ProviderError(str(error))


def excerpt(data: bytes, limit: int = _EXCERPT_BYTES) -> str:
    """A short printable excerpt of raw bytes for logs and error messages."""
    text = data[:limit].decode("utf-8", "replace")
    return text + "…" if len(data) > limit else text
