"""The stages that check: Postgres against the simulator's ledger, the ETL into ClickHouse
against Postgres, and the slash commands' answers against the ledger."""

from __future__ import annotations

import base64
import contextlib
import io
import math
import time
from dataclasses import asdict

from herwa.demo import _checks
from herwa.demo._checks import Check
from herwa.demo._console import Console
from herwa.demo._run import REDIS_PREFIX, DemoFailed, DemoRun
from herwa.etl.runner import RunOptions, run_once
from herwa.json_types import Json
from herwa.stores import clickhouse_url_client


async def flushed(run: DemoRun) -> None:
    sim, pool = run.require_sim(), run.require_pool()
    with run.console.stage("capture", "Bots flushed: Postgres equals the ledger") as st:
        led = _checks.ledger_counts(sim)
        checks: list[Check] = []
        pg: _checks.PostgresCounts | None = None

        async def equal() -> bool:
            nonlocal checks, pg
            async with pool.acquire() as conn:
                pg = await _checks.postgres_counts(conn)  # type: ignore[arg-type]
            checks = _checks.capture_checks(led, pg)
            async with pool.acquire() as conn:
                checks += await _checks.presence_checks(conn, sim, run.entitled)  # type: ignore[arg-type]
            return all(c.ok for c in checks)

        with contextlib.suppress(DemoFailed):
            await run.wait(equal, 60, "Postgres to equal the ledger", interval=0.5)
        run.checks += checks
        print_checks(run.console, checks)
        if pg is None:
            raise DemoFailed("Postgres could not be read")
        st.numbers = {"ledger": asdict(led), "postgres": asdict(pg)}
        st.ok = all(c.ok for c in checks)
        st.summary = (
            f"{pg.messages:,} messages ({pg.messages_backfilled:,} by backfill), "
            f"{pg.edits:,} edits, {pg.deletes:,} deletions, "
            f"{pg.joins:,}/{pg.leaves:,} joins/leaves, "
            f"{pg.voice_sessions:,} voice sessions, "
            f"{pg.reactions_added:,}/{pg.reactions_removed:,} reactions added/removed"
        )
        if not st.ok:
            raise DemoFailed(
                "Postgres does not equal the ledger: "
                + "; ".join(
                    f"{c.what}: expected {c.expected} got {c.actual}" for c in checks if not c.ok
                )
            )


async def run_etl(run: DemoRun) -> tuple[dict[str, int], dict[str, int]]:
    """Rows loaded per family, and rows expired per ClickHouse table (past their server's
    history window: the simulated servers were joined years ago)."""
    ep = run.require_ep()
    moved: dict[str, int] = {}
    expired: dict[str, int] = {}
    for _ in range(100):
        result = await run_once(
            ep.postgres_dsn,
            ep.clickhouse_url,
            run.redis,
            RunOptions(redis_prefix=REDIS_PREFIX),
        )
        if result.outcome == "failed":
            raise DemoFailed(f"ETL run failed: {result.error}")
        for k, v in result.stats.rows_moved.items():
            moved[k] = moved.get(k, 0) + v
        for k, v in result.stats.rows_expired.items():
            expired[k] = expired.get(k, 0) + v
        if result.outcome == "caught_up":
            return moved, expired
    raise DemoFailed("the ETL did not catch up in 100 runs")


async def etl(run: DemoRun) -> None:
    ep, pool = run.require_ep(), run.require_pool()
    with run.console.stage("etl", "ETL: Postgres staging → ClickHouse") as st:
        started = time.monotonic()
        moved, expired = await run_etl(run)
        took = time.monotonic() - started
        for k, v in moved.items():
            run.etl_rows[k] = run.etl_rows.get(k, 0) + v
        async with pool.acquire() as conn:
            pg = await _checks.postgres_counts(conn)  # type: ignore[arg-type]
        ch = await clickhouse_url_client(ep.clickhouse_url)
        try:
            ch_rows = await _checks.clickhouse_rows(ch)
        finally:
            await ch.close()
        from herwa.etl.families import FAMILIES

        checks = [
            Check(
                "etl",
                f"{f.staging_table} → {f.target_table}",
                pg.rows[f.staging_table] - expired.get(f.target_table, 0),
                ch_rows[f.target_table],
                note=f"{moved.get(f.name, 0):,} rows loaded"
                + (
                    f", {expired[f.target_table]:,} past the tier's history expired"
                    if expired.get(f.target_table)
                    else ""
                ),
            )
            for f in FAMILIES
        ]
        run.checks += checks
        print_checks(run.console, checks, ("Postgres", "ClickHouse"))
        total = sum(moved.values())
        st.numbers = {
            "rows_loaded": moved,
            "clickhouse_rows": ch_rows,
            "rows_per_second": round(total / max(took, 1e-3)),
        }
        st.ok = all(c.ok for c in checks)
        st.summary = f"{total:,} rows loaded ({total / max(took, 1e-3):,.0f} rows/s)"
        if not st.ok:
            raise DemoFailed("ClickHouse does not equal Postgres")


async def commands(run: DemoRun) -> None:
    sim, ep = run.require_sim(), run.require_ep()
    opts = run.opts
    days = max(1, math.ceil(opts.history_days) + 1)
    weeks = min(12, max(1, math.ceil(days / 7) + 1))
    top = next(g for g, t in run.entitled.items() if t == "enterprise")
    free = next((g for g, t in run.entitled.items() if t == "free"), None)
    # The showcase's cohorts and growth span its weeks of newcomers, in its own time zone.
    showcase = sim.world.showcase
    plan: list[tuple[int, str, list[Json]]] = []
    if showcase is not None and showcase.id == top:
        weeks = opts.showcase_weeks
        plan.append((top, "config", [_sub("timezone", _str("name", showcase.timezone))]))
    joined_days = weeks * 7 if showcase is not None and showcase.id == top else days
    plan += [
        (top, "overview", [_int("days", days)]),
        (top, "heatmap", [_int("days", days)]),
        (top, "retention", [_int("days", joined_days), _int("weeks", weeks)]),
        (top, "growth", [_int("days", joined_days + 1)]),
    ]
    # Presence in the pro guild: its owner is another member, within the rate limit.
    pro = next((g for g, t in run.entitled.items() if t == "pro"), None)
    if pro is not None:
        plan.append((pro, "online", [_int("days", 1)]))
    if free is not None:
        plan.append((free, "growth", [_int("days", days)]))
    with run.console.stage("commands", "Slash commands through the simulator") as st:
        ok = True
        answers: list[Check] = []
        for guild, name, options in plan:
            started = time.monotonic()
            result = await sim.invoke_command(guild, name, options, timeout=90, include_bytes=True)
            took = time.monotonic() - started
            entry = save_reply(run, guild, name, result, took)
            run.commands.append(entry)
            entitled = run.entitled[guild] != "free"
            expect_image = name not in ("overview", "config", "online") and entitled
            good = bool(entry["complete"]) and (bool(entry["files"]) == expect_image)
            ok = ok and good
            mark = "✓" if good else "✗"
            run.console.line(
                f"      {mark} /{name} in {run.entitled[guild]}-tier guild …{str(guild)[-4:]}"
                f" ({took:.1f}s): {entry['summary']}"
            )
            if entitled and name != "config":
                answers += answer_checks(run, guild, name, entry, weeks)
        # What members see, number by number, against the ledger.
        run.checks += answers
        print_checks(run.console, answers, ("ledger", "reply"))
        ok = ok and all(c.ok for c in answers)
        # The invocations reach ClickHouse through the usage counters the ETL drains.
        moved, _ = await run_etl(run)
        for k, v in moved.items():
            run.etl_rows[k] = run.etl_rows.get(k, 0) + v
        ch = await clickhouse_url_client(ep.clickhouse_url)
        try:
            recorded = await _checks.command_invocations(ch)
        finally:
            await ch.close()
        led = _checks.ledger_counts(sim)
        check = Check(
            "commands", "command invocations (usage → ClickHouse)", led.commands, recorded
        )
        run.checks.append(check)
        print_checks(run.console, [check], ("ledger", "ClickHouse"))
        st.numbers = {"invoked": len(plan), "images": dict(run.images)}
        st.ok = ok and check.ok
        st.summary = f"{len(plan)} commands answered, {len(run.images)} charts saved"
        if not st.ok:
            raise DemoFailed("a slash command did not answer as expected")


def answer_checks(run: DemoRun, guild: int, name: str, entry: Json, weeks: int) -> list[Check]:
    sim, text = run.require_sim(), str(entry["text"])
    try:
        if name == "overview":
            return _checks.overview_checks(sim, guild, entry["fields"], text)
        if name == "heatmap":
            return _checks.heatmap_checks(sim, guild, text)
        if name == "retention":
            return _checks.retention_checks(sim, guild, text, weeks)
        if name == "growth":
            counts = run.showcase_counts if guild == getattr(sim.world.showcase, "id", None) else {}
            day, count = run.snapshots[guild]
            return _checks.growth_checks(sim, guild, text, counts or {day: count})
        if name == "online":
            return _checks.online_checks(sim, guild, text)
    except _checks.ReplyUnreadable as exc:
        return [Check("commands", f"/{name} reply readable", 1, 0, note=str(exc))]
    raise DemoFailed(f"no check for /{name}")


def save_reply(run: DemoRun, guild: int, name: str, result: Json, took: float) -> Json:
    messages = [m for m in [result.get("original"), *result.get("followups", [])] if m]
    files: list[str] = []
    texts: list[str] = []
    fields: dict[str, str] = {}
    for m in messages:
        if m.get("content"):
            texts.append(m["content"])
        for e in m.get("embeds", []):
            texts += [e.get(k, "") for k in ("title", "description") if e.get(k)]
            for f in e.get("fields", []):
                fields[f["name"]] = f["value"]
        for a in m.get("attachments", []):
            data = a.get("data_base64")
            if not data or not str(a.get("filename", "")).endswith(".png"):
                continue
            raw = base64.b64decode(data)
            width, height = png_ok(raw)  # a chart that does not decode fails the stage
            target = run.opts.results / f"{name}.png"
            target.write_bytes(raw)
            texts.append(f"{target.name}: {width}x{height} PNG")
            files.append(target.name)
            run.images[name] = target.name
    summary = texts[0].splitlines()[0] if texts else ""
    if fields:
        summary = ", ".join(f"{k} {v}" for k, v in list(fields.items())[:4])
    if files:
        summary = (summary + "; " if summary else "") + f"saved {', '.join(files)}"
    return {
        "command": name,
        "guild_id": str(guild),
        "tier": run.entitled[guild],
        "seconds": round(took, 2),
        "complete": bool(result.get("complete")),
        "text": "\n".join(texts),
        "fields": fields,
        "files": files,
        "summary": summary[:160],
    }


def print_checks(
    console: Console, checks: list[Check], columns: tuple[str, str] = ("ledger", "Postgres")
) -> None:
    width = max((len(c.what) for c in checks), default=10)
    console.line(f"      {'':<{width}}  {columns[0]:>12}  {columns[1]:>12}")
    for c in checks:
        tol = f"  (±{c.tolerance:g})" if c.tolerance else ""
        console.line(
            f"      {c.what:<{width}}  {_num(c.expected):>12}  "
            f"{_num(c.actual):>12}  {'✓' if c.ok else '✗'}{tol}"
        )


def _int(name: str, value: int) -> Json:
    return {"name": name, "type": 4, "value": value}


def _str(name: str, value: str) -> Json:
    return {"name": name, "type": 3, "value": value}


def _sub(name: str, *options: Json) -> Json:
    return {"name": name, "type": 1, "options": list(options)}


def _num(value: float) -> str:
    if math.isnan(value):  # a figure the reply did not show (see _checks.retention_checks)
        return "missing"
    return f"{value:,.3f}" if value != int(value) else f"{int(value):,}"


def png_ok(data: bytes) -> tuple[int, int]:
    """Decode a PNG fully (Pillow); returns its size or raises."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.size
