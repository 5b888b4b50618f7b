"""Real WebSocket peers for tests: a Godot stand-in that speaks the /ws protocol (it answers
``get_agent_state`` for the agents it has a spec for, like the game would), on a base that records
every frame in arrival order and offers waits with timeouts."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

END_TYPES = ("agent_turn_finished", "agent_turn_interrupted")
_event_ids = itertools.count(1)


class JsonPeer:
    """A real WebSocket client of the server that records every JSON frame in arrival order,
    with waits that time out so a broken server fails a test instead of hanging it."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._http = http
        self.ws = ws
        self.frames: list[dict] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, base_url: str, path: str):
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(base_url.replace("http", "ws", 1) + path, max_msg_size=0)
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._http.close()

    async def received(self, frame: dict) -> None:
        """Called for each frame once recorded; a subclass answers what it must."""

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = orjson.loads(msg.data)
                self.frames.append(frame)
                await self.received(frame)
                self._changed.set()
        finally:
            self.closed.set()
            self._changed.set()

    async def send(self, frame: dict | str | bytes) -> None:
        if isinstance(frame, dict):
            await self.ws.send_str(orjson.dumps(frame).decode())
        elif isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 10, start: int = 0) -> dict:
        """The first frame from index ``start`` on that satisfies ``predicate``."""

        async def scan() -> dict:
            position = start
            while True:
                self._changed.clear()
                for frame in self.frames[position:]:
                    if predicate(frame):
                        return frame
                position = max(position, len(self.frames))
                if self.closed.is_set():
                    raise ConnectionError("the server closed the connection")
                await self._changed.wait()

        return await asyncio.wait_for(scan(), timeout)

    async def wait_type(self, kind: str, timeout: float = 10, start: int = 0, **fields: Any) -> dict:
        return await self.wait_for(
            lambda f: f["type"] == kind and all(f.get(k) == v for k, v in fields.items()), timeout, start
        )


class GodotPeer(JsonPeer):
    """The game's side of /ws: answers get_agent_state for the agents it has a spec for."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(http, ws)
        self.specs: dict[str, dict] = {}  # agent_id -> state answered to get_agent_state

    @classmethod
    async def connect(cls, base_url: str, query: str = "") -> GodotPeer:
        return await cls.open(base_url, "/ws" + query)

    async def received(self, frame: dict) -> None:
        if frame["type"] == "get_agent_state" and frame["agent_id"] in self.specs:
            await self.send(
                {
                    "type": "agent_state_snapshot",
                    "request_id": frame["request_id"],
                    "agent_id": frame["agent_id"],
                    "state": self.specs[frame["agent_id"]],
                }
            )

    async def interact(self, agent_id: str, text: str = "Hello", **event: Any) -> str:
        """Send an interaction_event; return its event_id."""
        event_id = f"e{next(_event_ids)}"
        await self.send(
            {
                "type": "interaction_event",
                "agent_id": agent_id,
                "event_id": event_id,
                "event": {"kind": "speech", "source": "player", "text": text, **event},
            }
        )
        return event_id

    async def turn(self, agent_id: str, text: str = "Hello", timeout: float = 20) -> list[dict]:
        """Interact and wait for the turn to end; return that turn's frames in order."""
        start = len(self.frames)
        event_id = await self.interact(agent_id, text)
        started = await self.wait_type("agent_turn_started", timeout, start, event_id=event_id)
        await self.wait_for(lambda f: f["type"] in END_TYPES and f["turn_id"] == started["turn_id"], timeout, start)
        return self.turn_frames(started["turn_id"])

    def turn_frames(self, turn_id: str) -> list[dict]:
        return [f for f in self.frames if f.get("turn_id") == turn_id]

    async def confirm(self, turn_frames: list[dict], status: str = "completed") -> None:
        """Send agent_turn_result with the tags as received (what a game that played it all sends)."""
        first = turn_frames[0]
        await self.send(
            {
                "type": "agent_turn_result",
                "agent_id": first["agent_id"],
                "turn_id": first["turn_id"],
                "status": status,
                "tags": played_tags(turn_frames),
            }
        )


def played_tags(turn_frames: list[dict]) -> list[dict]:
    """Reassemble the tags of one turn from its open/chunk/close frames."""
    tags: dict[int, dict] = {}
    for f in turn_frames:
        if f["type"] == "agent_tag_open":
            tags[f["index"]] = {"tag": f["tag"], "attrs": f["attrs"], "text": ""}
        elif f["type"] == "agent_tag_chunk":
            tags[f["index"]]["text"] += f["text"]
    return [tags[i] for i in sorted(tags)]
