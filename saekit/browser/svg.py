"""Inline SVG plots, drawn as text: nothing to load, nothing to fetch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

from saekit.browser.fmt import Html, html, join, num


def histogram_svg(counts: Sequence[int], high: float, *, width: int = 420, height: int = 130, label: str = "activation") -> Html:
    """Bars of ``counts`` over equal bins of [0, high], with a title per bar (its range and count)."""
    pad_left, pad_bottom, pad_top = 8, 22, 6
    inner_w, inner_h = width - 2 * pad_left, height - pad_bottom - pad_top
    n = max(len(counts), 1)
    peak = max(max(counts, default=0), 1)
    bar_w = inner_w / n
    bars = []
    for i, count in enumerate(counts):
        h = inner_h * count / peak
        lo, hi = high * i / n, high * (i + 1) / n
        bars.append(
            html(
                '<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="#e8740c"><title>{} to {}: {:,}</title></rect>',
                pad_left + i * bar_w,
                pad_top + inner_h - h,
                max(bar_w - 1, 0.5),
                h,
                num(lo),
                num(hi),
                int(count),
            )  # fmt: skip
        )
    axis_y = pad_top + inner_h
    return html(
        '<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="histogram of non-zero activations" class="hist">'
        '<line x1="{pad}" y1="{axis_y}" x2="{right}" y2="{axis_y}" stroke="#555"/>{bars}'
        '<text x="{pad}" y="{text_y}" font-size="11">0</text>'
        '<text x="{mid}" y="{text_y}" font-size="11" text-anchor="middle">{label}</text>'
        '<text x="{right}" y="{text_y}" font-size="11" text-anchor="end">{high}</text>'
        '<text x="{peak_x}" y="{peak_y}" font-size="10" fill="#555">max bin {peak:,}</text></svg>',
        w=width, h=height, pad=pad_left, axis_y=axis_y, right=width - pad_left, bars=join(bars), text_y=height - 6,
        mid=width / 2, label=label, high=num(high), peak_x=pad_left + 2, peak_y=pad_top + 10, peak=int(peak),
    )  # fmt: skip


class Line(NamedTuple):
    """One curve of :func:`line_chart_svg`: a name for the legend, a value per x position (NaN: none)."""

    name: str
    values: Sequence[float]
    color: str


def line_chart_svg(
    lines: Sequence[Line], labels: Sequence[str], *, aria: str, include: tuple[float, float] = (0.0, 0.0),
    marker: int | None = None, marker_title: str = "", width: int = 420, height: int = 150,
) -> Html:  # fmt: skip
    """Curves over evenly spaced x positions named by ``labels``, each point titled with its label and
    value; the y range spans the finite values and ``include``. Non-finite values break a curve.
    ``marker``: an x position drawn as a dashed vertical line, titled ``marker_title``."""
    left, right, top, bottom = 44, 10, 20, 22
    inner_w, inner_h = width - left - right, height - top - bottom
    finite = [v for line in lines for v in line.values if math.isfinite(v)]
    lo, hi = min([*finite, *include]), max([*finite, *include])
    hi = hi if hi - lo > 1e-9 else lo + 1.0
    step = inner_w / max(len(labels) - 1, 1)

    def x(i: int) -> float:
        return left + i * step

    def y(v: float) -> float:
        return top + inner_h * (hi - v) / (hi - lo)

    parts = []
    if lo < 0 < hi:
        parts.append(html('<line x1="{l}" y1="{y:.1f}" x2="{r}" y2="{y:.1f}" stroke="#bbb" stroke-dasharray="3 3"/>', l=left, r=width - right, y=y(0)))  # fmt: skip
    if marker is not None and 0 <= marker < len(labels):
        parts.append(
            html(
                '<line x1="{x:.1f}" y1="{t}" x2="{x:.1f}" y2="{b}" stroke="#555" stroke-dasharray="4 2" class="marker">'
                "<title>{}</title></line>",
                marker_title, x=x(marker), t=top, b=top + inner_h,
            )  # fmt: skip
        )
    legend_x = left
    for line in lines:
        parts.extend(_curve(line, labels, x, y))
        parts.append(html('<text x="{}" y="12" font-size="11" fill="{}">— {}</text>', legend_x, line.color, line.name))
        legend_x += 14 + 7 * len(line.name)
    return html(
        '<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="{aria}" class="curve"><rect x="{l}" y="{t}" width="{iw}" height="{ih}" fill="none" stroke="#ddd"/>'
        '{parts}<text x="{lx}" y="{ty}" font-size="10" text-anchor="end">{hi}</text>'
        '<text x="{lx}" y="{by}" font-size="10" text-anchor="end">{lo}</text>'
        '<text x="{l}" y="{xy}" font-size="10">{first}</text>'
        '<text x="{r}" y="{xy}" font-size="10" text-anchor="end">{last}</text></svg>',
        w=width, h=height, aria=aria, l=left, t=top, iw=inner_w, ih=inner_h, parts=join(parts), lx=left - 4,
        ty=top + 8, by=top + inner_h, hi=num(hi), lo=num(lo), xy=height - 6, r=width - right,
        first=_short(labels[0]) if labels else "", last=_short(labels[-1]) if len(labels) > 1 else "",
    )  # fmt: skip


def _curve(line: Line, labels: Sequence[str], x: Callable[[int], float], y: Callable[[float], float]) -> list[Html]:
    """A polyline per run of finite values, and a titled dot per finite value."""
    runs: list[list[int]] = [[]]
    for i, v in enumerate(line.values):
        if math.isfinite(v):
            runs[-1].append(i)
        elif runs[-1]:
            runs.append([])
    out = []
    for run in runs:
        if len(run) > 1:
            points = join((html("{:.1f},{:.1f}", x(i), y(line.values[i])) for i in run), " ")
            out.append(html('<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>', points, line.color))
        for i in run:
            out.append(
                html(
                    '<circle cx="{:.1f}" cy="{:.1f}" r="2.5" fill="{}"><title>{}: {} {}</title></circle>',
                    x(i), y(line.values[i]), line.color, labels[i], line.name, num(line.values[i]),
                )  # fmt: skip
            )
    return out


def _short(label: str, keep: int = 28) -> str:
    """A label short enough for an axis; the full one is in each point's title."""
    return label if len(label) <= keep else label[: keep - 1] + "…"
