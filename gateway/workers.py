"""The gateway's end of every worker's stream (``actors/link.py``): who to connect, what goes where.

A worker's ``WorkerReady`` (a Thespian message) names the address of its stream; the gateway
connects and proves itself for exactly that worker generation. Items the journal releases for
``(worker, generation)`` go on that generation's stream or nowhere: what an older generation
would have had is in the journal, and comes back with the agents' restore. When a stream ends, the
worker is gone: its turns are ended for Godot at once, before Thespian has even replaced it.
"""

from __future__ import annotations

from loguru import logger

from actors.link import Link, connect
from actors.messages import WorkerReady
from core.link import LinkRefused
from gateway.router import Router


class WorkerLinks:
    def __init__(self, secret: bytes, router: Router) -> None:
        self._secret = secret
        self._router = router
        self._links: dict[int, tuple[int, Link]] = {}  # worker index -> (generation, its stream)

    async def ready(self, ready: WorkerReady) -> bool:
        """Connect to a worker that reported ready; False (logged) when that fails."""
        index, generation = ready.index, ready.generation
        try:
            link = await connect(
                ready.link,
                self._secret,
                index,
                generation,
                lambda items: self._router.deliver(items, index, generation),
                lambda: self._lost(index, generation),
            )
        except (OSError, TimeoutError, EOFError, ValueError, LinkRefused) as exc:
            logger.error("cannot reach worker {} generation {} at {}: {!r}", index, generation, ready.link, exc)
            return False
        previous = self._links.get(index)
        self._links[index] = (generation, link)
        if previous is None:
            self._router.add_worker(index, generation, ready.pid, ready.node)
        else:
            self._router.worker_replaced(index, generation, ready.pid)
            await previous[1].aclose()
        return True

    def send(self, destination: tuple[int, int], item: tuple) -> None:
        current = self._links.get(destination[0])
        if current is not None and current[0] == destination[1]:
            current[1].send(item)

    def _lost(self, index: int, generation: int) -> None:
        current = self._links.get(index)
        if current is not None and current[0] == generation:
            self._router.worker_lost(index)
