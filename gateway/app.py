"""The gateway's HTTP side: the aiohttp application, its routes, and its start and stop.

Runs on the gateway actor's event loop. ``GatewayServer`` owns the router and the endpoints and
exposes what the actor needs: start listening, hand over worker batches, stop gracefully.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import orjson
from aiohttp import web
from loguru import logger

from actors.messages import StartWorker, WorkerReady
from config.settings import Settings
from core import protocol as p
from gateway.auth import auth_middleware, has_token
from gateway.events import WEB_DIR, EventsEndpoint, index
from gateway.godot import GodotEndpoint
from gateway.journal import Journal
from gateway.journal_upkeep import Upkeep
from gateway.memories import MemoryStore
from gateway.metrics import MetricsEndpoint
from gateway.router import Router
from gateway.workers import WorkerLinks

IDLE_SWEEPS = 10  # idle agents are looked for this many times per agent_idle_s (at most once a second)


class GatewayServer:
    def __init__(self, settings: Settings, link_secret: bytes, to_pool: Callable[[StartWorker], None]) -> None:
        self.settings = settings
        self._to_pool = to_pool  # a message for the worker pool, sent by the gateway actor

        def release(items: list) -> None:  # [((worker, generation), item)], in order
            send = self.workers.send
            for destination, item in items:
                send(destination, item)

        self.journal = Journal(
            settings.data_dir,
            settings.journal_fsync,
            2 * settings.history_max_entries,
            release,
            self._not_saved,
            Upkeep(settings.journal_retention_days, settings.journal_compact_days),
            memories=MemoryStore.of(settings),
        )
        self.router = Router(settings, self.journal, start_worker=self._start_worker)
        self.workers = WorkerLinks(link_secret, self.router)
        self.events = EventsEndpoint(settings, self.router)
        self.router.observer = self.events
        self.godot = GodotEndpoint(self.router, settings, self.events)
        self.metrics = MetricsEndpoint(settings, self.router, self.journal, self.godot, self.events)
        self.runner: web.AppRunner | None = None
        self._flush_tokens = itertools.count(1)
        self._sweeper: asyncio.Task | None = None
        self._auth_token = settings.auth_token.encode()

    def _start_worker(self, index: int, generation: int) -> None:
        """Placement "dedicated": have the pool start a worker for an agent; its items wait for it."""
        self.workers.expect(index, generation)
        self._to_pool(StartWorker(index, generation))

    def pool_replaced(self) -> None:
        """The pool died: the new one starts the dedicated workers the dead one was starting."""
        for worker, generation in self.workers.awaited():
            self._to_pool(StartWorker(worker, generation))

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[auth_middleware(self.settings)])  # token, Origin
        app.router.add_get("/ws", self.godot.handle)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics.handle)
        app.router.add_get("/events", self.events.handle)
        app.router.add_get("/", index)
        app.router.add_static("/", WEB_DIR)  # last: the routes above take precedence
        return app

    def problems(self) -> list[str]:
        """Why a turn cannot be served now (none: it can)."""
        # With placement "dedicated" no worker runs until an NPC needs one.
        problems = [] if self.router.live_workers() or self.router.dedicated is not None else ["no worker is running"]
        if self.journal.failure:
            problems.append(f"the journal cannot write: {self.journal.failure}")
            self.journal.probe()  # the next look tells whether it can again
        return problems

    def _not_saved(self, facts: list[tuple[str, str, dict]], why: str) -> None:
        """Tell each game whose facts the journal could not write (they reached the NPCs)."""
        connections = self.router.connections
        for session, agent_id, ref in facts:
            conn = connections.get(session)
            if conn is not None:
                message = (
                    f"history not saved: the journal cannot write ({why}); the NPC goes on, but forgets "
                    f"this {ref['type']} if its worker or the server restarts"
                )
                conn.send(orjson.dumps(p.error(p.JOURNAL_ERROR, message, {**ref, "agent_id": agent_id})))

    async def healthz(self, request: web.Request) -> web.Response:
        """``ok`` (200) only when a turn can be served; else ``unavailable`` (503) and why.

        What a health checker needs is open to all; process ids and node names (by default
        ``host:admin_port``: a Thespian port) only with the token, when one is set."""
        router = self.router
        live = router.live_workers()
        problems = self.problems()
        details = bool(self._auth_token) and has_token(request, self._auth_token)
        nodes = router.nodes()
        body: dict[str, object] = {
            "status": "unavailable" if problems else "ok",
            "problems": problems,
            "workers": len(live),
            "agents": router.agent_count,
            "worker_agents": [router.load[w] for w in live],
            "known_agents": len(self.journal.known),
            "nodes": nodes if details else [{k: v for k, v in node.items() if k != "name"} for node in nodes],
        }
        if details:  # names and reasons carry hosts and ports
            body["worker_pids"] = [router.worker_pids[w] for w in live]
            body["refused_nodes"] = [{"name": node, "reason": why} for node, why in router.refused_nodes.items()]
        return web.json_response(body, status=503 if problems else 200)

    async def start(self, workers: list[WorkerReady]) -> str:
        """Connect to the workers, open the journal, listen on the configured address; return the
        base URL."""
        for ready in workers:
            if not await self.workers.ready(ready):
                raise RuntimeError(f"worker {ready.index} cannot be reached at {ready.link}")
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
        logger.info("gateway listening on {} (/ws, /events, /healthz, /metrics, the web page at /)", url)
        return url

    async def stop(self, timeout: float | None) -> None:
        """Close every connection (agents write their logs), wait up to ``timeout`` for the workers
        to confirm (None: not at all, they are gone), stop serving."""
        await self.godot.close_all()
        await self.events.close_all()
        if timeout is not None:
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
