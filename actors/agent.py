"""One NPC: its history, its latest spec and its streaming turn, inside a worker's event loop.

An agent is a small in-process actor (``pykka``-style): messages reach ``receive`` one at a time in
arrival order and are handled without awaiting, so a new ``interaction_event`` can always cut into
a streaming turn. The turn's lifecycle is ``core.turn.TurnMachine``: it decides what each event
means and what goes out (which frames, when the turn ends, that nothing of it follows its end);
the agent runs the machine's steps as a task, carries each await's outcome back in as an event
and sends what comes out (``_do``).

A person on ``/events`` may play the NPC (``Takeover``): its turns then wait for that person's
input instead of calling the LLM, and go through the same machine (its parser, its end), so Godot
sees the same lifecycle. When nobody answers in time, the LLM takes the turn and the NPC back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger

from actors.llm_input_log import LlmInputLog, spool_path
from actors.messages import AgentInput, SnapshotRecall
from actors.metrics import TurnTimer
from config.llm_endpoints import Endpoint
from core import protocol as p
from core.budget import estimated_tokens, tokens_of
from core.history import History
from core.ladder import EMBEDDED, LINES, Climb
from core.playerinput import actions_of
from core.prompt import build_messages, window_start
from core.recall import NOTHING_RECALLED, Recall
from core.spec import AgentSpec, SpecError, parse_spec
from core.summary import clip, covered_through, due, request_messages, summary_fact
from core.takeover import PlayerInput, Takeover, TakeoverEnded, TurnPrompt
from core.turn import Output, Prompt, RecordAnswer, RequestState, Stream, TurnEnded, TurnMachine, turn_of_request
from providers.client import LLMError

if TYPE_CHECKING:
    from actors.host import AgentHost

Step = RequestState | Prompt | Stream


@dataclass(eq=False)
class Turn:
    """The I/O side of one turn: what its task awaits, and what the machine's steps need."""

    machine: TurnMachine
    spec_waiter: asyncio.Future
    task: asyncio.Task | None = None
    input_waiter: asyncio.Future | None = None  # a person's markup, when a person plays this turn
    messages: list[dict] = field(default_factory=list)  # the prompt, built once the spec is known
    llm_input: dict | None = None  # the LLM request's record, logged when the turn ends
    answer: list[str] = field(default_factory=list)  # the raw text the model sent back
    recall: Recall | None = None  # what the journal recalled for this turn's event
    climb: Climb | None = None  # its way down the fallback ladder, once the LLM is asked
    rung: str | None = None  # the rung being asked
    started_at: float = field(default_factory=time.monotonic)
    waited_s: float = 0.0  # for the game's snapshot (npc_first_tag_seconds takes it out)


class Agent:
    """History, spec and the current turn of one NPC in one session."""

    def __init__(self, host: AgentHost, session: str, agent_id: str) -> None:
        self.host = host
        self.session = session
        self.agent_id = agent_id
        self.history = History(host.settings.history_max_entries)
        self.spec: AgentSpec | None = None
        self.turn: Turn | None = None
        self.last_request_id: str | None = None
        self.takeover: Takeover | None = None  # the person playing this NPC, if any
        self.summarising: asyncio.Task | None = None  # the summary request in flight, if any
        self.recall = NOTHING_RECALLED  # the latest turn's: its pinned memories serve a turn without a spec
        self.fallbacks_spoken = 0  # which of the spec's fallback_lines comes next
        self.changed_at: int | None = None  # the host's change count at the history's first change since its last log
        keep = host.settings.llm_input_log_turns
        self.llm_log = (
            LlmInputLog(spool_path(host.settings.log_dir, session, agent_id, host.index, next(host.lives)), keep)
            if keep
            else None
        )
        self.log = logger.bind(agent_id=agent_id, session=session)

    # --- mailbox -------------------------------------------------------------------------

    def receive(self, message: AgentInput) -> None:
        """Handle one message: a history fact (``core.history.fact_of``, already journaled by the
        gateway) or a message that changes no history. Never raises: a bad Godot message becomes
        an ``error`` frame."""
        try:
            handler = self._handlers[type(message)]
            handler(self, message)
        except Exception as exc:  # noqa: BLE001 - one bad message must not take the agent down
            self.log.exception("message {} failed", type(message).__name__)
            about = message.snapshot if type(message) is SnapshotRecall else message
            kind = about.get("type") if type(about) is dict else p.TYPE_NAMES.get(type(about))
            if kind is not None:  # Godot knows nothing of takeovers
                self._emit(
                    p.error(
                        p.TURN_ERROR,
                        f"internal error handling {kind}: {exc}",
                        {"agent_id": self.agent_id, "type": kind},
                    )
                )

    def restore(self, facts: list[dict]) -> None:
        """Rebuild the history from the journal (this agent was placed anew on this worker)."""
        self.history.replay(facts)
        self.log.debug("history restored from {} journaled facts", len(facts))

    def _on_fact(self, fact: dict) -> None:
        rejected = self.history.apply(fact)
        if rejected is not None:
            self._emit(p.error(rejected.code, rejected.message, {"agent_id": self.agent_id, **rejected.ref}))
            return
        self.changed_at = next(self.host.changes)
        if fact["type"] == "interaction_event":
            self._interrupt("new_event", fact["event_id"])
            self._start_turn(fact["turn_id"], fact["event_id"])
        elif fact["type"] == "tool_results" and fact["next_turn_id"] is not None:
            self._interrupt("new_event", None)
            self._start_turn(fact["next_turn_id"], None)

    def _on_snapshot(self, msg: p.AgentStateSnapshot) -> None:
        """The spec a turn waits for; a late answer to the latest request still updates the spec."""
        if msg.request_id != self.last_request_id:
            if turn_of_request(msg.request_id) not in self.history.recent:
                self._error(
                    p.UNKNOWN_REQUEST,
                    f"no get_agent_state with request_id {msg.request_id!r} was sent for agent {self.agent_id!r}",
                    msg,
                    request_id=msg.request_id,
                )
            return  # an answer to an older request: a newer spec is already on its way
        try:
            spec = parse_spec(msg.state)
        except SpecError as exc:
            self._error(p.BAD_STATE, f"agent_state_snapshot rejected: {exc}", msg, request_id=msg.request_id)
            return
        self.spec = spec
        turn = self.turn
        if turn is not None and turn.machine.request_id == msg.request_id and not turn.spec_waiter.done():
            turn.spec_waiter.set_result(spec)

    def _on_recalled(self, msg: SnapshotRecall) -> None:
        """The spec with what the journal recalled for the turn that asked for it."""
        turn = self.turn
        if msg.recall is not None and turn is not None and turn.machine.request_id == msg.snapshot.request_id:
            turn.recall = self.recall = msg.recall
        self._on_snapshot(msg.snapshot)

    def _on_takeover(self, msg: Takeover) -> None:
        """A person takes the NPC over, or gives it back; a turn waiting for the one who left
        goes on with the LLM."""
        self.takeover = msg if msg.client is not None else None
        waiter = self.turn.input_waiter if self.turn is not None else None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_player_input(self, msg: PlayerInput) -> None:
        waiter = self.turn.input_waiter if self.turn is not None else None
        if waiter is not None and not waiter.done() and self.takeover and self.takeover.client == msg.client:
            waiter.set_result(msg.markup)
        else:
            self.log.info("input from {} came when no turn waited for it: dropped", msg.client)

    _handlers: ClassVar[dict[type, Callable[[Agent, Any], None]]] = {
        dict: _on_fact,
        p.AgentStateSnapshot: _on_snapshot,
        SnapshotRecall: _on_recalled,
        Takeover: _on_takeover,
        PlayerInput: _on_player_input,
    }

    # --- lifecycle -------------------------------------------------------------------------

    def connection_closed(self) -> None:
        """Godot went away: a running turn has nobody to play it; stop paying for tokens."""
        self._interrupt("disconnected", None)

    def close(self) -> None:
        self._interrupt("shutdown", None)
        if self.summarising is not None:
            self.summarising.cancel()
        if self.llm_log is not None:
            self.host.logs.submit(self.llm_log.close)  # after the logs that still read its spool

    # --- the turn --------------------------------------------------------------------------

    def _start_turn(self, turn_id: str, event_id: str | None) -> None:
        """Run the turn the gateway assigned (its pending history entry is already in place)."""
        machine = TurnMachine(
            self.agent_id,
            turn_id,
            event_id,
            speak_untagged=self.host.settings.untagged_text == "say",
        )
        turn = Turn(machine, spec_waiter=asyncio.get_running_loop().create_future())
        self.turn = turn
        self.last_request_id = machine.request_id
        step = self._do(turn, machine.start())
        turn.task = asyncio.get_running_loop().create_task(self._run_turn(turn, step))

    async def _run_turn(self, turn: Turn, step: Step | None) -> None:
        """Carry out the machine's steps, one after another, until it gives none."""
        machine = turn.machine
        try:
            while step is not None:
                match step:
                    case RequestState():
                        outputs = await self._request_state(turn, step)
                    case Prompt():
                        outputs = await self._prompt(turn, step)
                    case Stream():
                        outputs = await self._stream(turn, step)
                step = self._do(turn, outputs)
        except asyncio.CancelledError:
            if turn.climb is not None:
                turn.climb.abandoned()
            self._do(turn, machine.cancelled())  # nothing when the interrupter ended the turn
            raise
        except LLMError as exc:
            self.log.bind(turn_id=machine.turn_id).warning("LLM failed: {} {}", exc.code, exc)
            self._do(turn, machine.llm_failed(str(exc)))
        except Exception as exc:  # noqa: BLE001 - the turn ends cleanly whatever went wrong
            self.log.bind(turn_id=machine.turn_id).exception("turn failed")
            self._do(turn, machine.failed(f"turn failed: {exc}"))

    async def _request_state(self, turn: Turn, step: RequestState) -> list[Output]:
        """Ask Godot for the latest spec; after the timeout the machine falls back to the last one known."""
        self._emit(step.frame)
        timeout = self.host.settings.snapshot_timeout_s
        asked = time.monotonic()
        try:
            spec = await asyncio.wait_for(turn.spec_waiter, timeout)
        except TimeoutError:
            self.log.bind(turn_id=turn.machine.turn_id).warning("no agent_state_snapshot in time; using last spec")
            return turn.machine.state_timed_out(self.spec, timeout)
        finally:
            turn.waited_s = time.monotonic() - asked
        return turn.machine.state_received(spec)

    async def _prompt(self, turn: Turn, step: Prompt) -> list[Output]:
        settings = self.host.settings
        json_answer = settings.llm_structured == "json_schema"
        turn.messages = self._messages(turn, step.spec, settings.history_budget_chars, json_answer)
        if settings.summaries and self.summarising is None:
            entries = list(self.history.entries)
            self._summarise(step.spec, entries, window_start(entries, settings.history_budget_chars))
        markup = await self._ask_player(turn, step.spec, turn.messages[-1]["content"])
        return turn.machine.person_answered(markup)

    async def _stream(self, turn: Turn, step: Stream) -> list[Output]:
        """Ask the rungs of the fallback ladder in turn until one answers (``core.ladder``): the
        tier's endpoints (or past a budget its cheaper tier's), the embedded model, the lines."""
        machine, host, spec = turn.machine, self.host, step.spec
        tier = host.settings.tier(spec.model_tier)
        if tier is None:
            known = ", ".join(t.name for t in host.settings.llm_tiers) or "none"
            self._error(
                p.BAD_STATE,
                f"state.model_tier {spec.model_tier!r} names no tier of the server (known: {known}): "
                "the default tier answers",
                turn_id=machine.turn_id,
            )
            tier = host.settings.tier(None)
            assert tier is not None
        over_budget = host.budgets.spent(self.session, self.agent_id, time.monotonic())
        turn.climb = climb = Climb(host.rungs(tier, over_budget, spec), host.breakers, over_budget)
        failure: LLMError | None = None
        while (rung := climb.next(time.monotonic())) is not None:
            turn.rung = rung
            if rung == LINES:
                line = spec.fallback_lines[self.fallbacks_spoken % len(spec.fallback_lines)]
                self.fallbacks_spoken += 1
                return machine.fallback_spoken(line, {**(climb.fallback() or {}), "answered_by": LINES})
            endpoint, max_tokens = host.endpoint(rung, tier, over_budget)
            try:
                await self._ask(turn, endpoint, max_tokens, spec, climb)
            except LLMError as exc:
                if turn.answer:
                    raise  # text has streamed: the turn ends in error, never says anything twice
                climb.failed(time.monotonic())
                failure = exc
                self.log.bind(turn_id=machine.turn_id).warning(
                    "LLM rung {} failed before its first token: {} (its breaker: {})",
                    endpoint.label,
                    exc,
                    host.breakers[rung].state.value,
                )
                continue
            fallback = climb.fallback()
            return machine.llm_finished(fallback and {**fallback, "answered_by": endpoint.model})
        if failure is not None:
            raise failure
        raise LLMError("llm_budget_spent", f"the {over_budget} is spent and the NPC has nowhere to step down to")

    async def _ask(self, turn: Turn, endpoint: Endpoint, max_tokens: int, spec: AgentSpec, climb: Climb) -> None:
        """Stream one rung's answer into the turn; raises ``LLMError``."""
        machine, settings = turn.machine, self.host.settings
        json_answer = endpoint.structured == "json_schema"
        budget = settings.embedded_history_budget_chars if turn.rung == EMBEDDED else settings.history_budget_chars
        messages = self._messages(turn, spec, budget, json_answer)
        machine.llm_rung(json_answer)
        turn.llm_input = record = {
            "turn_id": machine.turn_id,
            "time": time.time(),
            "model": endpoint.model,
            "messages": messages,
            "answer": None,
            "finish_reason": None,
            "usage": None,
        }
        timer = TurnTimer(self.host.metrics, turn.started_at, turn.waited_s, spec.speech_tag)
        answered = False
        async for delta in self.host.llm(endpoint).stream(
            messages, extra_body=self.host.extra_body(endpoint, max_tokens, spec)
        ):
            if not answered:
                climb.answered()
                answered = True
            if delta.content:
                if not turn.answer:
                    timer.answered()
                turn.answer.append(delta.content)
                frames = machine.llm_text(delta.content)
                for frame in frames:
                    self._emit(frame)
                if frames:
                    timer.frames(frames)
            if delta.finish_reason:
                record["finish_reason"] = delta.finish_reason
            if delta.usage:
                machine.llm_usage(delta.usage)
        if not answered:
            climb.answered()  # a whole reply without text is an answer too

    def _messages(self, turn: Turn, spec: AgentSpec, budget: int, json_answer: bool) -> list[dict]:
        """The turn's prompt: history in ``budget``, and what the NPC remembers (the turn's recall,
        or the pinned memories of its previous turn when no spec came with one)."""
        summary = self.history.summary
        return build_messages(
            spec,
            self.history.entries,
            budget_chars=budget,
            json_answer=json_answer,
            summary=summary["text"] if summary else None,
            recall=turn.recall or Recall(self.recall.pinned, ()),
            recall_budget_chars=self.host.settings.recall_budget_chars,
        )

    # --- the summary ------------------------------------------------------------------------

    def _summarise(self, spec: AgentSpec, entries: list[dict], start: int) -> None:
        """Fold what left the prompt (``entries[:start]``) into the summary, when enough did:
        a background LLM request (turns first: providers/slots.py), as a task of its own."""
        settings = self.host.settings
        summary = self.history.summary
        fallen = due(entries, start, summary["through_seq"] if summary else None, settings.summary_min_chars)
        if not fallen:
            return
        previous = summary["text"] if summary else None
        messages = request_messages(spec.name, previous, fallen, settings.summary_max_chars)
        task = asyncio.get_running_loop().create_task(self._summary(messages, covered_through(fallen)))
        self.summarising = task

    async def _summary(self, messages: list[dict], through_seq: int) -> None:
        settings = self.host.settings
        answer: list[str] = []
        try:
            limit = {"max_tokens": max(16, settings.summary_max_chars // 3)}  # a token is ~4 characters
            llm = self.host.llm(self.host.settings.primary)  # the primary endpoint, never a fallback's
            async for delta in llm.stream(messages, extra_body=limit, background=True):
                if delta.content:
                    answer.append(delta.content)
        except LLMError as exc:  # llm_busy (the LLM is taken by turns) or a failure: asked again later
            self.log.debug("summary dropped: {} {}", exc.code, exc)
            return
        finally:
            self.summarising = None
        text = clip("".join(answer), settings.summary_max_chars)
        if text:
            fact = summary_fact(text, through_seq)
            self.history.apply(fact)
            self.host.summarised(self.session, self.agent_id, fact)
            self.log.debug("summary of history through fact {}: {} characters", through_seq, len(text))

    async def _ask_player(self, turn: Turn, spec: AgentSpec, prompt: str) -> str | None:
        """Tell the gateway the turn needs an answer; when a person plays the NPC, wait for theirs.

        None means the LLM answers: nobody plays the NPC, the person left, or did not answer
        within the takeover timeout (then the LLM keeps the NPC, and the gateway is told).
        """
        turn_id = turn.machine.turn_id
        takeover = self.takeover
        if takeover is None:
            return None
        client = takeover.client
        assert client is not None  # a takeover without a client is a release, never kept (_on_takeover)
        self.host.report(self.session, TurnPrompt(self.agent_id, turn_id, client, prompt, actions_of(spec)))
        turn.input_waiter = asyncio.get_running_loop().create_future()
        timeout = self.host.settings.events_takeover_timeout_s
        try:
            return await asyncio.wait_for(turn.input_waiter, timeout)
        except TimeoutError:
            if self.takeover is takeover:  # not already replaced by a newer takeover
                self.log.bind(turn_id=turn_id).info(
                    "{} did not answer within {} s: the LLM plays again", client, timeout
                )
                self.takeover = None
                self.host.report(self.session, TakeoverEnded(self.agent_id, client, takeover.grant))
            return None

    def _interrupt(self, reason: str, by_event_id: str | None) -> None:
        if self.turn is not None:
            self._do(self.turn, self.turn.machine.interrupt(reason, by_event_id))

    def _do(self, turn: Turn, outputs: list[Output]) -> Step | None:
        """Send the machine's frames and carry out its commands, in order; return the next step of
        the turn's task, if any."""
        step = None
        for out in outputs:
            if isinstance(out, dict):
                self._emit(out)
            elif isinstance(out, RecordAnswer):
                if turn.rung not in (None, EMBEDDED, LINES):  # the embedded model costs nothing
                    self.host.budgets.charge(self.session, self.agent_id, self._cost(turn, out), time.monotonic())
                if turn.llm_input is not None:
                    turn.llm_input["usage"] = out.usage
                    self._log_answer(turn, turn.llm_input)
                turn.llm_input = None
            elif isinstance(out, TurnEnded):
                self.host.metrics.turns.labels(out.reason).inc()
                self.log.bind(turn_id=turn.machine.turn_id).debug(
                    "turn ended ({}) in {:.3f} s", out.reason, time.monotonic() - turn.started_at
                )
                if self.turn is turn:
                    self.turn = None
                if out.stop and turn.task is not None:
                    turn.task.cancel()  # closes the LLM HTTP stream at once
            else:
                step = out
        return step

    @staticmethod
    def _cost(turn: Turn, out: RecordAnswer) -> int:
        """The tokens a turn costs its budgets: what the provider reported; for a turn cut after
        text streamed but before the usage came (it comes last), an estimate from its characters,
        since the provider bills it all the same."""
        reported = tokens_of(out.usage)
        if reported or not turn.answer or turn.llm_input is None:
            return reported
        prompt = sum(len(str(message.get("content") or "")) for message in turn.llm_input["messages"])
        return estimated_tokens(prompt + sum(map(len, turn.answer)))

    def _log_answer(self, turn: Turn, record: dict) -> None:
        """What the model sent back, as it sent it: shown at DEBUG now, kept in the LLM-input log.

        At the turn's end (``RecordAnswer``), not after the stream: a turn ended from outside
        (interrupted, disconnected) is logged now, before a disconnect log is written, not when
        its task next runs.
        """
        record["answer"] = "".join(turn.answer)
        self.log.bind(turn_id=turn.machine.turn_id).debug(
            "LLM answer (finish_reason {}, usage {}): {!r}",
            record["finish_reason"],
            record["usage"],
            record["answer"],
        )
        if self.llm_log is not None:
            self.llm_log.append(record)

    # --- helpers ---------------------------------------------------------------------------

    def _emit(self, frame: dict) -> None:
        self.host.emit(self.session, frame)

    def _error(self, code: str, message: str, about: p.AgentMessage | None = None, **ref: str) -> None:
        """An ``error`` frame; ``ref`` names the agent, the message type it concerns and its ids."""
        if about is not None:
            ref["type"] = p.TYPE_NAMES[type(about)]
        self._emit(p.error(code, message, {"agent_id": self.agent_id, **ref}))

    def log_records(self) -> tuple[dict, LlmInputLog | None]:
        """The conversation log and the LLM-input log (None when off, read by the log writer), as
        written on disconnect; the history counts as logged from now on."""
        self.changed_at = None
        head = {
            "session": self.session,
            "agent_id": self.agent_id,
            "name": self.spec.name if self.spec else None,
            "written_at": time.time(),
        }
        return {**head, "history": list(self.history.entries)}, self.llm_log
