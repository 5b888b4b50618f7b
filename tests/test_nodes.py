"""Scale-out end to end: a leader and a worker node, two actor systems on loopback forming a
Thespian convention. NPCs spread over both nodes; the worker node stopped (or killed) mid-turn
ends its turns for Godot, and its NPCs carry on on the leader with their whole history."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import pytest

from loadtest.processes import ServerProcesses, free_port, tail
from tests.conftest import ServerProcess
from tests.godot_peer import END_TYPES, GodotPeer
from tests.netns import NetworkHost
from tests.test_turns import check_turn_order, user_text

pytestmark = pytest.mark.timeout(180)
TOKEN = "tok-nodes-" + secrets.token_hex(8)  # /healthz names nodes only to a caller with the token
CHECK_S = "1"  # convention check-in period: a silent node is lost after about three
SLOW = {"content": "<say>" + " ".join(f"word{n}" for n in range(100)) + "</say>", "tokens_per_s": 20}


class WorkerNode:
    """``python run.py worker`` joining ``leader``; every process found by its admin port."""

    def __init__(
        self,
        tmp: Path,
        leader: ServerProcess,
        name: str,
        workers: int = 1,
        leader_address: str = "127.0.0.1",
        on: NetworkHost | None = None,
        extra: tuple[str, ...] = (),
        **env: str,
    ) -> None:
        self.name, self.admin_port = name, free_port()
        argv = [
            sys.executable,
            "run.py",
            "worker",
            "--leader",
            f"{leader_address}:{leader.admin_port}",
            "--admin-port",
            str(self.admin_port),
            "--workers",
            str(workers),
            "--node",
            name,
            *extra,
        ]
        self.process = ServerProcesses(
            name,
            argv if on is None else on.command(argv),
            tmp / f"node-{name}.log",
            {**{k: v for k, v in leader.env.items() if k != "GAME_AGENT_ADVERTISE"}, **env},  # not the leader's own
            admin_port=self.admin_port,
        )

    def stop(self) -> list[int]:
        return self.process.stop()

    def kill(self) -> None:
        for process in self.process.processes():
            process.kill()


async def health(server: ServerProcess) -> dict:
    return await server.health()  # with the token: node names


async def wait_nodes(server: ServerProcess, count: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while len((state := await health(server))["nodes"]) != count:
        assert time.monotonic() < deadline, f"expected {count} nodes, have {state['nodes']}"
        await asyncio.sleep(0.1)
    return state


@pytest.fixture
async def cluster(tmp_path, llm):
    """A leader (one worker) and a worker node ``node-b`` (two workers), both stopped afterwards."""
    leader = await asyncio.to_thread(
        ServerProcess,
        tmp_path,
        llm.url,
        workers=1,
        GAME_AGENT_NODE_NAME="leader",
        GAME_AGENT_NODE_CHECK_S=CHECK_S,
        GAME_AGENT_TOKEN=TOKEN,
    )
    node = WorkerNode(tmp_path, leader, "node-b", workers=2)
    peers: list[GodotPeer] = []
    await llm.reset()
    try:
        await wait_nodes(leader, 2)
        godot = await GodotPeer.connect(leader.url, leader.query())
        peers.append(godot)
        yield leader, node, godot
    finally:
        for peer in peers:
            await peer.close()
        left = node.stop()
        leader.stop()
        assert not left, f"node processes left behind: {left}\n{tail(node.process.log)}"


async def spread_npcs(godot: GodotPeer, llm, count: int) -> dict[str, str]:
    """``count`` NPCs, each with one confirmed turn saying something only it said."""
    said = {}
    for n in range(count):
        agent_id, words = f"npc{n}", f"memory of npc{n}"
        godot.specs[agent_id] = {"name": agent_id}
        await llm.script({"content": f"<say>{words}</say>", "match": f"tell {agent_id}"})
        frames = await godot.turn(agent_id, f"tell {agent_id}")
        assert frames[-1].get("reason") == "completed", frames
        await godot.confirm(frames)
        said[agent_id] = words
    return said


async def start_slow_turns(godot: GodotPeer, llm, agents: list[str], reply: dict = SLOW) -> int:
    """Each of ``agents`` streams a long turn, its first chunk seen; returns the frame index before."""
    await llm.script(*[{**reply, "match": f"go on {agent_id}"} for agent_id in agents])
    start = len(godot.frames)
    for agent_id in agents:
        await godot.interact(agent_id, f"go on {agent_id}")
    for agent_id in agents:
        await godot.wait_type("agent_tag_chunk", 15, start, agent_id=agent_id)
    return start


def ended_by_loss(frame: dict) -> bool:
    """A turn ended because its node went: by the gateway (killed: ``worker_lost``) or by its
    worker, told to stop (``shutdown``)."""
    return frame["type"] in END_TYPES and frame.get("reason") in ("error", "shutdown")


async def lose_node_mid_turn(leader, godot, llm, said, lose, reasons: tuple[str, ...]) -> tuple[float, float]:
    """Every NPC streams, the node is lost; returns the seconds until every turn on it ended for
    Godot (with one of ``reasons``), and until every NPC it had completed a new turn (on the
    leader, with its history)."""
    agents = list(said)
    on_node = next(n["agents"] for n in (await health(leader))["nodes"] if n["name"] == "node-b")
    start = await start_slow_turns(godot, llm, agents)
    lost_at = time.monotonic()
    lose()
    deadline = lost_at + 30
    while sum(map(ended_by_loss, godot.frames[start:])) < on_node:
        assert time.monotonic() < deadline, "the lost node's turns did not end"
        await asyncio.sleep(0.02)
    recovered_s = time.monotonic() - lost_at
    errored = {f["agent_id"] for f in godot.frames[start:] if ended_by_loss(f)}
    assert len(errored) == on_node and errored != set(agents)

    async def remember(agent_id: str) -> None:  # with its whole history, now on the leader
        await llm.script({"content": "<say>still here</say>", "match": f"remember {agent_id}"})
        frames = await godot.turn(agent_id, f"remember {agent_id}")
        assert frames[-1].get("reason") == "completed"
        prompt = user_text(next(r for r in reversed(await llm.requests()) if f"remember {agent_id}" in user_text(r)))
        assert said[agent_id] in prompt, (agent_id, prompt)

    for agent_id in sorted(errored):  # the lost node's NPCs play again at once
        await remember(agent_id)
    playing_s = time.monotonic() - lost_at
    ends = {}
    for agent_id in agents:
        ends[agent_id] = await godot.wait_for(
            lambda f, a=agent_id: f["type"] in END_TYPES and f["agent_id"] == a, 60, start
        )
    assert {a for a, end in ends.items() if ended_by_loss(end)} == errored
    for agent_id in errored:
        assert ends[agent_id]["reason"] in reasons
        check_turn_order(godot.turn_frames(ends[agent_id]["turn_id"]))
        assert ends[agent_id]["reason"] != "error" or any(
            f["type"] == "error" and f["code"] == "worker_lost" and f["ref"]["agent_id"] == agent_id
            for f in godot.frames[start:]
        )
    state = await wait_nodes(leader, 1)
    assert state["nodes"][0]["name"] == "leader"
    for agent_id in set(agents) - errored:  # and the others keep working
        await remember(agent_id)
    return recovered_s, playing_s


async def test_npcs_spread_over_both_nodes_and_survive_a_node_stopped_mid_turn(cluster, llm):
    leader, node, godot = cluster
    said = await spread_npcs(godot, llm, 6)
    nodes = {n["name"]: n for n in (await health(leader))["nodes"]}
    assert nodes["leader"]["workers"] == 1 and nodes["node-b"]["workers"] == 2
    assert nodes["leader"]["agents"] == 2 and nodes["node-b"]["agents"] == 4  # least-loaded worker first
    stop = lambda: os.kill(node.process.proc.pid, signal.SIGTERM)  # noqa: E731
    # Its workers end their own turns (shutdown), unless the leader saw the node leave first (error).
    seconds, _ = await lose_node_mid_turn(leader, godot, llm, said, stop, ("shutdown", "error"))
    print(f"node stopped: its turns ended within {seconds:.2f} s")


async def test_a_killed_node_is_detected_and_its_npcs_recover(cluster, llm):
    leader, node, godot = cluster
    said = await spread_npcs(godot, llm, 3)
    seconds, _ = await lose_node_mid_turn(leader, godot, llm, said, node.kill, ("error",))
    print(f"node killed: its turns ended within {seconds:.2f} s")


async def test_with_dedicated_placement_every_npc_s_worker_runs_on_the_leader(tmp_path, llm):
    """Placement "dedicated" creates each NPC's worker on the leader's node: a joining node hosts none."""
    leader = await asyncio.to_thread(
        ServerProcess,
        tmp_path,
        llm.url,
        GAME_AGENT_NODE_NAME="leader",
        GAME_AGENT_NODE_CHECK_S=CHECK_S,
        GAME_AGENT_TOKEN=TOKEN,
        GAME_AGENT_PLACEMENT="dedicated",
    )
    node = WorkerNode(tmp_path, leader, "node-b", workers=2)
    godot = await GodotPeer.connect(leader.url, leader.query())
    try:
        deadline = time.monotonic() + 30
        while "node node-b joined, but placement is dedicated" not in leader.server_log():
            assert time.monotonic() < deadline, "the leader never heard of node-b"
            await asyncio.sleep(0.1)
        await llm.reset()
        await spread_npcs(godot, llm, 3)
        state = await health(leader)
        assert state["nodes"] == [{"name": "leader", "workers": 3, "agents": 3, "frames": state["nodes"][0]["frames"]}]
    finally:
        await godot.close()
        left = node.stop()
        leader.stop()
        assert not left, f"node processes left behind: {left}\n{tail(node.process.log)}"
