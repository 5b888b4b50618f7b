"""The gateway's end of every worker's stream (``actors/link.py``): who to connect, what goes where.

A worker's ``WorkerReady`` (a Thespian message) names the address of its stream; the gateway
connects and proves itself for exactly that worker generation. Items the journal releases for
``(worker, generation)`` go on that generation's stream or nowhere: what an older generation
would have had is in the journal, and comes back with the agents' restore. When a stream ends, the
worker is gone: its turns are ended for Godot at once, before Thespian has even replaced it.

With placement "dedicated" a worker is addressed before it exists: the router starts one for an
agent (``expect``) and sends to it at once; its items wait here, in order, until its stream is up,
and then go first. One that is not up within ``startup_timeout_s`` is given up (its agent's turns
end as for a lost worker), and a late ``WorkerReady`` of it finds no one: nobody connects, so it
stops itself. A ``Retire`` is the last item of a dedicated worker's stream: the worker ends after
handling everything before it, and the end of its stream is no loss.
"""

from __future__ import annotations

import asyncio

from loguru import logger

from actors.link import Link, connect
from actors.messages import Retire, WorkerReady
from core.link import LinkRefused
from gateway.router import Router


class WorkerLinks:
    def __init__(self, secret: bytes, router: Router) -> None:
        self._secret = secret
        self._router = router
        self._links: dict[int, tuple[int, Link]] = {}  # worker index -> (generation, its stream)
        self._awaited: dict[int, tuple[int, list]] = {}  # dedicated worker starting -> (generation, its items)

    def expect(self, index: int, generation: int) -> None:
        """Worker ``index`` of ``generation`` is being started: hold its items until it is up."""
        self._awaited[index] = (generation, [])
        timeout = self._router.settings.startup_timeout_s
        why = f"it was not up within {timeout:.0f} s (setting startup_timeout_s)"
        asyncio.get_running_loop().call_later(timeout, self._give_up, index, generation, why)

    def awaited(self) -> list[tuple[int, int]]:
        """The dedicated workers being started: (index, generation) each."""
        return [(index, generation) for index, (generation, _) in self._awaited.items()]

    async def ready(self, ready: WorkerReady) -> bool:
        """Connect to a worker that reported ready; False (logged) when that fails, or when it is
        a dedicated worker that nothing waits for any more."""
        index, generation = ready.index, ready.generation
        awaited = self._awaited.get(index)
        if self._router.dedicated is not None and (awaited is None or awaited[0] != generation):
            logger.warning("worker {} generation {} is ready but was given up: it stops by itself", index, generation)
            return False
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
            if awaited is not None:
                self._give_up(index, generation, "it cannot be reached")
            return False
        if awaited is not None:
            if self._awaited.get(index) is not awaited:  # given up meanwhile
                await link.aclose()
                return False
            del self._awaited[index]
        previous = self._links.get(index)
        self._links[index] = (generation, link)
        if previous is None:
            self._router.add_worker(index, generation, ready.pid, ready.node)
        else:
            self._router.worker_replaced(index, generation, ready.pid)
            await previous[1].aclose()
        for item in awaited[1] if awaited is not None else ():
            self.send((index, generation), item)
        return True

    def send(self, destination: tuple[int, int], item: tuple) -> None:
        index, generation = destination
        current = self._links.get(index)
        if current is not None and current[0] == generation:
            current[1].send(item)
            if type(item) is Retire:
                del self._links[index]  # its end is no loss now
            return
        awaited = self._awaited.get(index)
        if awaited is not None and awaited[0] == generation:
            if type(item) is Retire:  # retired before it was up: nobody will connect, it stops itself
                del self._awaited[index]
            else:
                awaited[1].append(item)

    def _give_up(self, index: int, generation: int, why: str) -> None:
        """The dedicated worker being started will not serve: its agent's turns end, as if lost."""
        awaited = self._awaited.get(index)
        if awaited is not None and awaited[0] == generation:
            logger.error("dedicated worker {} generation {} is given up: {}", index, generation, why)
            del self._awaited[index]
            self._router.worker_lost(index)

    def _lost(self, index: int, generation: int) -> None:
        current = self._links.get(index)
        if current is not None and current[0] == generation:
            if self._router.dedicated is not None:
                del self._links[index]  # never replaced: its slot's next worker is a new one
            self._router.worker_lost(index)
