"""Starting, finding and stopping the processes a load test runs against: the scripted LLM, the
server (``run.py``) or the baseline relay.

Why it is careful: a load test that leaves a server behind spoils the next run (ports, CPU). The
server's actors are not our children (Thespian's admin daemonises), so
every process of a server is found again by its unique ``--admin-port`` on the command line, and
whatever is still alive after the graceful stop is killed and reported. Children are started in
their own session, so a Ctrl-C at the terminal reaches only the load test, which then stops them
in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Final

import psutil

from config.ports import free_port

ROOT: Final = Path(__file__).resolve().parent.parent
API_KEY: Final = "sk-loadtest"
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0


class ProcessError(RuntimeError):
    """A process did not start or answer; the message ends with the tail of its log."""


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Managed:
    """One started program (and, for run.py, the processes it forks), logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_http(self, url: str, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until ``url`` answers 200; stop everything and raise if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ProcessError(f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log)}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ProcessError(f"{self.name}: {url} did not answer within {timeout:g} s:\n{tail(self.log)}")

    def processes(self) -> list[psutil.Process]:
        """Every live process of this program."""
        try:
            proc = psutil.Process(self.proc.pid)
            return [proc] if proc.status() != psutil.STATUS_ZOMBIE else []
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> list[int]:
        """SIGTERM, then SIGKILL after the grace time; returns the pids that had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for proc in left:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        return [proc.pid for proc in left]


class ServerProcesses(Managed):
    """``run.py``: its own process plus the admin, gateway and worker processes it forks, all
    carrying ``run.py`` and its unique admin port on their command line."""

    def __init__(self, *args, admin_port: int, **kwargs) -> None:
        self.admin_port = admin_port
        super().__init__(*args, **kwargs)

    def processes(self) -> list[psutil.Process]:
        marker = str(self.admin_port)
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if "run.py" in cmdline and marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found


def start_llm(tmp: Path, ttft: float, tps: float, tokens: int) -> tuple[Managed, str]:
    """The scripted LLM, stamping its tokens; returns it and its base URL (without /v1)."""
    port = free_port()
    llm = Managed(
        "scripted LLM",
        [
            sys.executable,
            "run.py",
            "llm-server",
            "--port",
            str(port),
            "--first-token-delay-s",
            str(ttft),
            "--tokens-per-s",
            str(tps),
            "--default-tokens",
            str(tokens),
            "--stamp-tokens",
            "--max-records",
            "1000000",
        ],
        tmp / "llm.log",
    )
    url = f"http://127.0.0.1:{port}"
    llm.wait_http(url + "/v1/models")
    return llm, url


MODEL = "scripted"  # the model the server asks the scripted LLM for


def start_server(
    tmp: Path, llm_url: str, workers: int, baseline: bool, config: Path | None = None
) -> tuple[Managed, str]:
    """``run.py`` (or the baseline relay) pointed at ``llm_url``, with the settings file ``config``
    if given; returns it and its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "OPENAI_API_BASE": llm_url + "/v1",
        "OPENAI_API_KEY": API_KEY,
        "LLM_MODEL": MODEL,
        "GAME_AGENT_LOG_DIR": str(tmp / "npc-logs"),
        "GAME_AGENT_DATA_DIR": str(tmp / "npc-data"),
    }
    if config is not None:
        env["GAME_AGENT_CONFIG"] = str(config)
    if baseline:
        server = Managed(
            "baseline relay",
            [sys.executable, "bench/baseline_relay.py", "--port", str(port)],
            tmp / "baseline.log",
            env,
        )
    else:
        admin_port = free_port()
        server = ServerProcesses(
            "server",
            [sys.executable, "run.py", "--port", str(port), "--workers", str(workers), "--admin-port", str(admin_port)],
            tmp / "server.log",
            env,
            admin_port=admin_port,
        )
    url = f"http://127.0.0.1:{port}"
    server.wait_http(url + "/healthz")
    return server, url


def listener_processes(port: int) -> list[psutil.Process]:
    """The processes of a server we did not start: the one listening on ``port`` and every process
    with the same command line (run.py's actors are forks that keep it)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            cmdline = psutil.Process(conn.pid).cmdline()
            return [proc for proc in psutil.process_iter(["cmdline"]) if proc.info["cmdline"] == cmdline]
    return []
