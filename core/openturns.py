"""The turns each agent has running and the tag each has open, as the gateway sees them.

Why the gateway tracks this: when a worker dies, its agents cannot end their own turns, yet the
protocol promises Godot that every opened tag closes and every started turn ends. The gateway
assigned every turn id and forwards every frame, so it can keep the books from the frames
themselves and end what was left open. It also answers "is this turn still running?" for an
``agent_turn_result`` before the fact is journaled, and "is this agent busy?" before it is
deactivated.

Per token this costs one prefix comparison: chunk frames are skipped unparsed (frames are built
by ``core.protocol`` with ``type`` first). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from core import protocol as p

Key = tuple[str, str]  # (session, agent_id)

_CHUNK = b'{"type":"agent_tag_chunk"'
_AGENT = b'{"type":"agent_'
_ENDS = ("agent_turn_finished", "agent_turn_interrupted")


@dataclass(slots=True)
class _Turn:
    event_id: str | None
    started: bool = False  # agent_turn_started went out
    tag: tuple[int, str] | None = None  # the open tag: (index, name)


class OpenTurns:
    def __init__(self) -> None:
        self._open: dict[Key, dict[str, _Turn]] = {}

    def assigned(self, key: Key, turn_id: str, event_id: str | None) -> None:
        """The gateway gave ``turn_id`` to a turn of ``key``: it runs until its last frame."""
        self._open.setdefault(key, {})[turn_id] = _Turn(event_id)

    def running(self, key: Key, turn_id: str) -> bool:
        turns = self._open.get(key)
        return turns is not None and turn_id in turns

    def busy(self, key: Key) -> bool:
        return key in self._open

    def frame(self, session: str, data: bytes) -> None:
        """Note one outbound frame of ``session`` (serialised by ``core.protocol``)."""
        if data.startswith(_CHUNK) or not data.startswith(_AGENT):
            return
        frame = orjson.loads(data)
        key = (session, frame["agent_id"])
        turns = self._open.get(key)
        turn_id = frame.get("turn_id")
        if turns is None or turn_id not in turns:
            return
        kind = frame["type"]
        if kind == "agent_turn_started":
            turns[turn_id].started = True
        elif kind == "agent_tag_open":
            turns[turn_id].tag = (frame["index"], frame["tag"])
        elif kind == "agent_tag_close":
            turns[turn_id].tag = None
        elif kind in _ENDS:
            del turns[turn_id]
            if not turns:
                del self._open[key]

    def end(self, key: Key, why: str) -> list[dict]:
        """Frames that end ``key``'s open turns for Godot (its worker is gone): the start of a turn
        the worker never started (Godot's event gets its answer), the open tag's close, an
        ``error`` saying ``why``, and ``agent_turn_finished`` with reason ``error``."""
        frames = []
        agent_id = key[1]
        for turn_id, turn in self._open.pop(key, {}).items():
            if not turn.started:
                frames.append(p.turn_started(agent_id, turn_id, turn.event_id))
            if turn.tag is not None:
                frames.append(p.tag_close(agent_id, turn_id, *turn.tag))
            frames.append(p.error(p.WORKER_LOST, why, {"agent_id": agent_id, "turn_id": turn_id}))
            frames.append(p.turn_finished(agent_id, turn_id, "error", None))
        return frames
