"""Placement "dedicated" without processes: core/dedicated.py's bounded slots, reused lowest first
under a newer generation, and the router acting on them."""

from __future__ import annotations

import asyncio

from actors.messages import Retire
from config.settings import load_settings
from core import protocol as p
from core.dedicated import DedicatedSlots
from gateway.journal import Journal
from gateway.memories import MemoryStore
from gateway.router import Router
from tests.test_router_workers import Sink


def test_slots_are_bounded_and_reused_lowest_first_with_a_newer_generation():
    slots = DedicatedSlots(3)
    assert [slots.take(key) for key in "abc"] == [(0, 0), (1, 0), (2, 0)]
    assert slots.full and slots.take("d") is None
    assert slots.release(2) == "c" and slots.release(0) == "a"
    assert slots.release(0) is None  # already free: not freed twice
    assert slots.take("d") == (0, 1) and slots.take("e") == (2, 1)
    assert slots.full and slots.take("f") is None
    assert slots.release(1) == "b" and slots.release(0) == "d" and not slots.full


def test_churn_never_opens_more_slots_than_the_limit():
    slots = DedicatedSlots(2)
    for n in range(1000):
        slot, _ = slots.take(n)
        assert slot < 2
        slots.release(slot)
    assert slots.take("x") == (0, 1000)


async def dedicated_router(tmp_path, clock):
    settings = load_settings(env={}, overrides={"placement": "dedicated", "max_dedicated_workers": 2})
    sent: list = []
    started: list[tuple[int, int]] = []
    journal = Journal(str(tmp_path), False, 100, lambda items: sent.extend(items), memories=MemoryStore.of(settings))
    router = Router(settings, journal, clock=lambda: clock[0], start_worker=lambda *slot: started.append(slot))
    await journal.open()
    return router, sent, started


async def retired(sent: list) -> list:
    """The Retire items released so far, once the journal has released everything queued."""
    while len(sent) < 2 or type(sent[-1][1]) is not Retire:
        await asyncio.sleep(0.01)
    return [item for item in sent if type(item[1]) is Retire]


async def test_the_router_starts_a_worker_per_agent_refuses_past_the_bound_and_retires_idle_ones(tmp_path):
    clock = [0.0]
    router, sent, started = await dedicated_router(tmp_path, clock)
    conn = Sink()
    notice = p.parse_frame(b'{"type": "notification_event", "agent_ids": ["a"], "event": {"text": "hi"}}')
    for agent_id in ("a", "b"):
        assert router.route_or_refuse(conn, agent_id, notice) is None
    assert started == [(0, 0), (1, 0)] and router.live_workers() == []  # none is up yet
    refused = router.route_or_refuse(conn, "c", notice)
    assert refused is not None and refused["code"] == p.TOO_MANY_WORKERS
    assert refused["ref"] == {"type": "notification_event", "agent_id": "c"}
    assert router.session_agents["s"] == 2 and ("s", "c") not in router.journal.known
    router.add_worker(0, 0, 100, router.settings.node)
    router.add_worker(1, 0, 101, router.settings.node)
    clock[0] = 10.0
    assert router.deactivate_idle(5.0) == 2
    assert await retired(sent) == [((0, 0), Retire("s", "a")), ((1, 0), Retire("s", "b"))]
    assert router.live_workers() == [] and router.agent_count == 0
    # Their slots are free again, under a newer generation.
    assert router.route_or_refuse(conn, "c", notice) is None
    assert router.route_or_refuse(conn, "a", notice) is None
    assert started[2:] == [(0, 1), (1, 1)]
    await router.journal.close()


async def test_a_lost_dedicated_worker_frees_its_slot_and_is_not_awaited(tmp_path):
    router, _, started = await dedicated_router(tmp_path, [0.0])
    conn = Sink()
    notice = p.parse_frame(b'{"type": "notification_event", "agent_ids": ["a"], "event": {"text": "hi"}}')
    router.route_or_refuse(conn, "a", notice)
    router.add_worker(0, 0, 100, router.settings.node)
    router.worker_lost(0)
    assert router.live_workers() == [] and router.agent_count == 0
    router.route_or_refuse(conn, "a", notice)
    assert started == [(0, 0), (0, 1)]
    await router.journal.close()
