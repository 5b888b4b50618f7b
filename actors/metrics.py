"""Every metric of the server, defined once: the gateway and each worker keep their own set.

Each process observes what it alone sees (a worker its turns and LLM requests, the gateway its
journal, connections and what a game waits for end to end) into its own ``prometheus_client``
registry; ``/metrics`` adds every process's snapshot up (``core/metrics.py``, gateway/metrics.py).
Nothing here has a per-agent label, and the per-token cost is one histogram observation per LLM
delta that yields frames (``TurnTimer.frames``; measured in docs/performance.md).
docs/metrics.md documents each metric.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.metrics import Family, Sample
from providers.client import RequestEnded

# Seconds. Latency a person notices (first words, interruptions), LLM waits, journal commits.
TURN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 60)
CHUNK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

SERVER, END_TO_END = "server", "end_to_end"  # the spans of npc_first_tag_seconds and npc_first_say_seconds


class Metrics:
    """One process's instruments, in a registry of its own (never the global one)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.turns = Counter(
            "npc_turns_total", "Turns ended, by outcome (the end frame's reason)", ["outcome"], registry=registry
        )
        self.first_tag = Histogram(
            "npc_first_tag_seconds",
            "From a turn's event to its first tag: end_to_end as the gateway sees it; "
            "server = what the server adds (the worker's part, less the waits for the game and the model)",
            ["span"],
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self.first_say = Histogram(
            "npc_first_say_seconds",
            "From a turn's event to its first speech tag (say), spans as npc_first_tag_seconds",
            ["span"],
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self.chunk_latency = Histogram(
            "npc_chunk_latency_seconds",
            "Gap between two LLM deltas of a turn that gave tag frames (inter-chunk latency), on the worker",
            buckets=CHUNK_BUCKETS,
            registry=registry,
        )
        self.interrupt = Histogram(
            "npc_interrupt_seconds",
            "From the gateway receiving an event that cuts into a running turn to its agent_turn_interrupted",
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self.llm_requests = Counter(
            "npc_llm_requests_total",
            "LLM streaming requests ended, by endpoint, model and outcome (ok, cancelled, or the error code)",
            ["endpoint", "model", "outcome"],
            registry=registry,
        )
        self.llm_first_token = Histogram(
            "npc_llm_first_token_seconds",
            "From an LLM request being sent to its first content token, retries included",
            ["model"],
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self.llm_tokens = Counter(
            "npc_llm_tokens_total",
            "LLM tokens as the provider reported them (usage), by model and kind (prompt, completion)",
            ["model", "kind"],
            registry=registry,
        )
        self.llm_retries = Counter(
            "npc_llm_retries_total", "LLM requests sent again after a failure before the first token", registry=registry
        )
        self.llm_queue_wait = Histogram(
            "npc_llm_queue_wait_seconds",
            "Time a turn waited for an LLM request slot (settings llm_max_concurrent*)",
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self.breaker_open = Gauge(
            "npc_llm_breaker_open",
            "Worker processes whose circuit breaker for this endpoint is open or probing (it is skipped)",
            ["endpoint", "model"],
            registry=registry,
        )
        self.worker_restarts = Counter(
            "npc_worker_restarts_total", "Worker processes replaced after they died", registry=registry
        )
        self.journal_commit = Histogram(
            "npc_journal_commit_seconds",
            "One group commit of the journal (write and fsync)",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        # What a TurnTimer observes, per delta: bound once.
        self.chunk_gap = self.chunk_latency.observe
        self.server_first_tag = self.first_tag.labels(SERVER).observe
        self.server_first_say = self.first_say.labels(SERVER).observe

    def snapshot(self) -> list[Family]:
        """What this process counted so far, as plain data (to pickle, to add up)."""
        return [
            Family(
                metric.name,
                metric.type,
                metric.documentation,
                tuple(
                    Sample(s.name, tuple(sorted(s.labels.items())), s.value)
                    for s in metric.samples
                    if not s.name.endswith("_created")  # a process's start time: no sense in a sum
                ),
            )
            for metric in self.registry.collect()
        ]

    def breakers(self, states: Iterable[tuple[str, str, bool]]) -> None:
        """Set each endpoint's breaker gauge from (endpoint label, model, open) of this worker."""
        for endpoint, model, is_open in states:
            self.breaker_open.labels(endpoint, model).set(1 if is_open else 0)

    def request_ended(self, ended: RequestEnded) -> None:
        """The LLM client's report of one request (``providers.client.ChatStreamer``)."""
        self.llm_requests.labels(ended.endpoint, ended.model, ended.outcome).inc()
        if ended.retries:
            self.llm_retries.inc(ended.retries)
        if ended.queue_wait_s is not None:
            self.llm_queue_wait.observe(ended.queue_wait_s)
        if ended.first_token_s is not None:
            self.llm_first_token.labels(ended.model).observe(ended.first_token_s)
        usage = ended.usage or {}
        for kind in ("prompt", "completion"):
            tokens = usage.get(f"{kind}_tokens")
            if isinstance(tokens, int) and tokens > 0:
                self.llm_tokens.labels(ended.model, kind).inc(tokens)


class TurnTimer:
    """The worker's clock of one LLM turn, from its start (``started``, monotonic): the server's
    part of its first tag and first speech, and the gaps between its chunks. The time spent on
    others is taken out (``waited``: the game's snapshot; ``asking`` to ``answered``: the model's
    first token), so ``server`` is what the server itself adds."""

    __slots__ = ("_metrics", "_speech_tag", "_started", "_waited", "_asked", "_last", "_said")

    def __init__(self, metrics: Metrics, started: float, waited: float, speech_tag: str | None) -> None:
        self._metrics = metrics
        self._speech_tag = speech_tag
        self._started = started
        self._waited = waited
        self._asked = time.monotonic()  # made when the LLM is asked
        self._last: float | None = None  # when the latest delta gave frames
        self._said = speech_tag is None

    def answered(self) -> None:
        """The model's first content arrived."""
        self._waited += time.monotonic() - self._asked

    def frames(self, frames: list[dict]) -> None:
        """An LLM delta gave ``frames`` (not empty): one clock read, one observation."""
        now = time.monotonic()
        last, self._last = self._last, now
        if last is not None:
            self._metrics.chunk_gap(now - last)
        else:
            self._metrics.server_first_tag(now - self._started - self._waited)
        if not self._said:
            for frame in frames:
                if frame["type"] == "agent_tag_open" and frame["tag"] == self._speech_tag:
                    self._said = True
                    self._metrics.server_first_say(now - self._started - self._waited)
                    break
