"""Token buckets: ``rate_per_s`` sustained, ``burst`` at once; one per session for the gateway.

Pure (the caller passes ``now``, any monotonic clock in seconds), so tests need no sleeping.
The gateway keys its buckets by session, not by connection, because a client that reconnects
must not get a fresh burst each time; a bucket that has refilled is forgotten, since a full
bucket is exactly a new one, so the map holds only the sessions that were busy lately.
"""

from __future__ import annotations

from collections.abc import Hashable

PRUNE_FLOOR = 1024  # buckets kept before the first pass that forgets the refilled ones


class TokenBucket:
    """Starts full; each accepted call takes ``cost`` tokens; tokens refill at ``rate_per_s`` up to ``burst``."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.rate = float(rate_per_s)
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def allow(self, now: float, cost: int = 1) -> bool:
        """Take ``cost`` tokens at time ``now`` if there are that many (never more than ``burst``).
        A clock that goes back refills nothing."""
        if self.can(now, cost):
            self._tokens -= cost
            return True
        return False

    def spend(self, now: float, cost: int) -> None:
        """Take ``cost`` tokens even if fewer are left: the bucket goes into debt, paid back by the
        refill (a budget learns what a turn cost only after the turn)."""
        self._refill(now)
        self._tokens -= cost

    def can(self, now: float, cost: int = 1) -> bool:
        """Whether ``allow(now, cost)`` would take the tokens (it takes none)."""
        self._refill(now)
        return self._tokens >= cost

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled to ``burst`` by ``now`` (it is then the same as a new one)."""
        self._refill(now)
        return self._tokens >= self.burst

    def _refill(self, now: float) -> None:
        if self._last is None:
            self._last = now
        elif now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now


class KeyedBuckets:
    """One ``TokenBucket(rate_per_s, burst)`` per key, made on first use, forgotten once refilled."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        TokenBucket(rate_per_s, burst)  # the same checks, before any key needs one
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: dict[Hashable, TokenBucket] = {}
        self._prune_at = PRUNE_FLOOR

    def allow(self, key: Hashable, now: float, cost: int = 1) -> bool:
        return self._bucket(key, now).allow(now, cost)

    def _bucket(self, key: Hashable, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket

    def spend(self, key: Hashable, now: float, cost: int) -> None:
        """``TokenBucket.spend`` on the key's bucket."""
        self._bucket(key, now).spend(now, cost)

    def can(self, key: Hashable, now: float, cost: int = 1) -> bool:
        bucket = self._buckets.get(key)
        return cost <= self.burst if bucket is None else bucket.can(now, cost)

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        """Forget the full buckets; the next pass waits until the map has doubled (amortised O(1))."""
        self._buckets = {key: bucket for key, bucket in self._buckets.items() if not bucket.full(now)}
        self._prune_at = max(PRUNE_FLOOR, 2 * len(self._buckets))


def take_all(charges: list[tuple[KeyedBuckets, int]], key: Hashable, now: float) -> KeyedBuckets | None:
    """Charge ``key`` each ``(buckets, cost)``, or nothing at all: a frame refused by one limit
    uses up no other. Returns the first buckets that cannot pay, else None."""
    for buckets, cost in charges:
        if not buckets.can(key, now, cost):
            return buckets
    for buckets, cost in charges:
        buckets.allow(key, now, cost)
    return None
