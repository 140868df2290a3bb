"""PNG charts, drawn with Pillow alone. Every chart has a fixed pixel size, which the tests
check, and comes with a one-paragraph text summary (in its command) used as the attachment's alt
text.

The look is the one the charts had when matplotlib drew them (its default sizes at 100 dpi:
10 pt text, 12 pt titles, ticks 3.5 pt long and outward, viridis and Blues), without its
import (with numpy, most of what drawing added to a bot's memory) or its layout machinery (most
of a render's CPU time). See benchmarks/README.md for the figures.

Renders run in worker threads side by side: each builds its own image, and fonts are kept per
thread (a FreeType face is not meant to be shared between threads). Pillow is imported by the
first render, in its worker thread: a process that only captures never needs it.
"""

from __future__ import annotations

import io
import itertools
import math
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Literal

from herwa.bot.commands._colour_tables import BLUES, VIRIDIS

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

HEATMAP_SIZE = (1000, 420)
RETENTION_SIZE = (900, 600)
GROWTH_SIZE = (1000, 420)

MEMBERS_COLOUR = "#5865f2"
JOINS_COLOUR = "#3ba55c"
LEAVES_COLOUR = "#ed4245"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

Colour = tuple[int, int, int]
WHITE: Colour = (255, 255, 255)
BLACK: Colour = (0, 0, 0)
ZERO_LINE: Colour = (136, 136, 136)
LEGEND_EDGE: Colour = (204, 204, 204)

# matplotlib's defaults at 100 dpi, in pixels: text 10 pt, titles 12 pt, cell labels 8 pt;
# ticks 3.5 pt long with 3.5 pt before their label; 4 pt between tick labels and the axis
# label, 6 pt between the axes and the title.
TEXT = 14
TITLE = 17
SMALL = 11
TICK = 5
TICK_PAD = 5
LABEL_PAD = 6
TITLE_PAD = 8

MAX_DATE_TICKS = 10
# Half a bar's width, in days (matplotlib's default bar width is 0.8).
BAR_HALF_WIDTH = 0.4
# Share of a series' span left free at each end of an axis.
MARGIN = 0.05
# Anti-aliased lines and markers are drawn this many times larger, then scaled down.
SUPERSAMPLE = 2


@dataclass(frozen=True)
class _Box:
    """A rectangle of pixels; its frame is drawn on the edge rows and columns."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def centre_x(self) -> float:
        return (self.left + self.right) / 2

    @property
    def centre_y(self) -> float:
        return (self.top + self.bottom) / 2

    def column_centre(self, index: int, columns: int) -> float:
        return self.left + (index + 0.5) * self.width / columns

    def row_centre(self, index: int, rows: int) -> float:
        return self.top + (index + 0.5) * self.height / rows


def _axes(size: tuple[int, int], left: float, bottom: float, width: float, height: float) -> _Box:
    """A box placed as matplotlib places axes: fractions of the figure from its bottom left."""
    w, h = size
    return _Box(
        round(left * w),
        round((1 - bottom - height) * h),
        round((left + width) * w),
        round((1 - bottom) * h),
    )


HEATMAP_AXES = _axes(HEATMAP_SIZE, 0.06, 0.12, 0.86, 0.76)
HEATMAP_COLOUR_BAR = _axes(HEATMAP_SIZE, 0.935, 0.12, 0.015, 0.76)
RETENTION_AXES = _axes(RETENTION_SIZE, 0.2, 0.1, 0.75, 0.8)
GROWTH_AXES = _axes(GROWTH_SIZE, 0.07, 0.14, 0.83, 0.74)


class _Fonts(threading.local):
    def __init__(self) -> None:
        self.by_size: dict[int, ImageFont.FreeTypeFont] = {}


_fonts = _Fonts()


def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (Aileron), one per size and thread."""
    font = _fonts.by_size.get(size)
    if font is None:
        from PIL import ImageFont

        loaded = ImageFont.load_default(size)
        if not isinstance(loaded, ImageFont.FreeTypeFont):
            raise RuntimeError("Pillow was built without FreeType: the charts need its fonts")
        font = _fonts.by_size[size] = loaded
    return font


def text_width(text: str, size: int = TEXT) -> float:
    return _font(size).getlength(text)


def shade(table: bytes, fraction: float) -> Colour:
    """The colour of ``fraction`` (0..1, clipped) in a 256-colour table, indexed as matplotlib
    indexes a colour map."""
    i = min(max(int(fraction * 256), 0), 255) * 3
    return table[i], table[i + 1], table[i + 2]


def nice_ticks(low: float, high: float, most: int) -> list[int]:
    """Whole numbers within [low, high], at most ``most`` (>= 1) of them, spaced by the
    finest round step that allows that: 1, 2, 2.5 or 5 times a power of ten (2.5 only from 25
    up; counts are whole, so no tick falls between two of them)."""
    if high < low:
        low, high = high, low
    exponent = 0
    while True:
        for mantissa in (1, 2, 2.5, 5):
            step = mantissa * 10**exponent
            if step != int(step):
                continue
            step = int(step)
            first, last = math.ceil(low / step), math.floor(high / step)
            if last - first + 1 <= most:
                return [k * step for k in range(first, last + 1)]
        exponent += 1


def count_labels(ticks: Sequence[int]) -> list[str]:
    """Labels for count ticks, short enough for a narrow margin and all in one unit: 2,500,
    12.5k, 250k, 1.25M; digits with separators where a unit would need more than two decimals."""
    biggest = max((abs(t) for t in ticks), default=0)
    for unit, suffix, smallest in ((1_000_000, "M", 1_000_000), (1_000, "k", 10_000)):
        if smallest <= biggest < 1000 * unit:
            decimals = next(
                (d for d in range(3) if all(t * 10**d % unit == 0 for t in ticks)), None
            )
            if decimals is not None:
                return [f"{t / unit:.{decimals}f}{suffix}" if t else "0" for t in ticks]
    return [f"{t:,}" for t in ticks]


def _date_candidates(first: date, last: date) -> Iterator[tuple[Iterator[date], str]]:
    """Tick dates within [first, last] and their label format, from the densest to the
    sparsest: every day or second day, Mondays, the first of every month or few months, New
    Year's days. Lazily: a span of years has thousands of days."""

    def every(start: date, days: int) -> Iterator[date]:
        while start <= last:
            yield start
            start += timedelta(days=days)

    def month_starts(months: int) -> Iterator[date]:
        y, m = first.year, first.month
        while date(y, m, 1) <= last:
            if date(y, m, 1) >= first and (m - 1) % months == 0:
                yield date(y, m, 1)
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)

    for days in (1, 2):
        yield every(first, days), "%Y-%m-%d"
    monday = first + timedelta(days=-first.weekday() % 7)
    for weeks in (1, 2):
        yield every(monday, 7 * weeks), "%Y-%m-%d"
    for months in (1, 2, 3, 6):
        yield month_starts(months), "%Y-%m"
    for years in (1, 2, 5, 10, 20, 50, 100):
        new_years = (date(y, 1, 1) for y in range(first.year, last.year + 1) if y % years == 0)
        yield (d for d in new_years if d >= first), "%Y"


def date_ticks(first: date, last: date, pixels_per_day: float) -> list[tuple[date, str]]:
    """At most ``MAX_DATE_TICKS`` round dates within [first, last], labelled, whose labels
    centred under them leave a gap between each other; the sparsest choice if none does."""
    labelled: list[tuple[date, str]] = []
    for dates, style in _date_candidates(first, last):
        ticks = list(itertools.islice(dates, MAX_DATE_TICKS + 1))
        if len(ticks) > MAX_DATE_TICKS:
            continue
        labelled = [(d, d.strftime(style)) for d in ticks]
        widest = max((text_width(label) for _, label in labelled), default=0.0)
        closest = min((b - a for a, b in itertools.pairwise(ticks)), default=timedelta.max)
        if closest.days * pixels_per_day >= widest + 2 * TICK_PAD:
            break
    return labelled


class _Chart:
    """One picture being drawn."""

    def __init__(self, size: tuple[int, int]) -> None:
        from PIL import Image, ImageDraw

        self.image = Image.new("RGB", size, WHITE)
        self.draw = ImageDraw.Draw(self.image)

    def text(
        self,
        xy: tuple[float, float],
        text: str,
        anchor: str,
        size: int = TEXT,
        fill: Colour | str = BLACK,
    ) -> None:
        self.draw.text(xy, text, fill=fill, font=_font(size), anchor=anchor)

    def vertical_text(self, centre: tuple[float, float], text: str, size: int = TEXT) -> None:
        """Text reading from bottom to top, centred on ``centre``."""
        from PIL import Image, ImageDraw

        font = _font(size)
        left, top, right, bottom = font.getbbox(text)
        mask = Image.new("L", (math.ceil(right - left), math.ceil(bottom - top)), 0)
        ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font)
        mask = mask.transpose(Image.Transpose.ROTATE_90)
        corner = (round(centre[0] - mask.width / 2), round(centre[1] - mask.height / 2))
        self.image.paste(BLACK, corner, mask)

    def cells(self, box: _Box, colours: Sequence[Sequence[Colour]]) -> None:
        """A grid of coloured cells filling ``box``, first row at the top."""
        from PIL import Image

        rows, columns = len(colours), len(colours[0])
        data = bytes(channel for row in colours for colour in row for channel in colour)
        grid = Image.frombytes("RGB", (columns, rows), data)
        resampled = grid.resize((box.width, box.height), Image.Resampling.NEAREST)
        self.image.paste(resampled, (box.left, box.top))

    def frame(self, box: _Box) -> None:
        self.draw.rectangle((box.left, box.top, box.right, box.bottom), outline=BLACK)

    def title(self, box: _Box, text: str) -> None:
        self.text((box.centre_x, box.top - TITLE_PAD), text, "md", TITLE)

    def x_ticks(self, box: _Box, ticks: Sequence[tuple[float, str]]) -> None:
        for x, label in ticks:
            self.draw.line(((round(x), box.bottom), (round(x), box.bottom + TICK)), fill=BLACK)
            self.text((x, box.bottom + TICK + TICK_PAD), label, "ma")

    def x_label(self, box: _Box, text: str, under_ticks: bool = True) -> None:
        """The axis label, ``LABEL_PAD`` below the tick labels' baseline (or the frame)."""
        font = _font(TEXT)
        above = box.bottom + TICK + TICK_PAD + font.getmetrics()[0] if under_ticks else box.bottom
        # "ma" anchors the font's ascender line, a few pixels above the capitals.
        capitals = font.getbbox("H", anchor="ma")[1]
        self.text((box.centre_x, above + LABEL_PAD - capitals), text, "ma")

    def y_ticks(
        self, box: _Box, ticks: Sequence[tuple[float, str]], side: Literal["left", "right"]
    ) -> float:
        """Ticks and their labels outside ``box``; returns the widest label's width."""
        edge, out = (box.left, -1) if side == "left" else (box.right, 1)
        anchor = "rm" if side == "left" else "lm"
        for y, label in ticks:
            self.draw.line(((edge, round(y)), (edge + out * TICK, round(y))), fill=BLACK)
            self.text((edge + out * (TICK + TICK_PAD), y), label, anchor)
        return max((text_width(label) for _, label in ticks), default=0.0)

    def y_label(self, box: _Box, text: str, side: Literal["left", "right"], beyond: float) -> None:
        """The axis label, beside tick labels ``beyond`` pixels wide."""
        ascent, descent = _font(TEXT).getmetrics()
        offset = TICK + TICK_PAD + beyond + LABEL_PAD + (ascent + descent) / 2
        x = box.left - offset if side == "left" else box.right + offset
        self.vertical_text((x, box.centre_y), text)

    def smooth(
        self, box: _Box, colour: Colour | str, paint: Callable[[ImageDraw.ImageDraw], None]
    ) -> None:
        """Anti-aliased shapes within ``box``: ``paint`` draws them on a mask ``SUPERSAMPLE``
        times the box's size, in the box's coordinates times ``SUPERSAMPLE``."""
        from PIL import Image, ImageDraw

        mask = Image.new("L", (box.width * SUPERSAMPLE, box.height * SUPERSAMPLE), 0)
        paint(ImageDraw.Draw(mask))
        self.image.paste(colour, (box.left, box.top), mask.reduce(SUPERSAMPLE))

    def png(self) -> bytes:
        """An opaque RGB PNG without Software/version text (identical data gives identical
        bytes). zlib's run-length strategy: charts are long runs of one colour, and it encodes
        faster than the default strategy for a few more kilobytes."""
        out = io.BytesIO()
        self.image.save(out, format="png", compress_level=1, compress_type=zlib.Z_RLE)
        return out.getvalue()


def _scale(low: float, high: float, box: _Box) -> Callable[[float], float]:
    """Value → y pixel on ``box``'s height, ``low`` at its bottom edge."""
    return lambda v: box.bottom - (v - low) / (high - low) * (box.bottom - box.top)


def _count_ticks(low: float, high: float, box: _Box, most: int) -> list[tuple[float, str]]:
    y = _scale(low, high, box)
    ticks = nice_ticks(low, high, most)
    return [(y(t), label) for t, label in zip(ticks, count_labels(ticks), strict=True)]


def heatmap_png(grid: Sequence[Sequence[int]], title: str) -> bytes:
    """``grid[weekday][hour]`` message counts, Monday first."""
    low, high = min(map(min, grid)), max(map(max, grid))
    if low == high:
        # One count everywhere: a scale from zero, so the colour still tells how many.
        low, high = min(low, 0), max(high, 1)
    chart = _Chart(HEATMAP_SIZE)
    box = HEATMAP_AXES
    chart.cells(box, [[shade(VIRIDIS, (v - low) / (high - low)) for v in row] for row in grid])
    chart.frame(box)
    chart.y_ticks(box, [(box.row_centre(d, 7), WEEKDAYS[d]) for d in range(7)], "left")
    chart.x_ticks(box, [(box.column_centre(h, 24), f"{h:02d}") for h in range(0, 24, 2)])
    chart.x_label(box, "hour of day")
    chart.title(box, title)
    bar = HEATMAP_COLOUR_BAR
    chart.cells(bar, [[shade(VIRIDIS, (255 - i) / 256)] for i in range(256)])
    chart.frame(bar)
    chart.y_ticks(bar, _count_ticks(low, high, bar, 8), "right")
    return chart.png()


def _thinned(count: int, pitch: float, room: float) -> range:
    """Every n-th of ``count`` rows ``pitch`` pixels apart, so that labels get ``room``."""
    return range(0, count, max(1, math.ceil(room / pitch)))


def retention_png(
    cohorts: Sequence[str],
    sizes: Sequence[int],
    rates: Sequence[Sequence[float | None]],
    title: str,
) -> bytes:
    """``rates[cohort][period]`` as fractions 0..1; ``None`` where the period lies ahead."""
    chart = _Chart(RETENTION_SIZE)
    box = RETENTION_AXES
    periods = max((len(r) for r in rates), default=0)
    rows = len(rates)
    if rows and periods:
        padded = [list(row) + [None] * (periods - len(row)) for row in rates]
        # A period ahead is left blank, the page's own white, unlike a 0 % week.
        chart.cells(box, [[WHITE if v is None else shade(BLUES, v) for v in row] for row in padded])
        pitch = box.height / rows
        size = min(SMALL, int(pitch * 0.8))
        # Cells too small for their percentage stay unlabelled: the alt text has every figure.
        if size >= 7 and box.width / periods >= text_width("100%", size) + 4:
            for i, row in enumerate(padded):
                for j, value in enumerate(row):
                    if value is not None:
                        centre = (box.column_centre(j, periods), box.row_centre(i, rows))
                        ink = WHITE if value > 0.5 else BLACK
                        chart.text(centre, f"{value:.0%}", "mm", size, ink)
        labels = [f"{c} ({n})" for c, n in zip(cohorts, sizes, strict=True)]
        shown = _thinned(rows, pitch, TEXT + 2)
        chart.y_ticks(box, [(box.row_centre(i, rows), labels[i]) for i in shown], "left")
        chart.x_ticks(box, [(box.column_centre(p, periods), str(p)) for p in range(periods)])
    chart.frame(box)
    chart.x_label(box, "weeks since joining", under_ticks=bool(rows and periods))
    chart.title(box, title)
    return chart.png()


def _padded(low: float, high: float) -> tuple[float, float]:
    """An axis range for values from ``low`` to ``high``, with a margin at both ends."""
    if low == high:
        pad = max(1.0, abs(low) * MARGIN)
        return low - pad, high + pad
    span = high - low
    return low - span * MARGIN, high + span * MARGIN


def _legend(
    chart: _Chart, box: _Box, entries: Sequence[tuple[Literal["bar", "line"], str, str]]
) -> None:
    """matplotlib's legend in the upper left corner: a white, slightly translucent box with a
    light grey edge; a swatch (bars) or a line with a marker (series) before each label."""
    from PIL import Image

    ascent, descent = _font(TEXT).getmetrics()
    # matplotlib's legend metrics for 10 pt text: handles 2 em long, 0.8 em before the label,
    # 0.4 em inside the border, 0.5 em from the axes.
    handle, gap, pad, inset, pitch = 28, 11, 6, 7, ascent + descent + 3
    width = 2 * pad + handle + gap + max(text_width(label) for _, _, label in entries)
    legend = _Box(
        box.left + inset,
        box.top + inset,
        round(box.left + inset + width),
        box.top + inset + 2 * pad + len(entries) * pitch,
    )
    area = (legend.left, legend.top, legend.right + 1, legend.bottom + 1)
    chart.image.paste(
        Image.blend(
            chart.image.crop(area), Image.new("RGB", (legend.width, legend.height), WHITE), 0.8
        ),
        area,
    )
    chart.draw.rounded_rectangle(area, radius=3, outline=LEGEND_EDGE)
    for i, (kind, colour, label) in enumerate(entries):
        y = legend.top + pad + (i + 0.5) * pitch
        x = legend.left + pad
        if kind == "bar":
            half = round(0.35 * TEXT)
            chart.draw.rectangle((x, round(y) - half, x + handle, round(y) + half), fill=colour)
        else:
            sample = _Box(x, round(y) - 6, x + handle, round(y) + 6)
            mid = (sample.height * SUPERSAMPLE) / 2

            def paint(draw: ImageDraw.ImageDraw, mid: float = mid) -> None:
                s = SUPERSAMPLE
                draw.line(((0, mid), (handle * s, mid)), fill=255, width=3 * s)
                r = 3 * s
                centre = handle * s / 2
                draw.ellipse((centre - r, mid - r, centre + r, mid + r), fill=255)

            chart.smooth(sample, colour, paint)
        chart.text((x + handle + gap, y), label, "lm")


def growth_png(
    days: Sequence[date],
    joins: Sequence[int],
    leaves: Sequence[int],
    members: Sequence[int | None],
    title: str,
) -> bytes:
    chart = _Chart(GROWTH_SIZE)
    box = GROWTH_AXES
    # Joins and leaves share one scale around zero, with a margin only at an end with bars
    # (matplotlib's sticky edges), and a scale of one where there are no bars at all.
    most_joins, most_leaves = max(joins, default=0), max(leaves, default=0)
    span = most_joins + most_leaves
    low = -most_leaves - span * MARGIN if most_leaves else 0.0
    high = most_joins + span * MARGIN if most_joins else (0.0 if most_leaves else 1.0)
    y = _scale(low, high, box)
    legend: list[tuple[Literal["bar", "line"], str, str]] = [
        ("bar", JOINS_COLOUR, "joins"),
        ("bar", LEAVES_COLOUR, "leaves"),
    ]
    if days:
        ordinals = [d.toordinal() for d in days]
        first, last = _padded(min(ordinals) - BAR_HALF_WIDTH, max(ordinals) + BAR_HALF_WIDTH)
        per_day = box.width / (last - first)

        def x(day: float) -> float:
            return box.left + (day - first) * per_day

        _bars(chart, box, [x(d) for d in ordinals], per_day, joins, JOINS_COLOUR, y)
        _bars(chart, box, [x(d) for d in ordinals], per_day, [-v for v in leaves], LEAVES_COLOUR, y)
        ticks = date_ticks(days[0], days[-1], per_day)
        chart.x_ticks(box, [(x(d.toordinal()), label) for d, label in ticks])
        known = [(x(d), m) for d, m in zip(ordinals, members, strict=True) if m is not None]
        if known:
            m_low, m_high = _padded(min(m for _, m in known), max(m for _, m in known))
            right = chart.y_ticks(box, _count_ticks(m_low, m_high, box, 8), "right")
            chart.y_label(box, "members", "right", right)
            _members_line(chart, box, [(px, _scale(m_low, m_high, box)(m)) for px, m in known])
            legend.append(("line", MEMBERS_COLOUR, "members"))
    # The zero line over the bars, as matplotlib draws lines over patches.
    zero = round(y(0))
    chart.draw.line(((box.left, zero), (box.right, zero)), fill=ZERO_LINE)
    chart.frame(box)
    left = chart.y_ticks(box, _count_ticks(low, high, box, 8), "left")
    chart.y_label(box, "joins / leaves per day", "left", left)
    _legend(chart, box, legend)
    chart.title(box, title)
    return chart.png()


def _bars(
    chart: _Chart,
    box: _Box,
    centres: Sequence[float],
    per_day: float,
    values: Sequence[int],
    colour: str,
    y: Callable[[float], float],
) -> None:
    """One bar per value from zero, at least a pixel wide. Where bars are narrower than a
    pixel (years of days), a column shows the tallest of them, drawn as one rectangle per run
    of columns of one height."""
    zero = round(y(0))
    ends: dict[int, int] = {}
    for centre, value in zip(centres, values, strict=True):
        if not value:
            continue
        end = round(y(value))
        left = round(centre - BAR_HALF_WIDTH * per_day)
        right = max(left + 1, round(centre + BAR_HALF_WIDTH * per_day))
        for column in range(max(left, box.left + 1), min(right, box.right)):
            if abs(end - zero) > abs(ends.get(column, zero) - zero):
                ends[column] = end
    columns = sorted(ends)
    i = 0
    while i < len(columns):
        j = i
        while (
            j + 1 < len(columns)
            and columns[j + 1] == columns[j] + 1
            and ends[columns[j + 1]] == ends[columns[i]]
        ):
            j += 1
        end = ends[columns[i]]
        chart.draw.rectangle((columns[i], min(end, zero), columns[j], max(end, zero)), fill=colour)
        i = j + 1


def _members_line(chart: _Chart, box: _Box, points: Sequence[tuple[float, float]]) -> None:
    """The member count as a line with a marker per day (matplotlib's 2 pt line and 3 pt
    markers): a single day's snapshot is a point, not a segment, so it gets a larger marker."""
    s = SUPERSAMPLE
    scaled = [((px - box.left) * s, (py - box.top) * s) for px, py in points]
    radius = (2.8 if len(points) > 1 else 4.9) * s

    def paint(draw: ImageDraw.ImageDraw) -> None:
        if len(scaled) > 1:
            # No rounded joints: the markers cover them.
            draw.line(scaled, fill=255, width=round(2.8 * s))
        for px, py in scaled:
            draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=255)

    chart.smooth(box, MEMBERS_COLOUR, paint)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
