"""Start, watch and stop the whole service: the Thespian actor system, the gateway actor, the workers.

This is what ``run.py`` calls. It runs in the main process, outside any actor, and talks to the
gateway with Thespian's ``ask``. It is the top of the supervision tree (actors/lifeline.py): it
creates the worker pool (so that the admin, a single-threaded process, forks it) and replaces it
when it dies; it watches the gateway and Thespian's admin, whose death ends the service; and
whatever ends it, every process of the actor system is gone when ``stop`` returns.
"""

from __future__ import annotations

import dataclasses
import os
import select
import time
from typing import TYPE_CHECKING

from loguru import logger
from thespian.actors import ActorSystem

from actors.lifeline import end_group, exit_fd
from actors.messages import GatewayStarted, GatewayStopped, IdentifyPool, ReplacePool, StartGateway, StopGateway
from actors.node import SYSTEM_BASE, NodeError, start_system
from actors.pool import WorkerPool
from config.llm_endpoints import Endpoint
from config.settings import Settings
from gateway.actor import GatewayActor

if TYPE_CHECKING:
    from providers.embedded import LocalModelProcess  # imported by _provider, only when it is used

GATEWAY, ADMIN, POOL = "the gateway", "Thespian's admin", "the worker pool"
POOL_CRASH_LOOP_S = 30.0  # a replaced pool that dies as soon as this stops the service


class ServiceError(RuntimeError):
    """The service could not start; the message says why and what to do."""


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded_model: LocalModelProcess | None = None
        self.system: ActorSystem | None = None
        self.gateway = None
        self.url: str | None = None
        self.group: int | None = None  # the actor system's process group
        self.watched: dict[int, tuple[str, int]] = {}  # exit fd -> (role, pid) of a process run.py watches
        self.pool_replaced_at: float | None = None

    def start(self) -> str:
        """Start everything and return the gateway's base URL once it accepts connections."""
        s = self.settings
        try:
            self.settings = s = self._provider(s)
            logger.info("starting actor system ({}, admin port {}, node {})", SYSTEM_BASE, s.admin_port, s.node)
            try:
                self.system = start_system(s)
            except NodeError as exc:
                raise ServiceError(str(exc)) from None
            self.gateway = self.system.createActor(GatewayActor)
            pool = self._start_pool()
            reply = self.system.ask(self.gateway, StartGateway(s, os.getpid(), pool), s.startup_timeout_s)
            if not isinstance(reply, GatewayStarted):
                reason = getattr(reply, "reason", None) or f"no answer within {s.startup_timeout_s} s"
                raise ServiceError(f"the gateway did not start: {reason}")
            self.group = reply.group
            for role, pid in ((GATEWAY, reply.pid), (ADMIN, reply.admin_pid)):
                self.watched[exit_fd(pid)] = (role, pid)
        except BaseException:
            self.stop()
            raise
        self.url = reply.url
        logger.info("NPC turn server ready at {} with {} workers", reply.url, reply.workers)
        return reply.url

    def _provider(self, s: Settings) -> Settings:
        """The LLM endpoints: the configured ones (``auto`` structured modes detected), or the
        embedded demo model started here; and the embedded model as the ladder's last LLM rung
        when ``llm_fallback_embedded`` asks for it."""
        if s.llm_base_url:
            s = _detect_modes(s)
            if not s.llm_fallback_embedded:
                return s
            return s.replace(embedded_url=self._start_embedded(s))
        logger.warning(
            "no LLM endpoint configured (OPENAI_API_BASE): using the embedded demo model, "
            "a tiny 135M model for trying things out; see the README to use a real one"
        )
        url = self._start_embedded(s)
        return _detect_modes(
            s.replace(
                llm_base_url=url,
                llm_structured="grammar" if s.llm_structured == "auto" else s.llm_structured,
                history_budget_chars=s.embedded_history_budget_chars,
                llm_max_tokens=s.embedded_max_tokens,
            )
        )

    def _start_embedded(self, s: Settings) -> str:
        from providers.embedded import LocalModelProcess

        self.embedded_model = LocalModelProcess(threads=s.embedded_model_threads or None)
        try:
            return self.embedded_model.start()
        except RuntimeError as exc:
            raise ServiceError(str(exc)) from None

    def _start_pool(self):
        """A new worker pool, watched; the gateway has it start the workers."""
        pool = self.system.createActor(WorkerPool)
        pid = self.system.ask(pool, IdentifyPool(), self.settings.startup_timeout_s)
        if type(pid) is not int:
            raise ServiceError(f"the worker pool did not start (answer: {pid!r})")
        self.watched[exit_fd(pid)] = (POOL, pid)
        return pool

    def wait(self, wakeup: int) -> str | None:
        """Block until ``wakeup`` is readable (a signal: None) or the service cannot go on (then:
        why). A dead pool is replaced, unless its replacement dies within POOL_CRASH_LOOP_S."""
        while True:
            ready, _, _ = select.select([wakeup, *self.watched], [], [])
            died = [fd for fd in ready if fd in self.watched]
            if not died:
                return None
            role, pid = self.watched[died[0]]
            if role != POOL:
                return f"{role} (pid {pid}) exited"
            now = time.monotonic()
            if self.pool_replaced_at is not None and now - self.pool_replaced_at < POOL_CRASH_LOOP_S:
                return f"{POOL} (pid {pid}) exited {now - self.pool_replaced_at:.1f} s after it replaced another"
            del self.watched[died[0]]
            os.close(died[0])
            logger.error("{} (pid {}) exited: starting a new one; its NPCs come back from the journal", POOL, pid)
            self.pool_replaced_at = now
            assert self.system is not None  # wait() runs after start()
            try:
                self.system.tell(self.gateway, ReplacePool(self._start_pool()))
            except ServiceError as exc:
                return str(exc)

    def _exited(self) -> set[str]:
        ready, _, _ = select.select(list(self.watched), [], [], 0)
        return {self.watched[fd][0] for fd in ready}

    def stop(self) -> None:
        """Close connections (logs get written), then shut the actor system and every process down."""
        system, self.system = self.system, None
        exited = self._exited()
        try:
            if system is not None and self.gateway is not None and self.url is not None and not exited:
                reply = system.ask(self.gateway, StopGateway(workers=POOL not in exited), 20)
                if not isinstance(reply, GatewayStopped):
                    logger.warning("the gateway did not confirm a clean stop")
        finally:
            if system is not None:
                if ADMIN not in exited:
                    system.shutdown()
                # Without its admin nothing stops them: its logger and any other one are killed.
                grace_s = 0 if ADMIN in exited else 5
                if self.group is not None and end_group(self.group, grace_s):
                    logger.warning("processes of the actor system outlived its shutdown and were killed")
                logger.info("actor system stopped")
            for fd in self.watched:
                os.close(fd)
            self.watched.clear()
            if self.embedded_model is not None:
                self.embedded_model.stop()


def _detect_modes(s: Settings) -> Settings:
    """Settings whose ``auto`` structured modes are detected, once per base URL (the primary's,
    then those of the fallbacks and tiers with a base URL of their own)."""
    from providers.structured import detect

    modes: dict[str, str] = {}

    def mode(base_url: str, api_key: str, configured: str) -> str:
        if configured != "auto":
            return configured
        if base_url not in modes:
            modes[base_url] = detect(base_url, api_key)
        return modes[base_url]

    def resolved(endpoint: Endpoint) -> Endpoint:
        if not endpoint.base_url:  # on the primary endpoint: its mode
            return endpoint
        return dataclasses.replace(endpoint, structured=mode(endpoint.base_url, endpoint.api_key, endpoint.structured))

    return s.replace(
        llm_structured=mode(s.llm_base_url, s.llm_api_key, s.llm_structured),
        llm_fallbacks=tuple(map(resolved, s.llm_fallbacks)),
        llm_tiers=tuple(
            dataclasses.replace(tier, endpoints=tuple(map(resolved, tier.endpoints))) for tier in s.llm_tiers
        ),
    )
