"""Inline SVG plots, drawn as text: nothing to load, nothing to fetch."""

from __future__ import annotations

from collections.abc import Sequence

from saekit.browser.fmt import num


def histogram_svg(counts: Sequence[int], high: float, *, width: int = 420, height: int = 130, label: str = "activation") -> str:
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
            f'<rect x="{pad_left + i * bar_w:.1f}" y="{pad_top + inner_h - h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
            f'height="{h:.1f}" fill="#e8740c"><title>{num(lo)} to {num(hi)}: {int(count):,}</title></rect>'
        )
    axis_y = pad_top + inner_h
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="histogram of non-zero activations" class="hist">'
        f'<line x1="{pad_left}" y1="{axis_y}" x2="{width - pad_left}" y2="{axis_y}" stroke="#555"/>'
        + "".join(bars)
        + f'<text x="{pad_left}" y="{height - 6}" font-size="11">0</text>'
        f'<text x="{width / 2}" y="{height - 6}" font-size="11" text-anchor="middle">{label}</text>'
        f'<text x="{width - pad_left}" y="{height - 6}" font-size="11" text-anchor="end">{num(high)}</text>'
        f'<text x="{pad_left + 2}" y="{pad_top + 10}" font-size="10" fill="#555">max bin {int(peak):,}</text>'
        "</svg>"
    )
