"""Worker nodes on separate hosts: the leader here, a worker node in a network namespace of its own
(tests/netns.py: a private 10.x link, no default route), started with the commands of
docs/deploy.md. It joins once and stays, carries NPCs, survives a cut link, a heal, a kill and a
restarted leader; no worker of a lost generation outlives it or gets anything through.

The figures printed (cut -> lost turns ended for Godot, cut -> the NPCs playing again) are the
ones in docs/deploy.md.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from loadtest.processes import tail
from tests.conftest import ScriptedLLM, ServerProcess
from tests.godot_peer import END_TYPES, GodotPeer
from tests.test_nodes import (
    CHECK_S,
    TOKEN,
    WorkerNode,
    health,
    lose_node_mid_turn,
    spread_npcs,
    start_slow_turns,
    wait_nodes,
)
from tests.test_turns import check_turn_order, user_text

pytestmark = pytest.mark.timeout(240)
ENDLESS = {"content": "<say>" + " ".join(f"word{n}" for n in range(1000)) + "</say>", "tokens_per_s": 20}  # 50 s


@pytest.fixture(scope="module")
def far(far_host):
    """The worker node's host."""
    return far_host


@pytest.fixture(scope="module")
def llm(tmp_path_factory, far):
    """The scripted LLM on the leader's side of the link: both hosts reach it, as a LAN endpoint."""
    server = ScriptedLLM(tmp_path_factory.mktemp("llm"), host=far.near)
    yield server
    server.stop()


class Hosts:
    """A leader advertising its link address and a worker node ``node-b`` on the far host."""

    def __init__(self, tmp, llm, far) -> None:
        self.tmp, self.llm, self.far = tmp, llm, far
        self.leader = self.start_leader()
        self.node = WorkerNode(tmp, self.leader, "node-b", workers=2, leader_address=far.near, on=far)
        self.peers: list[GodotPeer] = []

    def start_leader(self, admin_port: int | None = None, data_dir=None) -> ServerProcess:
        return ServerProcess(
            self.tmp,
            self.llm.url,
            workers=1,
            data_dir=data_dir,
            admin_port=admin_port,
            GAME_AGENT_NODE_NAME="leader",
            GAME_AGENT_NODE_CHECK_S=CHECK_S,
            GAME_AGENT_ADVERTISE=self.far.near,
            GAME_AGENT_TOKEN=TOKEN,
        )

    async def godot(self) -> GodotPeer:
        peer = await GodotPeer.connect(self.leader.url, self.leader.query())
        self.peers.append(peer)
        return peer

    def node_listeners(self) -> list[str]:
        """Local addresses of every TCP listener on the far host."""
        out = subprocess.run(self.far.command(["ss", "-Htln"]), capture_output=True, text=True, check=True).stdout
        return [line.split()[3] for line in out.splitlines()]

    async def close(self) -> None:
        for peer in self.peers:
            await peer.close()
        self.far.heal()
        left = self.node.stop()
        self.leader.stop()
        assert not left, f"node processes left behind: {left}\n{tail(self.node.process.log)}"


@pytest.fixture
async def hosts(tmp_path, llm, far):
    await llm.reset()
    hosts = await asyncio.to_thread(Hosts, tmp_path, llm, far)
    try:
        await wait_nodes(hosts.leader, 2)
        yield hosts
    finally:
        await hosts.close()


async def wait_until(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)
    return result


def pids(node: WorkerNode) -> set[int]:
    return {process.pid for process in node.process.processes()}


async def old_workers_stopped(hosts: Hosts, before: set[int], workers: int = 2) -> None:
    """The node is back with as many processes as before, and exactly its ``workers`` old ones gone:
    the old generation stopped itself (or was told to) and nothing else was left running."""

    def settled() -> bool:
        now = pids(hosts.node)
        return len(now) == len(before) and len(before - now) == workers

    await wait_until(settled, f"old workers still running: {before} -> {pids(hosts.node)}")


async def test_a_node_on_another_host_joins_once_listens_on_its_link_and_carries_npcs(hosts, llm):
    godot = await hosts.godot()
    said = await spread_npcs(godot, llm, 6)
    nodes = {n["name"]: n for n in (await health(hosts.leader))["nodes"]}
    assert nodes["node-b"]["workers"] == 2 and nodes["node-b"]["agents"] == 4, nodes
    assert len(said) == 6
    log = hosts.leader.server_log()
    assert log.count("node node-b joined") == 1, "the node flapped"
    assert hosts.far.resolve_own_name() == "127.0.0.1"  # the setup on which Thespian guessed loopback
    assert f"Thespian listens on {hosts.far.far} only" in hosts.node.process.log.read_text()
    assert all(address.startswith(hosts.far.far + ":") for address in hosts.node_listeners()), hosts.node_listeners()


async def test_a_long_cut_ends_the_turns_the_old_workers_stop_themselves_and_the_node_comes_back(hosts, llm):
    godot = await hosts.godot()
    said = await spread_npcs(godot, llm, 3)
    before = pids(hosts.node)
    ended_s, playing_s = await lose_node_mid_turn(hosts.leader, godot, llm, said, hosts.far.cut, ("error",))
    print(f"link cut: lost turns ended for Godot after {ended_s:.2f} s, the NPCs played again after {playing_s:.2f} s")
    lost_turns = [f["turn_id"] for f in godot.frames if f["type"] == "agent_turn_finished" and f["reason"] == "error"]
    await wait_until(lambda: hosts.node.process.log.read_text().count("stops: its gateway") == 2, "workers stay")
    hosts.far.heal()
    await wait_nodes(hosts.leader, 2)
    await old_workers_stopped(hosts, before)
    for turn_id in lost_turns:  # nothing came through for the turns the leader ended
        check_turn_order(godot.turn_frames(turn_id))
    # The node carries NPCs again.
    more = await spread_npcs(godot, llm, 4)
    nodes = {n["name"]: n for n in (await health(hosts.leader))["nodes"]}
    assert nodes["node-b"]["agents"] >= 1, (nodes, more)


async def test_a_short_cut_mid_turn_the_leader_retires_the_old_generation_and_takes_nothing_from_it(hosts, llm):
    godot = await hosts.godot()
    said = await spread_npcs(godot, llm, 3)
    before = pids(hosts.node)
    on_node = [a for a, n in zip(said, range(3)) if n > 0]  # npc1, npc2: placed on node-b's two workers
    start = await start_slow_turns(godot, llm, on_node, reply=ENDLESS)
    cut_at = time.monotonic()
    hosts.far.cut()
    ends = [
        await godot.wait_for(lambda f, a=a: f["type"] in END_TYPES and f["agent_id"] == a, 30, start) for a in on_node
    ]
    assert all(end["reason"] == "error" for end in ends), ends
    print(f"short cut: lost turns ended for Godot after {time.monotonic() - cut_at:.2f} s; link healed now")
    hosts.far.heal()  # the old workers are still streaming (their lease outlasts the leader's patience)
    await wait_until(lambda: "node node-b is back" in hosts.leader.server_log(), "the node did not come back")
    await wait_nodes(hosts.leader, 2)
    await old_workers_stopped(hosts, before)
    for end in ends:  # nothing the old generation sent after the cut reached Godot
        check_turn_order(godot.turn_frames(end["turn_id"]))

    async def streams_cancelled() -> bool:  # the old workers' LLM streams, cut short by their end
        records = [r for r in await llm.requests() if any(f"go on {a}" in user_text(r) for a in on_node)]
        return len(records) == len(on_node) and all(r["end"] == "client_closed" for r in records)

    deadline = time.monotonic() + 30  # the streams would run for 50 s more
    while not await streams_cancelled():
        assert time.monotonic() < deadline, [r["end"] for r in await llm.requests()]
        await asyncio.sleep(0.2)
    for agent_id in on_node:
        await llm.script({"content": "<say>here again</say>", "match": f"after {agent_id}"})
        frames = await godot.turn(agent_id, f"after {agent_id}")
        assert frames[-1].get("reason") == "completed", frames


async def test_a_killed_node_on_another_host_is_detected_and_its_npcs_recover(hosts, llm):
    godot = await hosts.godot()
    said = await spread_npcs(godot, llm, 3)
    ended_s, playing_s = await lose_node_mid_turn(hosts.leader, godot, llm, said, hosts.node.kill, ("error",))
    print(
        f"node killed: lost turns ended for Godot after {ended_s:.2f} s, the NPCs played again after {playing_s:.2f} s"
    )


async def test_a_leader_killed_and_restarted_takes_the_living_node_back_and_its_old_workers_stop(hosts, llm):
    """A leader that stops cleanly takes its remote workers down with it; one that dies cannot."""
    godot = await hosts.godot()
    said = await spread_npcs(godot, llm, 3)
    before = pids(hosts.node)
    await godot.close()
    hosts.peers.clear()
    admin_port, data_dir = hosts.leader.admin_port, hosts.leader.data_dir
    for process in hosts.leader.processes():
        process.kill()
    await wait_until(lambda: not hosts.leader.processes(), "the leader did not die")
    hosts.leader = await asyncio.to_thread(hosts.start_leader, admin_port, data_dir)
    await wait_nodes(hosts.leader, 2)
    await old_workers_stopped(hosts, before)
    godot = await hosts.godot()
    for agent_id, words in said.items():  # each NPC has its history back, wherever it is placed now
        godot.specs[agent_id] = {"name": agent_id}
        await llm.script({"content": "<say>back</say>", "match": f"again {agent_id}"})
        frames = await godot.turn(agent_id, f"again {agent_id}")
        assert frames[-1].get("reason") == "completed", frames
        prompt = user_text(next(r for r in reversed(await llm.requests()) if f"again {agent_id}" in user_text(r)))
        assert words in prompt, (agent_id, prompt)
    assert {n["name"] for n in (await health(hosts.leader))["nodes"]} == {"leader", "node-b"}


async def refused_node(tmp_path, llm, far, name: str, extra: tuple[str, ...] = (), **node_env: str) -> dict:
    """A leader and a node it should refuse; the leader's /healthz once it did, every process stopped."""
    await llm.reset()
    leader = await asyncio.to_thread(
        ServerProcess,
        tmp_path,
        llm.url,
        workers=1,
        GAME_AGENT_NODE_NAME="leader",
        GAME_AGENT_NODE_CHECK_S=CHECK_S,
        GAME_AGENT_ADVERTISE=far.near,
        GAME_AGENT_TOKEN=TOKEN,
    )
    node = WorkerNode(tmp_path, leader, name, workers=2, leader_address=far.near, on=far, extra=extra, **node_env)
    try:
        deadline = time.monotonic() + 90
        while not (state := await health(leader))["refused_nodes"]:
            assert time.monotonic() < deadline, f"never refused:\n{tail(leader.log)}"
            await asyncio.sleep(0.2)
        assert [r["name"] for r in state["refused_nodes"]] == [name], state
        assert f"node {name} refused" in leader.server_log()
        assert [n["name"] for n in state["nodes"]] == ["leader"]
        # run.py, its admin and logger: the workers it got while it was taken stopped, none pile up
        await wait_until(lambda: len(node.process.processes()) <= 3, f"workers left: {node.process.processes()}")
        return state
    finally:
        left = node.stop()
        leader.stop()
        assert not left, f"node processes left behind: {left}"


async def test_a_node_advertising_an_address_the_leader_cannot_reach_is_refused_at_once(tmp_path, llm, far):
    """Its own loopback: what Thespian guessed on a host with no internet route and a host name
    that resolves to loopback. Before, such a node joined and never carried an NPC."""
    state = await refused_node(tmp_path, llm, far, "node-x", extra=("--advertise", "127.0.0.1"))
    assert "cannot reach its admin port" in state["refused_nodes"][0]["reason"]


async def test_a_node_that_keeps_missing_its_check_ins_is_refused_not_taken_back_in_a_loop(tmp_path, llm, far):
    """Its check-in period is longer than the leader's: the leader loses it between check-ins."""
    state = await refused_node(tmp_path, llm, far, "node-y", GAME_AGENT_NODE_CHECK_S="6")
    assert "lost 3 times in a row" in state["refused_nodes"][0]["reason"]
