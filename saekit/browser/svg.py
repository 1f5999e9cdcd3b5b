"""Inline SVG plots, drawn as text: nothing to load, nothing to fetch."""

from __future__ import annotations

from collections.abc import Sequence

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
