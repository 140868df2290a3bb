"""PNG charts (matplotlib, Agg, object API — no pyplot global state, so renders may run in
worker threads side by side). Every chart has a fixed pixel size (no tight bounding box), which
the tests check, and comes with a one-paragraph text summary used as the attachment's alt text.

The heatmap, the chart asked for most, keeps one figure drawn once (axes, tick labels, the
colour bar's frame) and per render draws only what depends on the data: the cells, the colour
bar's scale and the title (matplotlib's blitting). Laying out and drawing the static text is
most of a fresh figure's cost.

matplotlib (with numpy) and Pillow are imported by the first render, in its worker thread: they
are most of an idle bot's memory, and a process that only captures never needs them.
"""

from __future__ import annotations

import io
import threading
import zlib
from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

DPI = 100
HEATMAP_SIZE = (1000, 420)
RETENTION_SIZE = (900, 600)
GROWTH_SIZE = (1000, 420)

_EPOCH = date(1970, 1, 1)
MEMBERS_COLOUR = "#5865f2"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _figure(size: tuple[int, int]) -> tuple[Figure, FigureCanvasAgg]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    return fig, FigureCanvasAgg(fig)


def _png(canvas: FigureCanvasAgg) -> bytes:
    canvas.draw()  # type: ignore[no-untyped-call]
    return _encode(canvas)


def _encode(canvas: FigureCanvasAgg) -> bytes:
    """The canvas as an opaque RGB PNG, without Software/version text (identical data gives
    identical bytes). zlib's run-length strategy: charts are long runs of one colour, and it
    encodes faster than the default strategy for a few more kilobytes."""
    from PIL import Image

    out = io.BytesIO()
    size = canvas.get_width_height()
    pixels = canvas.buffer_rgba()  # type: ignore[no-untyped-call]
    rgba = Image.frombuffer("RGBA", size, pixels, "raw", "RGBA", 0, 1)
    rgba.convert("RGB").save(out, format="png", compress_level=1, compress_type=zlib.Z_RLE)
    return out.getvalue()


class _HeatmapTemplate:
    """The heatmap figure, static parts drawn once. Not thread-safe: used under a lock."""

    def __init__(self) -> None:
        fig, self.canvas = _figure(HEATMAP_SIZE)
        self.axes = ax = fig.add_axes((0.06, 0.12, 0.86, 0.76))
        # Animated artists are left out of the full draw; render() draws them on the copy.
        self.image = ax.imshow(
            [[0, 1] * 12] * 7, aspect="auto", cmap="viridis", interpolation="nearest", animated=True
        )
        ax.set_yticks(range(7), WEEKDAYS)
        ax.set_xticks(range(0, 24, 2), [f"{h:02d}" for h in range(0, 24, 2)])
        ax.set_xlabel("hour of day")
        self.title = ax.set_title("", animated=True)
        # The cells cover the inner half of the frame's lines, so the frame is drawn after them.
        for spine in ax.spines.values():
            spine.set_animated(True)
        self.colorbar_axes = cax = fig.add_axes((0.935, 0.12, 0.015, 0.76))
        fig.colorbar(self.image, cax=cax)
        # The colour gradient looks the same for every range; only its scale changes.
        cax.yaxis.set_animated(True)
        self.canvas.draw()  # type: ignore[no-untyped-call]
        self.background = self.canvas.copy_from_bbox(fig.bbox)  # type: ignore[no-untyped-call]

    def render(self, grid: Sequence[Sequence[int]], title: str) -> bytes:
        self.canvas.restore_region(self.background)  # type: ignore[no-untyped-call]
        self.image.set_data(grid)
        self.image.autoscale()  # the colour bar follows through the image's callbacks
        self.title.set_text(title)
        ax = self.axes
        ax.draw_artist(self.image)
        for spine in ax.spines.values():
            ax.draw_artist(spine)
        ax.draw_artist(self.title)
        self.colorbar_axes.draw_artist(self.colorbar_axes.yaxis)
        return _encode(self.canvas)


_heatmap: _HeatmapTemplate | None = None
_heatmap_lock = threading.Lock()


def heatmap_png(grid: Sequence[Sequence[int]], title: str) -> bytes:
    """``grid[weekday][hour]`` message counts, Monday first."""
    global _heatmap
    with _heatmap_lock:
        if _heatmap is None:
            _heatmap = _HeatmapTemplate()
        return _heatmap.render(grid, title)


def retention_png(
    cohorts: Sequence[str],
    sizes: Sequence[int],
    rates: Sequence[Sequence[float | None]],
    title: str,
) -> bytes:
    """``rates[cohort][period]`` as fractions 0..1; ``None`` where the period lies ahead."""
    fig, canvas = _figure(RETENTION_SIZE)
    ax = fig.add_axes((0.2, 0.1, 0.75, 0.8))
    periods = max((len(r) for r in rates), default=0)
    matrix = [
        [(v if v is not None else float("nan")) for v in row]
        + [float("nan")] * (periods - len(row))
        for row in rates
    ]
    if matrix and periods:
        ax.imshow(matrix, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        for i, row in enumerate(rates):
            for j, value in enumerate(row):
                if value is not None:
                    ax.text(
                        j,
                        i,
                        f"{value:.0%}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if value > 0.5 else "black",
                    )
    ax.set_yticks(range(len(cohorts)), [f"{c} ({n})" for c, n in zip(cohorts, sizes, strict=True)])
    ax.set_xticks(range(periods), [str(p) for p in range(periods)])
    ax.set_xlabel("weeks since joining")
    ax.set_title(title)
    return _png(canvas)


def growth_png(
    days: Sequence[date],
    joins: Sequence[int],
    leaves: Sequence[int],
    members: Sequence[int | None],
    title: str,
) -> bytes:
    fig, canvas = _figure(GROWTH_SIZE)
    ax = fig.add_axes((0.07, 0.14, 0.83, 0.74))
    # matplotlib's date numbers: days since its default epoch, 1970-01-01
    x = [float((d - _EPOCH).days) for d in days]
    ax.bar(x, joins, color="#3ba55c", label="joins")
    ax.bar(x, [-v for v in leaves], color="#ed4245", label="leaves")
    ax.xaxis_date()
    ax.axhline(0, color="#888888", linewidth=0.8)
    ax.set_ylabel("joins / leaves per day")
    handles, labels = ax.get_legend_handles_labels()
    known = [(d, m) for d, m in zip(x, members, strict=True) if m is not None]
    if known:
        twin = ax.twinx()
        # Markers as well as the line: a single day's snapshot is a point, not a segment.
        (line,) = twin.plot(
            [d for d, _ in known],
            [m for _, m in known],
            color=MEMBERS_COLOUR,
            linewidth=2,
            marker="o",
            markersize=3 if len(known) > 1 else 6,
        )
        twin.set_ylabel("members")
        handles.append(line)
        labels.append("members")
    ax.legend(handles, labels, loc="upper left")
    ax.set_title(title)
    # Figure.autofmt_xdate leaves axes placed by add_axes (no grid spec) alone: rotated here.
    for label in ax.get_xticklabels():
        label.set_rotation(30)
        label.set_horizontalalignment("right")
    return _png(canvas)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
