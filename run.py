"""Command line of the NPC turn server.

    python run.py [--host H] [--port P] [--workers N] [--admin-port A] [--config FILE]
        run the server until SIGINT/SIGTERM, then stop every process it started
    python run.py llm-server [--port P] ...
        run the scripted OpenAI-compatible LLM server (tests, demos, load tests)
    python run.py loadtest [--npcs N] [--workers W] [--duration S] ... [--report F] [--plot F]
        drive many simulated NPCs over real WebSockets and report latency and throughput
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from loguru import logger

from config.log import configure_logging
from config.settings import SettingsError, load_settings


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run.py", description="Run the NPC turn server.")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP/WebSocket port (default 8000)")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per CPU)")
    parser.add_argument("--admin-port", type=int, help="Thespian admin port (default 1900)")
    parser.add_argument("--config", help="TOML file of settings (see config/defaults.toml)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, overrides={
            "host": args.host, "port": args.port, "workers": args.workers, "admin_port": args.admin_port})
    except SettingsError as exc:
        parser.error(str(exc))
    configure_logging(settings.log_level, "main")

    from gateway.service import Service, ServiceError  # imports Thespian: after argument errors

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    service = Service(settings)
    try:
        service.start()
    except ServiceError as exc:
        logger.error("{}", exc)
        return 1
    try:
        while not stop.wait(3600):
            pass
        logger.info("stopping")
    finally:
        service.stop()
        logger.complete()
    return 0


def llm_server(argv: list[str]) -> int:
    from providers import scripted

    return scripted.main(argv)


def loadtest(argv: list[str]) -> int:
    from loadtest.cli import main

    return main(argv)


COMMANDS = {"llm-server": llm_server, "loadtest": loadtest}


def main(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
