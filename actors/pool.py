"""The worker pool: creates, places and supervises the worker actors.

run.py creates it (so Thespian's admin forks it) and hands it to the gateway. Two reasons for it
to exist:
- Workers must be forked from a process with a single thread: the gateway runs an asyncio
  thread, and forking a threaded process can copy a lock held by another thread into the child
  (and its listening socket and database handles).
- No two actors may send to each other. Thespian's TCP transport reuses one socket for both
  directions of a pair; when both ends send at once, neither gets its ACK and the retry waits up to
  attempts x 35 s, and later messages overtake (measured: reordered frames, multi-second stalls).
  So Thespian messages flow one way on every pair: gateway -> pool -> worker -> gateway. The NPC
  traffic itself never passes here: it travels on each worker's stream (actors/link.py).

With placement "dedicated" the pool starts no workers up front: the gateway asks for one per NPC
(``StartWorker``, in a slot and generation the gateway chose) on this node, and the pool does not
replace one that exits: it was retired with its NPC, or it died and the gateway, which saw its
stream end, starts a new one on the NPC's next message. Worker nodes host none then.

Workers are placed by Thespian on a named node (capabilities ``NPC Host`` and ``NPC Node``): this
node's at start, and a worker node's when it joins the leader's convention (the pool subscribes
to convention updates; see actors/node.py and docs/deploy.md).

It also supervises them: a worker that exits (even killed) is replaced under the same index
with the next generation. The gateway saw the dead worker's stream end and ended its turns for
Godot; the new worker's ``WorkerReady`` lets it place the lost agents again (their history comes
back from the journal). When a whole node leaves the convention (stopped, or silent for about
three check-in periods), its workers are gone for good: a surviving worker passes that on to the
gateway (a ``Notice`` of ``WorkerGone``), which ends their turns and places their agents elsewhere.

A lost node's workers may still run (a partition, not a death). Each slot's generation is the
leader's: when the node comes back its slots are started again under a newer generation, the
workers of the lost one are told to exit, and the gateway takes nothing from an older generation.
Workers that never hear it stop themselves once their gateway is unreachable (actors/lease.py).
A node the leader cannot reach when it joins (a wrong advertised address), or lost again and again
soon after joining (core/membership.py), is refused, loudly (the log, /healthz), instead of flapping.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from loguru import logger
from thespian.actors import Actor, ActorExitRequest, ActorSystemConventionUpdate, ChildActorExited, WakeupMessage

from actors.lifeline import die_with_parent
from actors.messages import (
    NPC_HOST,
    NPC_NODE,
    NPC_WORKERS,
    ConfigureWorker,
    IdentifyPool,
    NodeRefused,
    Notice,
    SpawnWorkers,
    StartWorker,
    WorkerGone,
)
from actors.worker import WorkerActor
from config.log import configure_logging
from core.membership import Membership

QUICK_DEATH_S = 5.0  # a worker that dies sooner than this after starting died "quickly"
MAX_BACKOFF_S = 30.0
REMOTE_RESTART_S = 1.0  # a remote worker is restarted after this, if its node is still there
REACH_TIMEOUT_S = 2.0  # a joining node's admin port must accept a connection from here within this


@dataclass
class Slot:
    """One worker index: where it lives and which generation of it runs."""

    node: str
    address: object = None  # None while it is being replaced, or when gone
    generation: int = 0
    started_at: float = 0.0
    quick_deaths: int = 0
    gone: bool = False  # its node left: restarted only if it comes back
    lost: list = field(default_factory=list)  # workers of generations declared lost, maybe still running
    dedicated: bool = False  # one NPC's (placement "dedicated"): started by the gateway, never replaced


class WorkerPool(Actor):
    # Set by the first message, SpawnWorkers (``_spawn``): Thespian creates actors without arguments.
    spawn: SpawnWorkers
    members: Membership

    def __init__(self) -> None:
        die_with_parent()  # actors/lifeline.py
        super().__init__()
        self.slots: list[Slot] = []
        self.nodes: set[str] = set()  # nodes in the convention, this one included
        self.stopping = False

    def receiveMessage(self, message, sender):
        try:
            if isinstance(message, WakeupMessage):
                self._start_worker(message.payload)
            elif isinstance(message, ActorSystemConventionUpdate):
                self._convention_update(message)
            elif isinstance(message, StartWorker):
                self._start_dedicated(message)
            elif isinstance(message, SpawnWorkers):
                self._spawn(message)
            elif isinstance(message, IdentifyPool):
                self.send(sender, os.getpid())
            elif isinstance(message, ActorExitRequest):
                self.stopping = True
            elif isinstance(message, ChildActorExited) and not self.stopping:
                self._worker_exited(message.childAddress)
        except Exception:  # noqa: BLE001 - an actor must not die on one message
            logger.exception("worker pool failed on {}", type(message).__name__)

    def _spawn(self, message: SpawnWorkers) -> None:
        settings = message.settings
        configure_logging(settings.log_level, "pool")
        self.spawn = message
        self.members = Membership(settings.node_check_s)
        self._add_node(settings.node, settings.pooled_workers)
        self.notifyOnSystemRegistrationChanges(True)  # worker nodes joining or leaving

    def _start_dedicated(self, message: StartWorker) -> None:
        """A worker of its own for one NPC, on this node, in the slot the gateway chose (a reused
        slot's former process, if it still winds down, is no longer this slot's). Asked twice (the
        gateway asks a new pool again for what it asked of a dead one), it starts one."""
        if message.index < len(self.slots):
            slot = self.slots[message.index]
            if slot.dedicated and slot.generation == message.generation and slot.address is not None:
                return
        missing = message.index + 1 - len(self.slots)
        self.slots += [Slot(self.spawn.settings.node, gone=True, dedicated=True) for _ in range(max(0, missing))]
        self.slots[message.index] = Slot(self.spawn.settings.node, generation=message.generation, dedicated=True)
        self._start_worker(message.index)

    def _add_node(self, node: str, count: int) -> None:
        self.nodes.add(node)
        if any(slot.node == node and not slot.gone for slot in self.slots):
            return  # a node that checked in again after a hiccup keeps its workers
        back = [index for index, slot in enumerate(self.slots) if slot.node == node][:count]
        if back:
            logger.warning("node {} is back: its workers of a lost generation are told to exit, new ones start", node)
        for index in back:  # a node that was lost: its slots again, under a newer generation
            slot = self.slots[index]
            for old in slot.lost:
                self.send(old, ActorExitRequest())  # if that generation still runs, it learns it was lost
            slot.lost.clear()
            slot.gone = False
            self._start_worker(index)
        for _ in range(count - len(back)):
            self.slots.append(Slot(node, generation=self.spawn.first_generation))
            self._start_worker(len(self.slots) - 1)

    def _convention_update(self, update: ActorSystemConventionUpdate) -> None:
        capabilities = update.remoteCapabilities or {}
        node = capabilities.get(NPC_NODE)
        if not capabilities.get(NPC_HOST) or node is None or node == self.spawn.settings.node:
            return
        address = str(update.remoteAdminAddress)
        if update.remoteAdded:
            if self.spawn.settings.dedicated:
                logger.warning("node {} joined, but placement is dedicated: every NPC's worker runs on this node", node)
                return
            if not self.members.admits(node, address, time.monotonic()):
                logger.debug("refused node {} checked in again from {}", node, address)
                return
            unreachable = _unreachable(update.remoteAdminAddress)
            if unreachable:
                self._refuse(node, f"the leader cannot reach its admin port at {address}: {unreachable}")
                return
            logger.info("node {} joined from {} with {} workers", node, address, capabilities.get(NPC_WORKERS, 1))
            self._add_node(node, max(1, int(capabilities.get(NPC_WORKERS) or 1)))
            return
        if node not in self.nodes:
            return  # a refused node leaving again
        self.nodes.discard(node)
        lost = [index for index, slot in enumerate(self.slots) if slot.node == node and not slot.gone]
        logger.error("node {} left the convention: its {} workers are gone", node, len(lost))
        for index in lost:
            slot = self.slots[index]
            if slot.address is not None:
                slot.lost.append(slot.address)
                self.send(slot.address, ActorExitRequest())  # reaches a node that is alive but missed check-ins
            slot.gone, slot.address = True, None
            slot.generation += 1
            self._notice(WorkerGone(index))
        reason = self.members.lost(node, address, time.monotonic())
        if reason:
            self._refuse(node, reason)

    def _refuse(self, node: str, reason: str) -> None:
        logger.error("node {} refused: {}. Fix that and restart the node (docs/deploy.md)", node, reason)
        self._notice(NodeRefused(node, reason))

    def _notice(self, item: WorkerGone | NodeRefused) -> None:
        """Have a live worker (this node's first) pass ``item`` on to the gateway."""
        local = self.spawn.settings.node
        live = [index for index, slot in enumerate(self.slots) if slot.address is not None]
        if not live:
            logger.error("no live worker to tell the gateway {!r}", item)
            return
        self.send(self.slots[min(live, key=lambda index: self.slots[index].node != local)].address, Notice(item))

    def _start_worker(self, index: int) -> None:
        slot = self.slots[index]
        if slot.gone or slot.node not in self.nodes:
            return
        slot.address = self.createActor(WorkerActor, targetActorRequirements={"node": slot.node})
        slot.started_at = time.monotonic()
        self.send(
            slot.address,
            ConfigureWorker(
                self.spawn.settings, self.spawn.gateway, index, slot.generation, slot.node, self.spawn.link_secret
            ),
        )

    def _worker_exited(self, address) -> None:
        """Replace the worker at once; after a pause when it keeps dying as soon as it starts, or
        when it ran on another node (which may be leaving: then it is not replaced)."""
        index = next((i for i, slot in enumerate(self.slots) if slot.address == address), None)
        if index is None:
            return
        slot = self.slots[index]
        slot.address = None
        if slot.dedicated:
            logger.info("dedicated worker {} generation {} exited", index, slot.generation)
            return
        slot.generation += 1
        lived = time.monotonic() - slot.started_at
        slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        delay = min(MAX_BACKOFF_S, 2.0**slot.quick_deaths) if slot.quick_deaths > 1 else 0.0
        if slot.node != self.spawn.settings.node:
            delay = max(delay, REMOTE_RESTART_S)
        logger.error(
            "worker {} on node {} exited after {:.1f} s: starting generation {} in {:.0f} s",
            index,
            slot.node,
            lived,
            slot.generation,
            delay,
        )
        if delay:
            self.wakeupAfter(delay, payload=index)
        else:
            self._start_worker(index)


def _unreachable(admin) -> str:
    """Why a joining node's admin port does not accept a connection from here ("" if it does). A
    node that advertises an address the leader cannot reach would join and be lost in a loop."""
    try:
        socket.create_connection(admin.addressDetails.sockname, timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return ""
