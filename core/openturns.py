"""The turns each agent has running and the tag each has open, as the gateway sees them.

Why the gateway tracks this: when a worker dies, its agents cannot end their own turns, yet the
protocol promises Godot that every opened tag closes and every started turn ends. The gateway
assigned every turn id and forwards every frame, so it can follow each turn from its frames
(``core.turn.SeenTurn``) and end what was left open as the turn's machine would have. It also
answers "is this turn still running?" for an ``agent_turn_result`` before the fact is journaled,
and "is this agent busy?" before it is deactivated.

The same frames give what a game waits for, end to end as the gateway sees it (``on_latency``):
from the event that started a turn to its first tag and to its first speech tag, and from the
event that cut into a running turn to its ``agent_turn_interrupted``. Times come in as arguments.

Per token this costs one prefix comparison: chunk frames are skipped unparsed (frames are built
by ``core.protocol`` with ``type`` first). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from core import protocol as p
from core.spec import SPEECH_TAG
from core.turn import SeenTurn

Key = tuple[str, str]  # (session, agent_id)
FIRST_TAG, FIRST_SAY, INTERRUPT = "first_tag", "first_say", "interrupt"  # what on_latency measured

_CHUNK = b'{"type":"agent_tag_chunk"'
_AGENT = b'{"type":"agent_'


class OpenTurns:
    def __init__(self, on_latency: Callable[[str, float], None] | None = None) -> None:
        self._open: dict[Key, dict[str, SeenTurn]] = {}
        self._on_latency = on_latency  # (FIRST_TAG, FIRST_SAY or INTERRUPT, seconds)

    def assigned(self, key: Key, turn_id: str, event_id: str | None, now: float = 0.0) -> None:
        """The gateway gave ``turn_id`` to a turn of ``key`` at ``now``: it runs until its last
        frame, and cuts into the turns of ``key`` still running (the agent interrupts them)."""
        turns = self._open.setdefault(key, {})
        for running in turns.values():
            if running.cut_at is None:
                running.cut_at = now
        turns[turn_id] = SeenTurn(key[1], turn_id, event_id, assigned_at=now)

    def running(self, key: Key, turn_id: str) -> bool:
        turns = self._open.get(key)
        return turns is not None and turn_id in turns

    def busy(self, key: Key) -> bool:
        return key in self._open

    def frame(self, session: str, data: bytes, now: float = 0.0) -> None:
        """Note one outbound frame of ``session`` (serialised by ``core.protocol``), sent at ``now``."""
        if data.startswith(_CHUNK) or not data.startswith(_AGENT):
            return
        frame = orjson.loads(data)
        key = (session, frame["agent_id"])
        turns = self._open.get(key)
        if turns is None:
            return
        turn = turns.get(frame.get("turn_id"))
        if turn is None:
            return
        if self._on_latency is not None:
            self._latency(turn, frame, now)
        if turn.seen(frame):
            del turns[turn.turn_id]
            if not turns:
                del self._open[key]

    def _latency(self, turn: SeenTurn, frame: dict, now: float) -> None:
        assert self._on_latency is not None  # checked by the caller
        kind = frame["type"]
        if kind == "agent_tag_open":
            if not turn.tagged:
                turn.tagged = True
                self._on_latency(FIRST_TAG, now - turn.assigned_at)
            if not turn.said and frame["tag"].lower() == SPEECH_TAG:
                turn.said = True
                self._on_latency(FIRST_SAY, now - turn.assigned_at)
        elif kind == "agent_turn_interrupted" and turn.cut_at is not None:
            self._on_latency(INTERRUPT, now - turn.cut_at)

    def end(self, key: Key, why: str) -> list[dict]:
        """Frames that end ``key``'s open turns for Godot (its worker is gone), each as
        ``core.turn.SeenTurn.lost`` ends it, with ``worker_lost`` saying ``why``."""
        return [frame for turn in self._open.pop(key, {}).values() for frame in turn.lost(p.WORKER_LOST, why)]
