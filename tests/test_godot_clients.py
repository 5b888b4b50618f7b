"""The Godot client addons.

The Godot 3 addon runs in a real engine: Debian's ``godot3-server`` (Godot 3.2.3, headless)
plays the scenarios of ``clients/godot3/test_project/test_main.gd`` (tests/godot_scenarios.py)
against the real server and the scripted LLM. The test project is copied with the one copy of the
addon into a temporary folder; the scenario prints ``RESULT ok|fail <check>`` lines that are
asserted here, next to what the server recorded. The Godot 4 addon runs in a Godot 4 engine in
tests/test_godot4_engine.py; here its scripts are also parsed and linted with gdtoolkit, and both
addons are checked to offer the same API.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from config.ports import free_port
from tests.conftest import ROOT
from tests.godot_peer import GodotPeer
from tests.godot_scenarios import (
    RECONNECT_REPLIES,
    SCENARIOS,
    PrintedLines,
    Proxy,
    play_reconnect,
    verify_reconnect,
    ws_url,
)

CLIENTS = ROOT / "clients"
GODOT4_ADDON = CLIENTS / "godot" / "addons" / "npc_turns"
GODOT3_ADDON = CLIENTS / "godot3" / "addons" / "npc_turns"
TEST_PROJECT = CLIENTS / "godot3" / "test_project"
GODOT3 = "godot3-server"  # Debian package godot3-server
RUN_TIMEOUT_S = 120


# --- running the engine ---


class GodotRun(PrintedLines):
    """godot3-server playing one scenario of the test project; its output lines as they come."""

    ERROR_PREFIXES = ("SCRIPT ERROR", "ERROR: Invalid", "Parse Error")

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__()
        self.proc = proc
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
            self.add(line.decode(errors="replace").rstrip())
        self._changed.set()

    def ended(self) -> bool:
        return self._reader.done()

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

    def assert_ok(self, *checks: str) -> None:
        super().assert_ok(*checks)
        assert self.proc.returncode == 0, f"godot exited with {self.proc.returncode}:\n{self.output()}"


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


async def play(project: Path, scenario: str, url: str, **env: str) -> GodotRun:
    run = await GodotRun.start(project, scenario, url, **env)
    await run.finish()
    return run


# --- the Godot 3 addon in a real engine ---


@pytest.mark.parametrize("name", SCENARIOS)
async def test_scenario(server, llm, project, name):
    """Whole turn, played text, interruption, tools, and what the Godot 4 engine found (issue 16)."""
    scenario = SCENARIOS[name]
    await llm.reset()
    await llm.script(*scenario.replies)
    run = await play(project, name, ws_url(server))
    run.assert_ok(*scenario.checks)
    await scenario.verify(run, llm, server, "g3")


async def test_reconnect_keepalive_query_and_take_over(server, llm, project):
    await llm.reset()
    await llm.script(*RECONNECT_REPLIES)
    port = free_port()
    proxy = Proxy(server.port)
    session = "g3-reconnect"
    run = await GodotRun.start(
        project, "reconnect", f"ws://127.0.0.1:{port}/ws", NPC_TURNS_SESSION=session, NPC_TURNS_TOKEN="s3cret tok"
    )
    try:
        await play_reconnect(run, proxy, port, lambda: GodotPeer.connect(server.url, f"?session={session}"))
        await run.finish()
    finally:
        await run.kill()
        await proxy.close()
    await verify_reconnect(run, llm, proxy, session)


async def test_a_wrong_turn_fails_the_checks(server, llm, project):
    """The scenario's checks can fail: a reply other than the expected one is reported."""
    await llm.reset()
    await llm.script({"content": "<say>Something else entirely.</say>"})
    run = await play(project, "full_turn", ws_url(server))
    assert any(line.startswith("RESULT fail full_turn tags") for line in run.lines), run.output()
    with pytest.raises(AssertionError, match="checks failed in godot"):
        run.assert_ok("full_turn")


# --- the Godot 4 addon and demo: gdtoolkit parses and lints them too ---

GODOT4_SCRIPTS = sorted(
    [*CLIENTS.joinpath("godot").rglob("*.gd"), *CLIENTS.joinpath("godot4_test_project").glob("*.gd")]
)


def test_godot4_scripts_exist():
    names = {path.relative_to(CLIENTS).as_posix() for path in GODOT4_SCRIPTS}
    assert {
        "godot/addons/npc_turns/npc_turns.gd",
        "godot/addons/npc_turns/plugin.gd",
        "godot/demo/demo.gd",
        "godot4_test_project/test_main.gd",
    } <= names


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
