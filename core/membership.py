"""Which worker nodes the leader takes: membership that cannot flap silently.

A node the leader cannot keep (it advertises an address the leader cannot reach, its check-in
period is longer than the leader's, a link that keeps failing) joins, is declared lost a few
periods later, joins again, forever, and never carries an NPC. Counted here: a node lost
``FLAP_LIMIT`` times in a row, each within ``FLAP_PERIODS`` check-in periods of joining, is refused
until it comes back at another address (or the leader restarts). Pure: the caller gives the time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FLAP_PERIODS = 10  # a node lost within this many check-in periods of joining was lost "quickly"
FLAP_LIMIT = 3  # quick losses in a row before the node is refused


@dataclass
class Membership:
    check_s: float
    joined_at: dict[str, float] = field(default_factory=dict)
    quick_losses: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # node -> the address it was refused at

    @property
    def window_s(self) -> float:
        return FLAP_PERIODS * self.check_s

    def admits(self, node: str, address: str, now: float) -> bool:
        """Whether ``node`` joining from ``address`` is taken; a refused node is, from another address."""
        if self.refused.get(node, address) != address:
            del self.refused[node]
            self.quick_losses[node] = 0
        if node in self.refused:
            return False
        self.joined_at[node] = now
        return True

    def lost(self, node: str, address: str, now: float) -> str | None:
        """Count a loss; the reason when it makes ``node`` refused, else None."""
        if node in self.refused:
            return None
        quick = now - self.joined_at.pop(node, -1e18) < self.window_s
        self.quick_losses[node] = self.quick_losses.get(node, 0) + 1 if quick else 0
        if self.quick_losses[node] < FLAP_LIMIT:
            return None
        self.refused[node] = address
        return (
            f"lost {FLAP_LIMIT} times in a row, each within {self.window_s:g} s of joining: it keeps missing its "
            f"check-ins (is its node_check_s the leader's?) or the leader cannot keep reaching it at {address}"
        )
