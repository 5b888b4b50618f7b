"""Circuit breakers, one per LLM endpoint: stop asking an endpoint that keeps failing, probe it later.

Why: a provider that is down fails every request only after its retries (seconds each); without a
breaker every turn pays that before its fallback answers. After ``threshold`` failures in a row the
breaker opens and the endpoint is skipped at once; ``cooldown_s`` later one request (the probe) may
try it again: its success closes the breaker, its failure opens it for another cooldown. Pure: the
caller passes ``now`` (any monotonic clock, in seconds).
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import Enum

__all__ = ["Breaker", "Breakers", "BreakerState"]


class BreakerState(Enum):
    CLOSED = "closed"  # requests go through
    OPEN = "open"  # the endpoint is skipped until the cooldown has passed
    PROBING = "probing"  # one request is trying the endpoint again; the others skip it


class Breaker:
    """The state of one endpoint."""

    __slots__ = ("_failures", "_opened_at", "_probing", "cooldown_s", "threshold")

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, got {threshold!r}")
        if not cooldown_s > 0:
            raise ValueError(f"cooldown_s must be positive, got {cooldown_s!r}")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._probing:
            return BreakerState.PROBING
        return BreakerState.OPEN

    def ready_to_probe(self, now: float) -> bool:
        """Whether an open breaker's cooldown has passed, so the next request probes."""
        return self._opened_at is not None and not self._probing and now - self._opened_at >= self.cooldown_s

    def admit(self, now: float) -> bool:
        """Whether a request may go to the endpoint now; an open breaker past its cooldown admits
        exactly one (the probe) until that one is reported."""
        if self._opened_at is None:
            return True
        if self.ready_to_probe(now):
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        """The endpoint answered (its first token came): the breaker closes."""
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self, now: float) -> None:
        """A request failed before its first token, after its retries; a failed probe reopens at once."""
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._opened_at = now
            self._probing = False

    def abandoned(self) -> None:
        """An admitted request ended without an answer either way (the turn was interrupted): a
        probe's place goes to the next request."""
        self._probing = False


class Breakers:
    """One ``Breaker`` per endpoint key, made on first use (the endpoints are the configured ones,
    so the map is bounded by the configuration)."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        Breaker(threshold, cooldown_s)  # the same checks, before any endpoint needs one
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._breakers: dict[Hashable, Breaker] = {}

    def state(self, endpoint: Hashable) -> BreakerState:
        """An endpoint's state; one no request has asked yet is closed."""
        breaker = self._breakers.get(endpoint)
        return breaker.state if breaker is not None else BreakerState.CLOSED

    def __getitem__(self, endpoint: Hashable) -> Breaker:
        breaker = self._breakers.get(endpoint)
        if breaker is None:
            breaker = self._breakers[endpoint] = Breaker(self.threshold, self.cooldown_s)
        return breaker
