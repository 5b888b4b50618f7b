"""The fallback ladder: which way of answering a turn is tried next, and what Godot is told of it.

A turn's rungs, in order: its tier's endpoints (the tier's own, then its fallbacks), the embedded
model when the server runs one, and last the NPC's ``fallback_lines``. Past a token budget the
tier's endpoints are left out: its cheaper tier's stand in for them, if it names one. A rung is
tried when the one before failed before its first token (after its retries) or its breaker
(``core.breaker``) refuses it. Pure: rungs are endpoint keys, the caller passes ``now``.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.breaker import Breakers

__all__ = ["EMBEDDED", "LINES", "Climb", "rungs"]

EMBEDDED = "embedded"  # the key of the embedded model's endpoint
LINES = "fallback_lines"  # the last rung: a line of the spec, no LLM

# Why a turn was not answered by its tier's first endpoint (agent_turn_finished.fallback.why).
ENDPOINT_FAILED, BREAKER_OPEN = "endpoint_failed", "breaker_open"


def rungs(
    endpoints: Sequence[str],
    *,
    cheaper: Sequence[str] | None,
    over_budget: str | None,
    embedded: bool,
    lines: bool,
) -> tuple[str, ...]:
    """The rungs of one turn. ``over_budget`` is the budget that ran out (None: none did);
    ``cheaper`` the endpoints of the tier to step down to then (None: no cheaper tier)."""
    chosen = tuple(endpoints) if over_budget is None else tuple(cheaper or ())
    return (*chosen, *((EMBEDDED,) if embedded else ()), *((LINES,) if lines else ()))


class Climb:
    """One turn's way down its rungs: which to try next, what the breakers learn from it."""

    __slots__ = ("_at", "_breakers", "_rungs", "why")

    def __init__(self, rungs: Sequence[str], breakers: Breakers, over_budget: str | None = None) -> None:
        self._rungs = tuple(rungs)
        self._breakers = breakers
        self._at = -1  # the index of the rung being tried
        self.why: str | None = over_budget  # why the turn left its first rung, once it has

    def next(self, now: float) -> str | None:
        """The next rung to try (its breaker admits it), or None when none is left."""
        while self._at + 1 < len(self._rungs):
            self._at += 1
            rung = self._rungs[self._at]
            if rung == LINES or self._breakers[rung].admit(now):
                return rung
            self._left(BREAKER_OPEN)
        return None

    def failed(self, now: float) -> None:
        """The rung being tried failed before its first token."""
        self._breakers[self._rungs[self._at]].failed(now)
        self._left(ENDPOINT_FAILED)

    def answered(self) -> None:
        """The rung being tried sent its first token: it answers the turn, whatever follows."""
        self._breakers[self._rungs[self._at]].succeeded()

    def abandoned(self) -> None:
        """The turn ended while the rung being tried had not answered (interrupted)."""
        rung = self._rungs[self._at] if 0 <= self._at < len(self._rungs) else LINES
        if rung != LINES:
            self._breakers[rung].abandoned()

    def fallback(self) -> dict | None:
        """What ``agent_turn_finished.fallback`` tells Godot: why the turn stepped down and to which
        rung (its index among the turn's rungs, 0 its tier's first endpoint, and what it is); None
        when the first rung answered within its tier and budget."""
        if self.why is None:
            return None
        return {"why": self.why, "rung": self._at}

    def _left(self, why: str) -> None:
        if self.why is None:
            self.why = why
