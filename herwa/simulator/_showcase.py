"""The showcase server's past: its channel history and its newcomers, with a daily and weekly
rhythm in the server's time zone (quiet nights, busier evenings and weekends).

Times are drawn by thinning: a uniform candidate time is kept with the probability of its local
hour's and weekday's weight relative to the busiest, so every hour's share follows the rhythm.
Newcomers join at such times; each then writes at a rate that follows their activity weight
while they stay engaged (``ShowcaseConfig``: lurkers never write, most drift away within
weeks, a few stay), which is what gives retention cohorts their fading shape. Everything is
drawn from the scenario's generator, in time order, so a seed gives the same past.
"""

from __future__ import annotations

import datetime as dt
import heapq
import random
import zoneinfo

from herwa.simulator._activity import DIURNAL, WEEKLY, Activity
from herwa.simulator._world import Guild

_DAY_MS = 86_400_000
_PEAK = max(DIURNAL) * max(WEEKLY)
# A newcomer's messages per day per unit of activity weight while engaged; the weight is capped
# so that one extreme draw does not write a whole cohort's share.
_RATE_PER_WEIGHT = 1.5
_WEIGHT_CAP = 25.0


_QUARTER_MS = 900_000  # every UTC offset is a whole number of quarter hours
_rhythms: dict[tuple[str, int], float] = {}


def rhythm(zone: zoneinfo.ZoneInfo, at_ms: int) -> float:
    """The local hour's and weekday's weight relative to the busiest (0..1]."""
    key = (zone.key, at_ms // _QUARTER_MS)
    weight = _rhythms.get(key)
    if weight is None:
        local = dt.datetime.fromtimestamp(key[1] * _QUARTER_MS / 1000, tz=zone)
        weight = _rhythms[key] = DIURNAL[local.hour] * WEEKLY[local.weekday()] / _PEAK
    return weight


def rhythmic_times(
    rng: random.Random, zone: zoneinfo.ZoneInfo, start_ms: int, end_ms: int, count: int
) -> list[int]:
    """``count`` times in [start, end), sorted, following the local rhythm."""
    out: list[int] = []
    while len(out) < count:
        t = rng.randrange(start_ms, end_ms)
        if rng.random() < rhythm(zone, t):
            out.append(t)
    out.sort()
    return out


def _next_time(rng: random.Random, zone: zoneinfo.ZoneInfo, after_ms: int, per_day: float) -> int:
    """The next time after ``after_ms`` of a rhythmic process averaging about ``per_day``."""
    t = after_ms
    while True:
        t += max(1, int(rng.expovariate(per_day / _PEAK) * _DAY_MS))
        if rng.random() < rhythm(zone, t):
            return t


def showcase_history_message(activity: Activity, guild: Guild, at_ms: int) -> None:
    """One message in the showcase's text channels before the bot was there, reachable only
    through channel history (``rhythmic_times`` gives the times)."""
    author = activity.pick_author(guild, at_ms=at_ms)
    channel = activity.pick_text_channel(guild.text_channels())
    kind = activity.pick_kind(channel.id)
    activity.post_message(guild.id, channel.id, author.user.id, kind, at_ms=at_ms, historical=True)


def showcase_newcomers(
    activity: Activity, guild: Guild, start_ms: int, end_ms: int, joins_per_day: float
) -> tuple[int, int]:
    """Members joining in [start, end) and what they write until ``end``, in time order (the
    gateway delivers them as they happen). Returns (joins, messages)."""
    rng = activity.rng
    zone = zoneinfo.ZoneInfo(guild.timezone)
    joins = int((end_ms - start_ms) / _DAY_MS * joins_per_day)
    texts = guild.text_channels()
    # (time, sequence, user id or 0 for a join): the sequence keeps equal times in order.
    queue: list[tuple[int, int, int]] = [
        (t, i, 0) for i, t in enumerate(rhythmic_times(rng, zone, start_ms, end_ms, joins))
    ]
    heapq.heapify(queue)
    seq = len(queue)
    messages = 0
    activity.past_stream = True
    try:
        while queue:
            t, _, user_id = heapq.heappop(queue)
            if user_id == 0:
                user_id = activity.member_join(guild.id, at_ms=t)
            else:
                channel = activity.pick_text_channel(texts)
                kind = activity.pick_kind(channel.id)
                activity.post_message(guild.id, channel.id, user_id, kind, at_ms=t)
                messages += 1
            member = guild.members[user_id]
            until = min(end_ms, member.engaged_until_ms or end_ms)
            per_day = _RATE_PER_WEIGHT * min(member.weight, _WEIGHT_CAP)
            nxt = _next_time(rng, zone, t, per_day)
            if nxt < until:
                heapq.heappush(queue, (nxt, seq, user_id))
                seq += 1
    finally:
        activity.past_stream = False
    return joins, messages
