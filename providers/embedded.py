"""Starting and stopping the embedded model server (``providers.local``) as a child process.

Kept apart from the server itself so that ``run.py`` imports neither llama.cpp nor any thread
before the actor system forks its processes. The child's output goes to a log file (its tail
explains a failed start); it exits by itself if this process dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from loguru import logger

from config.ports import free_port

_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback stays direct


class LocalModelProcess:
    """``python -m providers.local`` on a loopback port."""

    STOP_TIMEOUT = 5.0

    def __init__(self, port: int = 0, threads: int | None = None) -> None:
        self.port = port or free_port()
        self.threads = threads
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._process: subprocess.Popen | None = None
        self._log: Path | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_file(self) -> Path:
        """The running server's output (its log lines)."""
        if self._log is None:
            raise RuntimeError("the embedded model server is not started")
        return self._log

    def start(self, timeout: float = 120) -> str:
        """Spawn the server and wait until it answers; return its base URL (``.../v1``)."""
        if self._process is not None:
            return self.base_url
        command = [sys.executable, "-m", "providers.local", "--port", str(self.port)]
        if self.threads:
            command += ["--threads", str(self.threads)]
        # Our package first on the path, whatever the working directory.
        path = [str(_PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, path))}
        fd, log = tempfile.mkstemp(prefix="embedded-model-", suffix=".log")
        self._log = Path(log)
        logger.info(
            "starting the embedded demo model (SmolLM2-135M on llama.cpp) on {}; its log: {}", self.base_url, log
        )
        started = time.monotonic()
        with os.fdopen(fd, "wb") as output:
            self._process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        while not self._answers():
            if self._process.poll() is not None:
                self._fail(f"the embedded model server exited with code {self._process.returncode}")
            if time.monotonic() - started > timeout:
                self._fail(f"the embedded model server did not answer within {timeout:.0f} s")
            time.sleep(0.1)
        logger.info("embedded model ready at {} in {:.1f} s", self.base_url, time.monotonic() - started)
        return self.base_url

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT`` seconds; safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("the embedded model server ignored SIGTERM: killing it")
                process.kill()
                process.wait()
        logger.info("embedded model server stopped (exit code {})", process.returncode)
        if self._log is not None:
            self._log.unlink(missing_ok=True)

    def _fail(self, reason: str) -> None:
        tail = self._log.read_text(errors="replace").splitlines()[-30:] if self._log else []
        self.stop()
        raise RuntimeError(f"{reason}; its last output:\n" + ("\n".join(tail) or "(no output)"))

    def _answers(self) -> bool:
        try:
            with _NO_PROXY.open(f"{self.base_url}/models", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False
