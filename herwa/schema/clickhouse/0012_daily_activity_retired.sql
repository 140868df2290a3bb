-- Herwa ClickHouse schema, version 12: message_activity_daily (0003) is no longer maintained.
--
-- Since 0009 the daily rollup was the sum over the bot flag of message_activity_author_days,
-- written again by every recompute, and read by nothing but the weekly recompute. That write
-- was nearly the size of the messages themselves, in the recompute that is half of
-- ClickHouse's ETL work. The weekly recompute (rollups.py) now sums the author days over the
-- bot flag itself, zero rows included, so the weekly and per-author week tables come out the
-- same. Every author the weekly table holds for a week has author-day rows in that week: all
-- recomputes since 0009 derived both from them.
--
-- The table stays for one release, as migrations must stay backwards compatible for one
-- (README, "Schema and migrations"): the previous release's ETL still writes it, so a rollback
-- or an ETL run of that release in flight during the upgrade keeps working. Deletion requests
-- and history expiry still reach it (they find their tables in the catalogue). Its comment says
-- it is stale; the next release's migration drops it.
ALTER TABLE message_activity_daily
    MODIFY COMMENT 'No longer maintained since ClickHouse migration 0012: read message_activity_author_days summed over is_bot. Dropped by the next release.';
