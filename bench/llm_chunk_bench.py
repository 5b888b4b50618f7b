"""CPU per streamed chunk: the openai SDK's parsed stream versus ChatStreamer's raw SSE path.

Why: one worker process streams the turns of hundreds of NPCs, so the client's CPU per
token decides how many NPCs a core can voice.

The scripted server runs either in this process and event loop ("inprocess": the process
CPU counts both sides; the "server only" path, a bare socket without HTTP or SSE parsing,
shows the server's share) or in a child process ("subprocess": the process CPU is the
client's alone and the child's CPU is shown beside it). The two differ by more than the
server's share: in one loop, the work of both sides per event-loop wake-up adds up.

Two pacings: "burst" (the server writes as fast as it can, so one network read may carry
several events) and "paced" (a fixed token rate, one event per read, as from a real model).

    python bench/llm_chunk_bench.py [--chunks 2000] [--runs 5] [--paced-tps 2000] [--server both]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import orjson
import psutil
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from providers import scripted  # noqa: E402
from providers.client import ChatStreamer, LLMSettings  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me about the road north."}]
MODEL = "bench-model"


class InProcessServer:
    """The scripted server in this event loop."""

    def __init__(self, chunks: int) -> None:
        self._llm = scripted.ScriptedLLM(default_tokens=chunks)
        self._runner = web.AppRunner(scripted.make_app(self._llm), handler_cancellation=True, access_log=None)
        self.port = 0

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def set_pace(self, tokens_per_s: float) -> None:
        self._llm.set_defaults(tokens_per_s=tokens_per_s)

    def cpu(self) -> float | None:
        return None  # counted in this process's CPU

    async def close(self) -> None:
        await self._runner.cleanup()


class SubprocessServer:
    """The scripted server in a child process, driven through its control endpoints."""

    def __init__(self, chunks: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        argv = ["--port", str(self.port), "--default-tokens", str(chunks)]
        self._process = multiprocessing.get_context("spawn").Process(target=scripted.main, args=(argv,))

    async def start(self) -> None:
        self._process.start()
        self._child = psutil.Process(self._process.pid)
        for _ in range(500):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
            else:
                writer.close()
                return
        raise RuntimeError("the scripted server did not start")

    async def set_pace(self, tokens_per_s: float) -> None:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{self.port}/_control/defaults"
            async with http.post(url, json={"tokens_per_s": tokens_per_s}) as response:
                response.raise_for_status()

    def cpu(self) -> float | None:
        times = self._child.cpu_times()
        return times.user + times.system

    async def close(self) -> None:
        self._process.terminate()
        await asyncio.to_thread(self._process.join)


async def bare_socket(port: int) -> int:
    """Read the whole streamed response, counting content chunks, with no HTTP client at all."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "stream": True})
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    parts = []
    while part := await reader.read(1 << 16):
        parts.append(part)
    writer.close()
    return b"".join(parts).count(b'"delta":{"content":"')


async def sdk_parsed(client: openai.AsyncOpenAI) -> int:
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    count = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            count += 1
    return count


async def chat_streamer(streamer: ChatStreamer) -> int:
    count = 0
    async for delta in streamer.stream(MESSAGES):
        if delta.content:
            count += 1
    return count


def _median_per_chunk(samples: list[float], chunks: int) -> float:
    return statistics.median(samples) / chunks * 1e6


async def measure(
    server: InProcessServer | SubprocessServer, run: Callable[[], Awaitable[int]], chunks: int, runs: int
) -> tuple[float, float | None, float]:
    """Median CPU µs per chunk of this process and of the server (if separate), and median wall s."""
    await run()  # warm up: connection, imports, SDK caches
    process, server_cpu, wall = [], [], []
    for _ in range(runs):
        server_start, process_start, wall_start = server.cpu(), time.process_time(), time.perf_counter()
        received = await run()
        process.append(time.process_time() - process_start)
        wall.append(time.perf_counter() - wall_start)
        if server_start is not None:
            server_cpu.append(server.cpu() - server_start)
        assert received == chunks, f"received {received} of {chunks} chunks"
    server_median = _median_per_chunk(server_cpu, chunks) if server_cpu else None
    return _median_per_chunk(process, chunks), server_median, statistics.median(wall)


async def bench(server: InProcessServer | SubprocessServer, chunks: int, runs: int, paced_tps: float) -> None:
    await server.start()
    base_url = f"http://127.0.0.1:{server.port}/v1"
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    streamer = ChatStreamer(LLMSettings(base_url=base_url, api_key="bench", model=MODEL, include_usage=False))
    paths = {
        "server only": lambda: bare_socket(server.port),
        "sdk parsed stream": lambda: sdk_parsed(client),
        "ChatStreamer raw": lambda: chat_streamer(streamer),
    }
    try:
        for pacing, tokens_per_s in (("burst", 0.0), (f"paced {paced_tps:g}/s", paced_tps)):
            await server.set_pace(tokens_per_s)
            for name, run in paths.items():
                process_cpu, server_cpu, wall = await measure(server, run, chunks, runs)
                server_column = "-" if server_cpu is None else f"{server_cpu:.1f}"
                print(
                    f"{type(server).__name__:<17} {pacing:<14} {name:<18} {process_cpu:8.1f} {server_column:>7} "
                    f"{wall:7.2f}"
                )
    finally:
        await client.close()
        await streamer.aclose()
        await server.close()


async def main(chunks: int, runs: int, paced_tps: float, servers: list[str]) -> None:
    print(f"{chunks} chunks per stream, median of {runs} runs; CPU in µs per chunk")
    print(f"{'server':<17} {'pacing':<14} {'path':<18} {'process':>8} {'server':>7} {'wall s':>7}")
    for kind in servers:
        server_class = InProcessServer if kind == "inprocess" else SubprocessServer
        await bench(server_class(chunks), chunks, runs, paced_tps)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=2000, help="content chunks per stream (default 2000)")
    parser.add_argument("--runs", type=int, default=5, help="measured streams per path and pacing (default 5)")
    parser.add_argument("--paced-tps", type=float, default=2000, help="token rate of the paced runs (default 2000)")
    parser.add_argument(
        "--server",
        choices=["inprocess", "subprocess", "both"],
        default="both",
        help="where the scripted server runs (default both)",
    )
    options = parser.parse_args()
    kinds = ["inprocess", "subprocess"] if options.server == "both" else [options.server]
    asyncio.run(main(options.chunks, options.runs, options.paced_tps, kinds))
