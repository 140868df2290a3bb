"""The ETL's tests; the staging and ClickHouse helpers below are shared with other suites."""

from tests.etl._support import (
    T0,
    actual_hourly,
    ch_rows,
    ch_value,
    clickhouse,
    expected_hourly,
    stage_messages,
    stage_other_families,
)

__all__ = [
    "T0",
    "actual_hourly",
    "ch_rows",
    "ch_value",
    "clickhouse",
    "expected_hourly",
    "stage_messages",
    "stage_other_families",
]
