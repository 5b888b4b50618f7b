"""The per-worker stream: its handshake admits only a holder of the start's secret for the right
worker generation, its records survive any split, and its asyncio ends carry items in order over
real Unix and TCP sockets and tell each side when the other is gone."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.link import LinkListener, connect
from actors.messages import Frame, ToAgent, WorkerGone
from core.link import (
    MAX_RECORD_BYTES,
    LinkRefused,
    Records,
    client_answer,
    client_check,
    encode,
    new_secret,
    server_check,
    server_hello,
)

SECRET = new_secret()


def test_the_handshake_proves_both_sides():
    hello, nonce = server_hello()
    answer, expected = client_answer(SECRET, hello, 3, 7)
    proof = server_check(SECRET, nonce, answer, 3, 7)
    client_check(expected, proof)


@pytest.mark.parametrize(
    "secret, index, generation",
    [(new_secret(), 3, 7), (SECRET, 4, 7), (SECRET, 3, 6)],
    ids=["another start's secret", "another worker", "an older generation"],
)
def test_the_worker_refuses_anyone_else(secret, index, generation):
    hello, nonce = server_hello()
    answer, _ = client_answer(secret, hello, index, generation)
    with pytest.raises(LinkRefused):
        server_check(SECRET, nonce, answer, 3, 7)


def test_the_gateway_refuses_a_worker_without_the_secret():
    hello, _ = server_hello()
    _, expected = client_answer(SECRET, hello, 3, 7)
    other_hello, other_nonce = server_hello()  # a proof from another handshake: replayed
    other_answer, _ = client_answer(SECRET, other_hello, 3, 7)
    for forged in (bytes(32), server_check(SECRET, other_nonce, other_answer, 3, 7)):
        with pytest.raises(LinkRefused):
            client_check(expected, forged)


def test_a_replayed_answer_is_refused():
    hello, nonce = server_hello()
    answer, _ = client_answer(SECRET, hello, 3, 7)
    _, other_nonce = server_hello()
    with pytest.raises(LinkRefused):
        server_check(SECRET, other_nonce, answer, 3, 7)


@pytest.mark.parametrize("garbage", [b"", b"GET / HTTP/1.1\r\n\r\n" + bytes(60), bytes(80)])
def test_garbage_is_refused_before_anything_is_decoded(garbage):
    _, nonce = server_hello()
    with pytest.raises(LinkRefused):
        server_check(SECRET, nonce, garbage, 0, 0)
    with pytest.raises(LinkRefused):
        client_answer(SECRET, garbage, 0, 0)


items_strategy = st.lists(
    st.lists(st.tuples(st.sampled_from(["frame", "agent"]), st.text(max_size=20), st.binary(max_size=50)), max_size=5),
    min_size=1,
    max_size=6,
)


@given(items_strategy, st.data())
def test_records_come_back_whatever_the_split(batches, data):
    stream = b"".join(encode(items) for items in batches)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    records, out, last = Records(), [], 0
    for cut in [*cuts, len(stream)]:
        out += records.feed(stream[last:cut])
        last = cut
    assert out == batches


def test_an_oversized_record_is_refused():
    with pytest.raises(LinkRefused):
        Records().feed((MAX_RECORD_BYTES + 1).to_bytes(4, "big"))


@pytest.mark.parametrize("host", [None, "127.0.0.1"], ids=["unix", "tcp"])
async def test_items_flow_both_ways_in_order_and_each_end_sees_the_other_go(host):
    at_worker, at_gateway = [], []
    worker_lost, gateway_lost = asyncio.Event(), asyncio.Event()
    listener = LinkListener(SECRET, 2, 5, at_worker.extend, worker_lost.set)
    address = await listener.start(host)
    if host is None:
        folder = os.path.dirname(address.removeprefix("unix:"))
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    listener.send(WorkerGone(0))  # before the gateway connected: kept for it
    link = await connect(address, SECRET, 2, 5, at_gateway.extend, gateway_lost.set)
    for n in range(1000):
        link.send(ToAgent("s", f"a{n}", {"type": "notification_event", "event": {"n": n}}))
    await listener.connected.wait()
    for n in range(1000):
        listener.send(Frame("s", b"%d" % n))
    while len(at_worker) < 1000 or len(at_gateway) < 1001:
        await asyncio.sleep(0.01)
    assert at_worker == [ToAgent("s", f"a{n}", {"type": "notification_event", "event": {"n": n}}) for n in range(1000)]
    assert at_gateway == [WorkerGone(0)] + [Frame("s", b"%d" % n) for n in range(1000)]
    assert {type(item) for item in at_worker} == {ToAgent}  # the named types survive the pickle
    assert [type(item) for item in at_gateway[:2]] == [WorkerGone, Frame]
    if host is None:
        assert not os.path.exists(address.removeprefix("unix:")), "it stops listening once linked"
    await link.aclose()
    await asyncio.wait_for(worker_lost.wait(), 10)
    assert not gateway_lost.is_set(), "closing one's own end is not a loss"
    await listener.aclose()


async def test_a_stranger_is_refused_and_the_gateway_still_gets_in():
    listener = LinkListener(SECRET, 0, 0, lambda items: None, lambda: None)
    address = await listener.start("127.0.0.1")
    with pytest.raises((LinkRefused, asyncio.IncompleteReadError, ConnectionError)):
        await connect(address, new_secret(), 0, 0, lambda items: None, lambda: None)
    with pytest.raises((LinkRefused, asyncio.IncompleteReadError, ConnectionError)):
        await connect(address, SECRET, 0, 1, lambda items: None, lambda: None)  # a newer generation's
    link = await connect(address, SECRET, 0, 0, lambda items: None, lambda: None)
    assert link.open
    await link.aclose()
    await listener.aclose()


async def test_a_batching_end_holds_what_follows_a_write_for_its_interval():
    """``frame_batch_s``: the first item leaves at once; what follows within the interval waits
    and leaves with everything sent meanwhile, in one record, at the latest when the link closes.
    The interval (60 s) is far longer than any wait here: nothing depends on how fast this runs."""
    records = []
    listener = LinkListener(SECRET, 0, 0, lambda items: None, lambda: None, flush_interval_s=60)
    address = await listener.start(None)
    link = await connect(address, SECRET, 0, 0, records.append, lambda: None)
    await listener.connected.wait()
    listener.send(Frame("s", b"first"))
    async with asyncio.timeout(10):  # at once, not after the interval
        while not records:
            await asyncio.sleep(0.01)
    listener.send(Frame("s", b"second"))
    for _ in range(3):
        await asyncio.sleep(0)  # a flush at once (interval 0) would run here
    listener.send(Frame("s", b"third"))
    await listener.aclose()  # closing sends what waits
    async with asyncio.timeout(10):
        while len(records) < 2:
            await asyncio.sleep(0.01)
    assert records == [[Frame("s", b"first")], [Frame("s", b"second"), Frame("s", b"third")]]
    await link.aclose()
