"""Evaluate every SAE of a suite, on a model's held-out tokens (with downstream metrics) or on an
activation file, and write the report: ``results.json``, ``report.md`` with the table, and plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from saekit.eval.evaluate import evaluate, evaluate_on_model
from saekit.eval.report import write_report
from saekit.eval.suite_plots import plot_by_depth, plot_density, plot_frontier, site_depth
from saekit.sae.base import SAE
from saekit.training.sites import label

MODEL_COLUMNS = [
    "name", "site", "architecture", "d_sae", "l0", "fvu", "cos", "dead_fraction", "dense_fraction",
    "clean_ce", "delta_ce", "loss_recovered_zero", "loss_recovered_mean", "kl",
]  # fmt: skip
ACTIVATION_COLUMNS = ["name", "site", "architecture", "d_sae", "l0", "fvu", "mse", "cos", "dead_fraction", "dense_fraction"]

METRIC_NOTES = (
    "FVU = Σ‖x−x̂‖² / Σ‖x−x̄‖² (x̄ the mean token; Gemma Scope's definition). `delta_ce`: next-token loss "
    "with the SAE's reconstruction spliced into its site minus the clean loss (nats/token); "
    "`loss_recovered_zero` / `_mean` = (CE_ablated − CE_spliced) / (CE_ablated − CE_clean) with the site "
    "zeroed / set to its mean activation; `kl` = mean KL(clean ‖ spliced). Dead: never fired on the "
    "evaluation tokens; dense: fired on more than 10% of them."
)


def _identity(name: str, sae: SAE) -> dict[str, Any]:
    return {"name": name, "site": label(sae.sites), "architecture": sae.architecture, "d_sae": sae.d_sae}


def evaluate_suite(
    saes: Mapping[str, SAE],
    *,
    model: Any = None,
    tokens: Tensor | None = None,
    activations: Any = None,
    skip_positions: int = 1,
    context_batch_size: int = 8,
    max_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """One row per SAE (name, site, architecture, d_sae and every metric of :func:`saekit.evaluate`),
    sorted by depth then name. With ``model`` and ``tokens`` the SAEs of a site share its forward passes;
    with ``activations`` only activation metrics are computed."""
    if model is not None:
        by_name = evaluate_on_model(
            saes, model=model, tokens=tokens, skip_positions=skip_positions, context_batch_size=context_batch_size, progress=True
        )
    else:
        by_name = {name: evaluate(sae, activations, max_tokens=max_tokens) for name, sae in tqdm(saes.items(), desc="eval", unit="SAE")}
    rows = [{**_identity(name, sae), **by_name[name]} for name, sae in saes.items()]
    return sorted(rows, key=lambda r: (site_depth(r["site"]) or (10**9, r["site"]), r["name"]))


def write_suite_report(
    out: Path,
    rows: Sequence[dict[str, Any]],
    *,
    title: str,
    intro: str,
    links: Mapping[str, Path | str] | None = None,
) -> list[Path]:
    """The report of :func:`evaluate_suite`'s rows in ``out``; returns the plots drawn."""
    out = Path(out)
    downstream = all("delta_ce" in r for r in rows)
    plots = [
        plot_frontier(rows, out / "frontier.png") if downstream else None,
        plot_by_depth(rows, out / "by_depth.png"),
        plot_density(rows, out / "density.png"),
    ]
    write_report(
        out,
        title=title,
        intro=f"{intro}\n\n{METRIC_NOTES}",
        rows=rows,
        columns=MODEL_COLUMNS if downstream else ACTIVATION_COLUMNS,
        plots=plots,
        links=links,
    )
    return [p for p in plots if p is not None]
