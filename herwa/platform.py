"""The platform definition — features, commands, tiers — and its idempotent seeding into Postgres.

The file (``herwa/platform.yaml`` by default; a ConfigMap in the chart) is validated strictly:
unknown keys, a tier granting an undefined feature, a command naming an undefined feature,
duplicate names or ranks, a ``default_tier`` that is not defined are all errors that name the
offending entry. :func:`seed` then makes the Postgres tables ``features``, ``tiers`` (with the
default tier marked), ``tier_features`` and ``commands`` equal to the file in one transaction and
reports how many rows it changed (zero on a re-run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import yaml
from asyncpg.pool import PoolConnectionProxy
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from herwa.stores import rows_affected

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
QuotaName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]

# Serialises concurrent seeders (operator replicas, a `herwa seed` job) on one database.
_SEED_LOCK_KEY = 0x6865727761_01  # "herwa" + 1


_Conn = asyncpg.Connection | PoolConnectionProxy


class PlatformError(ValueError):
    """The platform file is missing, unreadable or invalid; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    name: Name
    description: str = ""


class Tier(_Strict):
    name: Name
    description: str = ""
    rank: int = Field(ge=0, le=1_000_000)
    features: tuple[Name, ...] = ()
    quotas: dict[QuotaName, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


class Platform(_Strict):
    features: tuple[Feature, ...]
    commands: dict[Name, Name]
    tiers: tuple[Tier, ...] = Field(min_length=1)
    # What every guild without a GuildSubscription gets (the product's decision: a public bot
    # serves every server it is invited to).
    default_tier: Name

    @model_validator(mode="after")
    def _consistent(self) -> Platform:
        problems: list[str] = []
        feature_names = [f.name for f in self.features]
        problems += [f"feature {n!r} is defined twice" for n in _duplicates(feature_names)]
        known = set(feature_names)
        tier_names = [t.name for t in self.tiers]
        problems += [f"tier {n!r} is defined twice" for n in _duplicates(tier_names)]
        ranks = [t.rank for t in self.tiers]
        problems += [f"two tiers share rank {r}" for r in _duplicates(ranks)]
        for tier in self.tiers:
            problems += [
                f"tier {tier.name!r} grants feature {f!r}, which is not defined"
                for f in tier.features
                if f not in known
            ]
            problems += [
                f"tier {tier.name!r} lists feature {f!r} twice" for f in _duplicates(tier.features)
            ]
        if self.default_tier not in tier_names:
            problems.append(f"default_tier {self.default_tier!r} is not a defined tier")
        problems += [
            f"command {c!r} needs feature {f!r}, which is not defined"
            for c, f in self.commands.items()
            if f not in known
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    @property
    def quota_names(self) -> frozenset[str]:
        return frozenset(q for t in self.tiers for q in t.quotas)


def _duplicates(items: Any) -> list[Any]:
    seen: set[Any] = set()
    dupes: list[Any] = []
    for item in items:
        if item in seen and item not in dupes:
            dupes.append(item)
        seen.add(item)
    return dupes


def parse(text: str, source: str = "<platform>") -> Platform:
    """Parse and validate a platform definition, or raise :class:`PlatformError`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlatformError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PlatformError(
            f"{source}: expected a mapping with features, commands, tiers and default_tier"
        )
    try:
        return Platform.model_validate(data)
    except ValidationError as exc:
        raise PlatformError(f"{source}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def load(path: str | Path | None = None) -> Platform:
    """The platform file at ``path``, or the default shipped with Herwa."""
    if path is None:
        text = resources.files("herwa").joinpath("platform.yaml").read_text(encoding="utf-8")
        return parse(text, "herwa/platform.yaml")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlatformError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse(text, str(path))


@dataclass(frozen=True)
class SeedReport:
    """Rows inserted, updated or deleted per table; all zero when Postgres already matched."""

    features: int
    tiers: int
    tier_features: int
    commands: int
    kept_tiers: tuple[str, ...]  # tiers gone from the file but still used by an entitlement

    @property
    def changed(self) -> int:
        return self.features + self.tiers + self.tier_features + self.commands


async def seed(
    conn: asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy, platform: Platform
) -> SeedReport:
    """Make Postgres hold exactly ``platform``'s features, tiers and commands (idempotent).

    A tier removed from the file but still referenced by an entitlement is kept (the foreign key
    would refuse the delete, and revoking paid entitlements is not a seeding decision); it is
    reported in :attr:`SeedReport.kept_tiers` so the operator can surface it.
    """
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            return await seed(c, platform)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SEED_LOCK_KEY)
        features = await _sync_features(conn, platform)
        tiers, kept = await _sync_tiers(conn, platform)
        tier_features = await _sync_tier_features(conn, platform)
        commands = await _sync_commands(conn, platform)
        # Features go last: commands and tier_features no longer point at the removed ones.
        features += rows_affected(
            await conn.execute(
                "DELETE FROM features WHERE NOT feature = ANY($1::text[])",
                [f.name for f in platform.features],
            )
        )
    return SeedReport(features, tiers, tier_features, commands, kept)


async def _sync_features(conn: _Conn, platform: Platform) -> int:
    return rows_affected(
        await conn.execute(
            """INSERT INTO features (feature, description)
           SELECT * FROM unnest($1::text[], $2::text[])
           ON CONFLICT (feature) DO UPDATE SET description = EXCLUDED.description
           WHERE features.description IS DISTINCT FROM EXCLUDED.description""",
            [f.name for f in platform.features],
            [f.description for f in platform.features],
        )
    )


async def _sync_tiers(conn: _Conn, platform: Platform) -> tuple[int, tuple[str, ...]]:
    names = [t.name for t in platform.tiers]
    # The old default loses its mark first: at most one tier may carry it at any moment.
    changed = rows_affected(
        await conn.execute(
            "UPDATE tiers SET is_default = false WHERE is_default AND tier <> $1",
            platform.default_tier,
        )
    )
    changed += rows_affected(
        await conn.execute(
            """INSERT INTO tiers (tier, description, rank, quotas, is_default)
           SELECT t, d, r, q::jsonb, t = $5
           FROM unnest($1::text[], $2::text[], $3::int[], $4::text[]) AS x(t, d, r, q)
           ON CONFLICT (tier) DO UPDATE
              SET description = EXCLUDED.description, rank = EXCLUDED.rank,
                  quotas = EXCLUDED.quotas, is_default = EXCLUDED.is_default
           WHERE (tiers.description, tiers.rank, tiers.quotas, tiers.is_default)
                 IS DISTINCT FROM (EXCLUDED.description, EXCLUDED.rank, EXCLUDED.quotas,
                                   EXCLUDED.is_default)""",
            names,
            [t.description for t in platform.tiers],
            [t.rank for t in platform.tiers],
            [json.dumps(t.quotas, sort_keys=True) for t in platform.tiers],
            platform.default_tier,
        )
    )
    kept = await conn.fetch(
        """SELECT DISTINCT tier FROM entitlements WHERE NOT tier = ANY($1::text[])
           ORDER BY tier""",
        names,
    )
    changed += rows_affected(
        await conn.execute(
            """DELETE FROM tiers WHERE NOT tier = ANY($1::text[])
           AND tier NOT IN (SELECT tier FROM entitlements)""",
            names,
        )
    )
    return changed, tuple(r["tier"] for r in kept)


async def _sync_tier_features(conn: _Conn, platform: Platform) -> int:
    pairs = [(t.name, f) for t in platform.tiers for f in t.features]
    tiers, feats = [p[0] for p in pairs], [p[1] for p in pairs]
    deleted = rows_affected(
        await conn.execute(
            """DELETE FROM tier_features tf WHERE NOT EXISTS (
               SELECT 1 FROM unnest($1::text[], $2::text[]) AS x(t, f)
               WHERE x.t = tf.tier AND x.f = tf.feature)
           AND tf.tier = ANY($3::text[])""",
            tiers,
            feats,
            [t.name for t in platform.tiers],
        )
    )
    inserted = rows_affected(
        await conn.execute(
            """INSERT INTO tier_features (tier, feature)
           SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING""",
            tiers,
            feats,
        )
    )
    return deleted + inserted


async def _sync_commands(conn: _Conn, platform: Platform) -> int:
    names = list(platform.commands)
    changed = rows_affected(
        await conn.execute(
            """INSERT INTO commands (command, feature)
           SELECT * FROM unnest($1::text[], $2::text[])
           ON CONFLICT (command) DO UPDATE SET feature = EXCLUDED.feature
           WHERE commands.feature IS DISTINCT FROM EXCLUDED.feature""",
            names,
            list(platform.commands.values()),
        )
    )
    changed += rows_affected(
        await conn.execute("DELETE FROM commands WHERE NOT command = ANY($1::text[])", names)
    )
    return changed
