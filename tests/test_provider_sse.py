"""The SSE decoder and chunk parser on their own: every line-end style, every split, every odd chunk."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.sse import DONE, Delta, MalformedChunk, ProviderError, SSEDecoder, parse_chunk


def chunk(delta: dict | None = None, finish_reason: str | None = None, **extra) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices, **extra})


def body(payloads: list[bytes], newline: bytes = b"\n") -> bytes:
    """An SSE body as servers write it, with comments and ignored fields around the data."""
    events = [b": keep-alive" + newline]
    for index, payload in enumerate(payloads):
        events.append(b"event: message" + newline + b"id: %d" % index + newline + b"data: " + payload + newline)
    return newline.join(events) + newline


def feed_all(parts: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    return [payload for part in parts for payload in decoder.feed(part)]


PAYLOADS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Héllo, wörld 🎉 "}),
    chunk({"content": None}),
    chunk({"content": "日本語"}),
    chunk({}, "stop"),
    chunk(usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
    b"[DONE]",
]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_whole_body_any_line_end(newline):
    assert feed_all([body(PAYLOADS, newline)]) == PAYLOADS


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_byte_by_byte_splits_multibyte_utf8_and_crlf(newline):
    data = body(PAYLOADS, newline)
    assert feed_all([data[i : i + 1] for i in range(len(data))]) == PAYLOADS


@given(st.data())
def test_any_split_gives_the_same_payloads(data):
    texts = data.draw(st.lists(st.text(min_size=1), max_size=8))
    payloads = [chunk({"content": text}) for text in texts] + [b"[DONE]"]
    raw = body(payloads, data.draw(st.sampled_from([b"\n", b"\r\n", b"\r"])))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    parts = [raw[start:end] for start, end in zip([0, *cuts], [*cuts, len(raw)])]
    assert feed_all(parts) == payloads


def test_data_without_space_empty_data_and_unknown_fields():
    raw = b'data:{"a":1}\ndata:\ndata: \nretry: 3000\nfoo: bar\ndata\n: comment\ndata:  two spaces\n'
    assert feed_all([raw]) == [b'{"a":1}', b" two spaces"]


def test_an_incomplete_line_waits_for_its_end():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DO") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"NE]\r") == [b"[DONE]"]
    assert decoder.feed(b"\ndata: x\n") == [b"x"]  # the LF of the split CRLF is not an empty line


def test_a_line_without_end_is_bounded():
    decoder = SSEDecoder(max_line_bytes=100)
    with pytest.raises(MalformedChunk):
        decoder.feed(b"data: " + b"x" * 200)
    assert decoder.feed(b"\ndata: ok\n") == [b"ok"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"[DONE]", DONE),
        (chunk({"role": "assistant", "content": ""}), None),
        (chunk({"role": "assistant"}), None),
        (chunk({"content": None}), None),
        (chunk({"content": "hi"}), Delta("hi")),
        (chunk({}, "stop"), Delta("", "stop")),
        (chunk({"content": "end"}, "length"), Delta("end", "length")),
        (chunk(), None),
        (chunk(usage=None), None),
        (chunk(usage={"total_tokens": 7}), Delta("", None, {"total_tokens": 7})),
        (orjson.dumps({"choices": None, "usage": {"total_tokens": 7}}), Delta("", None, {"total_tokens": 7})),
        (chunk({"content": "hi"}, usage=None), Delta("hi")),
        (orjson.dumps({"choices": [{"index": 1, "delta": {"content": "other"}}]}), None),
        (
            orjson.dumps(
                {"choices": [{"index": 1, "delta": {"content": "b"}}, {"index": 0, "delta": {"content": "a"}}]}
            ),
            Delta("a"),
        ),
        (orjson.dumps({"choices": [{"delta": {"content": "no index"}}]}), Delta("no index")),
    ],
)
def test_parse_chunk(payload, expected):
    assert parse_chunk(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b'{"choices": [',
        b"[1, 2]",
        b'"text"',
        b'{"choices": {"0": {}}}',
        b'{"choices": ["x"]}',
        b'{"choices": [{"delta": {"content": 5}}]}',
        "é".encode("latin-1"),
    ],
)
def test_malformed_chunks_raise(payload):
    with pytest.raises(MalformedChunk):
        parse_chunk(payload)


def test_an_error_object_in_the_stream_is_a_provider_error():
    payload = orjson.dumps(
        {
            "error": {"code": 502, "message": "Provider disconnected"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
    )
    with pytest.raises(ProviderError) as caught:
        parse_chunk(payload)
    assert caught.value.message == "Provider disconnected" and caught.value.code == 502
