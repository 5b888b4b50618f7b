"""The engine scenarios that both Godot addons play, each in its own engine: Godot 3.2 headless
(tests/test_godot_clients.py) and Godot 4.6's web template in Chromium (tests/test_godot4_engine.py).

Both test projects (clients/godot3/test_project, clients/godot/test_project) print the same lines:
``RESULT ok|fail <check>``, ``INFO <key> <json>``, ``STEP <name>`` and ``DONE``. This module holds
what the engines share: reading those lines, what the scripted LLM answers in each scenario and
what the server must have recorded after it (its LLM requests, its conversation logs), so a
scenario is checked the same way on both engines. Agents and sessions carry the engine's
prefix (``g3``/``g4``) so that the two never share a history.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

REPLY = '<thought>A stranger.</thought><say>Halt! State your business &amp; name.</say><action name="raise_spear"/>'
LONG_STORY = {"content": "<say>" + "word " * 400 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.03}


class PrintedLines:
    """What a game printed, line by line as it comes, with waits that time out."""

    ERROR_PREFIXES: tuple[str, ...] = ()  # lines that report a script or engine error

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def add(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()

    def ended(self) -> bool:
        """Whether no more lines will come (the engine stopped)."""
        return False

    async def wait_line(self, prefix: str, timeout: float = 60) -> str:
        """The first printed line that starts with ``prefix``."""

        async def scan() -> str:
            while True:
                self._changed.clear()
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self.ended():
                    raise AssertionError(f"godot stopped before printing {prefix!r}:\n{self.output()}")
                await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {prefix!r} from godot within {timeout} s:\n{self.output()}") from None

    def output(self) -> str:
        return "\n".join(self.lines)

    def info(self, key: str):
        """The JSON value of an ``INFO <key> <json>`` line."""
        for line in self.lines:
            if line.startswith(f"INFO {key} "):
                return json.loads(line.split(" ", 2)[2])
        raise AssertionError(f"no INFO {key} line:\n{self.output()}")

    def assert_ok(self, *checks: str) -> None:
        """Every check printed ``RESULT ok``, none failed, the scenario got to its end and the
        engine printed no error (a release build reports script errors only this way)."""
        results = {}
        for line in self.lines:
            if match := re.match(r"RESULT (ok|fail) (\S+) ?(.*)", line):
                results[match[2]] = (match[1], match[3])
        failed = {name: why for name, (status, why) in results.items() if status != "ok"}
        assert not failed, f"checks failed in godot: {failed}\n{self.output()}"
        missing = [check for check in checks if check not in results]
        assert not missing, f"checks never reported: {missing}\n{self.output()}"
        assert "DONE" in self.lines, f"the scenario did not finish:\n{self.output()}"
        errors = [line for line in self.lines if line.startswith(self.ERROR_PREFIXES)]
        assert not errors, f"errors in godot:\n{self.output()}"


# --- what the server recorded ---


def ws_url(server) -> str:
    return server.url.replace("http", "ws", 1) + "/ws"


def history(request: dict) -> list[dict]:
    """The chat messages of one recorded LLM request, without the system message."""
    return request["body"]["messages"][1:]


def assistant_texts(request: dict) -> list[str]:
    return [m["content"] for m in history(request) if m["role"] == "assistant"]


def last_user_texts(requests: list[dict]) -> list[str]:
    """The text of each request's newest event, without its ``[speech from player]`` label."""
    return [history(request)[-1]["content"].split("] ", 1)[1] for request in requests]


async def recorded_turns(server, session: str, agent_id: str, timeout: float = 10) -> list[dict]:
    """The agent's turns as the server wrote them to its conversation log when the session's
    connection closed (the log file is the observable end of that)."""
    folder = server.log_dir / session
    deadline = time.monotonic() + timeout
    while not list(folder.glob(f"*/{agent_id}.llm_input.json")):
        assert time.monotonic() < deadline, f"no conversation log of {agent_id} in {folder}"
        await asyncio.sleep(0.1)
    conversation = json.loads(next(folder.glob(f"*/{agent_id}.conversation.json")).read_text())
    # without the journal's sequence number, which the server stamps on every entry
    return [
        {key: value for key, value in entry.items() if key != "seq"}
        for entry in conversation["history"]
        if entry["kind"] == "turn"
    ]


# --- the scenarios ---


@dataclass(frozen=True)
class Scenario:
    """One scenario of the test projects: the LLM's replies, the checks the game must report
    and what the server must have recorded afterwards."""

    replies: tuple[dict, ...]
    checks: tuple[str, ...]
    verify: Callable[[PrintedLines, object, object, str], Awaitable[None]]


async def _full_turn(run, llm, server, engine: str) -> None:
    first, second = await llm.requests()
    # The state provider answered get_agent_state: the dossier is the game's spec.
    system = first["body"]["messages"][0]["content"]
    assert "Bram" in system and "North Gate" in system
    # The automatic agent_turn_result (what was received) is the history of the next prompt.
    assert assistant_texts(second) == [
        "<thought>A stranger.</thought><say>Halt! State your business &amp; name.</say>"
        '<action name="raise_spear"></action>'
    ]
    assert "When does the gate close?" in history(second)[-1]["content"]


async def _played(run, llm, server, engine: str) -> None:
    _, second, third = await llm.requests()
    # Held, then cut by the game after "I sell potions": the thought stays, the rest is gone.
    assert assistant_texts(second) == ["<thought>A buyer.</thought><say>I sell potions</say>"]
    assert "[your previous turn was interrupted here]" in history(second)[-1]["content"]
    # report_played() replaced the streamed text.
    assert assistant_texts(third)[-1] == "<say>Two coins.</say>"
    assert "friend" not in json.dumps(history(third))


async def _interrupt(run, llm, server, engine: str) -> None:
    played = run.info("played_so_far")
    story, answer = await llm.requests()
    assert story["end"] == "client_closed"
    assert 0 < len(played) < len(LONG_STORY["content"])
    # The interrupted turn, as far as Godot got, reached the prompt of the interrupting turn.
    assert assistant_texts(answer) == [f"<say>{played}</say>"]
    assert "[your previous turn was interrupted here]" in history(answer)[-1]["content"]
    assert "Stop!" in history(answer)[-1]["content"]


async def _tools(run, llm, server, engine: str) -> None:
    first, continuation = await llm.requests()
    system = first["body"]["messages"][0]["content"]
    assert "open_door" in system and "lock_door" in system
    assert len(assistant_texts(continuation)) == 1
    assert '{"door": "forge"}</tool>' in assistant_texts(continuation)[0]
    results = history(continuation)[-1]["content"]
    assert re.search(r"\[tool result call_id=\S+\.1 tool=open_door ok=true\] door opened", results), results
    assert "tool=lock_door ok=false] no key for that door" in results
    assert "summon" not in results  # never declared: refused by the server (undeclared_tool), never played


async def _disconnect_on_finish(run, llm, server, engine: str) -> None:
    # The server got the result before the close: the turn is confirmed as played, not pending.
    assert await recorded_turns(server, f"{engine}-quit", f"{engine}_quinn") == [
        {
            "kind": "turn",
            "turn_id": run.info("turn_id"),
            "status": "completed",
            "tags": [{"tag": "say", "attrs": {}, "text": "Farewell, traveller."}],
        }
    ]


async def _disconnect_on_interrupt(run, llm, server, engine: str) -> None:
    cut = (await recorded_turns(server, f"{engine}-cut-quit", f"{engine}_cora"))[0]
    assert cut["status"] == "interrupted"
    assert cut["tags"] == [{"tag": "say", "attrs": {}, "text": run.info("played_so_far")}]


async def _send_on_finish(run, llm, server, engine: str) -> None:
    # send_result() from turn_finished sees the turn as completed (its status is set before the signal).
    [turn] = await recorded_turns(server, f"{engine}-send", f"{engine}_sela")
    assert (turn["status"], turn["tags"]) == ("completed", [{"tag": "say", "attrs": {}, "text": "Morning."}])


async def _switch_session(run, llm, server, engine: str) -> None:
    assert any("not sent to another session" in line for line in run.lines), run.output()
    # The old session's queued event never ran in the new one.
    assert last_user_texts(await llm.requests()) == ["Tell me a long story", "Hello"]


async def _memories(run, llm, server, engine: str) -> None:
    [guard_turn] = await llm.requests()
    # The group's pinned memory reached the prompt of another member of the group.
    assert "Tonight's password is swordfish." in guard_turn["body"]["messages"][0]["content"]


SCENARIOS = {
    "full_turn": Scenario(
        ({"content": REPLY, "chunk_size": 5}, {"content": "<say>At sundown.</say>"}),
        ("full_turn", "second_turn", "server_error"),
        _full_turn,
    ),
    "played": Scenario(
        (
            {"content": "<thought>A buyer.</thought><say>I sell potions, cheap ones and fine ones.</say>"},
            {"content": "<say>Two coins, friend, and cheap at that.</say>"},
            {"content": "<say>Welcome.</say>"},
        ),
        ("held_and_cut", "reported", "third_turn"),
        _played,
    ),
    "interrupt": Scenario((LONG_STORY, {"content": "<say>Yes?</say>"}), ("interrupt",), _interrupt),
    "tools": Scenario(
        (
            {
                "content": '<say>Let me check.</say><tool name="open_door">{"door": "forge"}</tool>'
                '<tool name="lock_door"></tool><tool name="summon">{}</tool>'
            },
            {"content": "<say>The forge is open.</say>"},
        ),
        ("tool_called", "continuation"),
        _tools,
    ),
    # What running the Godot 4 addon in a Godot 4 engine found (issue 16); the Godot 3 addon had it too.
    "disconnect_on_finish": Scenario(
        ({"content": "<say>Farewell, traveller.</say>"},), ("disconnect_on_finish",), _disconnect_on_finish
    ),
    "disconnect_on_interrupt": Scenario(
        (LONG_STORY, {"content": "<say>Yes?</say>"}), ("disconnect_on_interrupt",), _disconnect_on_interrupt
    ),
    "send_on_finish": Scenario(({"content": "<say>Morning.</say>"},), ("send_on_finish",), _send_on_finish),
    "memories": Scenario(({"content": "<say>Password?</say>"},), ("memories",), _memories),
    "switch_session": Scenario(
        ({"match": "long story", **LONG_STORY}, {"content": "<say>Hello there.</say>"}),
        ("switch_session",),
        _switch_session,
    ),
}


# --- the reconnect scenario: a link that refuses, then dies, then a take-over ---

RECONNECT_CHECKS = ("first_connect", "first_connection_turn", "keepalive_reconnect", "second_connection_turn")
RECONNECT_REPLIES = ({"match": "long story", **LONG_STORY},)


class Proxy:
    """A TCP relay in front of the server that the test can freeze (a dead but open link)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.request_lines: list[str] = []
        self.links: list[dict] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def listen_after_refusals(self, port: int, refusals: int = 2, timeout: float = 30) -> None:
        """Refuse the first ``refusals`` connections (nothing serves yet: the client must try
        again), then relay."""
        refused = asyncio.Queue()

        async def refuse(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()
            refused.put_nowait(1)

        refuser = await asyncio.start_server(refuse, "127.0.0.1", port)
        try:
            for _ in range(refusals):
                await asyncio.wait_for(refused.get(), timeout)
        finally:
            refuser.close()
            await refuser.wait_closed()
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", port)

    def freeze(self) -> None:
        for link in self.links:
            link["frozen"] = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self.links:  # frozen links were left open
            for writer in link["writers"]:
                writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        link = {"frozen": False, "writers": [writer]}
        self.links.append(link)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        link["writers"].append(up_writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, first: bool) -> None:
            try:
                while data := await source.read(65536):
                    if first:
                        self.request_lines.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
                        first = False
                    if not link["frozen"]:
                        sink.write(data)
                        await sink.drain()
            finally:
                if not link["frozen"]:  # a dead link carries nothing, not even a close
                    sink.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False), return_exceptions=True)


async def play_reconnect(run: PrintedLines, proxy: Proxy, port: int, open_peer: Callable[[], Awaitable]) -> None:
    """Drive the reconnect scenario from outside: refuse, relay, freeze the link, take over."""
    await run.wait_line("STEP started")
    await proxy.listen_after_refusals(port)
    await run.wait_line("STEP freeze")
    assert len(proxy.links) == 1
    proxy.freeze()
    await run.wait_line("STEP take_over")
    assert len(proxy.links) == 2, "the client did not reconnect after its pings went unanswered"
    peer = await open_peer()
    try:
        await run.wait_line("DONE")
    finally:
        await peer.close()


async def verify_reconnect(run: PrintedLines, llm, proxy: Proxy, session: str) -> None:
    run.assert_ok(*RECONNECT_CHECKS, "take_over")
    assert len(proxy.links) == 2, "the client reconnected after its session was taken over"
    assert proxy.request_lines[0] == f"GET /ws?token=s3cret%20tok&session={session} HTTP/1.1"
    hello, story, still_there = await llm.requests()
    assert story["end"] == "client_closed"
    # The agent kept its history across the reconnect, with the cut turn as far as Godot got it
    # (the server ran that turn on into the new connection: the result it refused as too early
    # was sent again when the turn ended).
    played = run.info("played_so_far")
    assert 0 < len(played) < len(LONG_STORY["content"])
    assert not assistant_texts(hello)
    assert assistant_texts(still_there)[-1] == f"<say>{played}</say>"
    assert "[your previous turn was interrupted here]" in history(still_there)[-1]["content"]
