"""The gateway's HTTP side: the aiohttp application, its routes, and its start and stop.

Runs on the gateway actor's event loop. ``GatewayServer`` owns the router and the endpoints and
exposes what the actor needs: start listening, hand over worker batches, stop gracefully.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Hashable
from typing import Any

from aiohttp import web
from loguru import logger

from actors.messages import WorkerReady
from config.settings import Settings
from gateway.auth import auth_middleware
from gateway.events import WEB_DIR, EventsEndpoint, index
from gateway.godot import GodotEndpoint
from gateway.journal import Journal
from gateway.router import Router

IDLE_SWEEPS = 10  # idle agents are looked for this many times per agent_idle_s (at most once a second)


class GatewayServer:
    def __init__(self, settings: Settings, workers: list[WorkerReady], post: Callable[[Hashable, Any], None]) -> None:
        self.settings = settings

        def release(items: list[tuple[Hashable, tuple]]) -> None:
            for destination, item in items:
                post(destination, item)

        self.journal = Journal(settings.data_dir, settings.journal_fsync, 2 * settings.history_max_entries, release)
        self.router = Router(settings, self.journal)
        for ready in workers:
            self.router.add_worker(ready.index, ready.generation, ready.pid, ready.node)
        self.events = EventsEndpoint(settings, self.router)
        self.router.observer = self.events
        self.godot = GodotEndpoint(self.router, settings, self.events)
        self.runner: web.AppRunner | None = None
        self._flush_tokens = itertools.count(1)
        self._sweeper: asyncio.Task | None = None

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[auth_middleware(self.settings)])  # token, Origin
        app.router.add_get("/ws", self.godot.handle)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/events", self.events.handle)
        app.router.add_get("/", index)
        app.router.add_static("/", WEB_DIR)  # last: the routes above take precedence
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        router = self.router
        live = router.live_workers()
        return web.json_response(
            {
                "status": "ok",
                "workers": len(live),
                "agents": router.agent_count,
                "worker_pids": [router.worker_pids[w] for w in live],
                "worker_agents": [router.load[w] for w in live],
                "known_agents": len(self.journal.known),
                "nodes": router.nodes(),
            }
        )

    async def start(self) -> str:
        """Open the journal, listen on the configured address; return the base URL."""
        await self.journal.open()
        self.router.journal_opened()
        if self.settings.agent_idle_s:
            self._sweeper = asyncio.get_running_loop().create_task(self._deactivate_idle())
        # keepalive_timeout also runs from the connection's start: a client that has not sent a whole
        # request by then (a half-open handshake) is closed, as is one idle between requests.
        self.runner = web.AppRunner(
            self.make_app(),
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self.settings.http_idle_timeout_s,
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        logger.info("gateway listening on {} (/ws, /events, /healthz, the web page at /)", url)
        return url

    async def stop(self, timeout: float) -> None:
        """Close every connection (agents write their logs), wait for the workers, stop serving."""
        await self.godot.close_all()
        await self.events.close_all()
        try:
            await asyncio.wait_for(self.flush_workers(), timeout)
        except TimeoutError:
            logger.warning("workers did not confirm their logs within {} s", timeout)
        if self.runner is not None:
            await self.runner.cleanup()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.journal.close()

    async def _deactivate_idle(self) -> None:
        idle_s = self.settings.agent_idle_s
        while True:
            await asyncio.sleep(max(1.0, idle_s / IDLE_SWEEPS))
            count = self.router.deactivate_idle(idle_s)
            if count:
                logger.debug("{} idle agents deactivated", count)

    async def flush_workers(self) -> None:
        """Return once every worker has handled everything sent to it before this call."""
        done = asyncio.get_running_loop().create_future()
        remaining = len(self.router.live_workers())
        if not remaining:
            return

        def one_done(_token: int) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0 and not done.done():
                done.set_result(None)

        self.router.flush(next(self._flush_tokens), one_done)
        await done
