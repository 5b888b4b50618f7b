"""The LLM endpoints of the fallback ladder and the model tiers, read from the TOML config's tables.

``[[llm_fallbacks]]`` lists the endpoints tried, in order, after the primary one (``llm_base_url``,
``llm_model``); ``[llm_tiers.NAME]`` is a tier an NPC picks with ``model_tier`` in its spec: its own
model (on the primary endpoint unless it names another), its ``max_tokens``, its fallbacks, and the
``cheaper`` tier it steps down to once a token budget is spent. Keys are read from the environment
variable each endpoint names (``api_key_env``), once at start, and never shown in a repr or a log.
Every mistake raises ``ValueError`` naming the table and key; ``config.settings`` reports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from core.metrics import endpoint_label

__all__ = ["Endpoint", "Tier", "parse_fallbacks", "parse_tiers"]

_ENDPOINT_KEYS = frozenset({"base_url", "model", "api_key_env", "structured"})
_TIER_KEYS = frozenset({"base_url", "model", "api_key_env", "structured", "max_tokens", "fallbacks", "cheaper"})


@dataclass(frozen=True)
class Endpoint:
    """One model on one OpenAI-compatible endpoint; ``structured`` as the setting ``llm_structured``."""

    base_url: str  # "" in a tier: the primary endpoint's (llm_base_url, which may be the embedded model)
    model: str
    api_key: str = field(default="", repr=False)
    structured: str = "auto"  # "" in a tier on the primary endpoint: llm_structured

    @property
    def key(self) -> str:
        """Its name for breakers and clients: one per model, endpoint and API key (two accounts
        on one provider are two rungs, each asked with its own key; the key itself is not in it,
        a digest is). Never logged (a key may hide in a base URL): ``label`` is what logs show."""
        name = f"{self.model}@{self.base_url}"
        if self.api_key:
            name += "#" + hashlib.sha256(self.api_key.encode()).hexdigest()[:16]
        return name

    @property
    def label(self) -> str:
        """Its name in logs: the model and the base URL without credentials, query or fragment."""
        return f"{self.model}@{endpoint_label(self.base_url)}"

    def on(self, primary_url: str, primary_structured: str) -> Endpoint:
        """This endpoint with the primary's base URL and mode filled in where it has none."""
        if self.base_url and self.structured:
            return self
        return replace(self, base_url=self.base_url or primary_url, structured=self.structured or primary_structured)


@dataclass(frozen=True)
class Tier:
    """A model tier: its endpoints in ladder order (its own first), its ``max_tokens``, and the
    tier to step down to past a budget (None: straight to the embedded model and the lines)."""

    name: str
    endpoints: tuple[Endpoint, ...]
    max_tokens: int
    cheaper: str | None = None

    def endpoint(self, key: str) -> Endpoint:
        """Its endpoint of that ``Endpoint.key``."""
        return next(endpoint for endpoint in self.endpoints if endpoint.key == key)


def parse_fallbacks(tables: object, where: str, env: Mapping[str, str], structured: str) -> tuple[Endpoint, ...]:
    """``[[llm_fallbacks]]``-style tables: a list of endpoints."""
    if not isinstance(tables, list):
        raise ValueError(f"{where} must be a list of tables ([[...]] in TOML)")
    return tuple(_endpoint(table, f"{where}[{index}]", env, structured) for index, table in enumerate(tables))


def parse_tiers(
    tables: object,
    env: Mapping[str, str],
    *,
    structured: str,
    primary_key: str,
    fallbacks: tuple[Endpoint, ...],
    max_tokens: int,
) -> tuple[Tier, ...]:
    """``[llm_tiers.NAME]`` tables. A tier without ``base_url`` is on the primary endpoint, with its
    key (a tier on another base URL has a key only if it names one); without ``fallbacks`` it has
    the primary's (``fallbacks``); without ``max_tokens``, ``max_tokens``."""
    if not isinstance(tables, dict):
        raise ValueError("llm_tiers must be a table of tables ([llm_tiers.NAME] in TOML)")
    tiers = []
    for name, table in tables.items():
        where = f"llm_tiers.{name}"
        if not name.strip():
            raise ValueError(f"{where}: a tier needs a name")
        _check_table(table, where, _TIER_KEYS)
        own = {k: v for k, v in table.items() if k in _ENDPOINT_KEYS}
        if "base_url" in own:
            endpoint = _endpoint(own, where, env, structured)
        else:  # on the primary endpoint: its key unless it names another, its mode unless it says one
            endpoint = _endpoint(own, where, env, "", primary_key, on_primary=True)
        tier_fallbacks = (
            parse_fallbacks(table["fallbacks"], f"{where}.fallbacks", env, structured)
            if "fallbacks" in table
            else fallbacks
        )
        tokens = table.get("max_tokens", max_tokens)
        if type(tokens) is not int or tokens < 1:
            raise ValueError(f"{where}.max_tokens must be a positive integer, got {tokens!r}")
        cheaper = table.get("cheaper")
        if cheaper is not None and (not isinstance(cheaper, str) or cheaper not in tables or cheaper == name):
            raise ValueError(f"{where}.cheaper must name another tier of llm_tiers, got {cheaper!r}")
        tiers.append(Tier(name, (endpoint, *tier_fallbacks), tokens, cheaper))
    return tuple(tiers)


def _check_table(table: object, where: str, known: frozenset[str]) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    if unknown := set(table) - known:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")


def _endpoint(
    table: Any, where: str, env: Mapping[str, str], structured: str, key: str = "", *, on_primary: bool = False
) -> Endpoint:
    """One endpoint's table; ``key`` is its key unless it names an ``api_key_env``; ``on_primary``:
    it has no ``base_url`` of its own."""
    _check_table(table, where, _ENDPOINT_KEYS)
    for name in ("model",) if on_primary else ("base_url", "model"):
        if not isinstance(table.get(name), str) or not table[name].strip():
            raise ValueError(f"{where}.{name} must be a non-empty string")
    mode = table.get("structured", structured)
    if not isinstance(mode, str):
        raise ValueError(f"{where}.structured must be a string")
    name = table.get("api_key_env")
    if name is not None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.api_key_env must name an environment variable")
        if name not in env:
            raise ValueError(f"{where}.api_key_env names {name!r}, which is not set in the environment")
        key = env[name]
    return Endpoint(table.get("base_url", ""), table["model"], key, mode)
