"""The messages between the gateway and an agent that a person on ``/events`` plays (a takeover).

They travel inside the link's items (``actors.messages``: ``ToAgent`` to the agent, ``ToFeed``
back), but live here in core, not in ``actors/messages.py``, because the TaleWeave feed
(``core.taleweave``) makes and reads them too, and core must not import actors: it stays pure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Takeover:
    """Gateway -> agent: ``client`` plays the NPC from now on (None: the LLM does).

    ``grant`` numbers the takeovers of one NPC, so a late ``TakeoverEnded`` about an earlier one
    cannot end a newer one.
    """

    client: str | None
    grant: int


@dataclass(frozen=True, slots=True)
class PlayerInput:
    """Gateway -> agent: the tag markup for the turn waiting for ``client``."""

    client: str
    markup: str


@dataclass(frozen=True, slots=True)
class TurnPrompt:
    """Agent -> gateway: a turn that ``client`` plays has its spec and now needs their answer."""

    agent_id: str
    turn_id: str
    client: str
    prompt: str
    actions: list[dict]


@dataclass(frozen=True, slots=True)
class TakeoverEnded:
    """Agent -> gateway: the person did not answer in time, the LLM plays the NPC again."""

    agent_id: str
    client: str
    grant: int
