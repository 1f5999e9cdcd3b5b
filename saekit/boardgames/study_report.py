"""The study's table and plots: coverage and board reconstruction against L0, one colour per
architecture, the trained model filled and the random control hollow, the linear probe as a line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saekit.atomic import write_text
from saekit.eval.plots import pyplot, save_figure
from saekit.eval.table import markdown_table

GAMES = {
    "othello": ("Othello", "coverage_legal", "coverage, legal moves", "mine / theirs", "mine / empty / theirs"),
    "chess": ("Chess", "coverage_rules", "coverage, rules (check, pin, castling, en passant)", "pieces", "the 13 piece classes"),
}
"""game -> title, the second coverage key and its title, the blank-masked board's words, the probe's classes."""


def write_study_report(out: Path, rows: list[dict[str, Any]], probes: dict[str, dict[str, float]], game: str = "othello") -> Path:
    """``OUT/study.md`` (the table and the probes) and ``OUT/study.png``; returns the Markdown file."""
    title, extra, _, _, classes = GAMES[game]
    probe_rows = [{"model": label, **values} for label, values in probes.items()]
    columns = ["model", "name", "architecture", "l0", "fvu", "coverage_board", extra, "reconstruction", "reconstruction_with_empty"]
    text = (
        f"# {title} study\n\n"
        + markdown_table(rows, columns)
        + f"\n\nLinear probe per square ({classes}) on the same activations, test half:\n\n"
        + markdown_table(probe_rows, ["model", "accuracy", "f1_board", "f1_blank_masked"])
        + "\n"
    )
    write_text(out / "study.md", text)
    plot_study(rows, probes, out / "study.png", game)
    return out / "study.md"


def plot_study(rows: list[dict[str, Any]], probes: dict[str, dict[str, float]], path: Path, game: str = "othello") -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    _, extra, extra_title, board_words, _ = GAMES[game]
    panels = (
        ("coverage_board", f"coverage, board ({board_words})"), (extra, extra_title), ("reconstruction", f"board reconstruction F1 ({board_words})"),
    )  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.0))
    architectures = sorted({r["architecture"] for r in rows})
    colours = {a: plt.cm.tab10(i % 10) for i, a in enumerate(architectures)}
    for ax, (key, title) in zip(axes, panels):
        for r in rows:
            trained = r["model"] == "trained"
            ax.scatter(r["l0"], r[key], s=40, color=colours[r["architecture"]], facecolors=colours[r["architecture"]] if trained else "none")
        if key == "reconstruction":
            for label, style in (("trained", "-"), ("random", ":")):
                if label in probes:
                    ax.axhline(probes[label]["f1_blank_masked"], color="grey", ls=style, lw=1, label=f"linear probe, {label} model")
            ax.legend(fontsize=7, loc="center right")
        ax.set_xscale("log")
        ax.tick_params(axis="x", which="minor", labelbottom=False)  # within a decade they overlap
        ax.set_xlabel("L0")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[a], label=a) for a in architectures]
    handles += [plt.Line2D([], [], marker="o", ls="", color="black", label="trained model"),
                plt.Line2D([], [], marker="o", ls="", color="black", markerfacecolor="none", label="random init")]  # fmt: skip
    axes[0].legend(handles=handles, fontsize=7, loc="upper left")
    return save_figure(plt, fig, path)
