"""The pure parts of /metrics: adding snapshots up, keeping a dead worker's counts, the cost rule,
the endpoint label, and the latencies the gateway reads from frames (core/openturns.py)."""

from __future__ import annotations

import orjson
import pytest

from actors.metrics import Metrics
from core import protocol as p
from core.metrics import Family, Price, Sample, WorkerTotals, cost_family, endpoint_label, merge
from core.openturns import FIRST_SAY, FIRST_TAG, INTERRUPT, OpenTurns


def sample_value(families: list[Family], name: str, **labels: str) -> float:
    return sum(
        s.value for f in families for s in f.samples if s.name == name and labels.items() <= dict(s.labels).items()
    )


def worker(completed: int, active: float) -> list[Family]:
    return [
        Family("npc_turns", "counter", "turns", (Sample("npc_turns_total", (("outcome", "completed"),), completed),)),
        Family("npc_hosted", "gauge", "hosted", (Sample("npc_hosted", (), active),)),
    ]


def test_merge_adds_samples_of_the_same_name_and_labels():
    merged = merge([worker(2, 5), worker(3, 7), [Family("npc_turns", "counter", "turns", ())]])
    assert sample_value(merged, "npc_turns_total", outcome="completed") == 5
    assert sample_value(merged, "npc_hosted") == 12
    assert [f.name for f in merged] == ["npc_turns", "npc_hosted"]


def test_a_dead_workers_counters_stay_and_its_gauges_go():
    totals = WorkerTotals()
    totals.reported(0, worker(2, 5))
    totals.reported(1, worker(3, 7))
    totals.retire(0)
    totals.retire(0)  # its stream's end and its replacement both say so: counted once
    totals.reported(0, worker(1, 4))  # the replacement starts from zero
    merged = totals.merged()
    assert sample_value(merged, "npc_turns_total") == 2 + 3 + 1
    assert sample_value(merged, "npc_hosted") == 7 + 4


def test_real_histograms_add_up_bucket_by_bucket():
    a, b = Metrics(), Metrics()
    a.chunk_latency.observe(0.002)
    b.chunk_latency.observe(0.002)
    b.chunk_latency.observe(3.0)
    merged = merge([a.snapshot(), b.snapshot()])
    assert sample_value(merged, "npc_chunk_latency_seconds_count") == 3
    assert sample_value(merged, "npc_chunk_latency_seconds_bucket", le="0.0025") == 2
    assert sample_value(merged, "npc_chunk_latency_seconds_bucket", le="+Inf") == 3
    assert not any(s.name.endswith("_created") for f in merged for s in f.samples)


def test_cost_is_tokens_at_their_models_price():
    tokens = Family(
        "npc_llm_tokens",
        "counter",
        "tokens",
        (
            Sample("npc_llm_tokens_total", (("kind", "prompt"), ("model", "m")), 2_000_000),
            Sample("npc_llm_tokens_total", (("kind", "completion"), ("model", "m")), 500_000),
            Sample("npc_llm_tokens_total", (("kind", "prompt"), ("model", "unpriced")), 1_000),
        ),
    )
    cost = cost_family([tokens], {"m": Price(prompt=0.15, completion=0.6)})
    assert cost.samples == (Sample("npc_llm_cost_total", (("model", "m"),), pytest.approx(0.3 + 0.3)),)


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("http://127.0.0.1:8099/v1", "http://127.0.0.1:8099/v1"),
        ("https://user:sk-SECRET@openrouter.ai/api/v1/?key=sk-SECRET#x", "https://openrouter.ai/api/v1"),
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
        ("http://host:notaport/v1", "invalid"),
    ],
)
def test_the_endpoint_label_holds_no_credentials(url, label):
    assert endpoint_label(url) == label


def test_the_gateway_reads_first_tag_first_say_and_interrupt_from_frames():
    seen: list[tuple[str, float]] = []
    books = OpenTurns(lambda what, seconds: seen.append((what, seconds)))
    key = ("s", "bram")
    books.assigned(key, "t1", "e1", now=10.0)
    for frame, now in [
        (p.turn_started("bram", "t1", "e1"), 10.1),
        (p.tag_open("bram", "t1", 0, "thought", {}), 10.5),
        (p.tag_chunk("bram", "t1", 0, "thought", "hm"), 10.6),
        (p.tag_close("bram", "t1", 0, "thought"), 10.7),
        (p.tag_open("bram", "t1", 1, "Say", {}), 11.0),
    ]:
        books.frame("s", orjson.dumps(frame), now)
    books.assigned(key, "t2", "e2", now=12.0)  # cuts into t1
    books.frame("s", orjson.dumps(p.turn_interrupted("bram", "t1", "new_event", "e2")), 12.25)
    assert seen == [(FIRST_TAG, pytest.approx(0.5)), (FIRST_SAY, pytest.approx(1.0)), (INTERRUPT, 0.25)]
    assert not books.running(key, "t1") and books.running(key, "t2")
