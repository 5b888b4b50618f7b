"""What a disconnect costs: log files and bytes, and an unrelated session's turn latency meanwhile.

Starts the scripted LLM and a one-worker server, names ``--agents`` NPCs in session ``flood`` by
``--notifications`` notifications over one connection, measures a turn of an unrelated session
``calm`` at rest, then closes the flood connection and measures a calm turn started at once.
Then it runs ``--churn-s`` seconds of connect / notify / close and counts the folders made. Not
part of the test run; run from the root of the tree to measure.

    python bench/disconnect_logs.py [--agents 100000] [--notifications 5] [--churn-s 30]
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

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))

from tests.conftest import ScriptedLLM, ServerProcess  # noqa: E402
from tests.godot_peer import GodotPeer  # noqa: E402


async def turn_latency(calm: GodotPeer) -> float:
    start = time.perf_counter()
    frames = await calm.turn("sage", "How are you?", timeout=120)
    assert frames[-1]["type"] == "agent_turn_finished", frames[-1]
    return time.perf_counter() - start


def tree(folder: Path) -> tuple[int, int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    dirs = [p for p in folder.rglob("*") if p.is_dir()]
    return len(files), sum(p.stat().st_size for p in files), len(dirs)


async def main(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="disconnect-logs-"))
    llm = ScriptedLLM(tmp)
    # Limits of the new code raised so the flood gets through them: this measures the disconnect alone.
    raised = (ROOT / "core" / "framelimits.py").exists()
    env = (
        {
            "GAME_AGENT_MAX_NOTIFICATION_AGENTS": str(args.agents),
            "GAME_AGENT_RATE_LIMIT_NOTIFICATIONS_BURST": str(args.agents * 10),
            "GAME_AGENT_RATE_LIMIT_NOTIFICATIONS_PER_S": str(args.agents * 10),
            "GAME_AGENT_MAX_JOURNAL_BYTES_PER_FRAME": str(1 << 30),
            "GAME_AGENT_RATE_LIMIT_JOURNAL_BYTES_BURST": str(1 << 30),
            "GAME_AGENT_MAX_FRAME_BYTES": str(16 << 20),
        }
        if raised
        else {"GAME_AGENT_MAX_FRAME_BYTES": str(16 << 20)}
    )
    server = ServerProcess(tmp, llm.url, workers=1, GAME_AGENT_LOG_LEVEL="INFO", **env)
    result: dict = {"tree": str(ROOT), "agents": args.agents}
    try:
        calm = await GodotPeer.connect(server.url, "?session=calm")
        calm.specs["sage"] = {"name": "Sage"}
        flood = await GodotPeer.connect(server.url, "?session=flood")
        per = args.agents // args.notifications
        for n in range(args.notifications):
            ids = [f"npc{n * per + i}" for i in range(per)]
            await flood.send({"type": "notification_event", "agent_ids": ids, "event": {"text": "rain"}})
        await flood.send({"type": "ping", "id": "done"})
        await flood.wait_type("pong", 300, id="done")
        rest = [await turn_latency(calm) for _ in range(3)]  # after the flood: the worker has it all
        result["calm_turn_at_rest_s"] = round(statistics.median(rest), 3)
        await flood.close()
        result["calm_turn_during_disconnect_s"] = round(await turn_latency(calm), 3)
        stable, last = 0, None
        while stable < 5:  # the logs are written once the count stops changing for 1 s
            await asyncio.sleep(0.2)
            now = tree(server.log_dir)
            stable, last = (stable + 1 if now == last else 0), now
        result["files"], result["bytes"], result["folders"] = last
        folders_before = last[2]
        deadline = time.monotonic() + args.churn_s
        cycles = 0
        while time.monotonic() < deadline:
            peer = await GodotPeer.connect(server.url, "?session=churn")
            await peer.send({"type": "notification_event", "agent_id": "victim", "event": {"text": "x"}})
            await peer.close()
            cycles += 1
        await asyncio.sleep(2)
        files, size, folders = tree(server.log_dir)
        result["churn"] = {"cycles": cycles, "new_folders": folders - folders_before, "files": files, "bytes": size}
        await calm.close()
    finally:
        server.stop(check=False)
        llm.stop()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--notifications", type=int, default=5)
    parser.add_argument("--churn-s", type=float, default=30.0)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
