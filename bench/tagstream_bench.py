"""Benchmark of core.tagstream on one core, fed the way an LLM streams.

The parser runs once per streamed token for hundreds of NPCs at once, so what
matters is the cost of one ``feed`` call on a short token.  This feeds a
realistic response (thought, say with entities, action with attributes) in
4-character tokens, many times, and prints the cost per call and per response.

Run: ``python bench/tagstream_bench.py [responses]``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from core.tagstream import TagStreamParser  # noqa: E402

ALLOWED = ("thought", "say", "action")
RESPONSE = (
    "<thought>The traveller looks tired &amp; hungry. They asked about the old mill, which burned down "
    "last winter. The captain said &quot;no strangers past the gate after dark&quot;, but this one seems "
    "harmless &mdash; maybe a pilgrim. I should be friendly, yet careful.</thought>"
    "<say>Welcome to Oakvale, friend! You look like you&apos;ve walked a long way. The mill? Ah&#8230; "
    "that&apos;s a sad story. It burned the night of the first frost, and old Bram &amp; his boys barely "
    "got out. If you need a bed, the inn is past the well &lt;just follow the lanterns&gt;.</say>"
    '<action name="wave" target="player" intensity=\'0.8\'/>'
)
TOKEN_SIZE = 4
DEFAULT_RESPONSES = 10_000


def parse_response(tokens: list[str]) -> int:
    """Parse one response token by token; return the number of events."""
    parser = TagStreamParser(ALLOWED)
    count = 0
    for token in tokens:
        count += len(parser.feed(token))
    return count + len(parser.close())


def main() -> None:
    responses = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RESPONSES
    tokens = [RESPONSE[start : start + TOKEN_SIZE] for start in range(0, len(RESPONSE), TOKEN_SIZE)]
    events = parse_response(tokens)  # warm-up
    started = time.perf_counter_ns()
    for _ in range(responses):
        parse_response(tokens)
    elapsed = time.perf_counter_ns() - started
    feeds = responses * len(tokens)
    print(f"response: {len(RESPONSE)} chars, {len(tokens)} tokens of {TOKEN_SIZE} chars, {events} events")
    print(f"{responses} responses in {elapsed / 1e9:.2f} s")
    print(f"{elapsed / feeds / 1e3:.2f} µs per feed call")
    print(f"{elapsed / responses / 1e3:.1f} µs per response (parser creation and close included)")
    print(f"{feeds / (elapsed / 1e9):,.0f} tokens/s on one core")


if __name__ == "__main__":
    main()
