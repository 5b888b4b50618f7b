"""The event-loop side of a worker process: its agents, its LLM client, its way out to the gateway.

Items from the gateway arrive in order through ``deliver``; each agent gets its messages in that
order. Frames leave serialised once, here, so the gateway forwards bytes without touching them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from functools import partial
from operator import itemgetter
from pathlib import Path

import orjson
from loguru import logger

from actors.agent import Agent
from actors.llm_input_log import _safe
from actors.logwriter import LogWriter
from actors.messages import (
    ConnectionClosed,
    Deactivate,
    FeedReport,
    Flush,
    Flushed,
    Frame,
    Notice,
    Restore,
    Retire,
    Scrape,
    Scraped,
    Summarised,
    ToAgent,
    ToFeed,
    ToGateway,
    ToWorker,
)
from actors.metrics import Metrics
from config.llm_endpoints import Endpoint, Tier
from config.settings import Settings
from core.breaker import Breakers, BreakerState
from core.budget import TokenBudgets
from core.ladder import EMBEDDED, rungs
from core.spec import AgentSpec
from providers.client import ChatStreamer, LLMSettings
from providers.structured import request_fields


def llm_settings(settings: Settings, endpoint: Endpoint) -> LLMSettings:
    """This worker's share of the LLM settings for one endpoint (the global concurrency cap is split
    evenly over the most workers that may run: with placement "dedicated", max_dedicated_workers;
    each endpoint has its own)."""
    caps = [settings.llm_max_concurrent_per_worker] if settings.llm_max_concurrent_per_worker else []
    if settings.llm_max_concurrent:
        caps.append(math.ceil(settings.llm_max_concurrent / settings.worker_processes))
    per_worker = min(caps, default=0)
    return LLMSettings(
        base_url=endpoint.base_url,
        api_key=endpoint.api_key,
        model=endpoint.model,
        temperature=settings.llm_temperature,
        max_tokens=settings.llm_max_tokens,  # a turn asks for its tier's (AgentHost.extra_body)
        connect_timeout_s=settings.llm_connect_timeout_s,
        first_token_timeout_s=settings.llm_first_token_timeout_s,
        stall_timeout_s=settings.llm_stall_timeout_s,
        turn_timeout_s=settings.llm_turn_timeout_s,
        max_retries=settings.llm_max_retries,
        retry_base_s=settings.llm_retry_base_s,
        retry_max_s=settings.llm_retry_max_s,
        max_concurrent=per_worker,
        max_background=settings.summaries_per_worker,
        include_usage=settings.llm_include_usage,
    )


class AgentHost:
    """All agents of one worker, keyed by (session, agent_id)."""

    def __init__(
        self, settings: Settings, index: int, to_gateway: Callable[[ToGateway], None], retire: Callable[[], None]
    ) -> None:
        self.settings = settings
        self.index = index
        self._to_gateway = to_gateway
        self._retire = retire  # ends this worker process (placement "dedicated": its NPC was deactivated)
        self.agents: dict[tuple[str, str], Agent] = {}
        self.metrics = Metrics()
        self.embedded = Endpoint(settings.embedded_url, EMBEDDED, "", "grammar") if settings.embedded_url else None
        # One client per endpoint of any tier's ladder, made when a turn first asks it.
        self._llms: dict[str, ChatStreamer] = {}
        self.breakers = Breakers(settings.llm_breaker_failures, settings.llm_breaker_cooldown_s)
        self.budgets = TokenBudgets(
            math.ceil(settings.llm_session_tokens_per_hour / settings.worker_processes),
            settings.llm_npc_tokens_per_hour,
        )
        self.logs = LogWriter(settings.log_dir, settings.log_retention_days, settings.log_max_bytes)
        self.changes = itertools.count(1)  # orders agents by their latest history change
        self.lives = itertools.count()  # names each agent life's spool, never shared with another life

    def rungs(self, tier: Tier, over_budget: str | None, spec: AgentSpec) -> tuple[str, ...]:
        """The rungs of a turn of ``tier`` (``core.ladder.rungs``): endpoint keys, EMBEDDED, LINES."""
        cheaper = self.settings.tier(tier.cheaper) if tier.cheaper else None
        return rungs(
            [endpoint.key for endpoint in tier.endpoints],
            cheaper=None if cheaper is None else [endpoint.key for endpoint in cheaper.endpoints],
            over_budget=over_budget,
            embedded=self.embedded is not None,
            lines=bool(spec.fallback_lines),
        )

    def endpoint(self, rung: str, tier: Tier, over_budget: str | None) -> tuple[Endpoint, int]:
        """The endpoint of an LLM rung of a turn of ``tier`` and the ``max_tokens`` it is asked for:
        the embedded model's, or those of the tier whose endpoints the turn has (``rungs``: its
        cheaper tier's past a budget)."""
        if rung == EMBEDDED:
            assert self.embedded is not None  # EMBEDDED is a rung only then (rungs)
            return self.embedded, self.settings.embedded_max_tokens
        source = tier if over_budget is None else self.settings.tier(tier.cheaper)
        assert source is not None  # past a budget, endpoint rungs come from the cheaper tier only
        return source.endpoint(rung), source.max_tokens

    def llm(self, endpoint: Endpoint) -> ChatStreamer:
        """The client of ``endpoint`` (one per endpoint and worker: its own connections and cap)."""
        client = self._llms.get(endpoint.key)
        if client is None:
            client = self._llms[endpoint.key] = ChatStreamer(
                llm_settings(self.settings, endpoint), self.metrics.request_ended
            )
        return client

    def _breaker_states(self) -> Iterator[tuple[str, str, bool]]:
        """(endpoint label, model, open) of each endpoint this worker has asked."""
        for key, client in self._llms.items():
            rung = EMBEDDED if self.embedded is not None and key == self.embedded.key else key
            yield client.endpoint, client.model, self.breakers.state(rung) is not BreakerState.CLOSED

    def extra_body(self, endpoint: Endpoint, max_tokens: int, spec: AgentSpec) -> dict:
        """The request fields of one rung: its ``max_tokens``, and the provider-specific fields that
        force the agent's answer format (its structured mode)."""
        return {"max_tokens": max_tokens, **(request_fields(endpoint.structured, spec) or {})}

    def emit(self, session: str, frame: dict) -> None:
        self._to_gateway(Frame(session, orjson.dumps(frame)))

    def report(self, session: str, report: FeedReport) -> None:
        """Tell the session's /events feed what only the agent knows (queued in order with frames)."""
        self._to_gateway(ToFeed(session, report))

    def summarised(self, session: str, agent_id: str, fact: dict) -> None:
        """Hand an agent's new summary to the gateway, to journal."""
        self._to_gateway(Summarised(session, agent_id, fact))

    def deliver(self, items: list[ToWorker | Notice]) -> None:
        """Handle one batch from the gateway (or a pool's ``Notice``), item by item, in order."""
        for item in items:
            try:
                if isinstance(item, ToAgent):
                    self._agent(item.session, item.agent_id).receive(item.message)
                elif isinstance(item, Restore):
                    self._restore(item.session, item.agent_id, item.facts or [])
                elif isinstance(item, Deactivate):
                    self._deactivate(item.session, item.agent_id)
                elif isinstance(item, Retire):
                    logger.info(
                        "worker {} retires: agent {} of session {} was deactivated",
                        self.index,
                        item.agent_id,
                        item.session,
                    )
                    self._retire()
                elif isinstance(item, ConnectionClosed):
                    self._connection_closed(item.session, item.connection_id, item.agent_ids, item.end_turns)
                elif isinstance(item, Flush):  # answered once the logs asked for before it are written
                    self._answer_flush(item.token)
                elif isinstance(item, Scrape):
                    self.metrics.breakers(self._breaker_states())
                    self._to_gateway(Scraped(item.token, self.metrics.snapshot()))
                elif isinstance(item, Notice):
                    self._to_gateway(item.item)
                else:
                    logger.error("unknown item {!r} from the gateway", type(item).__name__)
            except Exception:  # noqa: BLE001 - one item must not lose the rest of the batch
                logger.exception("item {!r} failed", _summary(item))

    def _answer_flush(self, token: int) -> None:
        post_soon = asyncio.get_running_loop().call_soon_threadsafe
        self.logs.submit(partial(post_soon, self._to_gateway, Flushed(token)))

    def _agent(self, session: str, agent_id: str) -> Agent:
        agent = self.agents.get((session, agent_id))
        if agent is None:
            agent = self.agents[(session, agent_id)] = Agent(self, session, agent_id)
            logger.debug("agent {} of session {} created", agent_id, session)
        return agent

    def _restore(self, session: str, agent_id: str, facts: list[dict]) -> None:
        """The agent, placed here, with its history from the journal."""
        agent = self.agents[(session, agent_id)] = Agent(self, session, agent_id)
        agent.restore(facts)

    def _deactivate(self, session: str, agent_id: str) -> None:
        agent = self.agents.pop((session, agent_id), None)
        if agent is not None:
            agent.close()
            logger.debug("agent {} of session {} deactivated", agent_id, session)

    def _connection_closed(self, session: str, connection_id: str, agent_ids: list[str], end_turns: bool) -> None:
        """End the agents' turns if nobody took over; log those whose history changed since their
        last log, at most ``log_max_agents_per_disconnect`` (the most recently changed), off the loop."""
        changed: list[tuple[int, Agent]] = []  # (changed_at, agent)
        for agent_id in agent_ids:
            agent = self.agents.get((session, agent_id))
            if agent is None:
                continue
            if end_turns:
                agent.connection_closed()
            if agent.changed_at is not None:
                changed.append((agent.changed_at, agent))
        cap = self.settings.log_max_agents_per_disconnect
        if len(changed) > cap:
            logger.warning(
                "connection {} of session {} closed: logging the {} most recently changed of {} agents "
                "(setting log_max_agents_per_disconnect); the others are logged at a later disconnect",
                connection_id,
                session,
                cap,
                len(changed),
            )
            changed = heapq.nlargest(cap, changed, key=itemgetter(0))
        folder = Path(self.settings.log_dir) / _safe(session) / _safe(connection_id)
        for _, agent in changed:
            self.logs.write(folder, _safe(agent.agent_id), *agent.log_records())

    async def aclose(self) -> None:
        for agent in self.agents.values():
            agent.close()
        for client in self._llms.values():
            await client.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self.logs.close)


def _summary(item: object) -> object:
    """What a failed item's log line names: its kind, and its session and agent when it has them."""
    return (type(item).__name__, getattr(item, "session", None), getattr(item, "agent_id", None))
