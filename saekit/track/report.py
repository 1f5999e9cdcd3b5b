"""A measured series written out: each SAE's dynamics as data (``dynamics/<name>/``, saekit.analysis.store),
its plots, and the findings the paper states, checked on these checkpoints (``dynamics/summary.json``).

Findings, per SAE (over the latents alive at the final checkpoint):

* ``formed_at``: how many latents formed at each checkpoint (SAE-Track: at different times);
* ``drift_median_to_final`` and ``settled_at``: the median cosine of a latent's decoder direction with its
  final one, and the first checkpoint from which it stays at or above ``SETTLED`` (directions drift
  early and settle late);
* ``progress_vs_loss``: Spearman's correlation over checkpoints of the mean progress measure with the
  negated model loss (the measure rises as the loss falls);
* ``purity_vs_formation``: Spearman's correlation over formed latents of the formation checkpoint with
  the token purity of the top tokens (negative: token-level latents form first);
* ``cost``: steps and seconds of the series against from-scratch training at every checkpoint, and the
  steps a from-scratch run needed to reach the fine-tuned SAE's training loss (with the baseline).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from saekit.analysis.dynamics import spearman
from saekit.atomic import write_text
from saekit.eval.plots import pyplot, save_figure
from saekit.track.measure import SAEDynamics
from saekit.track.series import SeriesResult, Stage

SETTLED = 0.9
DYNAMICS = "dynamics"


def write_report(out: Path, series: SeriesResult, results: list[SAEDynamics]) -> dict[str, Any]:
    """Save every SAE's dynamics and plots under ``out / "dynamics"`` and return (and save) the findings."""
    summary = {}
    for result in results:
        folder = out / DYNAMICS / result.name
        result.save(folder)
        plot_dynamics(result, folder)
        summary[result.name] = {**findings(result), "cost": cost(series, result.name)}
    write_text(out / DYNAMICS / "summary.json", json.dumps(summary, indent=2, default=_json_number) + "\n")
    return summary


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def findings(r: SAEDynamics) -> dict[str, Any]:
    alive = r.alive
    to_final = r.drift_to_final[:, alive].median(1).values
    settled = next((t for t in range(len(to_final)) if bool((to_final[t:] >= SETTLED).all())), None)
    mean_progress = r.progress_cosine[:, alive].nanmean(1)
    formed = r.formation[alive]
    counts = torch.bincount(formed[formed >= 0], minlength=len(r.checkpoints)).tolist()
    keep = alive & (r.formation >= 0)
    return {
        "alive_latents": int(alive.sum()),
        "formed_at": dict(zip(r.checkpoints, counts)),
        "never_formed": int((formed < 0).sum()),
        "drift_median_to_final": [round(float(v), 4) for v in to_final],
        "settled_at": None if settled is None else r.checkpoints[settled],
        "mean_progress_cosine": [round(float(v), 4) for v in mean_progress],
        "mean_progress_wjaccard": [round(float(v), 4) for v in r.progress_wjaccard[:, alive].nanmean(1)],
        "model_loss": [round(v, 4) for v in r.model_loss],
        "fvu": [round(v, 4) for v in r.fvu],
        "progress_vs_loss": spearman(mean_progress, -torch.tensor(r.model_loss)),
        "purity_vs_formation": spearman(r.formation[keep].float(), r.token_purity[keep]),
    }


def cost(series: SeriesResult, name: str) -> dict[str, Any]:
    """Steps and seconds of the series and of the from-scratch baseline (when trained)."""
    warm = [s for s in series.series if s.warm]
    out: dict[str, Any] = {
        "series_finetune_steps": sum(s.steps for s in warm),
        "series_finetune_seconds": round(sum(s.seconds for s in warm), 1),
    }
    if series.independent:
        match = {s.checkpoint.index: s for s in series.independent}
        reached = [_steps_to_reach(match[s.checkpoint.index], _last_mse(s, name), name) for s in warm if s.checkpoint.index in match]
        out |= {
            "independent_steps": sum(s.steps for s in series.independent),
            "independent_seconds": round(sum(s.seconds for s in series.independent), 1),
            "independent_steps_to_reach_series_loss": reached,
        }
    return out


def _records(stage: Stage, name: str) -> list[dict[str, Any]]:
    lines = (stage.folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if r.get("name") == name]


def _last_mse(stage: Stage, name: str) -> float:
    records = _records(stage, name)
    return records[-1]["mse"] if records else float("nan")


def _steps_to_reach(stage: Stage, target: float, name: str) -> int | None:
    """The first logged step of ``stage``'s run with a training MSE at or below ``target`` (the runs
    share the checkpoint, its data and so its normalisation: their MSEs are in the same units)."""
    return next((r["step"] for r in _records(stage, name) if r["mse"] <= target), None)


def plot_dynamics(r: SAEDynamics, folder: Path) -> list[Path]:
    """drift.png, formation.png and trajectories.png of one SAE (none without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    x = [s if s is not None else i for i, s in enumerate(r.steps)]
    log_x = all(s is not None for s in r.steps)
    paths = [_plot_drift(plt, r, x, log_x, folder / "drift.png"), _plot_formation(plt, r, x, log_x, folder / "formation.png")]
    if r.trajectory_latents:
        paths.append(_plot_trajectories(plt, r, folder / "trajectories.png"))
    return paths


def _axis(ax: Any, log_x: bool, label: str) -> None:
    if log_x:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step of the checkpoint" if log_x else "checkpoint")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)


def _plot_drift(plt: Any, r: SAEDynamics, x: list[int], log_x: bool, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    final = r.drift_to_final[:, r.alive]
    q = torch.quantile(final, torch.tensor([0.1, 0.5, 0.9]), dim=1)
    ax.fill_between(x, q[0], q[2], alpha=0.25, label="10-90% of latents")
    ax.plot(x, q[1], marker="o", label="median cos to final direction")
    ax.plot(x, r.drift_to_previous[:, r.alive].median(1).values, marker=".", ls="--", label="median cos to previous checkpoint")
    _axis(ax, log_x, "decoder cosine")
    ax.set_title(f"{r.name}: decoder drift")
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


def _plot_formation(plt: Any, r: SAEDynamics, x: list[int], log_x: bool, path: Path) -> Path:
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(11, 4.0), layout="constrained")
    for series, label in ((r.progress_cosine, "codes, cosine"), (r.progress_wjaccard, "codes, weighted Jaccard"), (r.progress_activations, "activations, cosine")):
        ax.plot(x, series[:, r.alive].nanmean(1), marker="o", label=label)
    _axis(ax, log_x, "progress measure (top tokens − random)")
    loss = ax.twinx()
    loss.plot(x, r.model_loss, color="black", ls=":", label="model loss")
    loss.set_ylabel("model next-token loss")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{r.name}: feature formation")
    formed = r.formation[r.alive]
    counts = torch.bincount(formed[formed >= 0], minlength=len(r.checkpoints))
    hist.bar(range(len(counts)), counts.tolist())
    hist.set_xticks(range(len(counts)), r.checkpoints, rotation=60, fontsize=7)
    hist.set_ylabel("latents formed")
    hist.set_title("checkpoint at which each latent formed")
    return save_figure(plt, fig, path)


def _plot_trajectories(plt: Any, r: SAEDynamics, path: Path) -> Path:
    n = len(r.trajectory_latents)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False, layout="constrained")
    flat = [a for line in axes for a in line]
    for ax, latent, path2d in zip(flat, r.trajectory_latents, r.trajectories):
        ax.plot(path2d[:, 0], path2d[:, 1], color="grey", lw=0.8)
        points = ax.scatter(path2d[:, 0], path2d[:, 1], c=range(len(path2d)), cmap="viridis", s=14)
        ax.set_title(f"latent {latent}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in flat[n:]:
        ax.axis("off")
    fig.colorbar(points, ax=flat[:n], label="checkpoint")
    fig.suptitle(f"{r.name}: decoder directions over training (top two principal axes)")
    return save_figure(plt, fig, path)
