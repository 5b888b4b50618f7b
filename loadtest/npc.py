"""The simulated game: WebSocket clients that drive many NPCs the way a Godot game does.

Each NPC answers ``get_agent_state`` with its generated spec (changed a little now and then), gets
interaction events at a Poisson rate, interrupts a share of its turns by sending a newer event
while the turn streams, reports every ended turn with ``agent_turn_result`` (what it received; on
an interruption the part received), answers tool calls with ``tool_results``, and is sent
notifications. Every frame received is checked (``loadtest.metrics``) and timed.

Why it is built this way: the generator shares the machine with the server it measures. So one
asyncio loop per generator process drives all its clients; frames are decoded with orjson and
handled by plain method calls (no task or future per frame or per NPC, timers are ``call_later``
handles); a chunk costs a dict lookup, a few comparisons and one list append; outbound frames
leave through one writer task per connection. A generator process reports once a second (a tick)
and once at the end (its results) through a multiprocessing queue, so that several processes can
share the clients (``--generator-processes``) and the parent merges them.

Timing: all times are ``time.time()``, the clock the scripted LLM stamps its tokens and records
its requests with (same machine).
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import WSMsgType

from config import event_loop
from loadtest import specs
from loadtest.metrics import CORRUPTED, AgentOrder, Problems, StampedText
from providers.scripted import TOOL_ARGUMENTS

STAMPED_TAGS: Final = frozenset({"thought", "say"})  # the tags whose text the scripted LLM stamps
TOOL_CALL_CHANCE: Final = 0.5  # share of an NPC-with-tools' events that ask the LLM for a tool call
ENDED_TEXTS_KEPT: Final = 8  # ended turns per NPC whose late tokens are still matched
ERROR_EXAMPLES: Final = 10
PING_INTERVAL_S: Final = 1.0


@dataclass(frozen=True)
class ShardConfig:
    """What one generator process runs: its clients and the shared load settings (picklable)."""

    index: int
    url: str  # the server's base URL, http://host:port
    clients: tuple[tuple[str, tuple[int, ...]], ...]  # (session, NPC numbers) per WebSocket
    duration_s: float
    drain_s: float  # after the duration, how long in-flight turns may take to end
    rate: float  # interaction events per second per NPC
    interrupt_ratio: float
    tool_share: float
    notify_rate: float  # notification_event frames per second per client
    llm_ttft_s: float
    llm_tokens: int
    check_text: bool  # the LLM stamps its tokens (ours, or one we configured)
    seed: int

    @property
    def words(self) -> int:
        """Stamped tokens in a complete turn: the scripted answer minus its four tag tokens."""
        return self.llm_tokens - 4


class Turn:
    """What an NPC knows of its live turn."""

    __slots__ = (
        "turn_id",
        "event_id",
        "triggered_at",
        "snapshot_at",
        "first_tag",
        "tags",
        "text",
        "chunks",
        "interrupt_at",
        "tools",
    )

    def __init__(self, turn_id: str, event_id: str | None, triggered_at: float, text: StampedText | None) -> None:
        self.turn_id = turn_id
        self.event_id = event_id
        self.triggered_at = triggered_at  # when the event (or the tool results) that started it was sent
        self.snapshot_at = 0.0
        self.first_tag = False
        self.tags: list[list] = []  # [index, tag, attrs, [text parts]]
        self.text = text
        self.chunks = 0
        self.interrupt_at = 0  # interrupt after this many chunks; 0 = let it play
        self.tools: list[tuple[str, str]] = []  # (call_id, tool name)

    def played(self) -> list[dict]:
        return [{"tag": tag, "attrs": attrs, "text": "".join(parts)} for _, tag, attrs, parts in self.tags]


class Npc:
    """One NPC of the game: its spec, its event schedule, and its live turn."""

    __slots__ = (
        "shard",
        "client",
        "agent_id",
        "spec",
        "tools",
        "order",
        "turn",
        "ended_texts",
        "pending",
        "event_seq",
        "next_due",
        "continuation_at",
        "busy",
        "dead",
        "timer",
    )

    def __init__(self, shard: Shard, client: Client, number: int, rng: random.Random) -> None:
        self.shard = shard
        self.client = client
        self.agent_id = f"npc{number}"
        self.spec = specs.make_spec(rng, number, rng.random() < shard.config.tool_share)
        self.tools = [tool["name"] for tool in self.spec.get("tools", ())]
        self.order = AgentOrder(self.agent_id, shard.problems)
        self.turn: Turn | None = None
        self.ended_texts: dict[str, StampedText] = {}  # turn_id -> text of a recently ended turn
        self.pending: dict[str, float] = {}  # event_id -> sent at, until its turn starts
        self.event_seq = 0
        self.next_due = 0.0
        self.continuation_at: float | None = None  # tool_results sent, continuation turn expected
        self.busy = False  # an event of ours is unanswered or a turn of ours is live
        self.dead = False  # its connection is gone
        self.timer: asyncio.TimerHandle | None = None

    # --- what the game sends ---------------------------------------------------------------------

    def fire(self) -> None:
        """The next event is due: the NPC is idle, so it reacts now."""
        self.timer = None
        shard = self.shard
        if shard.stopping or self.busy or self.dead:
            return
        now = time.time()
        self.busy = True
        shard.busy += 1
        self._send_event(now)
        self.next_due = now + shard.rng.expovariate(shard.config.rate)

    def _send_event(self, now: float) -> str:
        shard, rng = self.shard, self.shard.rng
        self.event_seq += 1
        event_id = f"{self.agent_id}.{self.event_seq}"
        tool = rng.choice(self.tools) if self.tools and rng.random() < TOOL_CALL_CHANCE else None
        event: dict[str, Any] = {
            "kind": rng.choice(specs.EVENT_KINDS),
            "source": "player",
            "text": specs.event_text(rng, event_id, tool),
        }
        if rng.random() < 0.3:
            event["data"] = {"distance_m": rng.randint(1, 30), "player_level": rng.randint(1, 10)}
        self.pending[event_id] = now
        self.client.send({"type": "interaction_event", "agent_id": self.agent_id, "event_id": event_id, "event": event})
        shard.totals["events_sent"] += 1
        return event_id

    def _report(self, turn: Turn, status: str) -> None:
        self.client.send(
            {
                "type": "agent_turn_result",
                "agent_id": self.agent_id,
                "turn_id": turn.turn_id,
                "status": status,
                "tags": turn.played(),
            }
        )
        self.shard.totals["turn_results_sent"] += 1

    def _settle(self, now: float) -> None:
        """After a turn ended: idle unless another turn of ours is coming; then schedule the next event."""
        if self.turn is not None or self.pending or self.continuation_at is not None or not self.busy:
            return
        self.busy = False
        shard = self.shard
        shard.busy -= 1
        if shard.stopping:
            if not shard.busy:
                shard.drained.set()
        else:
            self.timer = shard.loop.call_later(max(0.0, self.next_due - now), self.fire)

    def disconnected(self) -> None:
        self.dead = True
        if self.timer is not None:
            self.timer.cancel()
        if self.busy:
            self.busy = False
            self.shard.busy -= 1

    # --- what the server sends -------------------------------------------------------------------

    def on_started(self, frame: dict, now: float) -> None:
        turn_id, event_id = frame["turn_id"], frame.get("event_id")
        if self.order.started(turn_id):
            self._new_turn(turn_id, event_id, now)
        elif event_id is not None and self.turn is not None and self.turn.turn_id == turn_id:
            self.turn.event_id = event_id  # it came late: the turn was taken up at its first frame
            self.turn.triggered_at = self.pending.pop(event_id, self.turn.triggered_at)

    def _new_turn(self, turn_id: str, event_id: str | None, now: float) -> Turn:
        shard = self.shard
        if event_id is not None:
            triggered_at = self.pending.pop(event_id, now)
        elif self.continuation_at is not None:
            triggered_at, self.continuation_at = self.continuation_at, None
        else:
            triggered_at = now
        if self.turn is not None:  # its end frame is missing (reported)
            if self.turn.text is not None:
                self.turn.text.turn_ended(None)
            self._retire(self.turn)
        text = StampedText(shard.problems, f"{self.agent_id} turn {turn_id}") if shard.config.check_text else None
        self.turn = turn = Turn(turn_id, event_id, triggered_at, text)
        shard.totals["turns_started"] += 1
        config = shard.config
        if not shard.stopping and shard.rng.random() < config.interrupt_ratio:
            turn.interrupt_at = shard.rng.randint(1, max(1, config.words - 1))
        return turn

    def _live(self, turn_id: str, now: float) -> Turn:
        """The live turn ``turn_id``, taken up at its first frame if its start is missing."""
        turn = self.turn
        if turn is None or turn.turn_id != turn_id:
            turn = self._new_turn(turn_id, None, now)
        return turn

    def _retire(self, turn: Turn) -> None:
        """Keep an ended turn's text a while: its late tokens are matched, not counted lost."""
        if turn.text is None:
            return
        self.ended_texts[turn.turn_id] = turn.text
        if len(self.ended_texts) > ENDED_TEXTS_KEPT:
            self.ended_texts.pop(next(iter(self.ended_texts))).settle()

    def settle(self) -> bool:
        """The run is over: count what never arrived; return whether a turn or event was unanswered."""
        for text in self.ended_texts.values():
            text.settle()
        if self.turn is not None and self.turn.text is not None:
            self.turn.text.settle()
        return self.order.finish() or bool(self.pending)

    def on_state_request(self, frame: dict, now: float) -> None:
        self.client.send(
            {
                "type": "agent_state_snapshot",
                "request_id": frame["request_id"],
                "agent_id": self.agent_id,
                "state": specs.state_for_turn(self.spec, self.shard.rng),
            }
        )
        if self.turn is not None:
            self.turn.snapshot_at = time.time()

    def on_open(self, frame: dict, now: float) -> None:
        if not self.order.tag_open(frame["turn_id"], frame["index"]):
            return
        turn = self._live(frame["turn_id"], now)
        tag, attrs = frame["tag"], frame["attrs"]
        turn.tags.append([frame["index"], tag, attrs, []])
        if tag == "tool":
            turn.tools.append((attrs.get("call_id", ""), attrs.get("name", "")))
        elif tag not in STAMPED_TAGS and turn.text is not None:
            self.shard.problems.add(CORRUPTED, f"{self.agent_id} turn {turn.turn_id}: tag {tag!r} the LLM never wrote")
        if not turn.first_tag:
            turn.first_tag = True
            if turn.snapshot_at:
                self.shard.first_tag_ms.append((now - turn.snapshot_at - self.shard.config.llm_ttft_s) * 1000)

    def on_chunk(self, frame: dict, now: float) -> None:
        turn_id, index, text, shard = frame["turn_id"], frame["index"], frame["text"], self.shard
        if not self.order.tag_chunk(turn_id, index):  # reported; its tokens are not missing though
            turn = self.turn
            stamped = turn.text if turn is not None and turn.turn_id == turn_id else self.ended_texts.get(turn_id)
            if stamped is not None and frame["tag"] in STAMPED_TAGS:
                shard.tokens += stamped.feed(text, int(now * 1e6), shard.latencies, reported=True)
            return
        turn = self.turn
        if turn is None or turn.turn_id != turn_id:
            turn = self._live(turn_id, now)
        if not turn.tags or turn.tags[-1][0] != index:  # its open was lost (reported): keep the text anyway
            turn.tags.append([index, frame["tag"], {}, []])
        tag = turn.tags[-1]
        tag[3].append(text)
        if turn.text is None:
            shard.tokens += 1
        elif tag[1] in STAMPED_TAGS:
            shard.tokens += turn.text.feed(text, int(now * 1e6), shard.latencies)
        turn.chunks += 1
        if turn.chunks == turn.interrupt_at and not shard.stopping:
            self._send_event(now)
            shard.totals["interrupts_sent"] += 1

    def on_close(self, frame: dict, now: float) -> None:
        if not self.order.tag_close(frame["turn_id"], frame["index"]):
            return
        turn = self._live(frame["turn_id"], now)
        if turn.text is None:
            return
        if frame["tag"] in STAMPED_TAGS:
            turn.text.tag_closed()
        elif frame["tag"] == "tool" and turn.tags and "".join(turn.tags[-1][3]) != TOOL_ARGUMENTS:
            self.shard.problems.add(
                CORRUPTED,
                f"{self.agent_id} turn {turn.turn_id}: tool arguments "
                f"{''.join(turn.tags[-1][3])!r}, the LLM wrote {TOOL_ARGUMENTS!r}",
            )

    def on_interrupted(self, frame: dict, now: float) -> None:
        turn = self._ended(frame, now)
        if turn is None:
            return
        shard = self.shard
        shard.interrupted += 1
        by = frame.get("by_event_id")
        sent = self.pending.get(by) if by is not None else None
        if sent is not None:
            shard.interrupt_ms.append((now - sent) * 1000)
            if turn.event_id is not None and turn.first_tag:
                shard.interrupt_closes.append((turn.event_id, sent))
        if turn.text is not None:
            turn.text.turn_ended(None)
        self._report(turn, "interrupted")
        self._settle(now)

    def on_finished(self, frame: dict, now: float) -> None:
        turn = self._ended(frame, now)
        if turn is None:
            return
        shard = self.shard
        completed = frame["reason"] == "completed"
        if completed:
            shard.completed += 1
            shard.turn_ms.append((now - turn.triggered_at) * 1000)
            if turn.text is not None:
                turn.text.turn_ended(shard.config.words)
        else:
            shard.totals["turns_error"] += 1
        self._report(turn, "completed")
        if completed and turn.tools:
            cont = not shard.stopping
            self.client.send(
                {
                    "type": "tool_results",
                    "agent_id": self.agent_id,
                    "turn_id": turn.turn_id,
                    "results": [
                        {"call_id": call_id, "tool": name, "ok": True, "output": f"{name} done"}
                        for call_id, name in turn.tools
                    ],
                    "continue": cont,
                }
            )
            shard.totals["tool_results_sent"] += 1
            if cont:
                self.continuation_at = now
        self._settle(now)

    def _ended(self, frame: dict, now: float) -> Turn | None:
        """The live turn an end frame ends, if the frame is in order."""
        if not self.order.end(frame["turn_id"], frame["type"]):
            return None
        turn = self._live(frame["turn_id"], now)
        self.turn = None
        self._retire(turn)
        return turn


HANDLERS: Final = {
    "agent_tag_chunk": Npc.on_chunk,
    "agent_tag_open": Npc.on_open,
    "agent_tag_close": Npc.on_close,
    "agent_turn_started": Npc.on_started,
    "get_agent_state": Npc.on_state_request,
    "agent_turn_finished": Npc.on_finished,
    "agent_turn_interrupted": Npc.on_interrupted,
}


class Client:
    """One WebSocket connection of the game, with its own session and its share of the NPCs.

    Each client has its own ``?session=``: a session has one connection at a time (a newer one
    takes it over), so clients cannot share one.
    """

    def __init__(
        self, shard: Shard, ws: aiohttp.ClientWebSocketResponse, session: str, numbers: tuple[int, ...]
    ) -> None:
        self.shard = shard
        self.ws = ws
        self.session = session
        self.npcs = {npc.agent_id: npc for npc in (Npc(shard, self, n, shard.rng) for n in numbers)}
        self.closing = False
        self._outbox: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._pings: dict[int, float] = {}
        self._ping_ids = 0
        self._ping_timer: asyncio.TimerHandle | None = None
        self._notify_timer: asyncio.TimerHandle | None = None
        self.reader = shard.loop.create_task(self._read())
        self.writer = shard.loop.create_task(self._write())

    def send(self, frame: dict) -> None:
        self._outbox.append(orjson.dumps(frame))
        self._wake.set()

    def start(self) -> None:
        """Schedule the NPCs' first events, spread over their first interval, and the pings."""
        shard, loop = self.shard, self.shard.loop
        spread = 1 / shard.config.rate
        for npc in self.npcs.values():
            npc.timer = loop.call_later(shard.rng.uniform(0, spread), npc.fire)
        self._ping()
        if shard.config.notify_rate > 0:
            self._notify_timer = loop.call_later(shard.rng.expovariate(shard.config.notify_rate), self._notify)

    async def close(self) -> None:
        self.closing = True
        for timer in (self._ping_timer, self._notify_timer):
            if timer is not None:
                timer.cancel()
        await self.ws.close()
        self.writer.cancel()
        await asyncio.gather(self.reader, self.writer, return_exceptions=True)

    def _ping(self) -> None:
        if self.closing:
            return
        self._ping_ids += 1
        self._pings[self._ping_ids] = time.time()
        self.send({"type": "ping", "id": self._ping_ids})
        self._ping_timer = self.shard.loop.call_later(PING_INTERVAL_S, self._ping)

    def _notify(self) -> None:
        shard = self.shard
        if self.closing or shard.stopping:
            return
        kind, text = shard.rng.choice(specs.NOTIFICATIONS)
        agent_ids = shard.rng.sample(list(self.npcs), min(len(self.npcs), shard.rng.randint(1, 3)))
        self.send(
            {
                "type": "notification_event",
                "agent_ids": agent_ids,
                "event": {"kind": kind, "source": "world", "text": text},
            }
        )
        shard.totals["notifications_sent"] += 1
        self._notify_timer = shard.loop.call_later(shard.rng.expovariate(shard.config.notify_rate), self._notify)

    async def _write(self) -> None:
        outbox, ws, wake = self._outbox, self.ws, self._wake
        try:
            while True:
                await wake.wait()
                wake.clear()
                while outbox:
                    await ws.send_frame(outbox.popleft(), WSMsgType.TEXT)
        except (ConnectionError, RuntimeError) as exc:
            if not self.closing:
                self.shard.error(f"session {self.session}: sending failed: {exc!r}")

    async def _read(self) -> None:
        try:
            await self._receive()
        except Exception as exc:  # noqa: BLE001 - a bug here must show in the report, not hang the run
            self.shard.error(f"session {self.session}: the generator failed on a frame: {exc!r}")
        if not self.closing:
            for npc in self.npcs.values():
                npc.disconnected()
            self.shard.check_drained()

    async def _receive(self) -> None:
        ws, shard, npcs, loads = self.ws, self.shard, self.npcs, orjson.loads
        handlers, text_type = HANDLERS, WSMsgType.TEXT
        while True:
            msg = await ws.receive()
            if msg.type is not text_type:
                break
            now = time.time()
            shard.frames += 1
            frame = loads(msg.data)
            kind = frame["type"]
            handler = handlers.get(kind)
            if handler is not None:
                npc = npcs.get(frame["agent_id"])
                if npc is not None:
                    handler(npc, frame, now)
                else:
                    shard.error(f"session {self.session}: {kind} for an agent it never named: {frame['agent_id']}")
            elif kind == "pong":
                sent = self._pings.pop(frame.get("id"), None)
                if sent is not None:
                    shard.ping_ms.append((now - sent) * 1000)
            elif kind == "error":
                shard.server_error(frame)
            else:
                shard.error(f"session {self.session}: unexpected frame type {kind!r}")
        if not self.closing:
            shard.error(
                f"session {self.session}: connection closed by the server ({msg.type.name}, code {ws.close_code})"
            )


class Shard:
    """One generator process: its clients on one event loop, its counters and samples."""

    def __init__(self, config: ShardConfig, queue: Any) -> None:
        self.config = config
        self.queue = queue
        self.start_at = 0.0  # time.time() of the common start, set by the parent once all are connected
        self.rng = random.Random(config.seed * 1_000_003 + config.index)
        self.loop = asyncio.get_running_loop()
        self.problems = Problems()
        self.clients: list[Client] = []
        self.stopping = False
        self.busy = 0  # NPCs with an event or turn in flight
        self.drained = asyncio.Event()
        # Counted per second (ticks carry the difference since the last tick).
        self.frames = self.tokens = self.completed = self.interrupted = 0
        self.latencies = array("d")  # chunk latencies (ms) of the current second
        self._ticked = (0, 0, 0, 0)
        self.totals: Counter[str] = Counter()
        self.first_tag_ms: list[float] = []
        self.interrupt_ms: list[float] = []
        self.turn_ms: list[float] = []
        self.ping_ms: list[float] = []
        self.interrupt_closes: list[tuple[str, float]] = []  # (event id of the cut turn, interrupt sent at)
        self.errors = 0
        self.error_examples: list[str] = []
        self.error_codes: Counter[str] = Counter()

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_examples) < ERROR_EXAMPLES:
            self.error_examples.append(message)

    def server_error(self, frame: dict) -> None:
        code = frame.get("code", "?")
        self.error_codes[code] += 1
        self.error(f"error frame {code}: {frame.get('message')} (ref {frame.get('ref')})")

    def check_drained(self) -> None:
        if self.stopping and not self.busy:
            self.drained.set()

    async def run(self, go: Any, start_at: Any) -> None:
        """Connect, report ready, start at the parent's signal, run, drain, report."""
        config = self.config
        base = config.url.replace("http", "ws", 1) + "/ws?session="
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            try:
                sockets = await asyncio.gather(
                    *(http.ws_connect(base + session, max_msg_size=0, autoping=True) for session, _ in config.clients)
                )
            except (aiohttp.ClientError, OSError) as exc:
                self.error(f"cannot connect to {config.url}: {exc!r}")
                self.queue.put(("final", config.index, self.results()))
                return
            self.clients = [
                Client(self, ws, session, numbers) for ws, (session, numbers) in zip(sockets, config.clients)
            ]
            self.queue.put(("ready", config.index))
            while not go.is_set():  # a multiprocessing.Event: polled, the loop must keep reading
                await asyncio.sleep(0.01)
            self.start_at = start_at.value
            await asyncio.sleep(max(0.0, self.start_at - time.time()))
            for client in self.clients:
                client.start()
            ticks = self.loop.create_task(self._ticks())
            await asyncio.sleep(max(0.0, self.start_at + config.duration_s - time.time()))
            self.stopping = True
            self.check_drained()
            try:
                await asyncio.wait_for(self.drained.wait(), config.drain_s)
            except TimeoutError:
                pass
            unfinished = [npc.agent_id for client in self.clients for npc in client.npcs.values() if npc.settle()]
            if unfinished:
                self.error(
                    f"{len(unfinished)} NPC(s) still waited for a turn to start or end "
                    f"{config.drain_s:g} s after the load stopped, e.g. {unfinished[:5]}"
                )
            ticks.cancel()
            await asyncio.gather(*(client.close() for client in self.clients))
            self._tick(int(time.time() - self.start_at))
        self.queue.put(("final", config.index, self.results()))

    async def _ticks(self) -> None:
        second = 0
        while True:
            second += 1
            await asyncio.sleep(max(0.0, self.start_at + second - time.time()))
            self._tick(second - 1)

    def _tick(self, second: int) -> None:
        """Report the second ``second`` (counted from the start) to the parent."""
        now = (self.frames, self.tokens, self.completed, self.interrupted)
        frames, tokens, completed, interrupted = (a - b for a, b in zip(now, self._ticked))
        self._ticked = now
        self.queue.put(("tick", self.config.index, second, frames, tokens, completed, interrupted, self.latencies))
        self.latencies = array("d")

    def results(self) -> dict:
        totals = dict(self.totals)
        totals.update(
            frames=self.frames, tokens=self.tokens, turns_completed=self.completed, turns_interrupted=self.interrupted
        )
        return {
            "totals": totals,
            "problems": {"counts": self.problems.counts, "examples": self.problems.examples},
            "errors": {"count": self.errors, "examples": self.error_examples, "codes": dict(self.error_codes)},
            "first_tag_ms": self.first_tag_ms,
            "interrupt_ms": self.interrupt_ms,
            "turn_ms": self.turn_ms,
            "ping_ms": self.ping_ms,
            "interrupt_closes": self.interrupt_closes,
        }


def run_shard(config: ShardConfig, queue: Any, go: Any, start_at: Any) -> None:
    """Entry point of a generator process: ``queue`` takes its reports, ``go`` (an Event) and
    ``start_at`` (a shared double) say when to begin."""

    async def main() -> None:
        await Shard(config, queue).run(go, start_at)

    try:
        event_loop.run(main())  # uvloop: the generator takes less of the cores the server runs on
    except KeyboardInterrupt:  # the parent stops the run; it reports what it has
        pass
