"""The plots of a suite evaluation: the L0 / delta-loss frontier per site (Gemma Scope's view), metrics
by depth, and latent firing-density histograms. Each takes the rows of :func:`saekit.eval.suite.evaluate_suite`
and returns the path written, or None when matplotlib is missing or the rows lack what the plot needs."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saekit.atomic import write_file
from saekit.eval.plots import pyplot

Row = dict[str, Any]
_LAYER = re.compile(r"layers\.(\d+)\.(\w+)")


def site_depth(site: str) -> tuple[int, str] | None:
    """(layer, sublayer kind) of a canonical site name, None for a raw module path."""
    match = _LAYER.fullmatch(site or "")
    return (int(match.group(1)), match.group(2)) if match else None


def _grid(plt: Any, n: int, width: float = 3.6, height: float = 3.0) -> tuple[Any, list[Any]]:
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def save_figure(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (the format from its suffix) atomically and close it."""
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix[1:] or None, dpi=110))
    plt.close(fig)
    return path


def plot_frontier(rows: Sequence[Row], path: Path) -> Path | None:
    """Delta LM loss against L0, one panel per site, one colour per architecture (log L0 axis)."""
    rows = [r for r in rows if "delta_ce" in r]
    plt = pyplot()
    if plt is None or not rows:
        return None
    sites = sorted({r["site"] for r in rows}, key=lambda s: (site_depth(s) or (math.inf, s)))
    fig, axes = _grid(plt, len(sites))
    for ax, site in zip(axes, sites):
        mine = [r for r in rows if r["site"] == site]
        for arch in sorted({r["architecture"] for r in mine}):
            points = sorted((r["l0"], r["delta_ce"]) for r in mine if r["architecture"] == arch)
            ax.plot(*zip(*points), marker="o", label=arch)
        ax.set(title=site, xlabel="L0", ylabel="Δ LM loss (nats)")
        if all(r["l0"] > 0 for r in mine):
            ax.set_xscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("Sparsity against downstream loss (lower left is better)")
    return save_figure(plt, fig, path)


def plot_by_depth(rows: Sequence[Row], path: Path) -> Path | None:
    """FVU and (when measured) delta LM loss against layer, a line per architecture and sublayer kind."""
    placed = [(depth, r) for r in rows if (depth := site_depth(r.get("site", ""))) is not None]
    plt = pyplot()
    if plt is None or len({depth[0] for depth, _ in placed}) < 2:
        return None
    metrics = ["fvu"] + (["delta_ce"] if all("delta_ce" in r for _, r in placed) else [])
    labels = {"fvu": "FVU", "delta_ce": "Δ LM loss (nats)"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        groups: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for (layer, kind), r in placed:
            groups.setdefault((r["architecture"], kind), []).append((layer, r[metric]))
        for (arch, kind), points in sorted(groups.items()):
            ax.plot(*zip(*sorted(points)), marker="o", label=f"{arch} {kind}")
        ax.set(xlabel="layer", ylabel=labels[metric], title=f"{labels[metric]} by depth")
        ax.legend(fontsize=7)
    return save_figure(plt, fig, path)


def plot_density(rows: Sequence[Row], path: Path) -> Path | None:
    """Histograms of log10 latent firing frequency, one panel per architecture, a line per SAE."""
    rows = [r for r in rows if isinstance(r.get("density_histogram"), dict)]
    plt = pyplot()
    if plt is None or not rows:
        return None
    archs = sorted({r["architecture"] for r in rows})
    fig, axes = _grid(plt, len(archs), width=4.2)
    for ax, arch in zip(axes, archs):
        for r in rows:
            if r["architecture"] != arch:
                continue
            hist = r["density_histogram"]
            ax.stairs(hist["counts"], hist["log10_edges"], label=f"{r['name']} ({hist['dead']} dead)")
        ax.set(title=arch, xlabel="log10 firing frequency", ylabel="latents")
        ax.legend(fontsize=6)
    return save_figure(plt, fig, path)
