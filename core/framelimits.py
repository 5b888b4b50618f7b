"""What one accepted frame may cost: recipients, event size and journal bytes.

Pure. The frame size alone does not bound what a frame costs: a ``notification_event`` is
journaled once per recipient, so one 100 KB event to 1,000 agents wrote 194 MB. A frame over
any of these limits is refused whole (an ``error`` frame), so nothing of it is recorded and
nothing that was accepted is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from core import protocol as p


@dataclass(frozen=True, slots=True)
class FrameLimits:
    max_notification_agents: int  # agent_ids of one notification_event
    max_event_bytes: int  # the ``event`` object of an interaction or notification, as JSON
    max_journal_bytes_per_frame: int  # what one frame may add to the journal, all recipients together

    def journal_bytes(self, message: p.AgentMessage, frame_bytes: int) -> int:
        """About what ``message`` (``frame_bytes`` long) adds to the journal; raise ``ProtocolError``
        when it is over a limit."""
        if isinstance(message, p.AgentStateSnapshot):
            return 0  # never journaled
        name = p.TYPE_NAMES[type(message)]
        ref: dict[str, str]
        if isinstance(message, p.NotificationEvent):
            recipients = len(message.agent_ids)
            ref = {"type": name}
        else:
            recipients = 1
            ref = {"type": name, "agent_id": message.agent_id}
        if recipients > self.max_notification_agents:
            raise p.ProtocolError(
                p.TOO_MANY_RECIPIENTS,
                f"notification_event names {recipients} agents; at most {self.max_notification_agents} "
                "per frame (setting max_notification_agents): send several frames",
                ref,
            )
        journal_bytes = frame_bytes
        if isinstance(message, p.InteractionEvent | p.NotificationEvent):
            event_bytes = len(orjson.dumps(message.event))
            if event_bytes > self.max_event_bytes:
                raise p.ProtocolError(
                    p.EVENT_TOO_LARGE,
                    f"{name}.event is {event_bytes} bytes as JSON, over the limit of "
                    f"{self.max_event_bytes} bytes (setting max_event_bytes)",
                    ref,
                )
            journal_bytes = event_bytes * recipients
        if journal_bytes > self.max_journal_bytes_per_frame:
            raise p.ProtocolError(
                p.JOURNAL_LIMIT,
                f"{name} would journal about {journal_bytes} bytes ({recipients} recipients), over the "
                f"limit of {self.max_journal_bytes_per_frame} bytes per frame "
                "(setting max_journal_bytes_per_frame): send a shorter event or fewer recipients",
                ref,
            )
        return journal_bytes
