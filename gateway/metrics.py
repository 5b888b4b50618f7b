"""``GET /metrics``: the whole server's metrics in Prometheus's text format, workers on every node included.

Each scrape asks every live worker for its snapshot on its own stream (``Scrape``, answered with
``Scraped`` once the worker has handled everything sent to it before), waits for all of them for at
most ``metrics_scrape_timeout_s``, and adds them up with the gateway's own metrics and what the
gateway reads at that moment (connections, agents, frames relayed per worker): ``core/metrics.py``.
A worker that does not answer in time is shown with its previous snapshot, and one that died with
what it had counted (docs/metrics.md). Why through the streams rather than ``prometheus_client``'s
multiprocess mode: see docs/architecture.md, "Metrics".
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric

from actors.messages import Scraped
from config.settings import Settings
from core.metrics import Family, Labels, Price, Sample, WorkerTotals, cost_family, merge
from gateway.events import EventsEndpoint
from gateway.godot import GodotEndpoint
from gateway.journal import Journal
from gateway.router import Router


class MetricsEndpoint:
    """The handler of ``/metrics``, and the keeper of the workers' latest snapshots."""

    def __init__(
        self, settings: Settings, router: Router, journal: Journal, godot: GodotEndpoint, events: EventsEndpoint
    ) -> None:
        self.router, self.journal, self.godot, self.events = router, journal, godot, events
        self.timeout_s = settings.metrics_scrape_timeout_s
        self.named_nodes = bool(settings.auth_token)  # node names hold host:port: only behind the token
        self.prices = {model: Price(**price) for model, price in settings.llm_prices.items()}
        self.totals = WorkerTotals()
        self._tokens = itertools.count(1)
        self._waiting: dict[int, tuple[set[int], asyncio.Future]] = {}  # scrape token -> workers yet to answer
        self._asking: asyncio.Task | None = None  # the workers' round of the scrapes now in progress
        router.reports = self
        journal.committed = router.metrics.journal_commit.observe

    async def handle(self, request: web.Request) -> web.Response:
        # Scrapes that come while the workers are being asked share that round: however many
        # clients scrape at once, each worker answers one at a time.
        if self._asking is None or self._asking.done():
            self._asking = asyncio.get_running_loop().create_task(self._ask_workers())
        await asyncio.shield(self._asking)  # a client that leaves does not cancel the others' round
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def exposition(self) -> bytes:
        """The text of a scrape, from the snapshots at hand."""
        families = merge([self.router.metrics.snapshot(), self._read_now(), self.totals.merged()])
        families.append(cost_family(families, self.prices))
        return generate_latest(_Collected(families))

    async def _ask_workers(self) -> None:
        token = next(self._tokens)
        pending = set(self.router.scrape(token))
        if not pending:
            return
        done = asyncio.get_running_loop().create_future()
        self._waiting[token] = (pending, done)
        try:
            await asyncio.wait_for(done, self.timeout_s)
        except TimeoutError:
            logger.warning(
                "workers {} did not answer a scrape within {} s (setting metrics_scrape_timeout_s): "
                "their previous counts are shown",
                sorted(pending),
                self.timeout_s,
            )
        finally:
            del self._waiting[token]

    # --- what the router hands on (router.WorkerReports) -------------------------------------

    def scraped(self, worker: int, item: Scraped) -> None:
        self.totals.reported(worker, item.families)
        waiting = self._waiting.get(item.token)
        if waiting is not None:
            self._answered(worker, *waiting)

    def lost(self, worker: int) -> None:
        """Its process is gone: keep what it counted, wait for it no more."""
        self.totals.retire(worker)
        for pending, done in self._waiting.values():
            self._answered(worker, pending, done)

    @staticmethod
    def _answered(worker: int, pending: set[int], done: asyncio.Future) -> None:
        pending.discard(worker)
        if not pending and not done.done():
            done.set_result(None)

    def _read_now(self) -> list[Family]:
        """What the gateway knows at this moment rather than counts: O(workers + /events sessions)."""
        router = self.router
        spectators = sum(len(audience.clients) for audience in self.events.sessions.values())
        numbers: dict[str, str] = {}  # node -> "node-<n>", in the order of its first worker
        frames = tuple(
            Sample(
                "npc_frames_total",
                (("node", self._node_label(node, numbers)), ("worker", str(worker))),
                float(router.relayed[worker]),
            )
            for worker, node in enumerate(router.worker_nodes)
            if node is not None
        )
        return [
            _gauge(
                "npc_connections",
                "Open WebSocket connections: ws = games on /ws, events = clients of /events",
                ((("endpoint", "ws"),), len(self.godot.connections)),
                ((("endpoint", "events"),), spectators),
            ),
            _gauge("npc_agents_active", "NPCs placed on a worker (active, not deactivated)", ((), router.agent_count)),
            _gauge("npc_agents_known", "NPCs the journal has history for", ((), len(self.journal.known))),
            Family(
                "npc_frames",
                "counter",
                "Frames relayed from each worker to the games, per worker and its node",
                frames,
            ),
        ]

    def _node_label(self, node: str, numbers: dict[str, str]) -> str:
        """The node's name with a token set (as /healthz shows it); else ``node-<n>``."""
        if self.named_nodes:
            return node
        return numbers.setdefault(node, f"node-{len(numbers) + 1}")


def _gauge(name: str, documentation: str, *values: tuple[Labels, float]) -> Family:
    return Family(name, "gauge", documentation, tuple(Sample(name, labels, float(value)) for labels, value in values))


class _Collected:
    """Merged families, in the shape ``prometheus_client.generate_latest`` renders."""

    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            metric = Metric(family.name, family.documentation, family.kind)
            for sample in family.samples:
                metric.add_sample(sample.name, dict(sample.labels), sample.value)
            yield metric
