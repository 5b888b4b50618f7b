"""The gateway's router and workers it does not know or no longer trusts: it never raises, and it
takes nothing from a worker of a lost or replaced generation (docs/deploy.md, "When a node fails")."""

from __future__ import annotations

import orjson

from actors.messages import Frame, NodeRefused, WorkerGone
from config.settings import load_settings
from gateway.journal import Journal
from gateway.memories import MemoryStore
from gateway.router import Router


class Sink:
    session, connection_id, agents = "s", "c1", set()

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def replaced(self) -> None:
        pass


def router(tmp_path) -> tuple[Router, Sink]:
    settings = load_settings(env={}, overrides={"data_dir": str(tmp_path)})
    router = Router(
        settings, Journal(str(tmp_path), False, 100, lambda *_: None, memories=MemoryStore.of(load_settings(env={})))
    )
    router.add_worker(0, 0, 100, "leader")
    router.add_worker(1, 0, 101, "node-b")
    sink = Sink()
    router.attach(sink)
    return router, sink


FRAME_ITEM = Frame("s", orjson.dumps({"type": "agent_tag_chunk"}))


def test_a_worker_gone_that_was_never_known_is_ignored(tmp_path):
    r, _ = router(tmp_path)
    r.worker_gone(7)  # its node left before its first WorkerReady: was IndexError
    r.deliver([WorkerGone(9)], origin=0, generation=0)
    assert r.live_workers() == [0, 1]


def test_nothing_is_taken_from_a_lost_replaced_or_unknown_worker(tmp_path):
    r, sink = router(tmp_path)
    r.deliver([FRAME_ITEM], origin=1, generation=0)
    assert len(sink.sent) == 1
    r.worker_gone(1)
    r.deliver([FRAME_ITEM], origin=1, generation=0)  # the lost node's old worker, after a heal
    r.worker_replaced(1, 1, 102)  # the node is back: generation 1
    r.deliver([FRAME_ITEM], origin=1, generation=0)
    r.deliver([FRAME_ITEM], origin=5, generation=0)
    assert len(sink.sent) == 1
    r.deliver([FRAME_ITEM], origin=1, generation=1)
    assert len(sink.sent) == 2 and r.live_workers() == [0, 1]


def test_a_refused_node_is_listed_until_its_workers_are_back(tmp_path):
    r, _ = router(tmp_path)
    r.deliver([NodeRefused("node-c", "cannot reach it")], origin=0, generation=0)
    assert r.refused_nodes == {"node-c": "cannot reach it"}
    r.add_worker(2, 0, 103, "node-c")
    assert r.refused_nodes == {}
