"""The load-testing tool: its pure checks on hand-made frame sequences, and one short real run.

The real run checks that the tool works and reports completely, not how fast the server is: the
latency figures come from benchmark runs, not from the test suite.
"""

from __future__ import annotations

import random
import subprocess
import sys
from array import array
from pathlib import Path

import orjson
import psutil
import pytest

from core.spec import parse_spec
from loadtest import specs
from loadtest.metrics import AgentOrder, Problems, StampedText, interrupt_close_ms, percentiles, summary
from loadtest.report import llm_cost

ROOT = Path(__file__).resolve().parent.parent
STAMP = 1_700_000_000_000_000  # µs


def token(seq: int, stamp: int = STAMP) -> str:
    return f" w{seq}@{stamp}"


class Game:
    """Feeds frames to the checks the way the load generator does (loadtest.npc.Npc), then ends
    the run: what is still missing then is lost."""

    def __init__(self) -> None:
        self.problems = Problems()
        self.order = AgentOrder("bram", self.problems)
        self.texts: dict[str, StampedText] = {}
        self.latencies = array("d")
        self.live_at_end = False

    def feed(self, *frames: tuple) -> Problems:
        for kind, turn_id, *rest in frames:
            text = self.texts.setdefault(turn_id, StampedText(self.problems, turn_id))
            if kind == "started":
                self.order.started(turn_id)
            elif kind == "open":
                self.order.tag_open(turn_id, rest[0])
            elif kind == "chunk":
                reported = not self.order.tag_chunk(turn_id, rest[0])
                text.feed(rest[1], STAMP + 2500, self.latencies, reported)
            elif kind == "close":
                if self.order.tag_close(turn_id, rest[0]):
                    text.tag_closed()
            elif self.order.end(turn_id, kind):
                text.turn_ended(rest[0] if rest else None)
        for text in self.texts.values():
            text.settle()
        self.live_at_end = self.order.finish()
        return self.problems


def complete_turn(turn_id: str = "t1", words: int = 4) -> list[tuple]:
    """A well-formed turn: thought with token 0, say with the rest, finished."""
    return [
        ("started", turn_id),
        ("open", turn_id, 0),
        ("chunk", turn_id, 0, token(0)),
        ("close", turn_id, 0),
        ("open", turn_id, 1),
        *(("chunk", turn_id, 1, token(seq)) for seq in range(1, words)),
        ("close", turn_id, 1),
        ("agent_turn_finished", turn_id, words),
    ]


def counts(problems: Problems) -> dict:
    return {kind: n for kind, n in problems.counts.items() if n}


def test_percentiles_by_nearest_rank():
    assert percentiles(range(1, 101)) == {"p50": 50, "p95": 95, "p99": 99, "max": 100, "n": 100}
    assert percentiles([3.14159]) == {"p50": 3.142, "p95": 3.142, "p99": 3.142, "max": 3.142, "n": 1}
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    assert summary([1, 2, 6])["mean"] == 3 and summary([])["mean"] is None


def test_a_clean_turn_has_no_problem_and_gives_latencies():
    game = Game()
    assert counts(game.feed(*complete_turn())) == {}
    assert list(game.latencies) == [2.5] * 4


def test_an_interrupted_turn_may_stop_after_any_whole_token():
    game = Game()
    frames = complete_turn()[:6] + [("close", "t1", 1), ("agent_turn_interrupted", "t1")]
    assert counts(game.feed(*frames)) == {}


def test_a_lost_chunk_is_caught():
    frames = complete_turn()
    del frames[6]  # token 2
    assert counts(Game().feed(*frames)) == {"lost": 1}


def test_the_missing_tail_of_a_completed_turn_is_lost():
    frames = complete_turn(words=4)
    del frames[7]  # token 3, the last one
    problems = Game().feed(*frames)
    assert counts(problems) == {"lost": 1} and "never arrived" in problems.examples[0]


def test_a_duplicate_is_caught():
    frames = complete_turn()
    frames.insert(6, frames[6])  # a chunk twice
    assert counts(Game().feed(*frames)) == {"duplicated": 1}
    frames = complete_turn()
    frames.insert(5, ("open", "t1", 1))  # an open twice
    assert counts(Game().feed(*frames)) == {"duplicated": 1}
    frames = complete_turn() + [("agent_turn_interrupted", "t1")]  # a second end frame
    assert counts(Game().feed(*frames)) == {"duplicated": 1}


def test_a_frame_after_the_end_is_caught():
    frames = complete_turn() + [("chunk", "t1", 1, token(4))]
    problems = Game().feed(*frames)
    assert counts(problems) == {"out_of_order": 1} and "after the end of turn t1" in problems.examples[0]


def test_a_missing_close_is_caught():
    frames = complete_turn()
    frames.remove(("close", "t1", 1))  # the say tag is never closed before the end
    assert counts(Game().feed(*frames)) == {"lost": 1}
    frames = complete_turn()
    frames.remove(("close", "t1", 0))  # the thought tag is still open when say opens
    assert counts(Game().feed(*frames)) == {"lost": 1}


def test_late_frames_are_out_of_order_not_lost():
    frames = complete_turn()
    frames[-2], frames[-1] = frames[-1], frames[-2]  # the close after the end
    problems = Game().feed(*frames)
    assert counts(problems) == {"out_of_order": 1} and "arrived late" in problems.examples[0]
    frames = complete_turn()
    frames.append(frames.pop(7))  # the last token after the end
    assert counts(Game().feed(*frames)) == {"out_of_order": 1}
    frames = complete_turn()
    frames[0], frames[1] = frames[1], frames[0]  # the start after the first open
    assert counts(Game().feed(*frames)) == {"out_of_order": 1}
    frames = complete_turn()
    frames.insert(5, frames.pop(8))  # the say tag closed before its chunks
    assert counts(Game().feed(*frames)) == {"out_of_order": 3}  # its 3 chunks, nothing lost


def test_turn_level_order():
    late = complete_turn("t1")[:4] + complete_turn("t2")  # t2 starts before t1 ended
    assert counts(Game().feed(*late)) == {"lost": 1}
    never_started = complete_turn("t1")[1:]
    assert counts(Game().feed(*never_started)) == {"lost": 1}
    game = Game()
    game.feed(*complete_turn("t1")[:-1])  # never ended: slow or lost, the generator's drain tells
    assert game.live_at_end and counts(game.problems) == {}
    skipped_index = [
        ("started", "t1"),
        ("open", "t1", 0),
        ("close", "t1", 0),
        ("open", "t1", 2),
        ("close", "t1", 2),
        ("agent_turn_interrupted", "t1"),
    ]
    assert counts(Game().feed(*skipped_index)) == {"lost": 1}
    stray_chunk = [
        ("started", "t1"),
        ("open", "t1", 0),
        ("close", "t1", 0),
        ("chunk", "t1", 0, token(0)),
        ("agent_turn_interrupted", "t1"),
    ]
    assert counts(Game().feed(*stray_chunk)) == {"out_of_order": 1}


def test_token_text_is_checked_and_put_together_across_chunks():
    frames = complete_turn(words=3)
    whole = token(2)
    frames[6:7] = [("chunk", "t1", 1, whole[:5]), ("chunk", "t1", 1, whole[5:12]), ("chunk", "t1", 1, whole[12:])]
    assert counts(Game().feed(*frames)) == {}
    swapped = complete_turn(words=4)
    swapped[6], swapped[7] = swapped[7], swapped[6]
    assert counts(Game().feed(*swapped)) == {"out_of_order": 1}
    garbled = complete_turn()
    garbled[6] = ("chunk", "t1", 1, " hello there friend, how do you do?")
    assert counts(Game().feed(*garbled))["corrupted"] == 1


def test_interrupt_close_matches_the_cut_turns_request():
    def record(text, end, closed_at):
        return {
            "body": {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": text}]},
            "end": end,
            "closed_at": closed_at,
        }

    records = [
        record("[speech] Hi (ev npc1.1)", "client_closed", 10.25),
        record("[speech] Hi (ev npc1.1)\n[tool result] done", "completed", 11.0),
        record("[speech] Hi (ev npc2.1)", "completed", 12.0),
    ]
    closes = interrupt_close_ms(records, [("npc1.1", 10.0), ("npc2.1", 11.5), ("npc3.1", 1.0)])
    assert closes == [250.0]


def test_generated_specs_are_valid_and_varied():
    rng = random.Random(7)
    states = [specs.make_spec(rng, n, with_tools=n % 3 == 0) for n in range(200)]
    parsed = [parse_spec(specs.state_for_turn(state, rng)) for state in states]
    assert all({"thought", "say"} <= set(spec.allowed_tags) for spec in parsed)
    assert sum(bool(spec.tools) for spec in parsed) == 67
    assert len({orjson.dumps(state) for state in states}) == 200
    assert specs.EVENT_MARK.findall(specs.event_text(rng, "npc4.2", "open_door")) == ["npc4.2"]


def test_a_short_real_run_reports_everything(tmp_path):
    report_path, plot_path = tmp_path / "report.json", tmp_path / "plot.png"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            "--npcs",
            "6",
            "--clients",
            "2",
            "--generator-processes",
            "2",
            "--workers",
            "1",
            "--duration",
            "3",
            "--interrupt-ratio",
            "0.3",
            "--tool-share",
            "0.5",
            "--llm-tokens",
            "12",
            "--llm-tps",
            "30",
            "--llm-ttft",
            "0.1",
            "--price-prompt",
            "2",
            "--price-completion",
            "8",
            "--report",
            str(report_path),
            "--plot",
            str(plot_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "chunk p50" in run.stderr and "chunk_latency_ms" in run.stdout  # progress lines, table
    report = orjson.loads(report_path.read_bytes())
    assert report["turns_completed"] > 0 and report["tokens_per_s"] > 0 and report["events_per_s"] > 0
    assert {
        key: report[key] for key in ("lost_events", "duplicated_events", "out_of_order_events", "corrupted_chunks")
    } == dict.fromkeys(("lost_events", "duplicated_events", "out_of_order_events", "corrupted_chunks"), 0)
    assert report["errors"] == {"count": 0, "first": [], "codes": {}}
    assert isinstance(report["turns_interrupted"], int) and report["ideal_turn_ms"] == pytest.approx(500)
    for key in ("first_tag_ms", "chunk_latency_ms", "interrupt_ms", "interrupt_close_ms", "turn_ms"):
        assert {"p50", "p95", "p99", "max", "n"} <= set(report[key]), key
    assert report["chunk_latency_ms"]["n"] > 0 and report["turn_ms"]["mean"] > 0
    roles = {proc["role"] for proc in report["server"]["processes"]}
    assert {"run.py", "gateway", "worker"} <= roles
    assert report["server"]["cpu_percent"]["max"] > 0 and report["server"]["rss_mb"]["mean"] > 0
    assert len(report["generator"]["processes"]) == 2 and report["timeline"]
    [node] = report["nodes"]  # one node, which carried the frames
    assert node["workers"] == 1 and node["frames_per_s"] > 0
    cost = report["llm_cost"]  # the server's npc_llm_cost_total, at the prices given
    assert cost["total"] > 0 and 0 < cost["per_npc_hour"] <= cost["total"] * 3600 / (6 * 3)
    assert "per NPC-hour" in run.stdout
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    started = [proc["pid"] for group in ("server", "llm", "generator") for proc in report[group]["processes"]]
    assert report["leftover_processes"] == [] and not [pid for pid in started if alive(pid)]


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie not yet reaped by init."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cost_per_npc_hour():
    assert llm_cost(1.0, 3.0, npcs=10, seconds=360) == {"total": 2.0, "per_npc_hour": 2.0}
    assert llm_cost(None, 0.5, npcs=1, seconds=3600) == {"total": 0.5, "per_npc_hour": 0.5}
    assert llm_cost(None, None, npcs=1, seconds=1) is None  # the server exports no cost
