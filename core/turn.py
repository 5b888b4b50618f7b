"""One NPC turn's lifecycle as a pure state machine: events in, frames and commands out.

Why: the contract promises Godot, per turn, ``agent_turn_started`` before any tag, every opened tag
closed before the end, exactly one end, and nothing of the turn after it. A turn is cut into by
interruptions, disconnects, takeovers, timeouts and LLM faults at any await, so those promises are
kept here, in one place with no I/O (the way ``h11`` keeps a connection's state), and tested over
every order of events; the agent (``actors.agent``) only carries events in and outputs out.

A turn goes through its phases in order, each ended by the event named::

    start()                 ->  STATE      wait for the agent_state_snapshot asked for (RequestState)
    state_received(spec)    ->  PROMPT     wait for a person's answer, if one plays the NPC (Prompt)
    person_answered(None)   ->  STREAMING  stream the LLM's answer (Stream): llm_rung per rung of the
                                       fallback ladder tried, llm_text per delta
    llm_finished()          ->  ENDED      or fallback_spoken(), when no rung of the ladder answered

and ends early on ``state_timed_out`` with no spec to fall back on, a spec whose tags the parser
refuses, ``person_answered(markup)``, ``llm_failed``, ``failed``, ``cancelled`` or ``interrupt``.
Every end gives, in order: the LLM input to record (``RecordAnswer``, when the LLM was asked), the
open tag's close, the ``error`` frame of an end by error, the one end frame, and ``TurnEnded``. An
event its phase does not expect is stale: it raced the turn's end (an await that finished while
the turn was interrupted) and gives nothing; so does any event before ``start``.

Outputs are frame dicts (``core.protocol``, to send to Godot in order) and the commands below.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from core import protocol as p
from core.spec import AgentSpec
from core.tagjson import TagJsonReader
from core.tagstream import TagStreamParser

__all__ = [
    "END_TYPES",
    "OpenTag",
    "Output",
    "Phase",
    "Prompt",
    "RecordAnswer",
    "RequestState",
    "SeenTurn",
    "Stream",
    "TurnEnded",
    "TurnMachine",
    "error_end",
    "state_request_id",
    "turn_of_request",
]

_STATE_SUFFIX = ".state"
END_TYPES = ("agent_turn_finished", "agent_turn_interrupted")  # the frames that end a turn


def state_request_id(turn_id: str) -> str:
    """The ``request_id`` of a turn's ``get_agent_state``: a late answer names its turn."""
    return turn_id + _STATE_SUFFIX


def turn_of_request(request_id: str) -> str:
    return request_id.removesuffix(_STATE_SUFFIX)


class Phase(Enum):
    NEW = "new"
    STATE = "state"  # waiting for the spec
    PROMPT = "prompt"  # waiting for a person's answer (or the word that nobody plays the NPC)
    STREAMING = "streaming"  # the LLM answers
    ENDED = "ended"


# --- commands --------------------------------------------------------------------------------
# RequestState, Prompt and Stream are the steps of the turn's task: each awaits something, whose
# outcome goes back in as the event the step names. The others are done at once.


@dataclass(frozen=True, slots=True)
class RequestState:
    """Send ``frame`` (``get_agent_state``); then ``state_received`` or, after the timeout,
    ``state_timed_out``."""

    frame: dict


@dataclass(frozen=True, slots=True)
class Prompt:
    """Tell the feed the turn needs an answer; wait for the person playing the NPC, if any; then
    ``person_answered``."""

    spec: AgentSpec


@dataclass(frozen=True, slots=True)
class Stream:
    """Ask the LLM, down the fallback ladder: ``llm_rung`` per rung tried, ``llm_text`` per delta,
    ``llm_usage``, then ``llm_finished``, ``fallback_spoken`` or ``llm_failed``."""

    spec: AgentSpec


@dataclass(frozen=True, slots=True)
class RecordAnswer:
    """Log the LLM request of this turn, with the usage reported so far: now, at the end, so a
    turn ended from outside is logged before anything written after its end."""

    usage: dict | None


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The turn is over: forget it; when ``stop``, its task still awaits (the end came from
    outside): stop it, which closes the LLM stream at once."""

    reason: str
    stop: bool


Command = RequestState | Prompt | Stream | RecordAnswer | TurnEnded
Output = dict | Command


class TurnMachine:
    """The lifecycle of one turn of one agent."""

    __slots__ = (
        "agent_id",
        "turn_id",
        "event_id",
        "request_id",
        "phase",
        "_speak_untagged",
        "_spec",
        "_parser",
        "_usage",
        "_spoke",
    )

    def __init__(
        self,
        agent_id: str,
        turn_id: str,
        event_id: str | None,
        *,
        speak_untagged: bool = True,
    ) -> None:
        """``speak_untagged``: text outside any tag is the spec's speech (setting ``untagged_text``)."""
        self.agent_id = agent_id
        self.turn_id = turn_id
        self.event_id = event_id
        self.request_id = state_request_id(turn_id)
        self.phase = Phase.NEW
        self._speak_untagged = speak_untagged
        self._spec: AgentSpec | None = None
        self._parser: TagStreamParser | TagJsonReader | None = None
        self._usage: dict | None = None
        self._spoke = False  # the LLM's text has reached the reader: no other rung may answer now

    def _reader(self, kind: type[TagStreamParser] | type[TagJsonReader], spec: AgentSpec):
        """The reader of this turn's answer: markup, or the model's JSON (same events either way)."""
        return kind(
            spec.allowed_tags, untagged=spec.speech_tag if self._speak_untagged else None, tools=spec.tool_names
        )

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    # --- the turn's start, and the outcomes of its steps ----------------------------------------

    def start(self) -> list[Output]:
        if self.phase is not Phase.NEW:
            raise RuntimeError(f"turn {self.turn_id} started twice")
        self.phase = Phase.STATE
        return [
            p.turn_started(self.agent_id, self.turn_id, self.event_id),
            RequestState(p.get_agent_state(self.request_id, self.agent_id, self.event_id)),
        ]

    def state_received(self, spec: AgentSpec) -> list[Output]:
        if self.phase is not Phase.STATE:
            return []
        try:
            self._parser = self._reader(TagStreamParser, spec)
        except ValueError as exc:
            return self._end_error(p.TURN_ERROR, f"turn failed: {exc}")
        self._spec = spec
        self.phase = Phase.PROMPT
        return [Prompt(spec)]

    def state_timed_out(self, fallback: AgentSpec | None, waited_s: float) -> list[Output]:
        """No snapshot in time: go on with the last spec known, if any."""
        if self.phase is not Phase.STATE:
            return []
        if fallback is not None:
            return self.state_received(fallback)
        return self._end_error(
            p.SNAPSHOT_TIMEOUT,
            f"no valid agent_state_snapshot within {waited_s} s and no earlier spec for agent {self.agent_id!r}",
        )

    def person_answered(self, markup: str | None) -> list[Output]:
        """The person's markup, or None: nobody plays the NPC (any more), the LLM answers."""
        if self.phase is not Phase.PROMPT:
            return []
        assert self._spec is not None and self._parser is not None  # set on entering PROMPT
        if markup is None:
            self.phase = Phase.STREAMING
            return [Stream(self._spec)]
        outputs: list[Output] = [*p.tag_frames(self.agent_id, self.turn_id, self._parser.feed(markup))]
        outputs += self._end([p.turn_finished(self.agent_id, self.turn_id, "completed")], stop=False)
        return outputs

    def llm_rung(self, json_answer: bool) -> None:
        """A rung of the ladder is asked; its answer comes as JSON (``llm_structured =
        json_schema``) or as markup. Only before any text: a turn steps down only before its first
        token, so the reader has read nothing yet."""
        if self.phase is Phase.STREAMING and self._spec is not None and not self._spoke:
            self._parser = self._reader(TagJsonReader if json_answer else TagStreamParser, self._spec)

    def llm_text(self, text: str) -> list[dict]:
        """One delta of the LLM's answer: its tag frames (the hot path: one call per token)."""
        parser = self._parser
        if self.phase is not Phase.STREAMING or parser is None:
            return []
        self._spoke = True
        return p.tag_frames(self.agent_id, self.turn_id, parser.feed(text))

    def llm_usage(self, usage: dict) -> None:
        if self.phase is Phase.STREAMING:
            self._usage = usage

    def llm_finished(self, fallback: dict | None = None) -> list[Output]:
        """``fallback``: how the turn stepped down the ladder, if it did (``core.ladder``)."""
        if self.phase is not Phase.STREAMING:
            return []
        ending = p.turn_finished(self.agent_id, self.turn_id, "completed", self._usage, fallback)
        return self._end([ending], stop=False)

    def fallback_spoken(self, line: str, fallback: dict) -> list[Output]:
        """No LLM rung answered: the NPC speaks ``line`` (plain text) in its speech tag, through the
        same tag frames, and the turn ends with reason ``fallback``. Once the LLM's text has been
        read it would speak over it: the turn ends in error instead."""
        if self.phase is not Phase.STREAMING or self._spec is None:
            return []
        tag = self._spec.speech_tag
        if self._spoke or tag is None:  # tag: parse_spec refuses fallback_lines without one
            return self.llm_failed("the LLM failed after its first token")
        parser = self._reader(TagStreamParser, self._spec)
        text = line.replace("&", "&amp;").replace("<", "&lt;")
        outputs: list[Output] = [*p.tag_frames(self.agent_id, self.turn_id, parser.feed(f"<{tag}>{text}</{tag}>"))]
        self._parser = parser
        return outputs + self._end(
            [p.turn_finished(self.agent_id, self.turn_id, "fallback", None, fallback)], stop=False
        )

    def llm_failed(self, message: str) -> list[Output]:
        return self._end_error(p.LLM_ERROR, message)

    def failed(self, message: str) -> list[Output]:
        """The turn's task raised: the turn ends in ``turn_error``, whatever went wrong."""
        return self._end_error(p.TURN_ERROR, message)

    def cancelled(self) -> list[Output]:
        """The task was cancelled by nobody that ended the turn (the worker shuts down)."""
        return self._end_interrupted("cancelled", None, stop=False)

    # --- events from outside -------------------------------------------------------------------

    def interrupt(self, reason: str, by_event_id: str | None = None) -> list[Output]:
        """A new event, a disconnect, a shutdown: the turn ends now, and its task is stopped."""
        return self._end_interrupted(reason, by_event_id, stop=True)

    # --- the one way a turn ends ---------------------------------------------------------------

    def _end_interrupted(self, reason: str, by_event_id: str | None, *, stop: bool) -> list[Output]:
        if self.phase is Phase.ENDED or self.phase is Phase.NEW:
            return []
        return self._end([p.turn_interrupted(self.agent_id, self.turn_id, reason, by_event_id)], stop=stop)

    def _end_error(self, code: str, message: str) -> list[Output]:
        if self.phase is Phase.ENDED or self.phase is Phase.NEW:
            return []
        return self._end(error_end(self.agent_id, self.turn_id, code, message), stop=False)

    def _end(self, ending: list[dict], *, stop: bool) -> list[Output]:
        """``ending``: the end frame, after the ``error`` frame of an end by error."""
        outputs: list[Output] = [RecordAnswer(self._usage)] if self.phase is Phase.STREAMING else []
        self.phase = Phase.ENDED
        if self._parser is not None:
            outputs += p.tag_frames(self.agent_id, self.turn_id, self._parser.close())
            self._parser = None
        outputs += ending
        outputs.append(TurnEnded(ending[-1]["reason"], stop))
        return outputs


def error_end(agent_id: str, turn_id: str, code: str, message: str) -> list[dict]:
    """How a turn ends in error: an ``error`` frame saying why, then ``agent_turn_finished`` with
    reason ``error``."""
    return [
        p.error(code, message, {"agent_id": agent_id, "turn_id": turn_id}),
        p.turn_finished(agent_id, turn_id, "error"),
    ]


@dataclass(frozen=True, slots=True)
class OpenTag:
    index: int
    name: str
    attrs: dict


@dataclass(slots=True)
class SeenTurn:
    """A turn as its frames show it, to one who forwards them without running it: the gateway,
    while the turn's machine runs in an agent on a worker (if that worker is lost, ``lost`` ends
    the turn as its machine would have ended it in error, keeping the contract's promises), and
    the /events feed, which tells the turn as world events."""

    agent_id: str
    turn_id: str
    event_id: str | None
    started: bool = False  # agent_turn_started went out
    tag: OpenTag | None = None
    # For the latencies the gateway measures (core.openturns): when the gateway assigned the turn,
    # when a newer turn of the agent cut into it, whether a tag and a speech tag opened yet.
    assigned_at: float = 0.0
    cut_at: float | None = None
    tagged: bool = False
    said: bool = False

    def seen(self, frame: dict) -> bool:
        """Note one frame of this turn (its chunks change nothing); True when it was the turn's end."""
        kind = frame["type"]
        if kind == "agent_turn_started":
            self.started = True
        elif kind == "agent_tag_open":
            self.tag = OpenTag(frame["index"], frame["tag"], frame["attrs"])
        elif kind == "agent_tag_close":
            self.tag = None
        return kind in END_TYPES

    def lost(self, code: str, why: str) -> list[dict]:
        """The frames that end this turn now: its start, if it never started (the event that
        asked for it gets its answer), its open tag's close, then its end in error."""
        frames = [] if self.started else [p.turn_started(self.agent_id, self.turn_id, self.event_id)]
        if self.tag is not None:
            frames.append(p.tag_close(self.agent_id, self.turn_id, self.tag.index, self.tag.name))
        return frames + error_end(self.agent_id, self.turn_id, code, why)
