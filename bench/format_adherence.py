"""How well the model keeps the NPC tag format, per structured-output mode (``llm_structured``).

Runs N whole turns per mode against the embedded model (SmolLM2-135M, the model a new user
gets), with the server's own prompt, client, request fields and readers, and counts per mode:

- say: turns where the game gets at least one non-blank ``say`` (stray text spoken, as served);
- say, tags only: the same without that fallback (``untagged_text = "drop"``);
- stray: turns with text outside any allowed tag (JSON: outside the schema's items);
- malformed: markup with an unclosed or unknown tag, or JSON that does not parse as the schema;
- cut: turns ended by max_tokens rather than by the model.

    python bench/format_adherence.py [--turns 10] [--modes off,grammar,json_schema] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.settings import load_settings  # noqa: E402
from core.prompt import build_messages  # noqa: E402
from core.spec import parse_spec  # noqa: E402
from core.tagjson import TagJsonReader  # noqa: E402
from core.tagstream import TagChunk, TagOpen, TagStreamParser  # noqa: E402
from providers.client import ChatStreamer, LLMSettings  # noqa: E402
from providers.embedded import LocalModelProcess  # noqa: E402
from providers.structured import request_fields  # noqa: E402

SPEC = parse_spec(
    {
        "name": "Bram",
        "description": "The village blacksmith, broad and soot-stained",
        "persona": "gruff but fair, proud of his work",
        "goals": ["sell his blades", "find out who stole his hammer"],
        "location": "the forge",
        "inventory": ["hammer", "tongs", "a half-finished sword"],
    }
)
LINES = [
    "Hello! Can you fix my sword?",
    "Who are you?",
    "Have you seen anyone suspicious today?",
    "How much for that blade?",
    "Tell me about this village.",
    "Why are you so grumpy?",
    "Can I borrow your tongs?",
    "What happened to your hammer?",
]
_MARKUP = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9_.:-]*)[^<>]*?(/?)>")


def turn_messages(mode: str, line: str) -> list[dict]:
    history = [{"kind": "event", "event_id": "e1", "event": {"kind": "speech", "source": "player", "text": line}}]
    return build_messages(SPEC, history, budget_chars=4000, json_answer=mode == "json_schema")


def reader(mode: str, untagged: str | None) -> TagStreamParser | TagJsonReader:
    kind = TagJsonReader if mode == "json_schema" else TagStreamParser
    return kind(SPEC.allowed_tags, untagged=untagged, tools=SPEC.tool_names)


def read(mode: str, answer: str, untagged: str | None) -> list:
    parser = reader(mode, untagged)
    return parser.feed(answer) + parser.close()


def says(events: list) -> bool:
    spoken = {e.index for e in events if isinstance(e, TagChunk) and e.tag == "say" and e.text.strip()}
    return bool(spoken)


def malformed(mode: str, answer: str) -> bool:
    """JSON that is not the schema's shape, or markup with an unknown or unclosed tag."""
    if mode == "json_schema":
        try:
            tags = json.loads(answer)["tags"]
            return not all(isinstance(t["tag"], str) and isinstance(t["text"], str) for t in tags)
        except (ValueError, KeyError, TypeError):
            return True
    allowed, open_tag = {name.lower() for name in SPEC.allowed_tags}, None
    for closing, name, self_closing in _MARKUP.findall(answer):
        name = name.lower()
        if name not in allowed or (not closing and open_tag is not None) or (closing and name != open_tag):
            return True
        open_tag = None if closing or self_closing else name
    return open_tag is not None


async def run_mode(client: ChatStreamer, mode: str, turns: int) -> dict:
    counts = {"turns": 0, "say": 0, "say_tags_only": 0, "stray": 0, "malformed": 0, "cut": 0, "seconds": 0.0}
    examples = []
    for n in range(turns):
        started = time.monotonic()
        parts, finish = [], None
        async for delta in client.stream(
            turn_messages(mode, LINES[n % len(LINES)]), extra_body=request_fields(mode, SPEC)
        ):
            parts.append(delta.content)
            finish = delta.finish_reason or finish
        answer = "".join(parts)
        served, strict = read(mode, answer, "say"), read(mode, answer, None)
        counts["turns"] += 1
        counts["say"] += says(served)
        counts["say_tags_only"] += says(strict)
        counts["stray"] += sum(isinstance(e, TagOpen) for e in served) > sum(isinstance(e, TagOpen) for e in strict)
        counts["malformed"] += malformed(mode, answer)
        counts["cut"] += finish == "length"
        counts["seconds"] += time.monotonic() - started
        examples.append(answer)
        print(f"{mode}: turn {n + 1}/{turns} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return {"mode": mode, **counts, "examples": examples[:3]}


def table(results: list[dict]) -> str:
    rows = [
        "| mode | turns | >=1 say (served) | >=1 say (tags only) | stray text | malformed | cut | s/turn |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n = r["turns"]
        share = [f"{100 * r[key] / n:.0f}%" for key in ("say", "say_tags_only", "stray", "malformed", "cut")]
        rows.append(f"| `{r['mode']}` | {n} | {' | '.join(share)} | {r['seconds'] / n:.1f} |")
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10, help="turns per mode")
    parser.add_argument("--modes", default="off,grammar,json_schema")
    parser.add_argument("--json", type=Path, help="also write the results (with example answers) here")
    args = parser.parse_args()
    settings = load_settings()
    model = LocalModelProcess(threads=settings.embedded_model_threads or None)
    base_url = model.start()
    try:
        llm = LLMSettings(
            base_url=base_url,
            api_key="",
            model="embedded",
            temperature=settings.llm_temperature,
            max_tokens=settings.embedded_max_tokens,
            # A shared, loaded CPU can take minutes to read a prompt: measure adherence, not speed.
            first_token_timeout_s=600,
            stall_timeout_s=600,
            turn_timeout_s=1200,
        )
        async with ChatStreamer(llm) as client:
            results = [await run_mode(client, mode, args.turns) for mode in args.modes.split(",")]
    finally:
        model.stop()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())
