"""Adding up the metrics of every worker process, on every node, into the one view ``/metrics`` shows.

Why here and not in ``prometheus_client``'s multiprocess mode: that mode shares files on one
machine, and workers also run on worker nodes. So each worker keeps its own registry, the gateway
asks each for a snapshot on its stream when it is scraped (``actors/metrics.py``), and this module
adds the snapshots up: samples with the same name and labels are summed (counters, histogram
buckets, sums and counts, and gauges such as agents hosted, all add across processes).

A worker that dies takes its process's counts with it, but Prometheus counters must not go down:
its last snapshot's counters and histograms are kept as ``retired`` and go on counting in the sum
(what it counted after that last snapshot is lost); its gauges go, since what they measured is gone.

The estimated cost of the LLM tokens (``cost_family``) is a rule on the summed token counts and
the operator's price table (setting ``llm_prices``): USD, or whatever currency the table uses,
per million prompt and completion tokens. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs


class Sample(NamedTuple):
    name: str  # e.g. npc_turns_total, npc_first_tag_seconds_bucket
    labels: Labels
    value: float


class Family(NamedTuple):
    """One metric as ``prometheus_client`` collects it (``name`` without ``_total`` for counters)."""

    name: str
    kind: str  # counter, gauge, histogram
    documentation: str
    samples: tuple[Sample, ...]


ADDITIVE_AFTER_EXIT = ("counter", "histogram")  # what a dead worker's last snapshot still counts
TOKENS_FAMILY = "npc_llm_tokens"
COST_FAMILY = "npc_llm_cost"


def merge(snapshots: Iterable[Iterable[Family]]) -> list[Family]:
    """The snapshots of several processes as one: samples of one name and labels summed, families
    in the order first seen (their kind and help from the first process that has them)."""
    heads: dict[str, tuple[str, str]] = {}
    sums: dict[str, dict[tuple[str, Labels], float]] = {}
    for families in snapshots:
        for family in families:
            if family.name not in heads:
                heads[family.name] = (family.kind, family.documentation)
                sums[family.name] = {}
            values = sums[family.name]
            for sample in family.samples:
                key = (sample.name, sample.labels)
                values[key] = values.get(key, 0.0) + sample.value
    return [
        Family(name, kind, doc, tuple(Sample(s, labels, v) for (s, labels), v in sums[name].items()))
        for name, (kind, doc) in heads.items()
    ]


class WorkerTotals:
    """The latest snapshot of each live worker, and what dead workers had counted."""

    def __init__(self) -> None:
        self._latest: dict[int, list[Family]] = {}  # worker index -> its current generation's snapshot
        self._retired: list[Family] = []

    def reported(self, worker: int, families: list[Family]) -> None:
        self._latest[worker] = families

    def retire(self, worker: int) -> None:
        """Worker ``worker``'s process is gone: its counters stay in the sum, its gauges go."""
        families = self._latest.pop(worker, None)
        if families:
            kept = [family for family in families if family.kind in ADDITIVE_AFTER_EXIT]
            self._retired = merge([self._retired, kept])

    def merged(self) -> list[Family]:
        return merge([self._retired, *self._latest.values()])


class Price(NamedTuple):
    """Per million tokens, in the price table's currency."""

    prompt: float
    completion: float


def cost_family(families: Iterable[Family], prices: Mapping[str, Price]) -> Family:
    """``npc_llm_cost_total{model}``: the token counts of ``npc_llm_tokens_total{model,kind}`` at
    their model's price; models the table does not name get no series."""
    costs: dict[str, float] = {}
    for family in families:
        if family.name != TOKENS_FAMILY:
            continue
        for sample in family.samples:
            labels = dict(sample.labels)
            price = prices.get(labels.get("model", ""))
            if price is None:
                continue
            per_million = price.prompt if labels.get("kind") == "prompt" else price.completion
            model = labels["model"]
            costs[model] = costs.get(model, 0.0) + sample.value * per_million / 1e6
    return Family(
        COST_FAMILY,
        "counter",
        "Estimated cost of the LLM tokens used, at the price table's rates (setting llm_prices), per model",
        tuple(Sample(COST_FAMILY + "_total", (("model", model),), cost) for model, cost in costs.items()),
    )


def endpoint_label(base_url: str) -> str:
    """An LLM endpoint as a label: its base URL without user, password, query or fragment (a key
    may hide in any of them)."""
    try:
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "invalid"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path.rstrip("/"), "", ""))
