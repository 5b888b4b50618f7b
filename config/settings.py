"""Settings: defaults from ``defaults.toml``, overlaid by an operator's file, the environment and flags.

One frozen, picklable object is built once in ``run.py`` and handed to every actor, so that all
processes agree on the configuration and nothing re-reads files or the environment later.

A setting's name in TOML, its environment variable (``GAME_AGENT_`` + the name in capitals) and
its key in overrides are the attribute's name, except where ``ATTRIBUTES`` says otherwise: the
setting ``token`` (``GAME_AGENT_TOKEN``) is the attribute ``auth_token``, so that in code it
cannot be taken for an LLM token count such as ``llm_max_tokens``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from config.llm_endpoints import Endpoint, Tier, parse_fallbacks, parse_tiers
from core.memory import Limits
from core.tagstream import is_tag_name

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")
ENV_PREFIX = "GAME_AGENT_"

# The LLM endpoint's conventional variables (contract: protocol-contract.md, "Start-up").
STANDARD_ENV = {
    "OPENAI_API_BASE": "llm_base_url",
    "OPENAI_API_KEY": "llm_api_key",
    "LLM_MODEL": "llm_model",
    "ACTIVE_STREAM_LLM_MODEL": "llm_stream_model",
    "LLM_STALL_TIMEOUT_S": "llm_stall_timeout_s",
}


# Setting name (TOML, environment, overrides) -> attribute of Settings, where the two differ.
ATTRIBUTES = {"token": "auth_token"}

STRUCTURED_MODES = ("auto", "grammar", "json_schema", "off")  # providers/structured.py
UNTAGGED_TEXT_MODES = ("say", "drop")
EVENT_LOOPS = ("uvloop", "asyncio")  # actors/bridge.py
PLACEMENTS = ("pooled", "dedicated")  # gateway/router.py, actors/pool.py


class SettingsError(ValueError):
    """A setting that cannot be used: unknown key, wrong type, or impossible value."""


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    max_frame_bytes: int
    http_idle_timeout_s: float
    workers: int
    admin_port: int
    advertise: str
    node_name: str
    node_check_s: int
    startup_timeout_s: float
    event_loop: str
    frame_batch_s: float
    placement: str
    max_dedicated_workers: int
    snapshot_timeout_s: float
    history_budget_chars: int
    history_max_entries: int
    summaries: bool
    summary_min_chars: int
    summary_max_chars: int
    summaries_per_worker: int
    recall_budget_chars: int
    recall_matches: int
    recall_hits_per_word: int
    untagged_text: str
    data_dir: str
    journal_fsync: bool
    journal_retention_days: float
    journal_compact_days: float
    agent_idle_s: float
    memory_max_text_chars: int
    memory_max_per_scope: int
    memory_max_pinned_per_scope: int
    memory_max_per_session: int
    memory_max_query_chars: int
    memory_max_forget: int
    auth_token: str = field(repr=False)  # the setting ``token`` (GAME_AGENT_TOKEN): see ATTRIBUTES
    allowed_origins: str
    max_agents_per_session: int
    rate_limit_events_per_s: float
    rate_limit_burst: int
    rate_limit_notifications_per_s: float
    rate_limit_notifications_burst: int
    rate_limit_journal_bytes_per_s: int
    rate_limit_journal_bytes_burst: int
    max_notification_agents: int
    max_event_bytes: int
    max_journal_bytes_per_frame: int
    ws_send_buffer_bytes: int
    slow_client_close_timeout_s: float
    metrics_scrape_timeout_s: float
    log_level: str
    log_dir: str
    log_retention_days: float
    log_max_bytes: int
    log_max_agents_per_disconnect: int
    llm_input_log_turns: int
    llm_base_url: str
    llm_api_key: str = field(repr=False)
    llm_model: str
    llm_stream_model: str
    llm_temperature: float
    llm_max_tokens: int
    llm_connect_timeout_s: float
    llm_first_token_timeout_s: float
    llm_stall_timeout_s: float
    llm_turn_timeout_s: float
    llm_max_retries: int
    llm_retry_base_s: float
    llm_retry_max_s: float
    llm_max_concurrent: int
    llm_max_concurrent_per_worker: int
    llm_include_usage: bool
    llm_prices: dict[str, dict[str, float]]  # model -> {"prompt": ..., "completion": ...} per million tokens
    llm_structured: str
    llm_fallbacks: tuple[Endpoint, ...]  # [[llm_fallbacks]] (config/llm_endpoints.py)
    llm_tiers: tuple[Tier, ...]  # [llm_tiers.NAME]
    llm_fallback_embedded: bool
    llm_breaker_failures: int
    llm_breaker_cooldown_s: float
    llm_session_tokens_per_hour: int
    llm_npc_tokens_per_hour: int
    embedded_model_threads: int
    embedded_history_budget_chars: int
    embedded_max_tokens: int
    # --- /events
    events_speech_tag: str
    events_action_tags: str
    events_replay: int
    events_client_buffer: int
    events_client_buffer_bytes: int
    events_max_frame_bytes: int
    events_takeover_timeout_s: float
    events_snapshot_interval_s: float
    # Not a setting: the embedded model's base URL once the service has started it as the ladder's
    # last LLM rung (llm_fallback_embedded).
    embedded_url: str = ""

    @property
    def worker_count(self) -> int:
        """Workers to start: the configured count, or one per CPU."""
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)

    @property
    def dedicated(self) -> bool:
        """Each NPC in a worker process of its own (placement "dedicated"), not spread over a pool."""
        return self.placement == "dedicated"

    @property
    def pooled_workers(self) -> int:
        """Workers this node starts up front: none with dedicated placement (they start per NPC)."""
        return 0 if self.dedicated else self.worker_count

    @property
    def worker_processes(self) -> int:
        """The most worker processes this node runs at once: what a server-wide cap is split over."""
        return self.max_dedicated_workers if self.dedicated else self.worker_count

    @property
    def node(self) -> str:
        """This node's name in the convention: node_name, else host:admin_port."""
        return self.node_name or f"{socket.gethostname()}:{self.admin_port}"

    def thespian_environment(self) -> dict[str, str]:
        """Thespian reads its convention timing from the environment when it is imported: set
        these before importing it, on every node alike."""
        period = f"{self.node_check_s // 60}:{self.node_check_s % 60:02d}"
        return {"CONVENTION_REREGISTRATION_PERIOD": period, "CONVENTION_RESTART_PERIOD": period}

    @property
    def turn_model(self) -> str:
        """The model for streamed turns: ACTIVE_STREAM_LLM_MODEL, else LLM_MODEL."""
        return self.llm_stream_model or self.llm_model

    @property
    def action_tags(self) -> tuple[str, ...]:
        """The tags that are TaleWeave actions (events_action_tags, split)."""
        return tuple(tag.strip() for tag in self.events_action_tags.split(",") if tag.strip())

    @property
    def memory_limits(self) -> Limits:
        """The bounds of the game's memories (settings memory_*)."""
        return Limits(
            max_text_chars=self.memory_max_text_chars,
            max_per_scope=self.memory_max_per_scope,
            max_per_session=self.memory_max_per_session,
            max_pinned_per_scope=self.memory_max_pinned_per_scope,
            max_query_chars=self.memory_max_query_chars,
            max_forget=self.memory_max_forget,
        )

    @property
    def origin_allow_list(self) -> tuple[str, ...]:
        """Origins allowed on /ws and /events besides the server's own (allowed_origins, split)."""
        return tuple(o.strip() for o in self.allowed_origins.split(",") if o.strip())

    @property
    def primary(self) -> Endpoint:
        """The primary endpoint: llm_base_url (the embedded model's when none is configured)."""
        return Endpoint(self.llm_base_url, self.turn_model, self.llm_api_key, self.llm_structured)

    def tier(self, name: str | None) -> Tier | None:
        """The tier an NPC's ``model_tier`` names, its endpoints on the primary's where they have
        none; None (no name): the default tier, the primary and ``llm_fallbacks``. None for a name
        that no tier has."""
        if name is None:
            return Tier("", (self.primary, *self.llm_fallbacks), self.llm_max_tokens)
        tier = next((tier for tier in self.llm_tiers if tier.name == name), None)
        if tier is None:
            return None
        url, mode = self.llm_base_url, self.llm_structured
        return dataclasses.replace(tier, endpoints=tuple(endpoint.on(url, mode) for endpoint in tier.endpoints))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load_settings(
    config_file: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults, then ``config_file`` (or GAME_AGENT_CONFIG), env, overrides."""
    env = os.environ if env is None else env
    values = _read_toml(DEFAULTS_FILE)
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        _merge(values, _read_toml(Path(config_file)), f"config file {config_file}")
    for name, key in STANDARD_ENV.items():
        if env.get(name):
            values[key] = _coerce(key, env[name], values[key], name)
    for key, default in list(values.items()):
        name = ENV_PREFIX + key.upper()
        if name in env:
            values[key] = _coerce(key, env[name], default, name)
    _merge(values, {k: v for k, v in (overrides or {}).items() if v is not None}, "command line")
    values.update(_ladder(values, env))
    settings = Settings(**{ATTRIBUTES.get(key, key): value for key, value in values.items()})
    _check(settings)
    return settings


def _ladder(values: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The tables of the fallback ladder and the tiers, read into endpoints (keys from ``env``)."""
    try:
        fallbacks = parse_fallbacks(values["llm_fallbacks"], "llm_fallbacks", env, values["llm_structured"])
        tiers = parse_tiers(
            values["llm_tiers"],
            env,
            structured=values["llm_structured"],
            primary_key=values["llm_api_key"],
            fallbacks=fallbacks,
            max_tokens=values["llm_max_tokens"],
        )
    except ValueError as exc:
        raise SettingsError(f"setting {exc}") from None
    return {"llm_fallbacks": fallbacks, "llm_tiers": tiers}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}") from exc


def _merge(values: dict[str, Any], new: Mapping[str, Any], origin: str) -> None:
    for key, value in new.items():
        if key not in values:
            known = ", ".join(sorted(values))
            raise SettingsError(f"unknown setting {key!r} in {origin}; known settings: {known}")
        values[key] = _coerce(key, value, values[key], origin)


def _coerce(key: str, value: Any, default: Any, origin: str) -> Any:
    """Give ``value`` the type of the default, accepting strings from the environment."""
    kind = type(default)
    if kind in (list, dict):  # the ladder's tables: checked by _ladder
        if not isinstance(value, kind):
            shape = f"a list of tables ([[{key}]]" if kind is list else f"a table of tables ([{key}.NAME]"
            raise SettingsError(f"setting {key!r} from {origin} must be {shape} in TOML: only a config file has them)")
        return value
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return lowered in ("1", "true", "yes", "on")
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise SettingsError(f"setting {key!r} from {origin} must be {kind.__name__}, got {value!r}") from None


MAY_BE_ZERO = (
    "workers",
    "port",
    "llm_temperature",
    "llm_max_retries",
    "llm_max_concurrent",
    "llm_max_concurrent_per_worker",
    "llm_input_log_turns",
    "embedded_model_threads",
    "events_replay",
    "agent_idle_s",
    "log_retention_days",
    "journal_retention_days",
    "journal_compact_days",
    "log_max_bytes",
    "recall_budget_chars",
    "llm_session_tokens_per_hour",
    "llm_npc_tokens_per_hour",
    "frame_batch_s",
)
MAX_FRAME_BATCH_S = 0.1


def _check(s: Settings) -> None:
    """Numbers: durations and sizes must be positive, counts and MAY_BE_ZERO ones not negative."""
    for f in fields(s):
        value = getattr(s, f.name)
        if type(value) not in (int, float):
            continue
        if f.name in MAY_BE_ZERO:
            if value < 0:
                raise SettingsError(f"setting {f.name!r} must not be negative, got {value!r}")
        elif value <= 0:
            raise SettingsError(f"setting {f.name!r} must be positive, got {value!r}")
    if s.frame_batch_s > MAX_FRAME_BATCH_S:
        raise SettingsError(
            f"setting 'frame_batch_s' must be at most {MAX_FRAME_BATCH_S} (every token waits up to it), "
            f"got {s.frame_batch_s!r}"
        )
    for name, modes in (
        ("llm_structured", STRUCTURED_MODES),
        ("untagged_text", UNTAGGED_TEXT_MODES),
        ("event_loop", EVENT_LOOPS),
        ("placement", PLACEMENTS),
    ):
        if getattr(s, name) not in modes:
            raise SettingsError(f"setting {name!r} must be one of {', '.join(modes)}, got {getattr(s, name)!r}")
    if s.max_notification_agents > s.rate_limit_notifications_burst:
        raise SettingsError(
            f"setting 'max_notification_agents' ({s.max_notification_agents}) must not exceed "
            f"'rate_limit_notifications_burst' ({s.rate_limit_notifications_burst}): "
            "such a notification could never pass"
        )
    if s.max_journal_bytes_per_frame > s.rate_limit_journal_bytes_burst:
        raise SettingsError(
            f"setting 'max_journal_bytes_per_frame' ({s.max_journal_bytes_per_frame}) must not exceed "
            f"'rate_limit_journal_bytes_burst' ({s.rate_limit_journal_bytes_burst}): such a frame could never pass"
        )
    for endpoint in (*s.llm_fallbacks, *(e for tier in s.llm_tiers for e in tier.endpoints)):
        if endpoint.structured not in (*STRUCTURED_MODES, ""):
            raise SettingsError(
                f"the structured mode of {endpoint.label} must be one of {', '.join(STRUCTURED_MODES)}, "
                f"got {endpoint.structured!r}"
            )
    _check_prices(s.llm_prices)
    if not 0 < s.admin_port < 65536:
        raise SettingsError(f"setting 'admin_port' must be a TCP port, got {s.admin_port!r}")
    # --- /events
    for tag in (s.events_speech_tag, *s.action_tags):
        if not is_tag_name(tag):
            raise SettingsError(
                f"settings 'events_speech_tag' and 'events_action_tags' must hold tag names, got {tag!r}"
            )


PRICE_KINDS = ("prompt", "completion")


def _check_prices(prices: dict[str, Any]) -> None:
    """``llm_prices``: per model, a table of exactly ``prompt`` and ``completion``, not negative."""
    for model, price in prices.items():
        if (
            not isinstance(price, dict)
            or sorted(price) != sorted(PRICE_KINDS)
            or not all(type(price[kind]) in (int, float) and price[kind] >= 0 for kind in PRICE_KINDS)
        ):
            raise SettingsError(
                f"setting 'llm_prices' for model {model!r} must be a table of prompt and completion prices "
                f"(per million tokens, not negative), got {price!r}"
            )
