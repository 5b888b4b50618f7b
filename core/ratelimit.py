"""A token bucket: ``rate_per_s`` sustained, ``burst`` at once.

Pure (the caller passes ``now``, any monotonic clock in seconds), so tests need no sleeping and
the gateway can keep one per connection for the price of three floats.
"""

from __future__ import annotations


class TokenBucket:
    """Starts full; each accepted call takes one token; tokens refill at ``rate_per_s`` up to ``burst``."""

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

    def allow(self, now: float) -> bool:
        """Take a token at time ``now`` if there is one. A clock that goes back refills nothing."""
        if self._last is None:
            self._last = now
        elif now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
