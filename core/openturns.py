"""The turns each agent has running and the tag each has open, as the gateway sees them.

Why the gateway tracks this: when a worker dies, its agents cannot end their own turns, yet the
protocol promises Godot that every opened tag closes and every started turn ends. The gateway
assigned every turn id and forwards every frame, so it can follow each turn from its frames
(``core.turn.SeenTurn``) and end what was left open as the turn's machine would have. It also
answers "is this turn still running?" for an ``agent_turn_result`` before the fact is journaled,
and "is this agent busy?" before it is deactivated.

Per token this costs one prefix comparison: chunk frames are skipped unparsed (frames are built
by ``core.protocol`` with ``type`` first). Pure: no I/O.
"""

from __future__ import annotations

import orjson

from core import protocol as p
from core.turn import SeenTurn

Key = tuple[str, str]  # (session, agent_id)

_CHUNK = b'{"type":"agent_tag_chunk"'
_AGENT = b'{"type":"agent_'


class OpenTurns:
    def __init__(self) -> None:
        self._open: dict[Key, dict[str, SeenTurn]] = {}

    def assigned(self, key: Key, turn_id: str, event_id: str | None) -> None:
        """The gateway gave ``turn_id`` to a turn of ``key``: it runs until its last frame."""
        self._open.setdefault(key, {})[turn_id] = SeenTurn(key[1], turn_id, event_id)

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
        if turns is None:
            return
        turn = turns.get(frame.get("turn_id"))
        if turn is not None and turn.seen(frame):
            del turns[turn.turn_id]
            if not turns:
                del self._open[key]

    def end(self, key: Key, why: str) -> list[dict]:
        """Frames that end ``key``'s open turns for Godot (its worker is gone), each as
        ``core.turn.SeenTurn.lost`` ends it, with ``worker_lost`` saying ``why``."""
        return [frame for turn in self._open.pop(key, {}).values() for frame in turn.lost(p.WORKER_LOST, why)]
