"""Configuration: every invalid value names its variable; secrets never leak."""

from __future__ import annotations

import pytest

from herwa import config


@pytest.mark.parametrize(
    ("section", "env", "expected"),
    [
        (
            config.BotSettings,
            {"HERWA_BOT_FLUSH_INTERVAL_SECONDS": "soon"},
            "HERWA_BOT_FLUSH_INTERVAL_SECONDS",
        ),
        (config.BotSettings, {"HERWA_BOT_FLUSH_MAX_ROWS": "0"}, "HERWA_BOT_FLUSH_MAX_ROWS"),
        (config.BotSettings, {"HERWA_BOT_POD_NAME": "Not A Pod!"}, "HERWA_BOT_POD_NAME"),
        (config.BotSettings, {"HERWA_BOT_SNAPSHOT_HOUR_UTC": "24"}, "HERWA_BOT_SNAPSHOT_HOUR_UTC"),
        (config.PostgresSettings, {}, "HERWA_POSTGRES_DSN: required but not set"),
        (config.PostgresSettings, {"HERWA_POSTGRES_DSN": "mysql://x/y"}, "HERWA_POSTGRES_DSN"),
        (config.RedisSettings, {"HERWA_REDIS_URL": "http://x"}, "HERWA_REDIS_URL"),
        (
            config.ClickHouseSettings,
            {"HERWA_CLICKHOUSE_URL": "tcp://x:9000"},
            "HERWA_CLICKHOUSE_URL",
        ),
        (config.DiscordSettings, {"HERWA_DISCORD_SHARD_COUNT": "-1"}, "HERWA_DISCORD_SHARD_COUNT"),
        (
            config.DiscordSettings,
            {"HERWA_DISCORD_GATEWAY_URL": "http://x"},
            "HERWA_DISCORD_GATEWAY_URL",
        ),
        (
            config.TelemetrySettings,
            {"HERWA_TELEMETRY_LOG_LEVEL": "LOUD"},
            "HERWA_TELEMETRY_LOG_LEVEL",
        ),
        (config.EtlSettings, {"HERWA_ETL_BATCH_ROWS": "10"}, "HERWA_ETL_BATCH_ROWS"),
        (config.EtlSettings, {"HERWA_ETL_TRANSFER": "sideways"}, "HERWA_ETL_TRANSFER"),
        (
            config.EtlSettings,
            {"HERWA_ETL_PULL_POSTGRES_DSN": "mysql://u:p@db/herwa"},
            "HERWA_ETL_PULL_POSTGRES_DSN",
        ),
        (config.GuildDefaults, {"HERWA_GUILD_TIMEZONE": "Mars/Olympus"}, "HERWA_GUILD_TIMEZONE"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    section: type[config.SettingsSection],
    env: dict[str, str],
    expected: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(config.ConfigError) as caught:
        config.load(section)
    assert expected in str(caught.value)


def test_invalid_non_secret_value_is_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERWA_BOT_FLUSH_INTERVAL_SECONDS", "soon")
    with pytest.raises(config.ConfigError, match="got 'soon'"):
        config.load(config.BotSettings)


def test_invalid_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERWA_POSTGRES_DSN", "mysql://admin:hunter2-very-secret@db/herwa")
    with pytest.raises(config.ConfigError) as caught:
        config.load(config.PostgresSettings)
    assert "hunter2" not in str(caught.value)
    assert "HERWA_POSTGRES_DSN" in str(caught.value)


def test_valid_environment_loads_typed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERWA_BOT_FLUSH_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("HERWA_BOT_POD_NAME", "herwa-bot-2")
    settings = config.load(config.BotSettings)
    assert settings.flush_interval_seconds == 0.5
    assert settings.pod_name == "herwa-bot-2"
    assert settings.flush_max_rows == 5000


def test_token_is_hidden_in_repr_and_str(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "MTIzNDU2Nzg5.Gabcde.secret-token-value"
    monkeypatch.setenv("HERWA_DISCORD_TOKEN", token)
    settings = config.load(config.DiscordSettings)
    assert token not in repr(settings)
    assert token not in str(settings)
    assert token not in settings.model_dump_json()
    assert settings.require_token().get_secret_value() == token


def test_missing_token_is_reported_only_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HERWA_DISCORD_TOKEN", raising=False)
    settings = config.load(config.DiscordSettings)  # other roles never need it
    with pytest.raises(config.ConfigError, match="HERWA_DISCORD_TOKEN"):
        settings.require_token()


def test_redact_url_hides_only_the_password() -> None:
    assert config.redact_url("postgresql://herwa:pw@db:5432/herwa") == (
        "postgresql://herwa:***@db:5432/herwa"
    )
    assert config.redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
