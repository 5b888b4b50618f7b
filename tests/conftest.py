"""Fixtures that run the real thing: ``run.py`` as a process (actor system, gateway, workers) and
the shipped scripted LLM server as another, both on free loopback ports, both always stopped.

Every process a server fixture started is found again by its unique admin port on the command
line (Thespian's admin daemonises, so its actors are not our children) and must be gone after
the stop: a leftover process fails the test run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path

import aiohttp
import psutil
import pytest
from hypothesis import settings

from config.settings import ENV_PREFIX, STANDARD_ENV
from loadtest.processes import Managed, ServerProcesses, free_port, tail
from tests.godot_peer import GodotPeer
from tests.netns import NetworkHost

ROOT = Path(__file__).resolve().parent.parent
TEST_API_KEY = "sk-test-SECRET-do-not-log-4242"
TOKEN = "tok-fresh-" + secrets.token_hex(8)  # every ``fresh`` server has one: /healthz shows pids with it

# Property tests judge what the code does, not how fast a shared 2-core machine runs it: no deadline.
settings.register_profile("project", deadline=None)
settings.load_profile("project")


class ScriptedLLM:
    """The scripted OpenAI-compatible server, run as ``python run.py llm-server``."""

    def __init__(self, tmp: Path, *args: str, host: str = "127.0.0.1") -> None:
        port = free_port()
        self.url = f"http://{host}:{port}"
        self.process = Managed(
            "scripted LLM",
            [sys.executable, "run.py", "llm-server", "--host", host, "--port", str(port), *args],
            tmp / f"llm-{port}.log",
        )
        self.process.wait_http(self.url + "/v1/models")

    def stop(self) -> None:
        self.process.stop()

    async def _control(self, method: str, path: str, body=None):
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.url + "/_control/" + path, json=body) as response:
                response.raise_for_status()
                return await response.json()

    async def script(self, *replies: dict) -> None:
        await self._control("POST", "script", list(replies))

    async def reset(self) -> None:
        await self._control("POST", "reset")

    async def defaults(self, **settings) -> None:
        await self._control("POST", "defaults", settings)

    async def requests(self) -> list[dict]:
        return await self._control("GET", "requests")


class ServerProcess:
    """``python run.py`` with its own ports, pointed at a scripted LLM (None: the embedded model)."""

    def __init__(
        self,
        tmp: Path,
        llm_url: str | None,
        workers: int = 2,
        data_dir: Path | None = None,
        admin_port: int | None = None,
        **env: str,
    ) -> None:
        self.port, self.admin_port = free_port(), admin_port or free_port()  # a restarted leader keeps its admin port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = tmp / f"logs-{self.port}"
        self.data_dir = data_dir or tmp / f"data-{self.port}"  # a restarted server is given the same one
        provider = (
            {}
            if llm_url is None
            else {"OPENAI_API_BASE": llm_url + "/v1", "OPENAI_API_KEY": TEST_API_KEY, "LLM_MODEL": "scripted-model"}
        )
        inherited = {k: v for k, v in os.environ.items() if k not in STANDARD_ENV and not k.startswith(ENV_PREFIX)}
        self.env = {
            **inherited,
            **provider,
            "GAME_AGENT_LOG_DIR": str(self.log_dir),
            "GAME_AGENT_DATA_DIR": str(self.data_dir),
            "GAME_AGENT_SNAPSHOT_TIMEOUT_S": "1.5",
            "GAME_AGENT_LOG_LEVEL": "DEBUG",
            **env,
        }
        self.process = ServerProcesses(
            "server",
            [
                sys.executable,
                "run.py",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--admin-port",
                str(self.admin_port),
            ],
            tmp / f"server-{self.port}.log",
            self.env,
            admin_port=self.admin_port,
        )
        self.log = self.process.log
        self.token = self.env.get("GAME_AGENT_TOKEN", "")
        self.process.wait_http(self.url + "/healthz")

    async def health(self) -> dict:
        """``GET /healthz``, with the token when the server has one (then with pids and node names)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with aiohttp.ClientSession() as http, http.get(self.url + "/healthz", headers=headers) as response:
            return await response.json()

    def query(self, query: str = "") -> str:
        """``query`` for /ws or /events, with the token when the server has one."""
        return f"{query}{'&' if query else '?'}token={self.token}" if self.token else query

    def processes(self) -> list[psutil.Process]:
        """Every live process of this server: run.py, the admin, the gateway, pool and workers."""
        return self.process.processes()

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, check: bool = True) -> None:
        """SIGTERM run.py; every process it started must be gone shortly after."""
        killed = self.process.stop()
        if check:
            assert not killed, f"processes left behind: {killed}\n{tail(self.log)}"
            code = self.process.proc.returncode
            assert code == 0, f"run.py exited with {code}\n{tail(self.log)}"


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> ScriptedLLM:
    server = ScriptedLLM(tmp_path_factory.mktemp("llm"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory) -> ServerProcess:
    proc = ServerProcess(tmp_path_factory.mktemp("server"), llm.url)
    yield proc
    proc.stop()


@pytest.fixture
async def godot(server, llm) -> GodotPeer:
    await llm.reset()
    peer = await GodotPeer.connect(server.url)
    yield peer
    await peer.close()


@pytest.fixture
async def fresh(tmp_path, llm):
    """Start servers on demand (``await fresh(**env)``, each with ``TOKEN``) and connect Godot peers
    to them (``await fresh.connect(server)``); all are stopped afterwards."""
    started: list[ServerProcess] = []
    peers: list[GodotPeer] = []

    async def start(**env) -> ServerProcess:
        server = await asyncio.to_thread(ServerProcess, tmp_path, llm.url, **{"GAME_AGENT_TOKEN": TOKEN, **env})
        started.append(server)
        return server

    async def connect(server: ServerProcess, query: str = "") -> GodotPeer:
        peer = await GodotPeer.connect(server.url, server.query(query))
        peers.append(peer)
        return peer

    start.connect = connect
    await llm.reset()
    yield start
    for peer in peers:
        await peer.close()
    for server in started:
        server.stop(check=server.process.proc.poll() is None)


@pytest.fixture(scope="module")
def far_host() -> NetworkHost:
    """Another host: a network namespace linked to this one (tests/netns.py); skips without root."""
    host = NetworkHost.create()
    yield host
    host.remove()


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=20.0,
        help="length of tests/test_soak.py's soak (default 20 s; longer by hand)",
    )
