from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pydantic import SecretStr

from herwa.stores import clickhouse_url_client, postgres_connection

if TYPE_CHECKING:
    from clickhouse_connect.driver.asyncclient import AsyncClient

log = logging.getLogger(__name__)

Store = Literal["postgres", "clickhouse"]

# Arbitrary but fixed: every `herwa migrate` in every pod serialises on this advisory lock, for
# ClickHouse too, which has no locks of its own.
_LOCK_KEY = 0x6865727761_01  # "herwa" + 1

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The schema cannot be brought up to date safely."""


@dataclass(frozen=True)
class Migration:
    store: Store
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        """ClickHouse takes one statement per request; a statement ends with ';' at a line end."""
        body = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [s.strip() for s in re.split(r";\s*$", body, flags=re.M) if s.strip()]


@dataclass
class MigrationReport:
    applied: dict[Store, list[int]] = field(
        default_factory=lambda: {"postgres": [], "clickhouse": []}
    )
    current: dict[Store, int] = field(default_factory=lambda: {"postgres": 0, "clickhouse": 0})


def discover(store: Store) -> list[Migration]:
    folder = resources.files("herwa.schema").joinpath(store)
    migrations = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"{store}/{entry.name}: name must look like 0001_what.sql")
        migrations.append(
            Migration(store, int(match["version"]), match["name"], entry.read_text("utf-8"))
        )
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{store} has two migrations with one version: {versions}")
    return migrations


async def migrate(
    postgres_dsn: SecretStr | str, clickhouse_url: SecretStr | str
) -> MigrationReport:
    """Bring both stores up to the newest version. Safe to run from several pods at once."""
    report = MigrationReport()
    conn = await postgres_connection(postgres_dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await migrate_postgres(conn, report)
            await _migrate_clickhouse(clickhouse_url, report)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
    return report


async def pending(postgres_dsn: SecretStr | str, clickhouse_url: SecretStr | str) -> list[str]:
    """The migrations this release knows that either store has not applied yet ("postgres
    0016_x", ...); empty once the schema is current. Reads only: a role's pod waits on this
    before it starts, while the migrate Job applies. A store ahead of this release is current
    for it (migrations are backwards compatible, which a rolling upgrade relies on); an applied
    migration whose checksum differs raises."""
    out: list[str] = []
    conn = await postgres_connection(postgres_dsn)
    try:
        try:
            rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        except asyncpg.UndefinedTableError:
            rows = []
    finally:
        await conn.close()
    out += _missing("postgres", {r["version"]: r["checksum"] for r in rows})

    raw = (
        clickhouse_url.get_secret_value()
        if isinstance(clickhouse_url, SecretStr)
        else clickhouse_url
    )
    database = urlsplit(raw).path.strip("/") or "default"
    client = await clickhouse_url_client(urlunsplit(urlsplit(raw)._replace(path="/default")))
    try:
        exists = await client.query(
            "SELECT count() FROM system.tables WHERE database = {db:String} "
            "AND name = 'schema_migrations'",
            parameters={"db": database},
        )
        applied: dict[int, str] = {}
        if exists.result_rows[0][0]:
            result = await client.query(
                "SELECT version, checksum FROM {db:Identifier}.schema_migrations FINAL",
                parameters={"db": database},
            )
            applied = {int(v): str(c) for v, c in result.result_rows}
    finally:
        await client.close()
    return out + _missing("clickhouse", applied)


def _missing(store: Store, applied: dict[int, str]) -> list[str]:
    missing = []
    for m in discover(store):
        if m.version not in applied:
            missing.append(f"{store} {m.version:04d}_{m.name}")
        elif applied[m.version] != m.checksum:
            raise MigrationError(
                f"{store} migration {m.version:04d}_{m.name} differs from the one applied; "
                "this image and the database disagree on the schema"
            )
    return missing


def _check_applied(store: Store, applied: dict[int, str], known: list[Migration]) -> None:
    by_version = {m.version: m for m in known}
    for version, checksum in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"{store} is at version {max(applied)}, newer than this release knows "
                f"({len(known)}); run the newer release's migrations or restore a backup"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"{store} migration {version:04d}_{migration.name} was changed after it was "
                "applied; add a new migration instead of editing an applied one"
            )
    newest = max(applied, default=0)
    late = [m for m in known if m.version not in applied and m.version < newest]
    if late:
        raise MigrationError(
            f"{store} migration {late[0].version:04d}_{late[0].name} is older than the applied "
            f"version {newest}; give it a number above {newest}"
        )


async def postgres_history(conn: asyncpg.Connection) -> dict[int, str]:
    """The applied Postgres migrations (version → checksum); creates the record table."""
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            checksum   text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


async def apply_postgres(conn: asyncpg.Connection, migration: Migration) -> None:
    """One migration and its record, in one transaction."""
    log.info("applying postgres migration %04d_%s", migration.version, migration.name)
    async with conn.transaction():
        await conn.execute(migration.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            migration.checksum,
        )


async def clickhouse_history(client: AsyncClient) -> dict[int, str]:
    """The applied ClickHouse migrations (version → checksum); creates the record table."""
    await client.command(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version    UInt32,
            name       String,
            checksum   String,
            applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = ReplacingMergeTree(applied_at) ORDER BY version
        """
    )
    result = await client.query("SELECT version, checksum FROM schema_migrations FINAL")
    return {int(version): str(checksum) for version, checksum in result.result_rows}


async def apply_clickhouse(client: AsyncClient, migration: Migration) -> None:
    """One migration, statement by statement, then its record (no transactions: see 0001)."""
    log.info("applying clickhouse migration %04d_%s", migration.version, migration.name)
    for statement in migration.statements():
        await client.command(statement)
    await client.insert(
        "schema_migrations",
        [[migration.version, migration.name, migration.checksum]],
        column_names=["version", "name", "checksum"],
    )


async def migrate_postgres(conn: asyncpg.Connection, report: MigrationReport) -> None:
    """Postgres alone, without ``migrate``'s cross-pod lock: for callers that own the database."""
    applied = await postgres_history(conn)
    known = discover("postgres")
    _check_applied("postgres", applied, known)
    for migration in known:
        if migration.version in applied:
            continue
        await apply_postgres(conn, migration)
        report.applied["postgres"].append(migration.version)
    report.current["postgres"] = known[-1].version if known else 0


async def _migrate_clickhouse(url: SecretStr | str, report: MigrationReport) -> None:
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    database = urlsplit(raw).path.strip("/") or "default"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise MigrationError(f"ClickHouse database name {database!r} is not a plain identifier")
    # The database may not exist yet, and a client bound to a missing database cannot connect.
    bootstrap = await clickhouse_url_client(urlunsplit(urlsplit(raw)._replace(path="/default")))
    try:
        await bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    finally:
        await bootstrap.close()

    client = await clickhouse_url_client(raw)
    try:
        applied = await clickhouse_history(client)
        known = discover("clickhouse")
        _check_applied("clickhouse", applied, known)
        for migration in known:
            if migration.version in applied:
                continue
            await apply_clickhouse(client, migration)
            report.applied["clickhouse"].append(migration.version)
        report.current["clickhouse"] = known[-1].version if known else 0
    finally:
        await client.close()
