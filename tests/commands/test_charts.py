"""The heatmap's kept figure draws what a fresh figure draws, for a fraction of the work, from
any number of threads; and a process that never draws a chart never loads matplotlib. The
retention matrix leaves weeks that lie ahead blank; the growth chart draws the member count."""

from __future__ import annotations

import io
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from herwa.bot.commands import (
    DPI,
    GROWTH_SIZE,
    HEATMAP_SIZE,
    MEMBERS_COLOUR,
    RETENTION_SIZE,
    WEEKDAYS,
    growth_png,
    heatmap_png,
    png_size,
    retention_png,
)

Grid = list[list[int]]


def full_draw(grid: Sequence[Sequence[int]], title: str) -> np.ndarray:
    """The heatmap drawn from scratch, every artist, the way one figure per render draws it."""
    fig = Figure(figsize=(HEATMAP_SIZE[0] / DPI, HEATMAP_SIZE[1] / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.06, 0.12, 0.86, 0.76))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(7), WEEKDAYS)
    ax.set_xticks(range(0, 24, 2), [f"{h:02d}" for h in range(0, 24, 2)])
    ax.set_xlabel("hour of day")
    ax.set_title(title)
    fig.colorbar(image, cax=fig.add_axes((0.935, 0.12, 0.015, 0.76)))
    canvas.draw()  # type: ignore[no-untyped-call]
    return np.asarray(canvas.buffer_rgba())[:, :, :3].astype(int)  # type: ignore[no-untyped-call]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def grids(seed: int) -> list[tuple[Grid, str]]:
    rng = random.Random(seed)
    out: list[tuple[Grid, str]] = [([[0] * 24 for _ in range(7)], "Messages, nothing")]
    for top in (3, 250, 9_000_000):
        grid = [[rng.randint(0, top) for _ in range(24)] for _ in range(7)]
        out.append((grid, f"Messages, 2024-01-{top % 28 + 1:02d} to 2024-03-31 (Asia/Kolkata)"))
    return out


def assert_same_picture(png: bytes, reference: np.ndarray) -> None:
    assert png_size(png) == HEATMAP_SIZE
    diff = np.abs(pixels(png) - reference)
    # Agg's anti-aliasing may round a corner pixel of the frame differently by one level.
    assert int((diff.sum(axis=2) > 0).sum()) <= 8, "the picture differs from a full draw"
    assert int(diff.max()) <= 2


def test_heatmap_matches_a_full_draw_whatever_came_before() -> None:
    # Largest scale first: nothing of a previous render (cells, colour bar labels, title)
    # may survive into the next one.
    for grid, title in sorted(grids(1), key=lambda g: -max(map(max, g[0]))):
        assert_same_picture(heatmap_png(grid, title), full_draw(grid, title))


def test_heatmap_renders_side_by_side_in_threads() -> None:
    cases = grids(2) * 3
    with ThreadPoolExecutor(max_workers=4) as pool:
        pngs = list(pool.map(lambda case: heatmap_png(*case), cases))
    for (grid, title), png in zip(cases, pngs, strict=True):
        assert_same_picture(png, full_draw(grid, title))


def _cpu_seconds(fn: Callable[[], object], runs: int = 5) -> float:
    """The least CPU time of ``runs`` calls: CPU time, not wall time, so that other processes
    on a loaded machine do not count; the minimum, so that a preempted run does not."""
    best = float("inf")
    for _ in range(runs):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best


def test_heatmap_render_skips_the_static_drawing() -> None:
    grid, title = grids(3)[2]
    heatmap_png(grid, title)  # the first call builds the kept figure
    kept = _cpu_seconds(lambda: heatmap_png(grid, title))
    fresh = _cpu_seconds(lambda: full_draw(grid, title))
    # The fresh draw does not even encode a PNG; the kept figure still costs well under half.
    assert kept < fresh / 2, f"render {kept * 1000:.1f} ms CPU, full draw {fresh * 1000:.1f} ms"


def test_the_bot_loads_matplotlib_only_to_draw() -> None:
    code = (
        "import sys, herwa.bot.app, herwa.bot.cli\n"
        "print(sorted(m for m in ('matplotlib', 'numpy', 'PIL') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_retention_leaves_weeks_ahead_blank() -> None:
    """A week that has not begun (None) shows the page's white, unlike a 0 % week, which is
    the colour scale's lightest blue with its "0%" label."""
    cohorts, sizes = ["2024-03-04", "2024-03-11"], [10, 8]
    ahead = retention_png(cohorts, sizes, [[0.5, 0.0], [0.25, None]], "Retention")
    zero = retention_png(cohorts, sizes, [[0.5, 0.0], [0.25, 0.0]], "Retention")
    assert png_size(ahead) == png_size(zero) == RETENTION_SIZE
    # The matrix axes span (0.2, 0.1)-(0.95, 0.9) of the figure: cell (1, 1) is bottom right.
    w, h = RETENTION_SIZE
    left, right, top, bottom = 0.2 * w, 0.95 * w, 0.1 * h, 0.9 * h
    x0, x1 = int(left + (right - left) * 0.55), int(right - 5)
    y0, y1 = int(top + (bottom - top) * 0.55), int(bottom - 5)

    def cell(png: bytes) -> np.ndarray:
        return pixels(png)[y0:y1, x0:x1].reshape(-1, 3)

    assert (cell(ahead) == 255).all()  # blank: no colour, no label
    lightest = cell(zero)
    assert not (lightest == 255).all(axis=1).any()  # filled with the scale's 0 colour
    assert (lightest.sum(axis=1) < 200).any()  # and labelled in black


def colour_pixels(png: bytes, colour: str) -> int:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels(png) - rgb).sum(axis=2) <= 30).sum())


def test_growth_draws_the_member_count() -> None:
    days = [date(2024, 3, 1) + timedelta(days=i) for i in range(14)]
    joins = [5 + i % 3 for i in range(14)]
    leaves = [i % 2 for i in range(14)]
    counts = [1000 + sum(joins[: i + 1]) - sum(leaves[: i + 1]) for i in range(14)]
    line = growth_png(days, joins, leaves, counts, "Member growth")
    none = growth_png(days, joins, leaves, [None] * 14, "Member growth")
    one = growth_png(days, joins, leaves, [None] * 13 + [counts[-1]], "Member growth")
    assert png_size(line) == png_size(none) == png_size(one) == GROWTH_SIZE
    assert colour_pixels(none, MEMBERS_COLOUR) == 0
    # A line across the chart (and its legend entry); a single day's snapshot still shows.
    assert colour_pixels(line, MEMBERS_COLOUR) > 1500
    assert colour_pixels(one, MEMBERS_COLOUR) > 30
