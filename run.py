"""Command line of the NPC turn server.

python run.py [--host H] [--port P] [--workers N] [--admin-port A] [--advertise ADDRESS] [--config FILE]
    run the server until SIGINT/SIGTERM, then stop every process it started (exit 0); a dead worker
    pool is replaced, but when the gateway or Thespian's admin dies (or a new pool at once), stop all
    the others and exit 1 at once, for a process manager to restart it (docs/deploy.md)
python run.py worker --leader HOST:PORT [--advertise ADDRESS] [--admin-port P] [--workers N] [--node NAME] ...
    run a worker node that joins the leader's Thespian convention and hosts NPC workers
    (docs/deploy.md), until SIGINT/SIGTERM
python run.py llm-server [--port P] ...
    run the scripted OpenAI-compatible LLM server (tests, demos, load tests)
python run.py loadtest [--npcs N] [--workers W] [--duration S] ... [--report F] [--plot F]
    drive many simulated NPCs over real WebSockets and report latency and throughput
python run.py journal [--config FILE] [--data-dir D] inspect | export | delete | compact ...
    look into the journal (sessions, NPCs, facts, sizes), export a session or an NPC as JSON lines,
    delete one (journal and logs, overwritten), or apply retention and compaction now; also while
    the server runs (gateway/journal_cli.py says what that means for a deletion)
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys

from loguru import logger

from config.log import configure_logging
from config.settings import SettingsError, load_settings


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run.py", description="Run the NPC turn server.")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP/WebSocket port (default 8000)")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per CPU)")
    parser.add_argument("--admin-port", type=int, help="Thespian admin port (default 1900)")
    parser.add_argument(
        "--advertise",
        metavar="ADDRESS",
        help="Thespian's only address or interface: 127.0.0.1 unless worker nodes join (deploy.md)",
    )
    parser.add_argument("--config", help="TOML file of settings (see config/defaults.toml)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(
            args.config,
            overrides={
                "host": args.host,
                "port": args.port,
                "workers": args.workers,
                "admin_port": args.admin_port,
                "advertise": args.advertise,
            },
        )
    except SettingsError as exc:
        parser.error(str(exc))
    configure_logging(settings.log_level, "main")
    os.environ.update(settings.thespian_environment())  # before Thespian is imported

    from gateway.service import Service, ServiceError  # imports Thespian: after argument errors

    stop = _Stop()
    service = Service(settings)
    try:
        service.start()
    except ServiceError as exc:
        logger.error("{}", exc)
        return 1
    died = None
    try:
        died = service.wait(stop.fileno())
        if died:
            logger.error("{}: stopping the service (exit status 1, for a process manager to restart it)", died)
        else:
            logger.info("stopping")
    finally:
        service.stop()
        logger.complete()
    return 1 if died else 0


def worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run.py worker", description="Run a worker node of the NPC turn server.")
    parser.add_argument("--leader", required=True, metavar="HOST:PORT", help="the leader's Thespian admin address")
    parser.add_argument(
        "--advertise", metavar="ADDRESS", help="this node's only Thespian address (default: its route to --leader)"
    )
    parser.add_argument("--admin-port", type=int, help="this node's Thespian admin port (default 1900)")
    parser.add_argument("--workers", type=int, help="worker processes on this node (default: one per CPU)")
    parser.add_argument("--node", help="this node's name (default host:admin-port); unique in the convention")
    parser.add_argument("--config", help="TOML file of settings (see config/defaults.toml)")
    args = parser.parse_args(argv)
    host, _, port = args.leader.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--leader must be HOST:PORT, got {args.leader!r}")
    try:
        settings = load_settings(
            args.config,
            overrides={
                "admin_port": args.admin_port,
                "workers": args.workers,
                "node_name": args.node,
                "advertise": args.advertise,
            },
        )
    except SettingsError as exc:
        parser.error(str(exc))
    configure_logging(settings.log_level, "node")
    os.environ.update(settings.thespian_environment())  # before Thespian is imported

    from actors.node import NodeError, start_system

    stop = _Stop()
    try:
        system = start_system(settings, leader=(host, int(port)))
    except NodeError as exc:
        logger.error("{}", exc)
        return 1
    logger.info(
        "node {} (admin port {}) joins the leader at {} with {} workers",
        settings.node,
        settings.admin_port,
        args.leader,
        settings.worker_count,
    )
    try:
        select.select([stop], [], [])
        logger.info("stopping node {}", settings.node)
    finally:
        system.shutdown()
        logger.complete()
    return 0


class _Stop:
    """SIGINT and SIGTERM ask to stop; ``fileno`` is a pipe they wake, to select on (no thread).

    The pipe is made on first use, after the actor system has forked: every forked process would
    inherit it with the wake-up fd, and write to it on each of its own signals.
    """

    def __init__(self) -> None:
        self.requested = False
        self._fd: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def fileno(self) -> int:
        if self._fd is None:
            self._fd, written = os.pipe()
            os.set_blocking(written, False)
            signal.set_wakeup_fd(written)
            if self.requested:  # during start-up
                os.write(written, b"\0")
        return self._fd


def llm_server(argv: list[str]) -> int:
    from providers import scripted

    return scripted.main(argv)


def loadtest(argv: list[str]) -> int:
    from loadtest.cli import main

    return main(argv)


def journal(argv: list[str]) -> int:
    from gateway.journal_cli import main

    return main(argv)


COMMANDS = {"worker": worker, "llm-server": llm_server, "loadtest": loadtest, "journal": journal}


def main(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
