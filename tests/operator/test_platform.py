"""The platform file: strict validation, and idempotent seeding into real Postgres."""

from __future__ import annotations

import asyncpg
import pytest

from herwa import platform
from herwa.devstack import Endpoints

MINI = """
features: [{name: a}, {name: b}]
commands: {one: a, two: b}
tiers:
  - {name: free, rank: 0, features: [a], quotas: {queries_per_month: 10}}
  - {name: pro, rank: 1, features: [a, b], quotas: {queries_per_month: 100}}
default_tier: free
"""


def test_default_platform_is_valid_and_complete() -> None:
    plat = platform.load()
    assert [t.name for t in plat.tiers] == ["free", "pro", "enterprise"]
    # Which commands it sells is held against what the bot registers, not against a list kept
    # here (tests/commands/test_registry.py); each needs a feature some tier grants.
    granted = {f for t in plat.tiers for f in t.features}
    assert plat.commands
    assert set(plat.commands.values()) <= granted
    assert all(t.quotas["queries_per_month"] > 0 for t in plat.tiers)
    assert plat.quota_names >= {"queries_per_month"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINI.replace("features: [a], quotas", "features: [a, z], quotas"),
            "tier 'free' grants feature 'z', which is not defined",
        ),
        (MINI.replace("two: b", "two: nope"), "command 'two' needs feature 'nope'"),
        (
            MINI.replace("default_tier: free", "default_tier: gold"),
            "default_tier 'gold' is not a defined tier",
        ),
        (MINI.replace("default_tier: free", ""), "default_tier: Field required"),
        (MINI.replace("rank: 1", "rank: 0"), "two tiers share rank 0"),
        (MINI.replace("{name: b}", "{name: a}"), "feature 'a' is defined twice"),
        (MINI + "colour: blue\n", "colour: Extra inputs are not permitted"),
        (
            MINI.replace("queries_per_month: 10}", "queries_per_month: -1}"),
            "greater than or equal to 0",
        ),
        (MINI.replace("name: pro", "name: Pro!"), "should match pattern"),
        ("- just a list", "expected a mapping"),
        ("tiers: [", "not valid YAML"),
    ],
)
def test_invalid_platform_is_rejected_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(platform.PlatformError, match=r"x\.yaml") as err:
        platform.parse(text, "x.yaml")
    assert message in str(err.value)


async def _tables(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {
        "features": [
            tuple(r)
            for r in await conn.fetch("SELECT feature, description FROM features ORDER BY 1")
        ],
        "tiers": [
            tuple(r)
            for r in await conn.fetch("SELECT tier, rank, quotas::text FROM tiers ORDER BY 1")
        ],
        "tier_features": [
            tuple(r)
            for r in await conn.fetch("SELECT tier, feature FROM tier_features ORDER BY 1, 2")
        ],
        "commands": [
            tuple(r) for r in await conn.fetch("SELECT command, feature FROM commands ORDER BY 1")
        ],
    }


async def test_seed_is_idempotent_and_follows_the_file(migrated: Endpoints) -> None:
    conn = await asyncpg.connect(migrated.postgres_dsn)
    try:
        defined = platform.load()
        first = await platform.seed(conn, defined)
        assert first.changed == (
            len(defined.features)
            + len(defined.tiers)
            + sum(len(t.features) for t in defined.tiers)
            + len(defined.commands)
        )
        snapshot = await _tables(conn)
        again = await platform.seed(conn, platform.load())
        assert again.changed == 0
        assert await _tables(conn) == snapshot

        # A smaller file: removed commands, features and tiers go; changed quotas follow.
        await platform.seed(conn, platform.parse(MINI))
        tables = await _tables(conn)
        assert tables["commands"] == [("one", "a"), ("two", "b")]
        assert tables["tiers"] == [
            ("free", 0, '{"queries_per_month": 10}'),
            ("pro", 1, '{"queries_per_month": 100}'),
        ]
        assert tables["tier_features"] == [("free", "a"), ("pro", "a"), ("pro", "b")]
        assert [f for f, _ in tables["features"]] == ["a", "b"]
    finally:
        await conn.close()


async def test_seed_keeps_a_removed_tier_that_is_still_in_use(migrated: Endpoints) -> None:
    conn = await asyncpg.connect(migrated.postgres_dsn)
    try:
        await platform.seed(conn, platform.load())
        await conn.execute(
            """INSERT INTO entitlements (guild_id, tier, features, source_namespace,
                   source_name, source_uid)
               VALUES (81384788765712384, 'enterprise', '{export}', 'n', 'x', 'u')"""
        )
        report = await platform.seed(conn, platform.parse(MINI))
        assert report.kept_tiers == ("enterprise",)
        assert await conn.fetchval("SELECT count(*) FROM tiers WHERE tier = 'enterprise'") == 1
    finally:
        await conn.close()


async def test_seed_marks_exactly_the_default_tier(migrated: Endpoints) -> None:
    conn = await asyncpg.connect(migrated.postgres_dsn)
    default = "SELECT array_agg(tier) FROM tiers WHERE is_default"
    try:
        await platform.seed(conn, platform.load())
        assert await conn.fetchval(default) == ["free"]
        # The default moves: the old tier loses its mark in the same seeding, nothing else moves.
        moved = await platform.seed(conn, platform.parse(MINI.replace("tier: free", "tier: pro")))
        assert await conn.fetchval(default) == ["pro"]
        again = await platform.seed(conn, platform.parse(MINI.replace("tier: free", "tier: pro")))
        assert again.changed == 0
        assert moved.tiers >= 2
        # A second mark is refused by the schema itself, whoever writes it.
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("UPDATE tiers SET is_default = true WHERE tier = 'free'")
    finally:
        await conn.close()
