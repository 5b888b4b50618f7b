"""config.settings: defaults, file, environment and flags, in that order; bad settings named."""

from __future__ import annotations

import asyncio
import pickle

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
