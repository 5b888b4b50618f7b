"""With no LLM endpoint configured, run.py serves turns from the embedded demo model (SmolLM2-135M
on llama.cpp), its output held to the agent's tags by a grammar. Real model, real processes."""

from __future__ import annotations

from tests.conftest import ServerProcess
from tests.godot_peer import GodotPeer, played_tags
from tests.test_turns import check_turn_order

SPEC = {
    "name": "Bram",
    "description": "A gate guard of the town of Elm",
    "persona": "gruff but fair",
    "location": "North Gate",
    "tags": [{"name": "thought"}, {"name": "say"}],
}


async def test_a_turn_from_the_embedded_model(tmp_path):
    server = ServerProcess(tmp_path, None, workers=1)
    try:
        assert "embedded model ready" in server.server_log()
        peer = await GodotPeer.connect(server.url)
        peer.specs["bram"] = SPEC
        try:
            frames = await peer.turn("bram", "Good evening, guard. May I enter the town?", timeout=90)
        finally:
            await peer.close()
    finally:
        server.stop()
    check_turn_order(frames)
    assert frames[-1]["type"] == "agent_turn_finished" and frames[-1]["reason"] == "completed", frames[-3:]
    tags = played_tags(frames)
    assert tags and {tag["tag"] for tag in tags} <= {"thought", "say"}
    # The grammar makes the NPC speak whatever the model samples: a say tag with some text.
    spoken = " ".join(tag["text"] for tag in tags if tag["tag"] == "say")
    assert spoken.strip(), tags
    assert frames[-1].get("usage", {}).get("completion_tokens", 0) > 0
