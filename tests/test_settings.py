"""config.settings: defaults, file, environment and flags, in that order; bad settings named."""

from __future__ import annotations

import asyncio
import pickle
import re

import pytest

from actors.bridge import LoopBridge
from config.settings import SettingsError, load_settings


def test_defaults_come_from_the_defaults_file():
    s = load_settings(env={})
    assert (s.host, s.port, s.admin_port, s.workers) == ("127.0.0.1", 8000, 1900, 0)
    assert s.worker_count >= 1
    assert s.turn_model == s.llm_model


def test_file_then_env_then_flags(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text('port = 9000\nworkers = 3\nsnapshot_timeout_s = 2\nlog_level = "WARNING"\n')
    s = load_settings(
        config,
        env={"GAME_AGENT_WORKERS": "5", "GAME_AGENT_LLM_INCLUDE_USAGE": "off"},
        overrides={"workers": None, "port": 9100},
    )
    assert (s.port, s.workers, s.snapshot_timeout_s, s.log_level) == (9100, 5, 2.0, "WARNING")
    assert s.llm_include_usage is False


def test_standard_llm_variables():
    s = load_settings(
        env={
            "OPENAI_API_BASE": "http://x/v1",
            "OPENAI_API_KEY": "sk-secret",
            "LLM_MODEL": "m1",
            "ACTIVE_STREAM_LLM_MODEL": "m2",
            "LLM_STALL_TIMEOUT_S": "7",
        }
    )
    assert (s.llm_base_url, s.llm_api_key, s.llm_model, s.turn_model) == ("http://x/v1", "sk-secret", "m1", "m2")
    assert s.llm_stall_timeout_s == 7.0


def test_the_key_never_shows_in_repr_and_settings_pickle():
    s = load_settings(env={"OPENAI_API_KEY": "sk-secret-123"})
    assert "sk-secret-123" not in repr(s)
    assert pickle.loads(pickle.dumps(s)) == s


def test_the_setting_token_is_the_attribute_auth_token(tmp_path):
    """TOML ``token``, GAME_AGENT_TOKEN and the override ``token`` all set ``auth_token``."""
    config = tmp_path / "server.toml"
    config.write_text('token = "from-file"\n')
    assert load_settings(config, env={}).auth_token == "from-file"
    assert load_settings(config, env={"GAME_AGENT_TOKEN": "from-env"}).auth_token == "from-env"
    assert load_settings(env={}, overrides={"token": "from-flag"}).auth_token == "from-flag"
    assert "from-env" not in repr(load_settings(env={"GAME_AGENT_TOKEN": "from-env"}))
    assert not hasattr(load_settings(env={}), "token")


@pytest.mark.parametrize(
    "content, words",
    [
        ("colour = 3", ["unknown setting 'colour'"]),
        ('port = "high"', ["'port'", "int"]),
        ("workers = -1", ["'workers'", "negative"]),
        ("snapshot_timeout_s = 0", ["'snapshot_timeout_s'", "positive"]),
        ("port = [", ["cannot read"]),
    ],
)
def test_bad_files_are_named(tmp_path, content, words):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(SettingsError) as info:
        load_settings(config, env={})
    for word in words:
        assert word in str(info.value)


def test_bad_environment_value_is_named():
    with pytest.raises(SettingsError, match="GAME_AGENT_WORKERS"):
        load_settings(env={"GAME_AGENT_WORKERS": "many"})
    with pytest.raises(SettingsError, match="GAME_AGENT_LLM_INCLUDE_USAGE"):
        load_settings(env={"GAME_AGENT_LLM_INCLUDE_USAGE": "maybe"})


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"max_notification_agents": 10, "rate_limit_notifications_burst": 5}, "max_notification_agents"),
        ({"max_journal_bytes_per_frame": 10, "rate_limit_journal_bytes_burst": 5}, "max_journal_bytes_per_frame"),
        ({"log_max_agents_per_disconnect": 0}, "log_max_agents_per_disconnect"),
    ],
)
def test_limits_that_could_never_pass_a_frame_are_refused(overrides, named):
    with pytest.raises(SettingsError, match=named):
        load_settings(env={}, overrides=overrides)


def test_log_retention_and_budget_may_be_off():
    settings = load_settings(env={}, overrides={"log_retention_days": 0, "log_max_bytes": 0})
    assert (settings.log_retention_days, settings.log_max_bytes) == (0.0, 0)


def test_the_event_loop_is_one_of_two():
    with pytest.raises(SettingsError, match="event_loop"):
        load_settings(env={"GAME_AGENT_EVENT_LOOP": "trio"})


def test_placement_is_pooled_or_dedicated_and_sizes_the_workers():
    with pytest.raises(SettingsError, match="placement"):
        load_settings(env={"GAME_AGENT_PLACEMENT": "scattered"})
    with pytest.raises(SettingsError, match="max_dedicated_workers"):
        load_settings(env={}, overrides={"max_dedicated_workers": 0})
    pooled = load_settings(env={}, overrides={"workers": 3})
    assert (pooled.dedicated, pooled.pooled_workers, pooled.worker_processes) == (False, 3, 3)
    dedicated = load_settings(env={"GAME_AGENT_PLACEMENT": "dedicated", "GAME_AGENT_MAX_DEDICATED_WORKERS": "5"})
    assert (dedicated.dedicated, dedicated.pooled_workers, dedicated.worker_processes) == (True, 0, 5)


@pytest.mark.parametrize("kind, module", [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_actors_loop_is_the_one_configured(kind, module):
    """The gateway's and workers' loops come from ``event_loop`` (uvloop is installed with the server)."""
    bridge = LoopBridge("test-loop", load_settings(env={}, overrides={"event_loop": kind}).event_loop)
    try:
        assert bridge.run(_loop_module(), timeout=5).startswith(module)
    finally:
        bridge.stop()


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


LADDER = """
[[llm_fallbacks]]
base_url = "http://backup/v1"
model = "backup-model"
api_key_env = "BACKUP_KEY"

[[llm_fallbacks]]
base_url = "http://free/v1"
model = "free-model"
structured = "off"

[llm_tiers.hero]
model = "big-model"
max_tokens = 600
cheaper = "crowd"

[llm_tiers.crowd]
base_url = "http://cheap/v1"
model = "small-model"
fallbacks = []
"""


def test_the_ladder_and_tiers_from_the_config_file(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text("llm_breaker_cooldown_s = 2.5\n" + LADDER)
    env = {"OPENAI_API_BASE": "http://primary/v1", "OPENAI_API_KEY": "sk-primary", "BACKUP_KEY": "sk-backup-77"}
    s = load_settings(config, env=env)
    assert s.llm_breaker_cooldown_s == 2.5
    assert [(e.base_url, e.model, e.api_key, e.structured) for e in s.llm_fallbacks] == [
        ("http://backup/v1", "backup-model", "sk-backup-77", "auto"),
        ("http://free/v1", "free-model", "", "off"),
    ]
    default = s.tier(None)
    assert [e.model for e in default.endpoints] == ["gpt-4o-mini", "backup-model", "free-model"]
    assert default.max_tokens == s.llm_max_tokens and default.cheaper is None
    hero = s.tier("hero")
    assert [(e.base_url, e.model, e.api_key) for e in hero.endpoints[:1]] == [
        ("http://primary/v1", "big-model", "sk-primary")  # on the primary endpoint, with its key
    ]
    assert hero.endpoints[1:] == s.llm_fallbacks and (hero.max_tokens, hero.cheaper) == (600, "crowd")
    crowd = s.tier("crowd")
    assert [(e.base_url, e.model, e.api_key) for e in crowd.endpoints] == [("http://cheap/v1", "small-model", "")]
    assert s.tier("villain") is None
    assert crowd.endpoint("small-model@http://cheap/v1") is crowd.endpoints[0]
    assert "sk-backup-77" not in repr(s) and "sk-primary" not in repr(s)
    assert pickle.loads(pickle.dumps(s)) == s


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[[llm_fallbacks]]\nmodel = 'm'\n", "llm_fallbacks[0].base_url must be a non-empty string"),
        ("[[llm_fallbacks]]\nbase_url = 'http://x'\n", "llm_fallbacks[0].model must be a non-empty string"),
        (
            "[[llm_fallbacks]]\nbase_url = 'http://x'\nmodel = 'm'\napi_key_env = 'NOPE_KEY'\n",
            "llm_fallbacks[0].api_key_env names 'NOPE_KEY', which is not set",
        ),
        ("[[llm_fallbacks]]\nbase_url = 'http://x'\nmodel = 'm'\napi_key = 'k'\n", "unknown keys ['api_key']"),
        ("[[llm_fallbacks]]\nbase_url = 'http://x'\nmodel = 'm'\nstructured = 'xml'\n", "structured mode of m@"),
        ("llm_fallbacks = {}\n", "'llm_fallbacks' from config file"),
        ("llm_tiers = []\n", "must be a table of tables ([llm_tiers.NAME] in TOML"),
        ("[llm_tiers.hero]\nmax_tokens = 5\n", "llm_tiers.hero.model must be a non-empty string"),
        ("[llm_tiers.hero]\nmodel = 'm'\nmax_tokens = 0\n", "llm_tiers.hero.max_tokens must be a positive integer"),
        ("[llm_tiers.hero]\nmodel = 'm'\ncheaper = 'hero'\n", "llm_tiers.hero.cheaper must name another tier"),
        ("[llm_tiers.hero]\nmodel = 'm'\ncheaper = 'crowd'\n", "llm_tiers.hero.cheaper must name another tier"),
        ("[llm_tiers.hero]\nmodel = 'm'\nfallbacks = 'x'\n", "llm_tiers.hero.fallbacks must be a list of tables"),
        ("[llm_tiers]\nhero = 3\n", "llm_tiers.hero must be a table"),
        ("llm_breaker_failures = 0\n", "llm_breaker_failures"),
        ("llm_npc_tokens_per_hour = -1\n", "llm_npc_tokens_per_hour"),
    ],
)
def test_bad_ladder_settings_are_named(tmp_path, content, words):
    config = tmp_path / "server.toml"
    config.write_text(content)
    with pytest.raises(SettingsError, match=re.escape(words)):
        load_settings(config, env={})


def test_the_ladder_cannot_come_from_the_environment():
    with pytest.raises(SettingsError, match="only a config file has them"):
        load_settings(env={"GAME_AGENT_LLM_FALLBACKS": "http://x"})


def test_frame_batching_is_bounded():
    assert load_settings(env={}, overrides={"frame_batch_s": 0}).frame_batch_s == 0
    with pytest.raises(SettingsError, match="frame_batch_s"):
        load_settings(env={}, overrides={"frame_batch_s": 0.5})
    with pytest.raises(SettingsError, match="frame_batch_s"):
        load_settings(env={}, overrides={"frame_batch_s": -0.001})
