"""One NPC: its history, its latest spec and its streaming turn, inside a worker's event loop.

An agent is a small in-process actor (``pykka``-style): messages reach ``receive`` one at a time in
arrival order and are handled without awaiting, so a new ``interaction_event`` can always cut into
a streaming turn. The turn itself is a task the agent owns; ending it (finish, error, interruption,
disconnect) goes through ``_end`` alone, which closes the open tag, sends the one final frame and
makes sure nothing of that turn follows it.

A person on ``/events`` may play the NPC (``Takeover``): its turns then wait for that person's
input instead of calling the LLM, and go through the same parser and the same ``_end``, so Godot
sees the same lifecycle. When nobody answers in time, the LLM takes the turn and the NPC back.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loguru import logger

from actors.llm_input_log import LlmInputLog, spool_path
from core import protocol as p
from core.history import History
from core.prompt import build_messages
from core.spec import AgentSpec, SpecError, parse_spec
from core.tagstream import TagStreamParser
from core.taleweave import PlayerInput, Takeover, TakeoverEnded, TurnPrompt, actions_of
from providers.client import LLMError

if TYPE_CHECKING:
    from actors.host import AgentHost

REQUEST_SUFFIX = ".state"  # request_id of a turn's get_agent_state: "<turn_id>.state"


def _request_turn(request_id: str) -> str:
    return request_id.removesuffix(REQUEST_SUFFIX)


@dataclass(eq=False)
class Turn:
    turn_id: str
    event_id: str | None
    request_id: str
    spec_waiter: asyncio.Future
    task: asyncio.Task | None = None
    parser: TagStreamParser | None = None
    input_waiter: asyncio.Future | None = None  # a person's markup, when a person plays this turn
    llm_input: dict | None = None  # the LLM request's record, logged when the turn ends
    ended: bool = False
    started_at: float = field(default_factory=time.monotonic)


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
        keep = host.settings.llm_input_log_turns
        self.llm_log = (
            LlmInputLog(spool_path(host.settings.log_dir, session, agent_id, host.index), keep) if keep else None
        )
        self.log = logger.bind(agent_id=agent_id, session=session)

    # --- mailbox -------------------------------------------------------------------------

    def receive(self, message: dict | p.AgentStateSnapshot | Takeover | PlayerInput) -> None:
        """Handle one message: a history fact (``core.history.fact_of``, already journaled by the
        gateway) or a message that changes no history. Never raises: a bad Godot message becomes
        an ``error`` frame."""
        try:
            handler = self._handlers[type(message)]
            handler(self, message)
        except Exception as exc:  # noqa: BLE001 - one bad message must not take the agent down
            self.log.exception("message {} failed", type(message).__name__)
            kind = message.get("type") if type(message) is dict else p.TYPE_NAMES.get(type(message))
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
        elif fact["type"] == "interaction_event":
            self._interrupt("new_event", fact["event_id"])
            self._start_turn(fact["turn_id"], fact["event_id"])
        elif fact["type"] == "tool_results" and fact["next_turn_id"] is not None:
            self._interrupt("new_event", None)
            self._start_turn(fact["next_turn_id"], None)

    def _on_snapshot(self, msg: p.AgentStateSnapshot) -> None:
        """The spec a turn waits for; a late answer to the latest request still updates the spec."""
        if msg.request_id != self.last_request_id:
            if _request_turn(msg.request_id) not in self.history.recent:
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
        if turn is not None and turn.request_id == msg.request_id and not turn.spec_waiter.done():
            turn.spec_waiter.set_result(spec)

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

    _handlers = {
        dict: _on_fact,
        p.AgentStateSnapshot: _on_snapshot,
        Takeover: _on_takeover,
        PlayerInput: _on_player_input,
    }

    # --- lifecycle -------------------------------------------------------------------------

    def connection_closed(self) -> None:
        """Godot went away: a running turn has nobody to play it; stop paying for tokens."""
        self._interrupt("disconnected", None)

    def close(self) -> None:
        self._interrupt("shutdown", None)
        if self.llm_log is not None:
            self.llm_log.close()

    # --- the turn --------------------------------------------------------------------------

    def _start_turn(self, turn_id: str, event_id: str | None) -> None:
        """Run the turn the gateway assigned (its pending history entry is already in place)."""
        turn = Turn(
            turn_id, event_id, f"{turn_id}{REQUEST_SUFFIX}", spec_waiter=asyncio.get_running_loop().create_future()
        )
        self.turn = turn
        self.last_request_id = turn.request_id
        self._emit(p.turn_started(self.agent_id, turn_id, event_id))
        turn.task = asyncio.get_running_loop().create_task(self._run_turn(turn))

    async def _run_turn(self, turn: Turn) -> None:
        log = self.log.bind(turn_id=turn.turn_id)
        try:
            spec = await self._fetch_spec(turn)
            if turn.ended:  # ended while its answer arrived (wait_for may swallow that cancel)
                return
            if spec is None:
                self._end(
                    turn,
                    "finished",
                    "error",
                    error=(
                        p.SNAPSHOT_TIMEOUT,
                        f"no valid agent_state_snapshot within {self.host.settings.snapshot_timeout_s} s "
                        f"and no earlier spec for agent {self.agent_id!r}",
                    ),
                )
                return
            messages = build_messages(spec, self.history.entries, budget_chars=self.host.settings.history_budget_chars)
            turn.parser = parser = TagStreamParser(spec.allowed_tags)
            markup = await self._ask_player(turn, spec, messages[-1]["content"])
            if turn.ended:
                return
            if markup is not None:
                self._emit_tags(turn, parser.feed(markup))
                self._end(turn, "finished", "completed")
                log.debug("turn played by a person in {:.3f} s", time.monotonic() - turn.started_at)
                return
            turn.llm_input = record = {
                "turn_id": turn.turn_id,
                "time": time.time(),
                "model": self.host.settings.turn_model,
                "messages": messages,
                "usage": None,
            }
            async for delta in self.host.llm.stream(messages, extra_body=self.host.extra_body(spec)):
                if delta.content and not turn.ended:
                    self._emit_tags(turn, parser.feed(delta.content))
                if delta.usage:
                    record["usage"] = delta.usage
            self._end(turn, "finished", "completed", usage=record["usage"])
            log.debug("turn completed in {:.3f} s, usage {}", time.monotonic() - turn.started_at, record["usage"])
        except asyncio.CancelledError:
            self._end(turn, "interrupted", "cancelled")  # no-op when the interrupter ended it
            raise
        except LLMError as exc:
            log.warning("LLM failed: {} {}", exc.code, exc)
            self._end(turn, "finished", "error", error=(p.LLM_ERROR, str(exc)))
        except Exception as exc:  # noqa: BLE001 - the turn ends cleanly whatever went wrong
            log.exception("turn failed")
            self._end(turn, "finished", "error", error=(p.TURN_ERROR, f"turn failed: {exc}"))

    async def _fetch_spec(self, turn: Turn) -> AgentSpec | None:
        """Ask Godot for the latest spec; after the timeout fall back to the last one known."""
        self._emit(p.get_agent_state(turn.request_id, self.agent_id, turn.event_id))
        try:
            return await asyncio.wait_for(turn.spec_waiter, self.host.settings.snapshot_timeout_s)
        except TimeoutError:
            self.log.bind(turn_id=turn.turn_id).warning("no agent_state_snapshot in time; using last spec")
            return self.spec

    async def _ask_player(self, turn: Turn, spec: AgentSpec, prompt: str) -> str | None:
        """Tell the gateway the turn needs an answer; when a person plays the NPC, wait for theirs.

        None means the LLM answers: nobody plays the NPC, the person left, or did not answer
        within the takeover timeout (then the LLM keeps the NPC, and the gateway is told).
        """
        takeover = self.takeover
        if takeover is None:
            return None
        client = takeover.client
        self.host.report(self.session, TurnPrompt(self.agent_id, turn.turn_id, client, prompt, actions_of(spec)))
        turn.input_waiter = asyncio.get_running_loop().create_future()
        timeout = self.host.settings.events_takeover_timeout_s
        try:
            return await asyncio.wait_for(turn.input_waiter, timeout)
        except TimeoutError:
            if self.takeover is takeover:  # not already replaced by a newer takeover
                self.log.bind(turn_id=turn.turn_id).info(
                    "{} did not answer within {} s: the LLM plays again", client, timeout
                )
                self.takeover = None
                self.host.report(self.session, TakeoverEnded(self.agent_id, client, takeover.grant))
            return None

    def _emit_tags(self, turn: Turn, events: list) -> None:
        for frame in p.tag_frames(self.agent_id, turn.turn_id, events):
            self._emit(frame)

    def _interrupt(self, reason: str, by_event_id: str | None) -> None:
        turn = self.turn
        if turn is not None and not turn.ended:
            self._end(turn, "interrupted", reason, by_event_id=by_event_id)

    def _end(
        self,
        turn: Turn,
        how: str,
        reason: str,
        *,
        usage: dict | None = None,
        error: tuple[str, str] | None = None,
        by_event_id: str | None = None,
    ) -> None:
        """The single way a turn ends: close its tag, send its last frame, stop its task."""
        if turn.ended:
            return
        turn.ended = True
        if turn.llm_input is not None and self.llm_log is not None:
            # Here, not after the stream: a turn ended from outside (interrupted, disconnected)
            # is logged now, before a disconnect log is written, not when its task next runs.
            self.llm_log.append(turn.llm_input)
        turn.llm_input = None
        if turn.parser is not None:
            self._emit_tags(turn, turn.parser.close())
        if error is not None:
            self._error(error[0], error[1], turn_id=turn.turn_id)
        if how == "interrupted":
            self._emit(p.turn_interrupted(self.agent_id, turn.turn_id, reason, by_event_id))
        else:
            self._emit(p.turn_finished(self.agent_id, turn.turn_id, reason, usage))
        if self.turn is turn:
            self.turn = None
        if turn.task is not None and turn.task is not asyncio.current_task():
            turn.task.cancel()  # closes the LLM HTTP stream at once

    # --- helpers ---------------------------------------------------------------------------

    def _emit(self, frame: dict) -> None:
        self.host.emit(self.session, frame)

    def _error(self, code: str, message: str, about: p.AgentMessage | None = None, **ref: str) -> None:
        """An ``error`` frame; ``ref`` names the agent, the message type it concerns and its ids."""
        if about is not None:
            ref["type"] = p.TYPE_NAMES[type(about)]
        self._emit(p.error(code, message, {"agent_id": self.agent_id, **ref}))

    def log_records(self) -> tuple[dict, dict | None]:
        """The conversation log and the LLM-input log (None when off), as written on disconnect."""
        head = {
            "session": self.session,
            "agent_id": self.agent_id,
            "name": self.spec.name if self.spec else None,
            "written_at": time.time(),
        }
        return (
            {**head, "history": list(self.history.entries)},
            {**head, "turns": self.llm_log.newest()} if self.llm_log is not None else None,
        )
