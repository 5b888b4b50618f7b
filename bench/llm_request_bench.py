"""CPU of the LLM client per request and per chunk, all in, as NPC turns use it.

Many concurrent paced streams from the scripted server (run as its own process, so only the
client's CPU is counted), through the project's ChatStreamer. Per-request costs (building and
sending the request) and per-chunk costs (reading and decoding the SSE body) both show.

    python bench/llm_request_bench.py [--streams 200] [--tokens 40] [--tps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.ports import free_port  # noqa: E402
from providers.client import ChatStreamer, LLMSettings  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "You are Bram, a gate guard. " * 60},
    {"role": "user", "content": "[speech from player] Who goes there? " * 20},
]


async def measure(base_url: str, streams: int, rounds: int) -> None:
    async with ChatStreamer(LLMSettings(base_url=base_url, api_key="bench", model="scripted")) as client:
        chunks = 0

        async def one_turn() -> None:
            nonlocal chunks
            async for _ in client.stream(MESSAGES):
                chunks += 1

        await asyncio.gather(*(one_turn() for _ in range(20)))  # warm up the connection pool
        chunks = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            await asyncio.gather(*(one_turn() for _ in range(streams)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    requests = streams * rounds
    print(
        f"{requests} requests, {chunks} chunks in {wall:.1f} s: client CPU {cpu:.2f} s "
        f"({cpu / wall:.0%} of a core), {cpu / chunks * 1e6:.0f} µs per chunk all in, "
        f"{cpu / requests * 1e3:.2f} ms per request all in"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams per round")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply")
    parser.add_argument("--tps", type=float, default=20, help="tokens per second per stream")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "run.py",
            "llm-server",
            "--port",
            str(port),
            "--tokens-per-s",
            str(args.tps),
            "--default-tokens",
            str(args.tokens),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.5)
        asyncio.run(measure(f"http://127.0.0.1:{port}/v1", args.streams, args.rounds))
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
