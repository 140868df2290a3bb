"""/overview's numbers come from one ClickHouse statement: one round trip, its three parts run
side by side by the server, instead of three queries one after the other."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from herwa import analytics
from herwa.analytics import Overview
from tests.commands.conftest import D0, Harness, build_dataset

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient


class CountingClient:
    """The real read-only client, counting the statements sent through it."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.queries = 0

    async def query(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return await self.client.query(*args, **kwargs)


async def test_overview_is_one_statement_with_exact_numbers(harness: Harness) -> None:
    h = harness
    await build_dataset(h)
    counting = CountingClient(h.rt.deps.clickhouse)
    week = (D0, D0 + timedelta(days=7))
    overview = await analytics.overview(cast("AsyncClient", counting), h.guild, *week)
    # The data set of test_analytics: bots and the deleted message are not counted.
    assert overview == Overview(
        messages=9, active_members=3, voice_seconds=7200.0, voice_members=2, joins=3, leaves=1
    )
    assert counting.queries == 1
    # The other guild's data never shows, and an empty range is all zeros.
    empty = await analytics.overview(
        cast("AsyncClient", counting), h.guild, D0 - timedelta(days=30), D0 - timedelta(days=23)
    )
    assert empty == Overview(0, 0, 0.0, 0, 0, 0)
