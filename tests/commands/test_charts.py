"""The charts: fixed sizes, identical bytes for identical data from any thread, data that shows
where it should (a hot hour is brighter than a cold one, a week ahead is blank, joins rise and
leaves fall from the zero line, the member count is drawn), round ticks that never crowd; and a
process that never draws a chart never loads Pillow, and none loads matplotlib."""

from __future__ import annotations

import io
import itertools
import random
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageChops

from herwa.bot.commands import (
    GROWTH_SIZE,
    HEATMAP_SIZE,
    JOINS_COLOUR,
    LEAVES_COLOUR,
    MAX_DATE_TICKS,
    MEMBERS_COLOUR,
    RETENTION_SIZE,
    count_labels,
    date_ticks,
    growth_png,
    heatmap_png,
    nice_ticks,
    png_size,
    retention_png,
)

Grid = list[list[int]]
RGB = tuple[int, int, int]


def image(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def rgb(colour: str) -> RGB:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def near(png: bytes, colour: str, tolerance: int = 10) -> Image.Image:
    """A mask of the pixels within ``tolerance`` of ``colour`` in every channel."""
    picture = image(png).convert("RGB")
    diff = ImageChops.difference(picture, Image.new("RGB", picture.size, rgb(colour)))
    r, g, b = diff.split()
    return ImageChops.lighter(r, ImageChops.lighter(g, b)).point(
        lambda v: 255 if v <= tolerance else 0
    )


def count(mask: Image.Image) -> int:
    return mask.histogram()[255]


def axes_box(
    size: tuple[int, int], left: float, bottom: float, width: float, height: float
) -> tuple[float, float, float, float]:
    """Pixel bounds (left, top, right, bottom) of axes placed by figure fractions."""
    w, h = size
    return left * w, (1 - bottom - height) * h, (left + width) * w, (1 - bottom) * h


HEATMAP_AXES = axes_box(HEATMAP_SIZE, 0.06, 0.12, 0.86, 0.76)
RETENTION_AXES = axes_box(RETENTION_SIZE, 0.2, 0.1, 0.75, 0.8)
GROWTH_AXES = axes_box(GROWTH_SIZE, 0.07, 0.14, 0.83, 0.74)


def heatmap_cell(png: bytes, day: int, hour: int) -> RGB:
    left, top, right, bottom = HEATMAP_AXES
    x = left + (hour + 0.5) * (right - left) / 24
    y = top + (day + 0.5) * (bottom - top) / 7
    pixel = image(png).convert("RGB").getpixel((round(x), round(y)))
    assert isinstance(pixel, tuple)
    return pixel[0], pixel[1], pixel[2]


def grids(seed: int) -> list[tuple[Grid, str]]:
    rng = random.Random(seed)
    out: list[tuple[Grid, str]] = [([[0] * 24 for _ in range(7)], "Messages, nothing")]
    for top in (3, 250, 9_000_000):
        grid = [[rng.randint(0, top) for _ in range(24)] for _ in range(7)]
        out.append((grid, f"Messages, 2024-01-{top % 28 + 1:02d} to 2024-03-31 (Asia/Kolkata)"))
    return out


def chunks(png: bytes) -> list[bytes]:
    kinds, at = [], 8
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        kinds.append(png[at + 4 : at + 8])
        at += 12 + length
    return kinds


def test_heatmap_is_deterministic_opaque_and_carries_no_text_chunks() -> None:
    cases = grids(1)
    first = [heatmap_png(*case) for case in cases]
    # Largest scale first this time: nothing of one render may survive into the next.
    again = [heatmap_png(*case) for case in reversed(cases)][::-1]
    assert first == again
    for png in first:
        assert png_size(png) == HEATMAP_SIZE
        assert image(png).mode == "RGB"
        assert set(chunks(png)) == {b"IHDR", b"IDAT", b"IEND"}
    assert len(set(first)) == len(first)


def test_heatmap_renders_side_by_side_in_threads() -> None:
    cases = grids(2) * 3
    serial = [heatmap_png(*case) for case in cases]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(lambda case: heatmap_png(*case), cases)) == serial
    growth = (
        [date(2024, 3, 1) + timedelta(days=i) for i in range(30)],
        list(range(30)),
        [i % 4 for i in range(30)],
        [1000 + i for i in range(30)],
        "Member growth",
    )
    alone = growth_png(*growth)
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert set(pool.map(lambda _: growth_png(*growth), range(8))) == {alone}


def brightness(colour: RGB) -> int:
    return sum(colour)


def test_heatmap_shows_the_hot_hour_bright_and_the_scale_follows_the_data() -> None:
    grid = [[1] * 24 for _ in range(7)]
    grid[2][14] = 500  # Wednesday 14:00
    png = heatmap_png(grid, "Messages")
    hot, cold = heatmap_cell(png, 2, 14), heatmap_cell(png, 2, 13)
    assert hot == (253, 231, 36)  # viridis' top: yellow
    assert cold == (68, 1, 84)  # and its bottom: dark purple
    grid[2][13] = 250
    halfway = heatmap_cell(heatmap_png(grid, "Messages"), 2, 13)
    assert brightness(cold) < brightness(halfway) < brightness(hot)
    # The colour bar's labels (right of the bar) change with the scale; the cells do not when
    # every count is multiplied alike.
    tenfold = heatmap_png([[v * 10_000 for v in row] for row in grid], "Messages")
    labels = (int(0.95 * HEATMAP_SIZE[0]) + 2, 0, HEATMAP_SIZE[0], HEATMAP_SIZE[1])
    same = heatmap_png(grid, "Messages")
    assert image(same).crop(labels).tobytes() != image(tenfold).crop(labels).tobytes()
    left, top, right, bottom = (round(v) for v in HEATMAP_AXES)
    cells = (left + 2, top + 2, right - 2, bottom - 2)
    assert image(same).crop(cells).tobytes() == image(tenfold).crop(cells).tobytes()


def test_heatmap_of_one_count_everywhere_is_drawn() -> None:
    nothing = heatmap_png([[0] * 24 for _ in range(7)], "Messages, nothing")
    busy = heatmap_png([[7] * 24 for _ in range(7)], "Messages, steady")
    assert png_size(nothing) == png_size(busy) == HEATMAP_SIZE
    # No messages at all is the bottom of the scale; the same count every hour its top.
    assert heatmap_cell(nothing, 3, 3) == (68, 1, 84)
    assert heatmap_cell(busy, 3, 3) == (253, 231, 36)


def test_the_bot_loads_pillow_only_to_draw_and_never_matplotlib() -> None:
    code = (
        "import sys, herwa.bot.app, herwa.bot.cli\n"
        "heavy = ('matplotlib', 'numpy', 'PIL')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from datetime import date\n"
        "from herwa.bot.commands import growth_png, heatmap_png, retention_png\n"
        "heatmap_png([[1] * 24] * 7, 't')\n"
        "retention_png(['2024-01-01'], [3], [[1.0, None]], 't')\n"
        "growth_png([date(2024, 1, 1)], [1], [0], [5], 't')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split("\n")[:2] == ["[]", "['PIL']"], out.stdout


def retention_cell(png: bytes, row: int, column: int, rows: int, columns: int) -> list[RGB]:
    """The pixels of one cell, a few pixels in from its edges (and the frame)."""
    left, top, right, bottom = RETENTION_AXES
    w, h = (right - left) / columns, (bottom - top) / rows
    box = (
        round(left + column * w) + 4,
        round(top + row * h) + 4,
        round(left + (column + 1) * w) - 4,
        round(top + (row + 1) * h) - 4,
    )
    cell = image(png).convert("RGB").crop(box)
    data = cell.tobytes()
    return [(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 3)]


def test_retention_leaves_weeks_ahead_blank() -> None:
    """A week that has not begun (None) shows the page's white, unlike a 0 % week, which is
    the colour scale's lightest blue with its "0%" label."""
    cohorts, sizes = ["2024-03-04", "2024-03-11"], [10, 8]
    ahead = retention_png(cohorts, sizes, [[0.5, 0.0], [0.25, None]], "Retention")
    zero = retention_png(cohorts, sizes, [[0.5, 0.0], [0.25, 0.0]], "Retention")
    assert png_size(ahead) == png_size(zero) == RETENTION_SIZE
    assert set(retention_cell(ahead, 1, 1, 2, 2)) == {(255, 255, 255)}  # no colour, no label
    lightest = retention_cell(zero, 1, 1, 2, 2)
    assert (255, 255, 255) not in lightest  # filled with the scale's 0 colour
    assert any(sum(p) < 200 for p in lightest)  # and labelled in black


def test_retention_labels_dark_cells_in_white() -> None:
    png = retention_png(["2024-03-04"], [10], [[0.9, 0.1]], "Retention")
    dark, light = retention_cell(png, 0, 0, 1, 2), retention_cell(png, 0, 1, 1, 2)
    ((background, _),) = Counter(dark).most_common(1)
    assert sum(background) < 300  # a dark blue
    assert any(min(p) > 200 for p in dark)  # with a white label
    assert any(sum(p) < 200 for p in light)  # a light cell's label is black


def test_retention_of_a_year_of_cohorts_keeps_its_size() -> None:
    weeks = [(date(2020, 1, 6) + timedelta(weeks=i)).isoformat() for i in range(521)]
    rates: list[list[float | None]] = [[1.0, *[0.3] * 11] for _ in weeks]
    png = retention_png(weeks, [5] * 521, rates, "Retention, ten years")
    assert png_size(png) == RETENTION_SIZE
    empty = retention_png([], [], [], "Retention, nobody")
    assert png_size(empty) == RETENTION_SIZE


def fortnight() -> tuple[list[date], list[int], list[int], list[int]]:
    days = [date(2024, 3, 1) + timedelta(days=i) for i in range(14)]
    joins = [5 + i % 3 for i in range(14)]
    leaves = [i % 2 for i in range(14)]
    counts = [1000 + sum(joins[: i + 1]) - sum(leaves[: i + 1]) for i in range(14)]
    return days, joins, leaves, counts


def test_growth_draws_the_member_count() -> None:
    days, joins, leaves, counts = fortnight()
    line = growth_png(days, joins, leaves, counts, "Member growth")
    none = growth_png(days, joins, leaves, [None] * 14, "Member growth")
    one = growth_png(days, joins, leaves, [None] * 13 + [counts[-1]], "Member growth")
    assert png_size(line) == png_size(none) == png_size(one) == GROWTH_SIZE
    assert count(near(none, MEMBERS_COLOUR, 30)) == 0
    # A line across the chart (and its legend entry); a single day's snapshot still shows.
    assert count(near(line, MEMBERS_COLOUR, 30)) > 1500
    assert count(near(one, MEMBERS_COLOUR, 30)) > 30


def test_growth_puts_joins_above_the_zero_line_and_leaves_below() -> None:
    days, _, _, counts = fortnight()
    small = growth_png(days, [3] * 14, [6] * 14, counts, "Member growth")
    large = growth_png(days, [30] * 14, [6] * 14, counts, "Member growth")
    # The bars right of the legend, whose swatches sit in the top left corner.
    bars = (round(GROWTH_AXES[0]) + 150, 0, GROWTH_SIZE[0], GROWTH_SIZE[1])
    for png in (small, large):
        # The zero line: the one row that is grey across most of the axes' width.
        zero = near(png, "#888888", 4)
        width = GROWTH_SIZE[0]
        rows = [y for y in range(GROWTH_SIZE[1]) if count(zero.crop((0, y, width, y + 1))) > 500]
        assert len(rows) == 1
        joins = near(png, JOINS_COLOUR).crop(bars).getbbox()
        leaves = near(png, LEAVES_COLOUR).crop(bars).getbbox()
        assert joins is not None
        assert leaves is not None
        assert joins[3] <= rows[0] < leaves[1]
    # Three joins for six leaves: the join bars half as tall as the leave bars.
    green = near(small, JOINS_COLOUR).crop(bars).getbbox()
    red = near(small, LEAVES_COLOUR).crop(bars).getbbox()
    assert green is not None
    assert red is not None
    assert (green[3] - green[1]) * 2 == pytest.approx(red[3] - red[1], abs=3)


def test_growth_of_no_days_or_ten_years_keeps_its_size() -> None:
    assert png_size(growth_png([], [], [], [], "Member growth")) == GROWTH_SIZE
    days = [date(2015, 1, 1) + timedelta(days=i) for i in range(3650)]
    rng = random.Random(4)
    png = growth_png(
        days,
        [rng.randint(0, 90) for _ in days],
        [rng.randint(0, 60) for _ in days],
        [250_000 + i * 3 for i in range(3650)],
        "Member growth, ten years",
    )
    assert png_size(png) == GROWTH_SIZE
    assert count(near(png, JOINS_COLOUR)) > 10_000


def test_nice_ticks_examples() -> None:
    assert nice_ticks(0, 3, 8) == [0, 1, 2, 3]
    assert nice_ticks(50, 440, 8) == [50, 100, 150, 200, 250, 300, 350, 400]
    assert nice_ticks(50, 440, 7) == [100, 200, 300, 400]
    assert nice_ticks(0, 9_000_000, 8) == [0, 2_000_000, 4_000_000, 6_000_000, 8_000_000]
    assert nice_ticks(-27.5, 42.1, 8) == [-20, -10, 0, 10, 20, 30, 40]
    assert nice_ticks(1167.6, 1321.4, 8) == list(range(1180, 1321, 20))
    assert nice_ticks(1167.6, 1321.4, 6) == [1175, 1200, 1225, 1250, 1275, 1300]
    assert nice_ticks(0, 0, 8) == [0]


ROUND_STEPS = [1, 2, 5] + [m * 10**e // 2 for e in range(1, 12) for m in (2, 4, 5, 10)]


@given(
    low=st.integers(-(10**9), 10**9),
    span=st.integers(0, 10**9),
    most=st.integers(2, 12),
)
def test_nice_ticks_are_round_and_as_many_as_allowed(low: int, span: int, most: int) -> None:
    high = low + span
    ticks = nice_ticks(low, high, most)
    assert 1 <= len(ticks) <= most
    assert all(low <= t <= high for t in ticks)
    steps = {b - a for a, b in itertools.pairwise(ticks)}
    assert len(steps) <= 1
    if steps:
        (step,) = steps
        assert step in ROUND_STEPS, step
        # Every finer round step gives more than ``most`` ticks.
        for finer in ROUND_STEPS:
            if finer < step:
                assert high // finer + (-low // finer) + 1 > most


def test_count_labels() -> None:
    assert count_labels([0, 2500, 5000, 7500]) == ["0", "2,500", "5,000", "7,500"]
    assert count_labels([-20, -10, 0, 10]) == ["-20", "-10", "0", "10"]
    assert count_labels([0, 10_000, 20_000]) == ["0", "10k", "20k"]
    assert count_labels([250_000, 250_500, 251_000]) == ["250.0k", "250.5k", "251.0k"]
    assert count_labels([0, 1_000_000, 2_000_000]) == ["0", "1M", "2M"]
    assert count_labels([1_000_000, 1_250_000]) == ["1.00M", "1.25M"]
    # A unit would need more than two decimals: the digits themselves.
    assert count_labels([1_000_000, 1_000_500]) == ["1,000,000", "1,000,500"]


@pytest.mark.parametrize("days", [1, 2, 7, 10, 14, 30, 60, 90, 180, 365, 730, 1500, 3650])
def test_date_ticks_are_round_few_and_apart(days: int) -> None:
    first = date(2024, 3, 1)
    last = first + timedelta(days=days - 1)
    width = GROWTH_AXES[2] - GROWTH_AXES[0]
    pixels_per_day = width / (days * 1.1)  # the chart leaves a margin at both ends
    ticks = date_ticks(first, last, pixels_per_day)
    assert 1 <= len(ticks) <= MAX_DATE_TICKS
    assert all(first <= d <= last for d, _ in ticks)
    assert [d for d, _ in ticks] == sorted({d for d, _ in ticks})
    if days >= 30:
        assert len(ticks) >= 3
    if days > 14:
        # Mondays, firsts of months or New Year's days; labelled as precisely as needed.
        assert all(d.weekday() == 0 or d.day == 1 for d, _ in ticks)
        assert all(label == d.isoformat()[: len(label)] for d, label in ticks)
    # Labels centred under their ticks do not touch (a character is ~7 px wide).
    widest = max(8 * len(label) for _, label in ticks)
    for (a, _), (b, _) in itertools.pairwise(ticks):
        assert (b - a).days * pixels_per_day > widest
