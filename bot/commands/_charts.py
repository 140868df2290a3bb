"""PNG charts (matplotlib, Agg, object API — no pyplot global state, so renders may run in
worker threads side by side). Every chart has a fixed pixel size (no tight bounding box), which
the tests check, and comes with a one-paragraph text summary used as the attachment's alt text.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import date

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
HEATMAP_SIZE = (1000, 420)
RETENTION_SIZE = (900, 600)
GROWTH_SIZE = (1000, 420)

_EPOCH = date(1970, 1, 1)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _figure(size: tuple[int, int]) -> Figure:
    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    # metadata: no Software/version text, so identical data gives identical bytes
    fig.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


def heatmap_png(grid: Sequence[Sequence[int]], title: str) -> bytes:
    """``grid[weekday][hour]`` message counts, Monday first."""
    fig = _figure(HEATMAP_SIZE)
    ax = fig.add_axes((0.06, 0.12, 0.86, 0.76))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(7), WEEKDAYS)
    ax.set_xticks(range(0, 24, 2), [f"{h:02d}" for h in range(0, 24, 2)])
    ax.set_xlabel("hour of day")
    ax.set_title(title)
    fig.colorbar(image, cax=fig.add_axes((0.935, 0.12, 0.015, 0.76)))
    return _png(fig)


def retention_png(
    cohorts: Sequence[str],
    sizes: Sequence[int],
    rates: Sequence[Sequence[float | None]],
    title: str,
) -> bytes:
    """``rates[cohort][period]`` as fractions 0..1; ``None`` where the period lies ahead."""
    fig = _figure(RETENTION_SIZE)
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
    return _png(fig)


def growth_png(
    days: Sequence[date],
    joins: Sequence[int],
    leaves: Sequence[int],
    members: Sequence[int | None],
    title: str,
) -> bytes:
    fig = _figure(GROWTH_SIZE)
    ax = fig.add_axes((0.07, 0.14, 0.83, 0.74))
    # matplotlib's date numbers: days since its default epoch, 1970-01-01
    x = [float((d - _EPOCH).days) for d in days]
    ax.bar(x, joins, color="#3ba55c", label="joins")
    ax.bar(x, [-v for v in leaves], color="#ed4245", label="leaves")
    ax.xaxis_date()
    ax.axhline(0, color="#888888", linewidth=0.8)
    ax.set_ylabel("joins / leaves per day")
    ax.legend(loc="upper left")
    known = [(d, m) for d, m in zip(x, members, strict=True) if m is not None]
    if known:
        twin = ax.twinx()
        twin.plot([d for d, _ in known], [m for _, m in known], color="#5865f2", label="members")
        twin.set_ylabel("members")
    ax.set_title(title)
    fig.autofmt_xdate()
    return _png(fig)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
