"""Token budgets per session and per NPC per hour: when one is spent, turns step down the ladder.

Why: a crowd of NPCs, or one chatty player, must not spend an hour's LLM money in minutes. A
budget is a token bucket (``core.ratelimit``) holding an hour's tokens that refills at that rate,
so spending is bounded over any hour and recovers smoothly rather than at the top of the hour. A
turn's cost is known only when it ends (its ``usage``), so a turn is allowed while its bucket has
anything left and may leave it in debt. Pure: the caller passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

from core.ratelimit import KeyedBuckets

__all__ = ["NPC_BUDGET", "SESSION_BUDGET", "TokenBudgets", "estimated_tokens", "tokens_of"]

SESSION_BUDGET, NPC_BUDGET = "session_budget", "npc_budget"  # which budget ran out
HOUR_S = 3600.0


class TokenBudgets:
    """The budgets of the sessions and NPCs one worker runs; a budget of 0 is no budget."""

    def __init__(self, session_tokens_per_hour: int, npc_tokens_per_hour: int) -> None:
        self._sessions = _hourly(session_tokens_per_hour)
        self._npcs = _hourly(npc_tokens_per_hour)

    def spent(self, session: str, agent_id: str, now: float) -> str | None:
        """Which budget this NPC's next turn is past (``NPC_BUDGET`` first), or None."""
        if self._npcs is not None and not self._npcs.can((session, agent_id), now):
            return NPC_BUDGET
        if self._sessions is not None and not self._sessions.can(session, now):
            return SESSION_BUDGET
        return None

    def charge(self, session: str, agent_id: str, tokens: int, now: float) -> None:
        """A turn of this NPC used ``tokens``."""
        if tokens <= 0:
            return
        if self._npcs is not None:
            self._npcs.spend((session, agent_id), now, tokens)
        if self._sessions is not None:
            self._sessions.spend(session, now, tokens)


def _hourly(tokens: int) -> KeyedBuckets | None:
    return KeyedBuckets(tokens / HOUR_S, tokens) if tokens > 0 else None


CHARS_PER_TOKEN = 4  # a rough rate for English text, for what no provider counted


def estimated_tokens(chars: int) -> int:
    """Tokens for ``chars`` characters of prompt and answer, rounded up."""
    return -(-max(chars, 0) // CHARS_PER_TOKEN)


def tokens_of(usage: dict | None) -> int:
    """The tokens a provider's ``usage`` counts: ``total_tokens``, else prompt plus completion;
    0 when it reported none (a budget counts only what providers report)."""
    if not usage:
        return 0
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool):
        return max(total, 0)
    parts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
    return sum(part for part in parts if isinstance(part, int) and not isinstance(part, bool) and part > 0)
