"""What a failing primary adds to a turn before its fallback answers.

Starts three scripted LLMs (one answering HTTP 500, one stalling before its first token, one
good) and, per scenario, a one-worker server whose primary is the failing one and whose only
``[[llm_fallbacks]]`` rung is the good one. A turn's time is from sending ``interaction_event``
to its first ``agent_tag_open`` (the first words Godot can show); what a scenario adds is its
median less the median of the good primary. Breakers are kept from opening (a high
``llm_breaker_failures``) so that every run pays the whole cost, except in ``breaker_open``,
where the first turn opens the breaker and the runs after it are measured. Not part of the test
run; run from the root of the tree to measure.

    python bench/fallback_latency.py [--runs 10] [--scenarios good,500_default,...] [--report F]

The ``stall_default`` scenario waits the default first-token timeout once per try (60 s, 5 tries,
bounded by the 300 s turn budget): it runs only when named.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ScriptedLLM, ServerProcess  # noqa: E402
from tests.godot_peer import END_TYPES, GodotPeer  # noqa: E402

NO_BREAKER = {"GAME_AGENT_LLM_BREAKER_FAILURES": "1000000"}
TUNED_RETRIES = {"GAME_AGENT_LLM_MAX_RETRIES": "1", "GAME_AGENT_LLM_RETRY_BASE_S": "0.05"}
# scenario -> (the primary's role, the server's settings)
SCENARIOS: dict[str, tuple[str, dict[str, str]]] = {
    "good": ("good", NO_BREAKER),
    "500_default": ("bad", NO_BREAKER),
    "500_tuned": ("bad", {**NO_BREAKER, **TUNED_RETRIES}),
    "stall_tuned": ("stall", {**NO_BREAKER, **TUNED_RETRIES, "GAME_AGENT_LLM_FIRST_TOKEN_TIMEOUT_S": "2"}),
    "breaker_open": ("bad", {"GAME_AGENT_LLM_BREAKER_FAILURES": "1", "GAME_AGENT_LLM_BREAKER_COOLDOWN_S": "3600"}),
    "stall_default": ("stall", NO_BREAKER),
}
DEFAULT_SCENARIOS = "good,500_default,500_tuned,stall_tuned,breaker_open"


async def first_tag_s(godot: GodotPeer, timeout: float) -> float:
    """One turn: seconds from the event to its first tag; the turn is confirmed as played."""
    start = len(godot.frames)
    began = time.perf_counter()
    event_id = await godot.interact("smith", "Good morning")
    started = await godot.wait_type("agent_turn_started", timeout, start, event_id=event_id)
    await godot.wait_for(lambda f: f["type"] == "agent_tag_open" and f["turn_id"] == started["turn_id"], timeout, start)
    elapsed = time.perf_counter() - began
    end = await godot.wait_for(lambda f: f["type"] in END_TYPES and f["turn_id"] == started["turn_id"], timeout, start)
    assert end["reason"] == "completed", end
    await godot.confirm(godot.turn_frames(started["turn_id"]))
    return elapsed


async def scenario(tmp: Path, llms: dict[str, ScriptedLLM], name: str, runs: int) -> dict:
    role, env = SCENARIOS[name]
    config = tmp / f"{name}.toml"
    config.write_text(f'[[llm_fallbacks]]\nbase_url = "{llms["good"].url}/v1"\nmodel = "good-model"\n')
    server = ServerProcess(
        tmp, llms[role].url, workers=1, GAME_AGENT_CONFIG=str(config), GAME_AGENT_LOG_LEVEL="INFO", **env
    )
    try:
        godot = await GodotPeer.connect(server.url, "?session=bench")
        godot.specs["smith"] = {"name": "Smith"}
        try:
            if name == "breaker_open":
                await first_tag_s(godot, 120)  # opens the breaker
            times = [await first_tag_s(godot, 400) for _ in range(runs)]
        finally:
            await godot.close()
    finally:
        server.stop()
    return {
        "primary": role,
        "settings": env,
        "runs": runs,
        "median_s": round(statistics.median(times), 3),
        "mean_s": round(statistics.fmean(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
    }


async def main(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="fallback-latency-"))
    llms = {role: ScriptedLLM(tmp) for role in ("bad", "stall", "good")}
    try:
        await llms["bad"].defaults(status=500)
        await llms["stall"].defaults(first_token_delay_s=3600.0)
        results = {}
        for name in args.scenarios.split(","):
            runs = 1 if name == "stall_default" else args.runs
            results[name] = await scenario(tmp, llms, name, runs)
            print(name, results[name], flush=True)
        if "good" in results:
            base = results["good"]["median_s"]
            for result in results.values():
                result["added_median_s"] = round(result["median_s"] - base, 3)
        return results
    finally:
        for llm in llms.values():
            llm.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="turns per scenario (default 10)")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help=f"of {', '.join(SCENARIOS)}")
    parser.add_argument("--report", help="write the results as JSON here")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    print(json.dumps(results, indent=2))
    if args.report:
        Path(args.report).write_text(json.dumps(results, indent=2) + "\n")
