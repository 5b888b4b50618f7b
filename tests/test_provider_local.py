"""The embedded model server for real: SmolLM2 in a child process, over HTTP, via the OpenAI SDK."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import psutil
import pytest
from openai import AsyncOpenAI

from core.tagjson import answer_schema
from providers.embedded import LocalModelProcess
from providers.grammar import tags_grammar

NPC_TAGS = ["thought", "say", "action"]
SYSTEM = (
    "You are Bram, the grumpy village blacksmith. Answer the player in character: your "
    "private thought in <thought></thought>, what you say aloud in <say></say>, a gesture in "
    "<action></action>."
)
# Never complete, so the model cannot stop by itself: only max_tokens or a disconnect ends it.
ENDLESS = "root ::= [a-z ] root"
# At least one letter first: an answer is never empty, whatever the model samples.
SOME_WORDS = {"grammar": "root ::= [a-zA-Z] [a-zA-Z ]*"}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModelProcess]:
    process = LocalModelProcess()
    try:
        process.start()
        yield process
    finally:
        process.stop()


@pytest.fixture
async def client(server: LocalModelProcess) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0) as client:
        yield client


def chat(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# At most 2 tags of 24 characters: even if every character took 4 bytes and every token one byte,
# 2 x (24 x 4 + 19) + 3 = 233 tokens, fewer than max_tokens whatever the model samples, so the
# answer always ends because the grammar is complete ("stop"), never because it ran out ("length").
MAX_TAGS, MAX_CHARS, MAX_TOKENS = 2, 24, 300


async def test_streams_well_formed_tags(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="anything",
        messages=chat("Hello! Can you fix my sword?"),
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=MAX_TOKENS,
        temperature=0.7,
        extra_body={"grammar": tags_grammar(NPC_TAGS, max_tags=MAX_TAGS, max_chars=MAX_CHARS)},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop", text

    # What the grammar guarantees, whatever is sampled: only whole, allowed tags, a say among them.
    tags = re.findall(r"<([\w.-]+)>([^<]+)</\1>", text)
    assert re.sub(r"<([\w.-]+)>[^<]+</\1>", "", text).strip() == "", text
    assert 1 <= len(tags) <= MAX_TAGS and {name for name, _ in tags} <= set(NPC_TAGS), text
    assert all(0 < len(body) <= MAX_CHARS for _, body in tags), text
    assert any(name == "say" and body.strip() for name, body in tags), text

    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens > 40 and 0 < usage.completion_tokens < MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_answers_without_streaming(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="anything", messages=chat("Good morning!"), max_tokens=8, extra_body=SOME_WORDS
    )
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 9


async def test_an_invalid_grammar_is_a_bad_request(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="grammar"):
        await client.chat.completions.create(
            model="anything",
            messages=chat("Hi"),
            extra_body={"grammar": 'root ::= "<say>" missing'},
        )


async def test_a_json_schema_response_format_is_enforced(client: AsyncOpenAI) -> None:
    schema = answer_schema({"say": ()}, None)
    response_format = {"type": "json_schema", "json_schema": {"name": "npc_turn", "strict": True, "schema": schema}}
    completion = await client.chat.completions.create(
        model="anything", messages=chat("Hello!"), max_tokens=40, response_format=response_format
    )
    answer = completion.choices[0].message.content
    # What the schema guarantees within 40 tokens, whatever is sampled: the answer opens a say.
    assert re.match(r'\{ ?"tags" ?: ?\[ ?\{ ?"tag" ?: ?"say" ?, ?"text" ?: ?"', answer), answer
    with pytest.raises(openai.BadRequestError, match="response_format"):
        await client.chat.completions.create(
            model="anything", messages=chat("Hi"), response_format={"type": "json_schema"}
        )


async def test_a_client_disconnect_frees_the_model(server: LocalModelProcess, client: AsyncOpenAI) -> None:
    endless = await client.chat.completions.create(
        model="anything",
        messages=chat("Talk."),
        stream=True,
        max_tokens=4000,  # about a minute of generation if it were not stopped
        extra_body={"grammar": ENDLESS},
    )
    received = 0
    async for chunk in endless:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 5:
            break
    await endless.close()
    # Observed, not timed: the server says it stopped the generation, long before its 4,000 tokens.
    deadline = time.monotonic() + 120
    while not (stopped := re.search(r"generation cancelled after (\d+) chunks", server.log_file.read_text())):
        assert time.monotonic() < deadline, "the generation went on after its client left"
        await asyncio.sleep(0.1)
    assert int(stopped.group(1)) < 4000
    reply = await client.chat.completions.create(
        model="anything", messages=chat("Hi"), max_tokens=16, extra_body=SOME_WORDS
    )
    assert reply.choices[0].message.content


async def test_npcs_taking_turns_resume_their_own_prompt(client: AsyncOpenAI) -> None:
    async def first_token_seconds(npc: str, turns: int) -> float:
        lore = f"{npc} has lived in the village for forty years and knows every family. " * 25
        messages = [{"role": "system", "content": f"You are {npc}. {lore}"}]
        messages += [{"role": "user", "content": f"Question {turn}?"} for turn in range(turns)]
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model="anything", messages=messages, stream=True, max_tokens=2, extra_body=SOME_WORDS
        )
        arrivals = [time.monotonic() async for chunk in stream if chunk.choices[0].delta.content]
        return arrivals[0] - started  # read to the end: only finished generations are kept

    first_visit = await first_token_seconds("Bram", 1)
    await first_token_seconds("Mira", 1)  # another NPC's long prompt in between
    assert await first_token_seconds("Bram", 2) < first_visit / 2


def test_a_failed_start_raises_with_the_child_output() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = LocalModelProcess(port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="(?i)address already in use"):
            process.start(timeout=60)
    process.stop()


def test_stop_leaves_no_process_behind() -> None:
    process = LocalModelProcess()
    process.start()
    child = psutil.Process(process.pid)
    started = time.monotonic()
    process.stop()
    assert time.monotonic() - started < LocalModelProcess.STOP_TIMEOUT  # SIGTERM was enough
    assert not child.is_running()
    process.stop()  # idempotent


def test_the_server_exits_when_its_parent_dies() -> None:
    script = (
        "import time; from providers.embedded import LocalModelProcess; "
        "p = LocalModelProcess(); p.start(); print(p.pid, flush=True); time.sleep(600)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as parent:
        try:
            orphan = psutil.Process(int(parent.stdout.readline()))
        finally:
            parent.kill()
    deadline = time.monotonic() + 10
    while running(orphan):
        if time.monotonic() > deadline:
            orphan.kill()
            pytest.fail("the model server outlived its parent")
        time.sleep(0.1)


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever adopted it)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
