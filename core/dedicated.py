"""Dedicated placement's books: which worker slot runs which NPC, and which slots are free.

With placement "dedicated" every active NPC has a worker process of its own. The gateway decides
which slot (worker index) and generation a new process takes, so that it can address the process
before it exists (its items wait for it, in order: gateway/workers.py), and the pool only forks it.
Slots are bounded (``max_dedicated_workers``) and reused, lowest first, so the per-worker books of
the router and the pool never grow beyond the bound; a reused slot's generation goes up, so that
nothing of its former process (a late batch, the end of its stream) is taken for the new one.

Pure: keys in, slots out; the router (gateway/router.py) acts on them.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable


class DedicatedSlots:
    """Up to ``limit`` slots, each held by one key at a time."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._owners: dict[int, Hashable] = {}  # slot -> the key whose worker it runs
        self._free: list[int] = []  # released slots (a heap): reused before a new one is opened
        self._generations: list[int] = []  # per slot ever opened: its latest generation

    @property
    def full(self) -> bool:
        return len(self._owners) >= self.limit

    def take(self, key: Hashable) -> tuple[int, int] | None:
        """A slot for ``key``'s new worker and that worker's generation; None when all are held."""
        if self.full:
            return None
        if self._free:
            slot = heapq.heappop(self._free)
            self._generations[slot] += 1
        else:
            slot = len(self._generations)
            self._generations.append(0)
        self._owners[slot] = key
        return slot, self._generations[slot]

    def release(self, slot: int) -> Hashable | None:
        """Free ``slot`` (its worker is retired or lost); return the key it ran, None if it was free."""
        key = self._owners.pop(slot, None)
        if key is not None:
            heapq.heappush(self._free, slot)
        return key
