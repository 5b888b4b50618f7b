"""Structured output through the real stack: run.py asking the scripted LLM for a JSON schema
(llm_structured = json_schema), the JSON answer streamed back as the same tag frames."""

from __future__ import annotations

import json

import pytest
from loguru import logger

from providers.structured import detect
from tests.conftest import ServerProcess
from tests.godot_peer import GodotPeer, played_tags
from tests.test_turns import GUARD, TAGS, check_turn_order

ANSWER = json.dumps(
    {
        "tags": [
            {"tag": "thought", "text": "A stranger."},
            {"tag": "say", "text": "Halt! State your business & name."},
            {"tag": "action", "attrs": {"name": "raise_spear"}, "text": ""},
        ]
    }
)


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory) -> ServerProcess:
    """conftest's server, asking for JSON (conftest's ``godot`` connects to it)."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"), llm.url, GAME_AGENT_LLM_STRUCTURED="json_schema")
    yield proc
    proc.stop()


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
async def test_a_json_answer_streams_as_tags(godot: GodotPeer, llm, chunk_size):
    godot.specs["bram"] = {**GUARD, "tools": [{"name": "open_gate"}]}
    await llm.script({"content": ANSWER, "chunk_size": chunk_size})
    frames = await godot.turn("bram", "Who goes there?")
    check_turn_order(frames)
    assert played_tags(frames) == TAGS
    assert sum(f["type"] == "agent_tag_chunk" for f in frames) > 1 or chunk_size == 64
    response_format = (await llm.requests())[-1]["body"]["response_format"]
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"] is True
    items = response_format["json_schema"]["schema"]["properties"]["tags"]["items"]["anyOf"]
    assert [item["properties"]["tag"]["enum"] for item in items] == [["thought"], ["say"], ["action"], ["tool"]]
    assert items[3]["properties"]["attrs"]["properties"]["name"]["enum"] == ["open_gate"]
    assert '{"tags": [' in (await llm.requests())[-1]["body"]["messages"][0]["content"]


async def test_a_model_ignoring_the_schema_still_speaks(godot: GodotPeer, llm):
    godot.specs["bram"] = GUARD
    await llm.script({"content": "Halt, stranger! <action name=raise_spear/>", "chunk_size": 4})
    frames = await godot.turn("bram")
    assert played_tags(frames) == [
        {"tag": "say", "attrs": {}, "text": "Halt, stranger! "},
        {"tag": "action", "attrs": {"name": "raise_spear"}, "text": ""},
    ]


def test_auto_detects_nothing_it_does_not_know(llm):
    seen: list[str] = []
    handler = logger.add(seen.append, format="{message}")
    try:
        assert detect(llm.url + "/v1", "key") == "off"
        assert detect("http://127.0.0.1:9/v1", "", timeout_s=2) == "off"  # nothing listens there
    finally:
        logger.remove(handler)
    assert "models owned by ['scripted']" in seen[0] and "cannot ask" in seen[1]
