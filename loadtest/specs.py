"""What the simulated game says: NPC specs, the small changes a game makes to them between turns,
and the texts of its events.

Why varied: prompts of one size and shape would hide the cost of building real ones (dossiers with
inventories, relationships, prompt parts, custom tags, tool schemas) and let the history trimming
run on identical entries. Every spec keeps ``thought`` and ``say`` among its tags, because those
are the tags the scripted LLM writes and the load test checks.
"""

from __future__ import annotations

import random
import re
from typing import Final

FIRST_NAMES: Final = (
    "Bram",
    "Mira",
    "Oswin",
    "Tilda",
    "Garrick",
    "Elda",
    "Fenn",
    "Ysolde",
    "Corin",
    "Hesper",
    "Rook",
    "Wynn",
    "Alaric",
    "Sefa",
    "Dunstan",
    "Ivy",
    "Marek",
    "Nessa",
    "Perrin",
    "Quill",
)
TRADES: Final = (
    "the Smith",
    "the Gate Guard",
    "the Innkeeper",
    "the Herbalist",
    "the Ferryman",
    "the Miller",
    "the Scribe",
    "the Hunter",
    "the Tinker",
    "the Priest",
    "the Baker",
    "the Fence",
)
PERSONAS: Final = (
    "Gruff but fair; speaks in short sentences.",
    "Cheerful gossip who never finishes a thought.",
    "Suspicious of strangers, warm to regulars.",
    "Pompous, fond of long words.",
    "Tired and kind; sighs a lot.",
    "Nervous, stammers when lying.",
)
LOCATIONS: Final = (
    "North Gate",
    "The Prancing Eel",
    "Market Square",
    "Old Mill",
    "Riverside Dock",
    "Chapel of Dawn",
    "Smithy",
    "Hunter's Lodge",
    "Town Hall",
    "Herb Garden",
)
ITEMS: Final = (
    "spear",
    "brass key",
    "loaf of bread",
    "healing salve",
    "lantern",
    "rope",
    "ledger",
    "silver ring",
    "fishing net",
    "hammer",
    "map of the valley",
    "bag of coins",
)
GOALS: Final = (
    "keep the gate",
    "get home before dark",
    "pay off the debt",
    "find the missing goat",
    "sell the last barrel",
    "learn who stole the bell",
    "protect the children",
)
FACTS: Final = (
    "The gate closes at sundown.",
    "Bandits were seen on the east road.",
    "The miller owes everyone.",
    "A storm is coming from the hills.",
    "The old well is dry.",
    "The priest keeps a secret.",
)
MOODS: Final = ("irritable", "calm", "curious", "afraid", "merry", "bored")
EXTRA_TAGS: Final = (
    {"name": "emote", "description": "a facial expression"},
    {"name": "action", "description": "a physical action", "attrs": {"name": "what is done"}},
)
TOOLS: Final = (
    {
        "name": "open_door",
        "description": "Open a door the NPC has the key to",
        "parameters": {"type": "object", "properties": {"door": {"type": "string"}}, "required": ["door"]},
    },
    {
        "name": "give_item",
        "description": "Hand an item from the inventory to someone",
        "parameters": {"type": "object", "properties": {"item": {"type": "string"}, "to": {"type": "string"}}},
    },
    {"name": "check_ledger", "description": "Look up what someone owes"},
)
EVENT_KINDS: Final = ("speech", "speech", "speech", "gift", "gesture", "attack")
PHRASES: Final = (
    "Who goes there?",
    "Have you seen a goat around here?",
    "What news from the east road?",
    "I would like to buy some bread.",
    "Open the gate, please.",
    "Do you know the miller?",
    "Is it going to rain?",
    "Tell me about this town.",
    "Put that down!",
    "Thank you, friend.",
)
NOTIFICATIONS: Final = (
    ("weather", "It starts to rain."),
    ("weather", "The sun comes out."),
    ("bell", "The chapel bell rings six times."),
    ("crowd", "A cart rattles past."),
    ("news", "A rider brings word of bandits."),
)


def make_spec(rng: random.Random, number: int, with_tools: bool) -> dict:
    """A game's ``state`` for NPC number ``number``: every spec differs in size and content."""
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(TRADES)}"
    spec: dict = {
        "name": name,
        "description": f"{name}, NPC #{number}, known in {rng.choice(LOCATIONS)}.",
        "persona": rng.choice(PERSONAS),
        "goals": rng.sample(GOALS, rng.randint(1, 3)),
        "location": rng.choice(LOCATIONS),
        "inventory": [rng.choice(ITEMS) for _ in range(rng.randint(0, 3))],
        "relationships": {
            rng.choice(FIRST_NAMES): rng.choice(("friend", "rival", "cousin", {"trust": 2}))
            for _ in range(rng.randint(0, 3))
        },
        "facts": rng.sample(FACTS, rng.randint(0, 3)),
        "mood": rng.choice(MOODS),
    }
    if rng.random() < 0.5:
        spec["inventory"].append({"name": "brass key", "opens": rng.choice(LOCATIONS)})
    if rng.random() < 0.3:
        spec["prompt_parts"] = [{"title": "Current scene", "text": f"{rng.choice(FACTS)} Dusk."}]
    if rng.random() < 0.3:
        spec["tags"] = [
            "thought",
            {"name": "say", "description": "words spoken aloud"},
            *rng.sample(EXTRA_TAGS, rng.randint(1, 2)),
        ]
    if with_tools:
        spec["tools"] = list(rng.sample(TOOLS, rng.randint(1, len(TOOLS))))
    return spec


def state_for_turn(spec: dict, rng: random.Random) -> dict:
    """The spec as the game reports it for one turn: the NPC moves and its mood changes now and then."""
    if rng.random() < 0.2:
        return {**spec, "location": rng.choice(LOCATIONS), "mood": rng.choice(MOODS)}
    return spec


EVENT_MARK: Final = re.compile(r"\(ev ([^()\s]+)\)")  # how event_text names its event id


def event_text(rng: random.Random, event_id: str, tool: str | None) -> str:
    """An event's text. It names its event id, so the scripted LLM's request records can be matched
    to turns; ``tool`` asks the scripted LLM to call that tool (``[[tool:NAME]]``)."""
    text = f"{rng.choice(PHRASES)} (ev {event_id})"
    return f"{text} [[tool:{tool}]]" if tool else text
