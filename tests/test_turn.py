"""Tests for core.turn: the turn lifecycle alone, over every order of events in small cases, then as
a hypothesis state machine. The contract's per-turn guarantees are checked on every trace: started
before any tag, every open tag closed before the end, exactly one end, nothing after it."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from functools import cache

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from core import protocol as p
from core.spec import TagSpec, parse_spec
from core.tagstream import TagStreamParser
from core.turn import (
    END_TYPES,
    Phase,
    Prompt,
    RecordAnswer,
    RequestState,
    SeenTurn,
    Stream,
    TurnEnded,
    TurnMachine,
    error_end,
    turn_of_request,
)

SPEC = parse_spec({"name": "Bram"})
USAGE = {"prompt_tokens": 3, "completion_tokens": 4}
STEPS = (RequestState, Prompt, Stream)

Event = Callable[[TurnMachine], list]

TEXTS = {  # the text each text-carrying event gives, and the phase that parses it
    "text_open": (Phase.STREAMING, "<say>a &am"),
    "text_more": (Phase.STREAMING, "p;b</say><action name=x"),
    "person": (Phase.PROMPT, "<say>hi &amp; bye</say><thought>hm"),
    "fallback": (Phase.STREAMING, "<say>Sorry &amp; &lt;no&gt;</say>"),  # parsed only before any text
}
FALLBACK = {"why": "endpoint_failed", "rung": 1}
EVENTS: dict[str, Event] = {
    "state": lambda m: m.state_received(SPEC),
    "state_timeout": lambda m: m.state_timed_out(None, 2.0),
    "state_timeout_fallback": lambda m: m.state_timed_out(SPEC, 2.0),
    "person": lambda m: m.person_answered(TEXTS["person"][1]),
    "nobody": lambda m: m.person_answered(None),
    "text_open": lambda m: m.llm_text(TEXTS["text_open"][1]),
    "text_more": lambda m: m.llm_text(TEXTS["text_more"][1]),
    "usage": lambda m: m.llm_usage(USAGE) or [],
    "finish": lambda m: m.llm_finished(),
    "llm_fail": lambda m: m.llm_failed("HTTP 500"),
    "rung": lambda m: m.llm_rung(False) or [],
    "fallback": lambda m: m.fallback_spoken("Sorry & <no>", FALLBACK),
    "fail": lambda m: m.failed("turn failed: boom"),
    "cancel": lambda m: m.cancelled(),
    "interrupt": lambda m: m.interrupt("new_event", "ev-2"),
    "disconnect": lambda m: m.interrupt("disconnected"),
}
ENDINGS = ("text_open", "finish", "llm_fail", "fallback", "fail", "cancel", "interrupt")  # what races at the end

# Event orders that reach each phase a turn can be cut in.
PREFIXES = {
    "state": (),
    "prompt": ("state",),
    "prompt_fallback": ("state_timeout_fallback",),
    "streaming": ("state", "nobody"),
    "streaming_tag_open": ("state", "nobody", "text_open"),
    "streaming_after_usage": ("state", "nobody", "text_open", "text_more", "usage"),
}


class Trace:
    """A machine and everything it gave, with what the checks need to know of each event."""

    def __init__(self) -> None:
        self.machine = TurnMachine("bram", "t1", "ev-1")
        self.outputs: list = self.machine.start()
        self.fed: list[str] = []  # the text the machine parsed
        self.ended_by: str | None = None

    def send(self, name: str, event: Event, text: tuple[Phase, str] | None = None) -> None:
        """Send one event; ``text`` is the text it carries and the phase in which it is parsed."""
        before = self.machine.phase
        out = event(self.machine)
        if before is Phase.ENDED:
            assert out == [], f"{name} after the end gave {out}"
        if text is not None and before is text[0] and not (name == "fallback" and self.fed):
            self.fed.append(text[1])
        if self.ended_by is None and self.machine.ended:
            self.ended_by = name
        self.outputs += out

    def run(self, names: tuple[str, ...]) -> Trace:
        for name in names:
            self.send(name, EVENTS[name], TEXTS.get(name))
        return self


def tags_of(frames: list[dict]) -> list[tuple]:
    """Each tag of the frames as (index, tag, attrs, whole text, closed)."""
    tags: dict[int, list] = {}
    for f in frames:
        if f["type"] == "agent_tag_open":
            tags[f["index"]] = [f["index"], f["tag"], f["attrs"], "", False]
        elif f["type"] == "agent_tag_chunk":
            tags[f["index"]][3] += f["text"]
        elif f["type"] == "agent_tag_close":
            tags[f["index"]][4] = True
    return [tuple(t) for t in tags.values()]


@cache
def expected_tags(fed: tuple[str, ...], closed: bool) -> list[tuple]:
    """What a parser fed the same text, and closed if the turn ended, says of each tag."""
    parser = TagStreamParser(SPEC.allowed_tags, untagged=SPEC.speech_tag, tools=SPEC.tool_names)
    events = [e for text in fed for e in parser.feed(text)] + (parser.close() if closed else [])
    return tags_of(p.tag_frames("bram", "t1", events))


def check_frames(frames: list[dict], ended: bool) -> None:
    """The contract's per-turn ordering: started first; tags 0, 1, 2..., chunks of the open one
    only, never empty; every open tag closed before the end; one end, if ended, and last; ``error``
    frames right before, and only before, a finish with reason error."""
    assert frames[0] == p.turn_started("bram", "t1", "ev-1")
    ends = [i for i, f in enumerate(frames) if f["type"] in END_TYPES]
    assert ends == ([len(frames) - 1] if ended else []), ends
    open_index, next_index = None, 0
    for i, f in enumerate(frames[1:], 1):
        assert f.get("turn_id", f.get("ref", {}).get("turn_id")) == "t1"
        if f["type"] == "agent_tag_open":
            assert open_index is None and f["index"] == next_index, f
            open_index, next_index = f["index"], next_index + 1
        elif f["type"] == "agent_tag_chunk":
            assert f["index"] == open_index and f["text"], f
        elif f["type"] == "agent_tag_close":
            assert f["index"] == open_index, f
            open_index = None
        elif f["type"] in END_TYPES:
            assert open_index is None, f"tag {open_index} left open at the end"
            assert (frames[i - 1]["type"] == "error") == (f.get("reason") == "error"), frames[i - 1 :]
        else:
            assert f["type"] == "error" and frames[i + 1]["type"] in ("error", "agent_turn_finished"), f


def check(trace: Trace) -> None:
    """The contract's per-turn ordering and the machine's own promises, on one whole trace."""
    outputs, machine = trace.outputs, trace.machine
    frames = [o for o in outputs if type(o) is dict]
    commands = [o for o in outputs if type(o) is not dict]
    check_frames(frames, machine.ended)
    # the state is asked for right after the start
    assert outputs[1] == RequestState(p.get_agent_state("t1.state", "bram", "ev-1"))
    # after the end frame, TurnEnded, last
    ends = [f for f in frames if f["type"] in END_TYPES]
    assert sum(type(c) is TurnEnded for c in commands) == len(ends)
    if machine.ended:
        assert outputs[-2] is ends[0] and type(outputs[-1]) is TurnEnded
        assert outputs[-1].reason == ends[0]["reason"]
        assert outputs[-1].stop == (trace.ended_by in ("interrupt", "disconnect")), trace.ended_by
    # the steps go in order, each once at most; the LLM input is recorded once, iff it was asked
    steps = [type(c) for c in commands if type(c) in STEPS]
    assert steps == list(STEPS[: len(steps)]), steps
    records = [c for c in commands if type(c) is RecordAnswer]
    assert len(records) == (1 if machine.ended and Stream in steps else 0)
    if records:
        assert outputs.index(records[0]) > outputs.index(next(c for c in commands if type(c) is Stream))
    # what the tags say is what the parser makes of the text the machine accepted
    assert tags_of(frames) == expected_tags(tuple(trace.fed), machine.ended)


def test_every_order_of_three_events_after_each_phase():
    runs = 0
    for prefix in PREFIXES.values():
        for names in itertools.product(EVENTS, repeat=3):
            trace = Trace().run(prefix + names + ("interrupt",))  # every live turn ends when interrupted
            check(trace)
            assert trace.machine.ended
            runs += 1
    assert runs == len(PREFIXES) * len(EVENTS) ** 3


def test_every_permutation_of_the_racing_events_after_each_phase():
    for prefix in PREFIXES.values():
        for names in itertools.permutations(ENDINGS):
            trace = Trace().run(prefix + names)
            check(trace)
            assert trace.machine.ended


def test_a_turn_lost_after_any_of_its_frames_still_ends_by_the_contract():
    """The gateway follows a turn by its frames (SeenTurn) and ends it when its worker is lost:
    after any prefix of any trace of the machine, the frames it adds keep the contract."""
    for prefix in PREFIXES.values():
        for names in itertools.permutations(ENDINGS):
            frames = [o for o in Trace().run(prefix + names).outputs if type(o) is dict]
            for cut in range(len(frames)):
                seen = SeenTurn("bram", "t1", "ev-1")
                if not any(seen.seen(f) for f in frames[:cut]):
                    check_frames(frames[:cut] + seen.lost(p.WORKER_LOST, "gone"), ended=True)


def test_a_turn_lost_before_it_started_starts_then_ends():
    assert SeenTurn("bram", "t1", "ev-1").lost(p.WORKER_LOST, "gone") == [
        p.turn_started("bram", "t1", "ev-1"),
        *error_end("bram", "t1", p.WORKER_LOST, "gone"),
    ]


# --- each way a turn ends, frame by frame ----------------------------------------------------


def test_llm_turn_frames_and_commands():
    m = TurnMachine("bram", "t1", None)
    assert m.start() == [p.turn_started("bram", "t1", None), RequestState(p.get_agent_state("t1.state", "bram", None))]
    assert m.state_received(SPEC) == [Prompt(SPEC)]
    assert m.person_answered(None) == [Stream(SPEC)]
    assert m.llm_text("<say>Hel") == [
        p.tag_open("bram", "t1", 0, "say", {}),
        p.tag_chunk("bram", "t1", 0, "say", "Hel"),
    ]
    m.llm_usage(USAGE)
    assert m.llm_finished() == [
        RecordAnswer(USAGE),
        p.tag_close("bram", "t1", 0, "say"),
        p.turn_finished("bram", "t1", "completed", USAGE),
        TurnEnded("completed", stop=False),
    ]
    assert m.ended


def test_no_rung_answered_the_npc_speaks_a_fallback_line():
    m = TurnMachine("bram", "t1", None)
    m.start()
    m.state_received(SPEC)
    m.person_answered(None)
    m.llm_rung(True)  # a JSON rung failed before its first token: the line is markup all the same
    assert m.fallback_spoken("Not now & <later>", FALLBACK) == [
        p.tag_open("bram", "t1", 0, "say", {}),
        p.tag_chunk("bram", "t1", 0, "say", "Not now & <later>"),
        p.tag_close("bram", "t1", 0, "say"),
        RecordAnswer(None),
        p.turn_finished("bram", "t1", "fallback", None, FALLBACK),
        TurnEnded("fallback", stop=False),
    ]


def test_a_fallback_after_the_llm_spoke_ends_in_error():
    m = TurnMachine("bram", "t1", None)
    m.start()
    m.state_received(SPEC)
    m.person_answered(None)
    m.llm_text("<say>Hel")
    m.llm_rung(True)  # ignored: the reader has read the first rung's text
    out = m.fallback_spoken("Not now", FALLBACK)
    assert out[-3:-1] == [
        p.error(p.LLM_ERROR, "the LLM failed after its first token", {"agent_id": "bram", "turn_id": "t1"}),
        p.turn_finished("bram", "t1", "error"),
    ]
    assert out[1] == p.tag_close("bram", "t1", 0, "say")


def test_a_json_rung_reads_json():
    m = TurnMachine("bram", "t1", None)
    m.start()
    m.state_received(SPEC)
    m.person_answered(None)
    m.llm_rung(True)
    frames = m.llm_text('{"tags":[{"tag":"say","text":"Hi"}]}') + m.llm_finished({"why": "npc_budget", "rung": 0})[:-1]
    assert [f["type"] for f in frames if isinstance(f, dict)][0] == "agent_tag_open"
    assert frames[-1] == p.turn_finished("bram", "t1", "completed", None, {"why": "npc_budget", "rung": 0})


def test_person_answers_whole():
    m = TurnMachine("bram", "t1", "e")
    m.start()
    m.state_received(SPEC)
    assert m.person_answered("<say>Hi</say>") == [
        p.tag_open("bram", "t1", 0, "say", {}),
        p.tag_chunk("bram", "t1", 0, "say", "Hi"),
        p.tag_close("bram", "t1", 0, "say"),
        p.turn_finished("bram", "t1", "completed"),
        TurnEnded("completed", stop=False),
    ]


def test_snapshot_timeout_without_a_spec_ends_in_error():
    m = TurnMachine("bram", "t1", None)
    m.start()
    assert m.state_timed_out(None, 2.5) == [
        p.error(
            p.SNAPSHOT_TIMEOUT,
            "no valid agent_state_snapshot within 2.5 s and no earlier spec for agent 'bram'",
            {"agent_id": "bram", "turn_id": "t1"},
        ),
        p.turn_finished("bram", "t1", "error"),
        TurnEnded("error", stop=False),
    ]


def test_snapshot_timeout_with_a_spec_goes_on():
    m = TurnMachine("bram", "t1", None)
    m.start()
    assert m.state_timed_out(SPEC, 2.5) == [Prompt(SPEC)]


def test_interrupt_closes_the_open_tag_and_stops_the_task():
    m = TurnMachine("bram", "t1", None)
    m.start()
    m.state_received(SPEC)
    m.person_answered(None)
    m.llm_text("<thought>x")
    assert m.interrupt("new_event", "e2") == [
        RecordAnswer(None),
        p.tag_close("bram", "t1", 0, "thought"),
        p.turn_interrupted("bram", "t1", "new_event", "e2"),
        TurnEnded("new_event", stop=True),
    ]
    assert m.llm_text("more") == [] and m.llm_finished() == [] and m.interrupt("disconnected") == []


def test_llm_failure_and_task_failure_codes():
    for event, code in ((lambda m: m.llm_failed("HTTP 500"), p.LLM_ERROR), (lambda m: m.failed("x"), p.TURN_ERROR)):
        m = TurnMachine("bram", "t1", None)
        m.start()
        out = event(m)
        assert out[0]["type"] == "error" and out[0]["code"] == code and out[-2]["reason"] == "error"


def test_tags_the_parser_refuses_end_the_turn_in_turn_error():
    spec = dataclasses.replace(SPEC, tags=(TagSpec("say", "", {}), TagSpec("SAY", "", {})))
    m = TurnMachine("bram", "t1", None)
    m.start()
    out = m.state_received(spec)
    assert out[0] == p.error(
        p.TURN_ERROR, "turn failed: tag names differ only by case: 'SAY'", {"agent_id": "bram", "turn_id": "t1"}
    )
    assert m.ended


def test_cancelled_by_nobody_is_an_interruption_that_stops_nothing():
    m = TurnMachine("bram", "t1", None)
    m.start()
    assert m.cancelled()[-2:] == [p.turn_interrupted("bram", "t1", "cancelled", None), TurnEnded("cancelled", False)]


def test_request_ids_name_their_turn():
    m = TurnMachine("bram", "9f2c", None)
    assert turn_of_request(m.request_id) == "9f2c"


# --- a hypothesis state machine --------------------------------------------------------------

TEXT = st.text(alphabet="<>/&;=\"' sayhtougcion!-x#1", max_size=12)


class TurnRun(RuleBasedStateMachine):
    """Random events with random text, in any order: every trace keeps the promises."""

    def __init__(self) -> None:
        super().__init__()
        self.trace = Trace()

    @rule(name=st.sampled_from(sorted(set(EVENTS) - set(TEXTS))))
    def event(self, name: str) -> None:
        self.trace.send(name, EVENTS[name])

    @rule(text=TEXT)
    def llm_text(self, text: str) -> None:
        self.trace.send("llm_text", lambda m: m.llm_text(text), (Phase.STREAMING, text))

    @rule(markup=TEXT)
    def person(self, markup: str) -> None:
        self.trace.send("person", lambda m: m.person_answered(markup), (Phase.PROMPT, markup))

    @invariant()
    def ended_once_ended(self) -> None:
        ends = sum(type(o) is TurnEnded for o in self.trace.outputs)
        assert ends == (1 if self.trace.machine.ended else 0)

    def teardown(self) -> None:
        check(self.trace.run(("disconnect",)))
        assert self.trace.machine.ended


TestTurnRun = TurnRun.TestCase
TestTurnRun.settings = settings(max_examples=100, stateful_step_count=20, deadline=None)
