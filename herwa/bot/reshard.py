"""``herwa reshard --shard-count M``: set the bot fleet's target shard count, from which the
pods carry out the blue/green cut-over (:mod:`herwa.bot.generations`). Run by the chart's
reshard Job on every install and upgrade."""

from __future__ import annotations

import argparse
import asyncio
import logging

import asyncpg

log = logging.getLogger(__name__)


async def set_target(conn: asyncpg.Connection, shard_count: int) -> str:
    """Make ``shard_count`` the fleet's target; returns what happens next. Refused (ValueError)
    while a cut-over to another count is under way."""
    if shard_count < 1:
        raise ValueError(f"the shard count must be at least 1, not {shard_count}")
    async with conn.transaction():
        row = await conn.fetchrow("SELECT recording, target, phase FROM bot_fleet FOR UPDATE")
        if row is None:
            await conn.execute(
                "INSERT INTO bot_fleet (recording, target) VALUES ($1, $1)", shard_count
            )
            return f"the fleet records with {shard_count} shards"
        recording, target, phase = row["recording"], row["target"], row["phase"]
        if phase == "cutover" and target != shard_count:
            raise ValueError(
                f"a cut-over from {recording} to {target} shards is under way; run this again "
                "once it is done"
            )
        if shard_count == target:
            return f"unchanged: target {target} shards (recording {recording}, {phase})"
        if shard_count == recording:
            await conn.execute(
                "UPDATE bot_fleet SET target = recording, phase = 'steady', updated_at = now()"
            )
            return f"cancelled the move to {target} shards: recording {recording}"
        # The handovers of an earlier cut-over from this count are history; its anchors stay:
        # each is the last order-sensitive event its guild had recorded by this count.
        await conn.execute("DELETE FROM bot_handovers WHERE shard_count = $1", recording)
        await conn.execute(
            "UPDATE bot_fleet SET target = $1, phase = 'standby', cutover_at = NULL, "
            "updated_at = now()",
            shard_count,
        )
        return (
            f"target {shard_count} shards: pods of that count connect on standby and take over "
            f"from the {recording} recording shards once all are connected"
        )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard-count", type=int, required=True, help="the shard count the bot fleet should run"
    )


def run(args: argparse.Namespace) -> int:
    from herwa import config

    async def main() -> int:
        dsn = config.postgres().dsn.get_secret_value()
        conn = await asyncpg.connect(dsn)
        try:
            log.info("herwa reshard: %s", await set_target(conn, args.shard_count))
        except ValueError as exc:
            log.error("herwa reshard: %s", exc)
            return 1
        finally:
            await conn.close()
        return 0

    return asyncio.run(main())
