"""Benchmark of core.turn's hot path on one core: one ``llm_text`` call per streamed token.

Beside it, the same tokens through the tag parser and ``core.protocol.tag_frames`` alone, so the
figure shows what the turn machine adds per token over the parsing and frame building it wraps.

Run: ``python bench/turn_bench.py [responses]``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.tagstream_bench import ALLOWED, RESPONSE, TOKEN_SIZE  # noqa: E402
from core import protocol as p  # noqa: E402
from core.spec import parse_spec  # noqa: E402
from core.tagstream import TagStreamParser  # noqa: E402
from core.turn import TurnMachine  # noqa: E402

SPEC = parse_spec({"name": "Bram", "tags": [{"name": name} for name in ALLOWED]})
DEFAULT_RESPONSES = 2_000


def machine_turn(tokens: list[str]) -> int:
    """One whole turn through the machine; return the number of outputs."""
    turn = TurnMachine("bram", "t1", None)
    count = len(turn.start()) + len(turn.state_received(SPEC)) + len(turn.person_answered(None))
    for token in tokens:
        count += len(turn.llm_text(token))
    return count + len(turn.llm_finished())


def frames_turn(tokens: list[str]) -> int:
    """The same tokens through the parser and its frames alone."""
    parser = TagStreamParser(ALLOWED)
    count = 0
    for token in tokens:
        count += len(p.tag_frames("bram", "t1", parser.feed(token)))
    return count + len(p.tag_frames("bram", "t1", parser.close()))


def timed(runs: tuple, tokens: list[str], responses: int, rounds: int = 5) -> list[float]:
    """CPU µs per token of each run, best of ``rounds`` taken in turns (CPU time: a shared machine's
    other work does not count, and what noise remains hits both)."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            run(tokens)  # warm-up
            started = time.process_time_ns()
            for _ in range(responses):
                run(tokens)
            best[i] = min(best[i], (time.process_time_ns() - started) / (responses * len(tokens)) / 1e3)
    return best


def main() -> None:
    responses = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RESPONSES
    tokens = [RESPONSE[start : start + TOKEN_SIZE] for start in range(0, len(RESPONSE), TOKEN_SIZE)]
    print(f"response: {len(RESPONSE)} chars, {len(tokens)} tokens of {TOKEN_SIZE} chars, {responses} responses")
    frames, machine = timed((frames_turn, machine_turn), tokens, responses)
    print(f"{frames:.2f} µs per token: parser and tag frames alone")
    print(f"{machine:.2f} µs per token: turn machine (whole turn included)")
    print(f"{machine - frames:+.2f} µs per token added by the machine")


if __name__ == "__main__":
    main()
