"""The live stages: the bot processes connect, backfill the channel history and capture the
replayed traffic, with voice, member churn and reactions in real time at the end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

import aiohttp

from herwa.bot.snapshots import UPSERT
from herwa.demo import _checks
from herwa.demo._bots import BotProcess, bot_env, metric_sum, parse_metrics, pod_names
from herwa.demo._run import DemoFailed, DemoRun

DAY_MS = 86_400_000
SHARDS = 4
BOTS = 2


async def start_bots(run: DemoRun) -> None:
    ep, sim = run.require_ep(), run.require_sim()
    window_h = min(720.0, run.opts.history_days * 24 + 2)
    base = {
        **ep.as_env(),
        **sim.env(),
        "HERWA_BOT_BACKFILL_WINDOW_HOURS": f"{window_h:g}",
    }
    logs = run.opts.results / "logs"
    with run.console.stage("bots", f"{BOTS} bot processes sharing {SHARDS} shards") as st:
        run.bots_started = time.monotonic()
        names = pod_names(BOTS, SHARDS)
        run.bots = [BotProcess(n, bot_env(base, n, SHARDS), logs / f"{n}.log") for n in names]
        await asyncio.gather(*(b.start() for b in run.bots))
        shards = await run.wait(lambda: all_connected(run), 90, "every shard connected once")
        await run.wait(
            lambda: _true(sim.app.find_command("overview", None) is not None),
            30,
            "the command list synced by the owner of shard 0",
        )
        st.numbers = {
            b.name: {
                "pid": b.pid,
                "metrics": f"http://127.0.0.1:{b.port}/metrics",
                "shards": shards[b.name],
            }
            for b in run.bots
        }
        st.summary = "; ".join(f"{b.name} (pid {b.pid}) shards {shards[b.name]}" for b in run.bots)


async def all_connected(run: DemoRun) -> dict[str, list[int]] | None:
    http = run.require_http()
    shards: dict[str, list[int]] = {}
    for b in run.bots:
        if not b.alive:
            raise DemoFailed(f"{b.name} exited:\n{b.tail()}")
        try:
            ready = await b.readyz(http)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        if not ready.get("ready") or not ready.get("shards_connected"):
            return None
        shards[b.name] = list(ready["shards_connected"])
    every = sorted(s for v in shards.values() for s in v)
    return shards if every == list(range(SHARDS)) else None


async def backfill(run: DemoRun) -> None:
    sim, pool = run.require_sim(), run.require_pool()
    expected = _checks.ledger_counts(sim).messages  # no live traffic yet: all history
    with run.console.stage("backfill", "Bots read the channel history (backfill)") as st:
        # The bots start reading history as soon as a guild is available on a shard.
        started = run.bots_started
        last = time.monotonic()

        async def done() -> bool:
            nonlocal last
            got = int(await pool.fetchval("SELECT count(*) FROM message_events"))
            snaps = int(
                await pool.fetchval("SELECT count(DISTINCT guild_id) FROM member_count_snapshots")
            )
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                rate = got / max(1e-3, last - started)
                run.console.live(
                    f"backfilled {got:,} / {expected:,} messages "
                    f"({rate:,.0f}/s); snapshots {snaps}/{len(sim.world.guilds)}"
                )
            return got >= expected and snaps >= len(sim.world.guilds)

        await run.wait(done, max(90.0, expected / 100), "the backfill to finish")
        today = datetime.now(UTC).date()
        run.snapshots = {g.id: (today, len(g.members)) for g in sim.world.guilds.values()}
        got = int(await pool.fetchval("SELECT count(*) FROM message_events"))
        st.numbers = {"expected": expected, "backfilled": got}
        took = time.monotonic() - started
        st.summary = (
            f"{got:,} of {expected:,} historical messages, done {took:.1f}s after "
            f"the bots started ({got / took:,.0f}/s)"
        )
        if got != expected:
            st.ok = False
            raise DemoFailed(f"backfill stored {got} messages, the ledger has {expected}")


async def traffic(run: DemoRun) -> None:
    opts, sim = run.opts, run.require_sim()
    replay_s = opts.duration * 0.85
    speed = opts.history_days * DAY_MS / 1000 / replay_s
    title = (
        f"Live traffic: {opts.history_days:g} days replayed in {opts.duration:g}s "
        f"at ~{opts.rate:g} events/s"
    )
    with run.console.stage("traffic", title) as st:
        emitted0 = sum(sim.ledger.events_emitted.values())
        newcomers = await showcase_newcomers(run)
        now = int(time.time() * 1000)
        sim.start_activity(
            opts.rate, replay_from_ms=now - int(opts.history_days * DAY_MS), speed=speed
        )
        started = time.monotonic()
        # Stopped on time even when a pass of the loop below is slow (the bots' metrics
        # answer late on a busy machine): replaying on past the present would pile the
        # traffic of those seconds into the present hour of every chart.
        stopping: list[asyncio.Task[None]] = []
        replay_end = asyncio.get_running_loop().call_later(
            replay_s, lambda: stopping.append(asyncio.ensure_future(sim.stop_activity()))
        )
        captured0 = await captured_events(run)
        peak = 0.0
        prev_t, prev_c = started, captured0
        voice_from = started + replay_s
        presence = sorted(_checks.presence_guilds(sim, run.entitled))
        voice_on = False
        while (elapsed := time.monotonic() - started) < opts.duration:
            await asyncio.sleep(min(1.0, max(0.05, opts.duration - elapsed)))
            if not voice_on and time.monotonic() >= voice_from:
                # The replay has reached the present: from now on only voice and member
                # churn, in real time (more messages at the present hour would dwarf the
                # replayed weeks).
                await sim.stop_activity()
                voice_on = True
                # A few leaves for certain: a short live phase may see only a step or two
                # of member churn, all joins, and the checks compare leaves as well.
                sim.step(3, family="leave")
            if voice_on:
                sim.step(max(1, int(opts.rate * 0.1)), family="voice")
                sim.step(max(1, int(opts.rate * 0.01)), family="member")
                # Reactions carry no time either: given and taken back live too.
                sim.step(max(1, int(opts.rate * 0.1)), family="reaction")
                sim.step(1, family="unreact")
                # Presence in random guilds (only the granted ones record it), and more in
                # the granted ones so that they have something to show.
                sim.step(max(1, int(opts.rate * 0.02)), family="presence")
                for guild in presence:
                    for _ in range(max(1, int(opts.rate * 0.02))):
                        sim.activity.presence_random(guild, sim.now_ms())
            t, c = time.monotonic(), await captured_events(run)
            rate = (c - prev_c) / max(1e-3, t - prev_t)
            peak = max(peak, rate)
            prev_t, prev_c = t, c
            virtual = datetime.fromtimestamp(sim.now_ms() / 1000, UTC)
            emitted = sum(sim.ledger.events_emitted.values()) - emitted0
            depth = await buffer_depth(run)
            run.console.live(
                f"t={t - started:4.0f}s  sim clock {virtual:%Y-%m-%d %H:%M}  "
                f"emitted {emitted:,}  captured {c - captured0:,.0f} "
                f"({rate:,.0f} events/s)  bot buffers {depth:,} rows"
            )
        replay_end.cancel()
        await asyncio.gather(*stopping)
        await sim.stop_activity()
        sim.end_voice_sessions()
        snapshots = await showcase_snapshots(run)
        emitted = sum(sim.ledger.events_emitted.values()) - emitted0
        took = time.monotonic() - started
        captured = await captured_events(run) - captured0
        st.numbers = {
            "events_emitted": emitted,
            "gateway_events_captured": int(captured),
            "events_per_second": round(captured / took, 1),
            "peak_events_per_second": round(peak, 1),
            "replay_speed": round(speed, 1),
        }
        st.summary = (
            f"{emitted:,} events emitted, {captured:,.0f} gateway events captured "
            f"({captured / took:,.0f}/s, peak {peak:,.0f}/s)"
        )
        if newcomers is not None:
            st.numbers["showcase"] = {
                "newcomers": newcomers[0],
                "newcomer_messages": newcomers[1],
                "snapshots_written": snapshots,
            }
            st.summary += (
                f"; showcase: {newcomers[0]:,} newcomers with {newcomers[1]:,} messages over "
                f"{opts.showcase_weeks} weeks, {snapshots} daily member counts"
            )


async def showcase_newcomers(run: DemoRun) -> tuple[int, int] | None:
    """The showcase's newcomers of the past weeks, delivered before the replay (their joins
    carry their time, like the replay's): what its retention cohorts and growth show."""
    opts, sim = run.opts, run.require_sim()
    showcase = sim.world.showcase
    if showcase is None:
        return None
    run.console.live(f"showcase: {opts.showcase_weeks} weeks of newcomers …")
    # About one newcomer a day per 150 members: a server growing by a third in two months.
    per_day = opts.showcase_members / 150
    return await sim.showcase_newcomers(days=opts.showcase_weeks * 7, joins_per_day=per_day)


async def showcase_snapshots(run: DemoRun) -> int:
    """The showcase's daily member count over its weeks of newcomers, from the ledger.

    The bots take one snapshot a UTC day and ran only today, when the showcase's past weeks had
    not been delivered yet; this writes what they would have taken at 00:00 UTC (the default
    snapshot hour) on each earlier day, and today's count now, with the bots' own statement
    (today's replaces theirs, as a later snapshot of the same day does). They go through the
    ETL like any snapshot, and /growth's member counts are checked against these numbers."""
    sim, pool = run.require_sim(), run.require_pool()
    showcase = sim.world.showcase
    if showcase is None:
        return 0
    now = datetime.now(UTC)
    events = sorted(
        (e.at_ms, 1 if e.event == "join" else -1)
        for e in sim.ledger.member_events
        if e.guild_id == showcase.id
    )
    current = len(showcase.members)
    first = now.date() - timedelta(days=run.opts.showcase_weeks * 7)
    counts: dict[date, tuple[datetime, int]] = {now.date(): (now, current)}
    day = first
    while day < now.date():
        taken = datetime.combine(day, dtime(), UTC)
        later = sum(delta for at_ms, delta in events if at_ms > taken.timestamp() * 1000)
        counts[day] = (taken, current - later)
        day += timedelta(days=1)
    async with pool.acquire() as conn:
        for day, (taken, count) in sorted(counts.items()):
            await conn.execute(UPSERT, showcase.id, day, count, taken)
    run.showcase_counts = {day: count for day, (_, count) in counts.items()}
    return len(counts)


async def captured_events(run: DemoRun) -> float:
    total = 0.0
    for b in run.bots:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            samples = parse_metrics(await b.metrics(run.require_http()))
            total += metric_sum(samples, "herwa_bot_gateway_events_total")
    return total


async def buffer_depth(run: DemoRun) -> int:
    total = 0.0
    for b in run.bots:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            samples = parse_metrics(await b.metrics(run.require_http()))
            total += metric_sum(samples, "herwa_bot_buffer_depth_rows")
    return int(total)


async def _true(value: bool) -> bool:
    return value
