"""One invocation, start to finish: gate → validate → cache → charge quota → query (deferring
when slow) → reply, with usage counting, metrics and a span around it. Only a query answered
to the member is charged: a cached answer is free, and a failed query or reply is refunded.

Handlers stay thin: they describe a :class:`CommandSpec`, a ``prepare`` step that validates options
(and may raise :class:`OptionError`) and returns the work to do, and the work itself.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import discord
from redis.asyncio import Redis

from herwa import usage
from herwa.bot import guild_settings
from herwa.bot.commands._cache import ResultCache
from herwa.bot.commands._gate import CommandOutcome, Gate
from herwa.bot.commands._metrics import INVOCATIONS, LATENCY
from herwa.bot.commands._options import OptionError
from herwa.bot.commands._reply import Reply
from herwa.bot.guild_settings import GuildConfig
from herwa.bot.tombstones import Tombstones
from herwa.config import CommandSettings
from herwa.entitlements import CommandAccess
from herwa.telemetry import tracer as _tracer

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

log = logging.getLogger(__name__)

EPHEMERAL_FLAG = 64


@dataclass(frozen=True)
class CommandDeps:
    """What the commands need from the bot: its stores and settings."""

    pool: asyncpg.Pool
    redis: Redis
    clickhouse: AsyncClient  # the read-only user: commands never write to ClickHouse
    settings: CommandSettings = field(default_factory=CommandSettings)
    redis_prefix: str = "herwa:"
    default_timezone: str = "UTC"
    # The bot's own: /privacy applies a server's deletion or opt-in to capture at once.
    tombstones: Tombstones = field(default_factory=Tombstones)


@dataclass(frozen=True)
class CommandSpec:
    command: str  # the gated name from platform.yaml (a group's root for subcommands)
    counts_quota: bool = True
    admin: bool = False  # requires Manage Server
    cacheable: bool = True
    ephemeral: bool = False
    # False for a member's rights (privacy): no tier, suspension or expiry may withhold them.
    gated: bool = True

    def __post_init__(self) -> None:
        if not self.gated and self.counts_quota:
            raise ValueError(f"{self.command}: an ungated command cannot spend the quota")


@dataclass
class Context:
    """Everything a handler may use; ``guild_id`` always comes from the interaction."""

    interaction: discord.Interaction[Any]
    deps: CommandDeps
    guild_id: int
    user_id: int
    access: CommandAccess | None  # None only for ungated commands of unsubscribed guilds
    now: datetime
    _config: GuildConfig | None = None

    @property
    def history_days(self) -> int | None:
        return self.access.quotas.get("history_days") if self.access else None

    def entitled(self) -> CommandAccess:
        """The guild's access, for handlers of gated commands (the gate has checked it)."""
        if self.access is None:
            raise RuntimeError("an ungated command asked for the guild's entitlement")
        return self.access

    async def config(self) -> GuildConfig:
        if self._config is None:
            stored = await guild_settings.load(self.deps.pool, self.guild_id)
            self._config = stored or GuildConfig(timezone=self.deps.default_timezone)
        return self._config

    async def guild_channels(self) -> dict[int, str]:
        """Channels (and threads) of this guild: discord.py's cache plus the bot's directory."""
        known: dict[int, str] = {}
        guild = self.interaction.guild
        if guild is not None:
            for channel in guild.channels:
                known[channel.id] = channel.name
            for thread in guild.threads:
                known[thread.id] = thread.name
        for row in await self.deps.pool.fetch(
            "SELECT channel_id, name FROM channels WHERE guild_id = $1", self.guild_id
        ):
            known.setdefault(int(row["channel_id"]), row["name"] or str(row["channel_id"]))
        return known


Work = Callable[[], Awaitable[Reply]]
Prepare = Callable[[Context], Awaitable[tuple[dict[str, Any], Work]]]


def _relative(at: datetime) -> str:
    return f"<t:{int(at.timestamp())}:R>"


class CommandRuntime:
    def __init__(self, deps: CommandDeps) -> None:
        self.deps = deps
        s = deps.settings
        self.gate = Gate(
            deps.redis,
            deps.pool,
            deps.redis_prefix,
            rate_limit_count=s.rate_limit_count,
            rate_limit_window=timedelta(seconds=s.rate_limit_window_seconds),
            quota_name=s.quota_name,
        )
        self.cache = ResultCache(deps.redis, deps.redis_prefix, s.cache_ttl_seconds)

    async def run(
        self, interaction: discord.Interaction[Any], spec: CommandSpec, prepare: Prepare
    ) -> CommandOutcome:
        started = time.perf_counter()
        with _tracer(__name__).start_as_current_span(f"command {spec.command}") as span:
            try:
                outcome = await self._run(interaction, spec, prepare)
            except Exception:
                # Whatever failed (a gate store, an answer Discord refused), the invocation is
                # still counted: usage and metrics must show every failure.
                log.exception("command %s failed", spec.command, extra={"command": spec.command})
                outcome = CommandOutcome.ERROR
            finally:
                LATENCY.labels(spec.command).observe(time.perf_counter() - started)
            span.set_attribute("herwa.command.outcome", outcome.value)
        INVOCATIONS.labels(spec.command, outcome.value).inc()
        if interaction.guild_id is not None:
            try:  # billing counters must not fail a reply
                await usage.record(
                    self.deps.pool,
                    interaction.guild_id,
                    spec.command,
                    outcome.value,
                    datetime.now(UTC),
                )
            except Exception as exc:
                log.warning(
                    "usage of %s not recorded: %s: %s", spec.command, type(exc).__name__, exc
                )
        return outcome

    async def _run(
        self, interaction: discord.Interaction[Any], spec: CommandSpec, prepare: Prepare
    ) -> CommandOutcome:
        now = datetime.now(UTC)
        guild_id = interaction.guild_id
        if guild_id is None:
            await _send(
                interaction, Reply("Herwa's commands work inside a server.", ephemeral=True)
            )
            return CommandOutcome.INVALID

        rate = await self.gate.rate_limit(interaction.user.id)
        if not rate.admitted:
            retry = now + rate.retry_after + timedelta(seconds=1)
            await _send(
                interaction,
                Reply(
                    f"You are sending commands too quickly. Try again {_relative(retry)}.",
                    ephemeral=True,
                ),
            )
            return CommandOutcome.RATE_LIMITED

        if spec.admin and not interaction.permissions.manage_guild:
            await _send(
                interaction,
                Reply(f"`/{spec.command}` needs the **Manage Server** permission.", ephemeral=True),
            )
            return CommandOutcome.DENIED

        access = await self.gate.access(guild_id)
        if spec.gated and (access is None or not access.allows(spec.command, now)):
            await _send(
                interaction, Reply(await self._denied_text(spec.command, access), ephemeral=True)
            )
            return CommandOutcome.DENIED

        ctx = Context(interaction, self.deps, guild_id, interaction.user.id, access, now)
        try:
            cache_options, work = await prepare(ctx)
        except OptionError as exc:
            await _send(interaction, Reply(str(exc), ephemeral=True))
            return CommandOutcome.INVALID

        # A cached answer costs no query, so it spends no quota (and is served even when the
        # quota is used up: the server already paid for it).
        if spec.cacheable:
            cached = await self.cache.get(guild_id, spec.command, cache_options)
            if cached is not None:
                await _send(interaction, cached)
                return CommandOutcome.OK

        charged = False
        if spec.counts_quota:
            access = ctx.entitled()
            quota = await self.gate.take_quota(guild_id, access, now)
            if not quota.admitted:
                await _send(
                    interaction,
                    Reply(
                        f"This server has used all {quota.limit} queries of its monthly quota "
                        f"on the {access.tier} tier. It resets {_relative(quota.resets_at)}; "
                        "`/usage` shows the details.",
                        ephemeral=True,
                    ),
                )
                return CommandOutcome.OVER_QUOTA
            charged = quota.limit is not None

        task = asyncio.ensure_future(work())
        deferred = False
        try:
            try:
                reply = await asyncio.wait_for(
                    asyncio.shield(task), self.deps.settings.defer_after_seconds
                )
            except TimeoutError:
                # Discord drops an interaction unanswered after 3 s; "thinking…" buys 15 min.
                await interaction.response.defer(thinking=True, ephemeral=spec.ephemeral)
                deferred = True
                reply = await asyncio.wait_for(task, self.deps.settings.query_timeout_seconds)
        except Exception as exc:
            task.cancel()
            if charged:
                await self.gate.refund_quota(guild_id, now)
            ref = secrets.token_hex(4)
            log.exception(
                "command %s failed (ref %s)",
                spec.command,
                ref,
                extra={"command": spec.command, "ref": ref},
            )
            text = (
                f"Something went wrong while answering; it has been logged (ref `{ref}`)."
                " This did not count against the quota."
            )
            if isinstance(exc, TimeoutError):
                text = (
                    "That query took too long. Try a shorter range; "
                    "this did not count against the quota."
                )
            await _send(interaction, Reply(text, ephemeral=True), deferred=deferred)
            return CommandOutcome.ERROR

        if spec.cacheable:
            await self.cache.put(guild_id, spec.command, cache_options, reply)
        try:
            await _send(interaction, reply, deferred=deferred)
        except discord.HTTPException as exc:
            # Discord refused the answer (a 5xx, or the interaction expired): the member saw
            # nothing, so the query is not charged; the answer stays cached for a retry.
            if charged:
                await self.gate.refund_quota(guild_id, now)
            log.warning(
                "command %s answered but the reply failed: %s %s",
                spec.command,
                exc.status,
                exc.text,
                extra={"command": spec.command, "status": exc.status},
            )
            return CommandOutcome.ERROR
        return CommandOutcome.OK

    async def _denied_text(self, command: str, access: CommandAccess | None) -> str:
        tier = await self.gate.unlocking_tier(command)
        unlock = f" It is part of the **{tier}** tier." if tier else ""
        if access is not None and access.state != "active":
            return (
                f"This server's Herwa subscription is {access.state}, so `/{command}` "
                f"is unavailable.{unlock}"
            )
        if access is None:
            return f"This server has no Herwa subscription yet.{unlock}"
        return f"`/{command}` is not included in this server's **{access.tier}** tier.{unlock}"


async def _send(
    interaction: discord.Interaction[Any], reply: Reply, *, deferred: bool = False
) -> None:
    if deferred or interaction.response.is_done():
        await interaction.edit_original_response(
            content=reply.content or None,
            embeds=list(reply.embeds),
            attachments=[f.file() for f in reply.files],
        )
        return
    await interaction.response.send_message(
        content=reply.content or None,
        embeds=list(reply.embeds),
        files=[f.file() for f in reply.files],
        ephemeral=reply.ephemeral,
    )
