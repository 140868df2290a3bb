"""Typed configuration read from ``HERWA_*`` environment variables.

Each section has its own prefix (``HERWA_POSTGRES_DSN``, ``HERWA_BOT_FLUSH_INTERVAL_SECONDS``, …)
and is loaded on its own, so a role only fails on the settings it actually uses. Every
validation error is turned into a :class:`ConfigError` that names the environment variable and
never repeats the value of a secret.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"must start with one of {', '.join(s + '://' for s in schemes)}")
    if not parts.hostname and not parts.path:
        raise ValueError("has no host")
    return value


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _postgres_dsn(value: SecretStr) -> SecretStr:
    _check_url(value.get_secret_value(), ("postgresql", "postgres"))
    return value


def _redis_url(value: SecretStr) -> SecretStr:
    _check_url(value.get_secret_value(), ("redis", "rediss", "unix"))
    return value


def _clickhouse_url(value: SecretStr) -> SecretStr:
    _check_url(value.get_secret_value(), ("http", "https"))
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not an IANA time zone name such as Europe/Berlin") from None
    return value


PostgresDsn = Annotated[SecretStr, AfterValidator(_postgres_dsn)]
Transfer = Literal["pull", "push"]  # how the ETL moves a batch: EtlSettings.transfer
RedisUrl = Annotated[SecretStr, AfterValidator(_redis_url)]
ClickHouseUrl = Annotated[SecretStr, AfterValidator(_clickhouse_url)]
TimeZoneName = Annotated[str, AfterValidator(_timezone)]
Seconds = Annotated[float, Field(gt=0)]


class SettingsSection(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)


class PostgresSettings(SettingsSection):
    """Postgres: configuration store and staging area."""

    model_config = SettingsConfigDict(env_prefix="HERWA_POSTGRES_")

    dsn: PostgresDsn = Field(description="postgresql://user:password@host:port/database")
    pool_min_size: int = Field(1, ge=0, le=100)
    pool_max_size: int = Field(10, ge=1, le=500)
    connect_timeout_seconds: Seconds = 10.0


class RedisSettings(SettingsSection):
    """Redis: shard leases, membership, identify slot, rate limits, caches (all may be lost)."""

    model_config = SettingsConfigDict(env_prefix="HERWA_REDIS_")

    url: RedisUrl = Field(description="redis://host:port/db")
    key_prefix: str = Field("herwa:", pattern=r"^[A-Za-z0-9_.:-]{0,64}$")
    max_connections: int = Field(64, ge=1, le=10_000)
    pool_timeout_seconds: Seconds = Field(5.0, le=300)
    # Every command's reply (and every connect) waits at most this long: a Redis that stops
    # answering without closing must fail calls, never hang them. The bot bounds it further
    # to a fifth of its shard lease.
    socket_timeout_seconds: Seconds = Field(2.0, le=60)


class ClickHouseSettings(SettingsSection):
    """ClickHouse: analytics. The read-only URL serves every user-facing query."""

    model_config = SettingsConfigDict(env_prefix="HERWA_CLICKHOUSE_")

    url: ClickHouseUrl = Field(description="http://user:password@host:8123/database")
    readonly_url: ClickHouseUrl | None = Field(
        None,
        description="the same for a user with readonly access; required by the bot, whose "
        "slash commands answer users",
    )
    connect_timeout_seconds: Seconds = 10.0
    query_timeout_seconds: Seconds = 30.0

    def query_url(self) -> SecretStr:
        """The URL for user-facing queries. Never the read-write one: a query a user can shape
        must not run as a user that can write, so an unset read-only URL is an error."""
        if self.readonly_url is None:
            raise ConfigError(
                "HERWA_CLICKHOUSE_READONLY_URL: required but not set (user-facing queries run "
                "only as a ClickHouse user with readonly access, never as HERWA_CLICKHOUSE_URL's)"
            )
        return self.readonly_url


class DiscordSettings(SettingsSection):
    """How the bot reaches Discord (or the project's simulator)."""

    model_config = SettingsConfigDict(env_prefix="HERWA_DISCORD_")

    token: SecretStr | None = Field(None, description="the bot token; never logged")
    api_base: str | None = Field(
        None,
        pattern=r"^https?://",
        description="REST base URL override, e.g. the simulator's http://127.0.0.1:PORT/api/v10",
    )
    gateway_url: str | None = Field(
        None, pattern=r"^wss?://", description="gateway URL override (the simulator's)"
    )
    shard_count: int | None = Field(
        None, ge=1, le=100_000, description="total shards; default: Discord's recommendation"
    )
    message_content_intent: bool = Field(
        False, description="request the privileged MESSAGE_CONTENT intent"
    )

    def require_token(self) -> SecretStr:
        if self.token is None or not self.token.get_secret_value().strip():
            raise ConfigError("HERWA_DISCORD_TOKEN: required for the bot but not set")
        return self.token


class TelemetrySettings(SettingsSection):
    """Metrics/health HTTP port and logging. Tracing reads the standard OTEL_* variables."""

    model_config = SettingsConfigDict(env_prefix="HERWA_TELEMETRY_")

    host: str = "0.0.0.0"  # noqa: S104 - pods expose /metrics to Prometheus on the pod IP
    port: int = Field(9100, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"


class BotSettings(SettingsSection):
    """The sharded capture bot."""

    model_config = SettingsConfigDict(env_prefix="HERWA_BOT_")

    pod_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="stable member identity; defaults to the host name",
    )
    flush_interval_seconds: Seconds = Field(1.0, le=60)
    flush_max_rows: int = Field(5000, ge=1, le=100_000)
    buffer_max_rows: int = Field(200_000, ge=1000, le=10_000_000)
    shutdown_grace_seconds: Seconds = Field(25.0, le=3600)
    member_heartbeat_seconds: Seconds = Field(5.0, le=300)
    member_ttl_seconds: Seconds = Field(15.0, le=900)
    voice_session_max_hours: Seconds = Field(24.0, le=24 * 30)
    backfill_window_hours: Seconds = Field(24.0, le=24 * 30)
    snapshot_hour_utc: int = Field(0, ge=0, le=23)
    count_bot_messages: bool = False
    identify_window_seconds: Seconds = Field(
        5.0, le=60, description="one IDENTIFY per max_concurrency bucket per this window"
    )
    max_concurrency: int | None = Field(
        None, ge=1, le=1024, description="IDENTIFY buckets; default: from /gateway/bot"
    )
    guild_ready_timeout_seconds: Seconds = Field(2.0, le=60)
    # At least a minute: four times the 15 s a new shard waits for an anchor it reads behind
    # (herwa.bot.shard_gate.ANCHOR_WAIT_S) and twelve times the 5 s clock margin
    # (herwa.bot.event_order.ANCHOR_MARGIN_S), and beyond the default member TTL and flush
    # interval, so an event is dropped only long before any anchor or cut-off time can point.
    reshard_hold_seconds: Seconds = Field(
        600.0,
        ge=60,
        le=86_400,
        description="a standby shard keeps the events it received at most this long before the "
        "cut-over began; the recording fleet stored older ones",
    )
    backfill_enabled: bool = True
    presence_capture: bool = Field(
        False,
        description="request the privileged GUILD_PRESENCES intent and record presence "
        "transitions in the servers whose tier grants the presence feature",
    )
    presence_members_per_guild: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="members whose last presence a shard remembers per server (the most "
        "recently changed; offline members are not kept)",
    )


class EtlSettings(SettingsSection):
    """The batch ETL from Postgres staging into ClickHouse."""

    model_config = SettingsConfigDict(env_prefix="HERWA_ETL_")

    # Larger batches cost ClickHouse less per row (fewer parts to write and merge) and the
    # rollup rounds less (benchmarks/README.md); ~20 MB of rendered rows per batch in flight.
    batch_rows: int = Field(250_000, ge=1000, le=1_000_000)
    deadline_seconds: Seconds = Field(600.0, le=86_400)
    retention_hours: Seconds = Field(72.0, le=24 * 365)
    pushgateway_url: str | None = Field(None, pattern=r"^https?://")
    # pull: ClickHouse reads each batch from Postgres itself (its postgresql() table function),
    # so no row passes through the ETL; push: the ETL copies each batch from one to the other,
    # for a ClickHouse that cannot reach Postgres. Pull costs less CPU (benchmarks/README.md).
    transfer: Transfer = "pull"
    pull_postgres_dsn: PostgresDsn | None = Field(
        None, description="Postgres as ClickHouse reaches it, for pull; default: HERWA_POSTGRES_DSN"
    )


class OperatorSettings(SettingsSection):
    """The GuildSubscription operator."""

    model_config = SettingsConfigDict(env_prefix="HERWA_OPERATOR_")

    namespace: str | None = Field(
        None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description="default: all"
    )
    platform_file: str = Field(
        "/etc/herwa/platform.yaml", description="tiers, features and commands (ConfigMap)"
    )
    drift_check_seconds: Seconds = Field(60.0, le=3600)
    peering_name: str | None = Field(
        "herwa-operator",
        pattern=r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$",
        description="kopf (Cluster)KopfPeering object that elects one active replica; "
        "empty: standalone",
    )


class GuildDefaults(SettingsSection):
    """Defaults for guilds that have not configured anything themselves."""

    model_config = SettingsConfigDict(env_prefix="HERWA_GUILD_")

    timezone: TimeZoneName = "UTC"


S = TypeVar("S", bound=SettingsSection)

_SECRET_FIELDS = {"dsn", "url", "readonly_url", "token"}


def load(section: type[S], **overrides: Any) -> S:
    """Read one section from the environment, or raise :class:`ConfigError`."""
    try:
        return section(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(section, exc)) from None


def _describe(section: type[SettingsSection], exc: ValidationError) -> str:
    prefix = str(section.model_config.get("env_prefix", ""))
    lines = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = (prefix + field).upper()
        message = error["msg"]
        if error["type"] == "missing":
            message = "required but not set"
        # Secret values are never echoed; for the rest the value helps the operator.
        elif field not in _SECRET_FIELDS and isinstance(error.get("input"), str):
            message = f"{message} (got {error['input']!r})"
        lines.append(f"{variable}: {_sentence(message)}")
    return "; ".join(lines)


def _sentence(message: str) -> str:
    message = re.sub(r"^Value error, ", "", message)
    return message[:1].lower() + message[1:]


@cache
def postgres() -> PostgresSettings:
    return load(PostgresSettings)


@cache
def redis() -> RedisSettings:
    return load(RedisSettings)


@cache
def clickhouse() -> ClickHouseSettings:
    return load(ClickHouseSettings)


@cache
def discord() -> DiscordSettings:
    return load(DiscordSettings)


@cache
def telemetry() -> TelemetrySettings:
    return load(TelemetrySettings)


@cache
def bot() -> BotSettings:
    return load(BotSettings)


@cache
def etl() -> EtlSettings:
    return load(EtlSettings)


@cache
def operator() -> OperatorSettings:
    return load(OperatorSettings)


@cache
def guild_defaults() -> GuildDefaults:
    return load(GuildDefaults)


class CommandSettings(SettingsSection):
    """Slash commands: per-user rate limit, result cache, when to defer, option limits."""

    model_config = SettingsConfigDict(env_prefix="HERWA_COMMANDS_")

    rate_limit_count: int = Field(5, ge=1, le=1000, description="commands per user per window")
    rate_limit_window_seconds: Seconds = Field(10.0, le=3600)
    cache_ttl_seconds: int = Field(60, ge=0, le=3600, description="0 disables the result cache")
    defer_after_seconds: Seconds = Field(
        1.5, le=2.5, description="answer with 'thinking…' when a query runs longer than this"
    )
    query_timeout_seconds: Seconds = Field(60.0, le=900)
    quota_name: str = Field("queries_per_month", pattern=r"^[a-z][a-z0-9_]{0,63}$")
    max_range_days: int = Field(3650, ge=1, le=36500)
    page_size: int = Field(10, ge=1, le=25)


@cache
def commands() -> CommandSettings:
    return load(CommandSettings)
