"""The Godot client addons.

The Godot 3 addon runs in a real engine: Debian's ``godot3-server`` (Godot 3.2.3, headless)
plays the scenarios of ``clients/godot3/test_project/test_main.gd`` against the real server and
the scripted LLM. The test project is copied with the one copy of the addon into a temporary
folder; the scenario prints ``RESULT ok|fail <check>`` lines that are asserted here, next to what
the scripted LLM received. No Godot 4 engine can be installed here, so the Godot 4 addon and
demo are parsed and linted with gdtoolkit, and both addons are checked to offer the same API.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.godot_peer import GodotPeer

CLIENTS = ROOT / "clients"
GODOT4_ADDON = CLIENTS / "godot" / "addons" / "npc_turns"
GODOT3_ADDON = CLIENTS / "godot3" / "addons" / "npc_turns"
TEST_PROJECT = CLIENTS / "godot3" / "test_project"
GODOT3 = "godot3-server"  # Debian package godot3-server
RUN_TIMEOUT_S = 120

REPLY = '<thought>A stranger.</thought><say>Halt! State your business &amp; name.</say><action name="raise_spear"/>'


# --- running the engine ---


class GodotRun:
    """godot3-server playing one scenario of the test project; its output lines as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, project: Path, scenario: str, url: str, **env: str) -> GodotRun:
        home = project.parent / "home"
        (home / ".local" / "share").mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            GODOT3,
            "--path",
            str(project),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "HOME": str(home),
                "XDG_DATA_HOME": str(home / ".local" / "share"),
                "LANG": "en_US.UTF-8",
                "NPC_TURNS_URL": url,
                "NPC_TURNS_SCENARIO": scenario,
                **env,
            },
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    async def wait_line(self, prefix: str, timeout: float = 30) -> str:
        """The first output line that starts with ``prefix``."""

        async def scan() -> str:
            while True:
                self._changed.clear()
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if self._reader.done():
                    raise AssertionError(f"godot exited before printing {prefix!r}:\n{self.output()}")
                await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {prefix!r} from godot within {timeout} s:\n{self.output()}") from None

    async def finish(self, timeout: float = RUN_TIMEOUT_S) -> int:
        """Wait for the engine to quit by itself; kill it when it does not."""
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"godot did not finish within {timeout} s:\n{self.output()}") from None
        finally:
            await self.kill()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self.proc.wait()
        await asyncio.gather(self._reader, return_exceptions=True)

    def output(self) -> str:
        return "\n".join(self.lines)

    def info(self, key: str):
        """The JSON value of an ``INFO <key> <json>`` line."""
        for line in self.lines:
            if line.startswith(f"INFO {key} "):
                return json.loads(line.split(" ", 2)[2])
        raise AssertionError(f"no INFO {key} line:\n{self.output()}")

    def assert_ok(self, *checks: str) -> None:
        """Every check printed ``RESULT ok``, none failed, and the scenario got to its end."""
        results = {}
        for line in self.lines:
            if match := re.match(r"RESULT (ok|fail) (\S+) ?(.*)", line):
                results[match[2]] = (match[1], match[3])
        failed = {name: why for name, (status, why) in results.items() if status != "ok"}
        assert not failed, f"checks failed in godot: {failed}\n{self.output()}"
        missing = [check for check in checks if check not in results]
        assert not missing, f"checks never reported: {missing}\n{self.output()}"
        assert "DONE" in self.lines, f"the scenario did not finish:\n{self.output()}"
        assert self.proc.returncode == 0, f"godot exited with {self.proc.returncode}:\n{self.output()}"
        errors = [line for line in self.lines if line.startswith(("SCRIPT ERROR", "ERROR: Invalid", "Parse Error"))]
        assert not errors, f"script errors in godot:\n{self.output()}"


@pytest.fixture(scope="module")
def godot3() -> str:
    path = shutil.which(GODOT3)
    assert path, f"{GODOT3} is not installed: apt-get install -y godot3-server"
    return path


@pytest.fixture
def project(tmp_path: Path, godot3: str) -> Path:
    """The test project with the addon copied in, as a game has it under addons/."""
    target = tmp_path / "project"
    shutil.copytree(TEST_PROJECT, target)
    shutil.copytree(GODOT3_ADDON, target / "addons" / "npc_turns")
    return target


def ws_url(server) -> str:
    return server.url.replace("http", "ws", 1) + "/ws"


async def play(project: Path, scenario: str, url: str, **env: str) -> GodotRun:
    run = await GodotRun.start(project, scenario, url, **env)
    await run.finish()
    return run


def history(request: dict) -> list[dict]:
    """The chat messages of one recorded LLM request, without the system message."""
    return request["body"]["messages"][1:]


def assistant_texts(request: dict) -> list[str]:
    return [m["content"] for m in history(request) if m["role"] == "assistant"]


def last_user_texts(requests: list[dict]) -> list[str]:
    """The text of each request's newest event, without its ``[speech from player]`` label."""
    return [history(request)[-1]["content"].split("] ", 1)[1] for request in requests]


async def conversation(server, session: str, agent_id: str, timeout: float = 10) -> dict:
    """The agent's history as the server wrote it when the session's connection closed."""
    folder = server.log_dir / session
    deadline = time.monotonic() + timeout
    while not list(folder.glob(f"*/{agent_id}.llm_input.json")):
        assert time.monotonic() < deadline, f"no conversation log of {agent_id} in {folder}"
        await asyncio.sleep(0.1)
    return json.loads(next(folder.glob(f"*/{agent_id}.conversation.json")).read_text())


def turns(conversation: dict) -> list[dict]:
    return [entry for entry in conversation["history"] if entry["kind"] == "turn"]


# --- the Godot 3 addon in a real engine ---


async def test_a_full_turn_with_automatic_state_and_result(server, llm, project):
    await llm.reset()
    await llm.script({"content": REPLY, "chunk_size": 5}, {"content": "<say>At sundown.</say>"})
    run = await play(project, "full_turn", ws_url(server))
    run.assert_ok("full_turn", "second_turn", "server_error")
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


async def test_the_game_reports_what_it_played(server, llm, project):
    await llm.reset()
    await llm.script(
        {"content": "<thought>A buyer.</thought><say>I sell potions, cheap ones and fine ones.</say>"},
        {"content": "<say>Two coins, friend, and cheap at that.</say>"},
        {"content": "<say>Welcome.</say>"},
    )
    run = await play(project, "played", ws_url(server))
    run.assert_ok("held_and_cut", "reported", "third_turn")
    _, second, third = await llm.requests()
    # Held, then cut by the game after "I sell potions": the thought stays, the rest is gone.
    assert assistant_texts(second) == ["<thought>A buyer.</thought><say>I sell potions</say>"]
    assert "[your previous turn was interrupted here]" in history(second)[-1]["content"]
    # report_played() replaced the streamed text.
    assert assistant_texts(third)[-1] == "<say>Two coins.</say>"
    assert "friend" not in json.dumps(history(third))


async def test_an_interruption_confirms_what_was_played_so_far(server, llm, project):
    await llm.reset()
    await llm.script(
        {"content": "<say>" + "word " * 400 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.03},
        {"content": "<say>Yes?</say>"},
    )
    run = await play(project, "interrupt", ws_url(server))
    run.assert_ok("interrupt")
    played = run.info("played_so_far")
    story, answer = await llm.requests()
    assert story["end"] == "client_closed"
    assert 0 < len(played) < len("word " * 400)
    # The interrupted turn, as far as Godot got, reached the prompt of the interrupting turn.
    assert assistant_texts(answer) == [f"<say>{played}</say>"]
    assert "[your previous turn was interrupted here]" in history(answer)[-1]["content"]
    assert "Stop!" in history(answer)[-1]["content"]


async def test_tool_calls_run_registered_tools_and_continue(server, llm, project):
    await llm.reset()
    await llm.script(
        {
            "content": '<say>Let me check.</say><tool name="open_door">{"door": "forge"}</tool>'
            '<tool name="lock_door"></tool><tool name="summon">{}</tool>'
        },
        {"content": "<say>The forge is open.</say>"},
    )
    run = await play(project, "tools", ws_url(server))
    run.assert_ok("tool_called", "continuation")
    first, continuation = await llm.requests()
    system = first["body"]["messages"][0]["content"]
    assert "open_door" in system and "lock_door" in system
    assert len(assistant_texts(continuation)) == 1
    assert '{"door": "forge"}</tool>' in assistant_texts(continuation)[0]
    results = history(continuation)[-1]["content"]
    assert re.search(r"\[tool result call_id=\S+\.1 tool=open_door ok=true\] door opened", results), results
    assert "tool=lock_door ok=false] no key for that door" in results
    assert "tool=summon ok=false] unknown tool 'summon'" in results


class Proxy:
    """A TCP relay in front of the server that the test can freeze (a dead but open link)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.request_lines: list[str] = []
        self.links: list[dict] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def listen(self, port: int) -> None:
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

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        link = {"frozen": False}
        self.links.append(link)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

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


async def test_reconnect_keepalive_query_and_take_over(server, llm, project):
    await llm.reset()
    await llm.script(
        {"match": "long story", "content": "<say>" + "word " * 400 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.03}
    )
    port = free_port()
    proxy = Proxy(server.port)
    session = "g3-reconnect"
    run = await GodotRun.start(
        project, "reconnect", f"ws://127.0.0.1:{port}/ws", NPC_TURNS_SESSION=session, NPC_TURNS_TOKEN="s3cret tok"
    )
    try:
        await run.wait_line("STEP started")
        await asyncio.sleep(1.0)  # nothing listens yet: the client must keep retrying
        await proxy.listen(port)
        await run.wait_line("STEP freeze")
        assert len(proxy.links) == 1
        proxy.freeze()
        await run.wait_line("STEP take_over")
        assert len(proxy.links) == 2, "the client did not reconnect after its pings went unanswered"
        peer = await GodotPeer.connect(server.url, f"?session={session}")
        try:
            await run.wait_line("DONE")
        finally:
            await peer.close()
        await run.finish()
    finally:
        await run.kill()
        await proxy.close()
    run.assert_ok(
        "first_connect", "first_connection_turn", "keepalive_reconnect", "second_connection_turn", "take_over"
    )
    assert len(proxy.links) == 2, "the client reconnected after its session was taken over"
    assert proxy.request_lines[0] == f"GET /ws?token=s3cret%20tok&session={session} HTTP/1.1"
    hello, story, still_there = await llm.requests()
    assert story["end"] == "client_closed"
    # The agent kept its history across the reconnect, with the cut turn as far as Godot got it.
    played = run.info("played_so_far")
    assert 0 < len(played) < len("word " * 400)
    assert not assistant_texts(hello)
    assert assistant_texts(still_there)[-1] == f"<say>{played}</say>"
    assert "[your previous turn was interrupted here]" in history(still_there)[-1]["content"]


async def test_a_wrong_turn_fails_the_checks(server, llm, project):
    """The scenario's checks can fail: a reply other than the expected one is reported."""
    await llm.reset()
    await llm.script({"content": "<say>Something else entirely.</say>"})
    run = await play(project, "full_turn", ws_url(server))
    assert any(line.startswith("RESULT fail full_turn tags") for line in run.lines), run.output()
    with pytest.raises(AssertionError, match="checks failed in godot"):
        run.assert_ok("full_turn")


# --- what running the Godot 4 addon in a Godot 4 engine found (issue 16), in the Godot 3 addon ---


async def test_disconnecting_from_turn_finished_keeps_the_turn_completed(server, llm, project):
    await llm.reset()
    await llm.script({"content": "<say>Farewell, traveller.</say>"})
    run = await play(project, "disconnect_on_finish", ws_url(server))
    run.assert_ok("disconnect_on_finish")
    # The server got the result before the close: the turn is confirmed as played, not pending.
    assert turns(await conversation(server, "g3-quit", "g3_quinn")) == [
        {
            "kind": "turn",
            "turn_id": run.info("turn_id"),
            "status": "completed",
            "tags": [{"tag": "say", "attrs": {}, "text": "Farewell, traveller."}],
        }
    ]


async def test_disconnecting_from_turn_interrupted_confirms_the_cut_turn(server, llm, project):
    await llm.reset()
    await llm.script(
        {"content": "<say>" + "word " * 400 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.03},
        {"content": "<say>Yes?</say>"},
    )
    run = await play(project, "disconnect_on_interrupt", ws_url(server))
    run.assert_ok("disconnect_on_interrupt")
    cut = turns(await conversation(server, "g3-cut-quit", "g3_cora"))[0]
    assert cut["status"] == "interrupted"
    assert cut["tags"] == [{"tag": "say", "attrs": {}, "text": run.info("played_so_far")}]


async def test_frames_queued_for_one_session_never_reach_another(server, llm, project):
    await llm.reset()
    await llm.script(
        {"match": "long story", "content": "<say>" + "word " * 400 + "</say>", "chunk_size": 5, "chunk_delay_s": 0.03},
        {"content": "<say>Hello there.</say>"},
    )
    run = await play(project, "switch_session", ws_url(server))
    run.assert_ok("switch_session")
    assert any("not sent to another session" in line for line in run.lines), run.output()
    assert last_user_texts(await llm.requests()) == ["Tell me a long story", "Hello"]


# --- the Godot 4 addon and demo: no engine here, so gdtoolkit parses and lints them ---

GODOT4_SCRIPTS = sorted(CLIENTS.joinpath("godot").rglob("*.gd"))


def test_godot4_scripts_exist():
    names = {path.relative_to(CLIENTS / "godot").as_posix() for path in GODOT4_SCRIPTS}
    assert {"addons/npc_turns/npc_turns.gd", "addons/npc_turns/plugin.gd", "demo/demo.gd"} <= names


def test_godot4_demo_resources_resolve():
    """Every res:// path of the demo project exists, and every %Name the demo uses is in its scene."""
    project = CLIENTS / "godot"
    texts = [project / "project.godot", *project.joinpath("demo").glob("*.tscn")]
    paths = {path for text in texts for path in re.findall(r'"\*?res://([^"]+)"', text.read_text())}
    assert "addons/npc_turns/npc_turns.gd" in paths and "demo/demo.tscn" in paths
    assert [path for path in paths if not (project / path).is_file()] == []
    scene = (project / "demo" / "demo.tscn").read_text()
    unique = set(re.findall(r'\[node name="(\w+)"[^\]]*\]\nunique_name_in_owner = true', scene))
    used = set(re.findall(r"%([A-Z]\w*)", (project / "demo" / "demo.gd").read_text()))
    assert used and used <= unique


@pytest.mark.parametrize("tool", ["gdtoolkit.parser", "gdtoolkit.linter"])
def test_godot4_scripts_parse_and_lint(tool):
    done = subprocess.run(
        [sys.executable, "-m", tool, *map(str, GODOT4_SCRIPTS)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def public_api(source: str) -> dict[str, list[str]]:
    """Signals (with their parameters), public functions and exported settings of an addon."""
    return {
        "signals": [
            f"{name}({', '.join(p.split(':')[0].strip() for p in params.split(',') if p.strip())})"
            for name, params in re.findall(r"^signal (\w+)(?:\((.*)\))?", source, re.M)
        ],
        "functions": [
            f"{name}({', '.join(p.split(':')[0].split('=')[0].strip() for p in params.split(',') if p)})"
            for name, params in re.findall(r"^(?:static )?func ([a-z]\w*)\((.*)\)", source, re.M)
        ],
        "settings": re.findall(r"^(?:@export |export )?var ([a-z]\w*)", source, re.M),
    }


def test_both_addons_offer_the_same_api():
    godot4 = public_api((GODOT4_ADDON / "npc_turns.gd").read_text())
    godot3 = public_api((GODOT3_ADDON / "npc_turns.gd").read_text())
    assert godot4 == godot3
    assert "interact(agent_id, event)" in godot4["functions"]
    assert "tag_chunk(agent_id, turn_id, index, tag, text)" in godot4["signals"]
    assert shared_functions(GODOT4_ADDON / "npc_turns.gd") == shared_functions(GODOT3_ADDON / "npc_turns.gd"), (
        "keep the functions of both addons in the same order"
    )


def shared_functions(addon: Path) -> list[str]:
    """The addon's functions in order, but those of its transport section (which may differ)."""
    source = addon.read_text()
    transport = re.search(r"^# --- transport.*?^# --- ", source, re.M | re.S)
    assert transport, f"{addon} has no transport section"
    return re.findall(r"^(?:static )?func (\w+)", source[: transport.start()] + source[transport.end() :], re.M)
