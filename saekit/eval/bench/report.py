"""The benchmark's report folder: one SAEBench JSON per SAE and eval type, a table per SAE (mean ±
standard deviation over seeds) and one per sparse-probing task, a plot of accuracy against k and one
of the absorption rates."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saekit.eval.bench.output import mean_or_none, write_output
from saekit.eval.plots import pyplot, save_figure
from saekit.eval.report import write_report
from saekit.eval.suite_plots import site_depth
from saekit.eval.table import markdown_table

ABSORPTION_NOTES = (
    "`absorption`: SAEBench's mean absorption fraction on the first-letter task (0: the letter's main latents "
    "carry it; 1: other latents absorb it), `full_absorption` the rate of full absorption, `split` the number "
    "of main latents per letter, `letters` those whose raw probe reaches the F1 threshold; mean ± standard "
    "deviation over seeds."
)
NOTES = (
    "`raw` is a logistic-regression probe on all of the site's activations (mean over each text's tokens); "
    "`top_k` a probe on the k SAE latents whose class means differ most on the training texts (SAEBench's "
    "sparse probing). Test accuracy, mean ± standard deviation over the seeds' train/test partitions."
)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _identity(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "site": doc["sae_cfg_dict"]["hook_name"], "d_sae": doc["sae_cfg_dict"]["d_sae"]}


def summary_rows(outputs: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per SAE: its site and width, the raw probe's accuracy and each k's, averaged over tasks."""
    rows = []
    for name, doc in outputs.items():
        metrics = {**doc["eval_result_metrics"]["llm"], **doc["eval_result_metrics"]["sae"]}
        std = doc["eval_result_unstructured"]["metrics_std"]
        row = _identity(name, doc)
        row["raw"] = _pm(metrics["llm_test_accuracy"], std["llm_test_accuracy"])
        for k in doc["eval_config"]["k_values"]:
            row[f"top_{k}"] = _pm(metrics[f"sae_top_{k}_test_accuracy"], std[f"sae_top_{k}_test_accuracy"])
        rows.append(row)
    return rows


def absorption_rows(outputs: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per SAE: absorption fraction, full absorption and split latents (mean ± std over seeds)."""
    rows = []
    for name, doc in outputs.items():
        mean, std = doc["eval_result_metrics"]["mean"], doc["eval_result_unstructured"]["metrics_std"]
        row = _identity(name, doc)
        for column, key in (("absorption", "mean_absorption_fraction_score"), ("full_absorption", "mean_full_absorption_score"), ("split", "mean_num_split_features")):
            row[column] = _pm(mean[key], std[key])
        row["letters"] = len(doc["eval_result_details"])
        rows.append(row)
    return rows


def plot_absorption(outputs: Mapping[str, dict[str, Any]], path: Path) -> Path | None:
    """Mean absorption fraction and full-absorption rate per SAE (bars, standard deviation over seeds)."""
    bars = {
        label: {n: (doc["eval_result_metrics"]["mean"][key], doc["eval_result_unstructured"]["metrics_std"][key]) for n, doc in outputs.items()}
        for key, label in (("mean_absorption_fraction_score", "absorption fraction"), ("mean_full_absorption_score", "full absorption"))
    }
    return plot_bars(bars, path, title="feature absorption (first letter)", ylabel="mean over letters")


CORE_NOTES = (
    "Core (SAEBench's formulas): `ce_score` = (CE_zeroed − CE_spliced) / (CE_zeroed − CE_clean), `kl_score` = "
    "(KL_zeroed − KL_spliced) / KL_zeroed, `ev` SAEBench's explained variance (about zero), `ev_centred` "
    "saekit's 1 − FVU (about the mean token), `l2_ratio` mean ‖x̂‖/‖x‖, `alive` the fraction of latents that fired."
)
META_NOTES = (
    "`meta_fve`: the fraction of the unit-norm decoder rows' variance a BatchTopK meta-SAE (a quarter as wide, "
    "k = 4) explains (SAEBench's decoder_fraction_variance_explained); high: the latents share structure. "
    "Mean ± standard deviation over the meta-SAEs' seeds."
)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def core_rows(outputs: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per SAE: SAEBench's headline core metrics and saekit's centred explained variance."""
    rows = []
    for name, doc in outputs.items():
        m = doc["eval_result_metrics"]
        row = _identity(name, doc)
        row |= {
            "ce_score": _number(m["model_performance_preservation"]["ce_loss_score"]),
            "kl_score": _number(m["model_behavior_preservation"]["kl_div_score"]),
            "ev": _number(m["reconstruction_quality"]["explained_variance"]),
            "ev_centred": _number(doc["eval_result_unstructured"]["saekit"]["explained_variance"]),
            "l0": f"{m['sparsity']['l0']:.1f}",
            "l2_ratio": _number(m["shrinkage"]["l2_ratio"]),
            "alive": _number(m["misc_metrics"]["frac_alive"]),
        }
        rows.append(row)
    return rows


def meta_rows(outputs: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per SAE: the meta-SAE's fraction of decoder variance explained (mean ± std over seeds)."""
    key = "decoder_fraction_variance_explained"
    return [
        _identity(name, doc) | {"meta_fve": _pm(doc["eval_result_metrics"]["meta_structure"][key], doc["eval_result_unstructured"]["metrics_std"][key])}
        for name, doc in outputs.items()
    ]


def plot_bars(bars: Mapping[str, Mapping[str, tuple[float | None, float | None]]], path: Path, *, title: str, ylabel: str) -> Path | None:
    """Grouped bars: ``bars[label][sae] = (value, error)`` (None: left out / no error bar); None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    names = list(dict.fromkeys(n for per in bars.values() for n in per))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(names) + 2), 4))
    for j, (label, per) in enumerate(bars.items()):
        offset = (j - (len(bars) - 1) / 2) * width
        pairs = [per.get(n) or (None, None) for n in names]
        errs = [err or 0.0 for _, err in pairs] if any(err is not None for _, err in pairs) else None
        ax.bar([i + offset for i in range(len(names))], [v or 0.0 for v, _ in pairs], width=width, yerr=errs, capsize=2, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save_figure(plt, fig, path)


def plot_core(outputs: Mapping[str, dict[str, Any]], path: Path) -> Path | None:
    """SAEBench's CE-loss and KL scores and saekit's explained variance (1 − FVU) per SAE: SAEBench's own
    explained variance is not comparable across sites (docs/metrics.md)."""
    bars = {
        "ce_loss_score": {n: (doc["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"], None) for n, doc in outputs.items()},
        "kl_div_score": {n: (doc["eval_result_metrics"]["model_behavior_preservation"]["kl_div_score"], None) for n, doc in outputs.items()},
        "1 − FVU": {n: (doc["eval_result_unstructured"]["saekit"]["explained_variance"], None) for n, doc in outputs.items()},
    }
    return plot_bars(bars, path, title="SAEBench core", ylabel="score")


def plot_meta(outputs: Mapping[str, dict[str, Any]], path: Path) -> Path | None:
    """The meta-SAE's fraction of decoder variance explained per SAE, standard deviation over seeds."""
    key = "decoder_fraction_variance_explained"
    per = {n: (doc["eval_result_metrics"]["meta_structure"][key], doc["eval_result_unstructured"]["metrics_std"][key]) for n, doc in outputs.items()}
    return plot_bars({"meta-SAE": per}, path, title="meta-structure (decoder variance explained)", ylabel="fraction")


def task_table(outputs: Mapping[str, dict[str, Any]]) -> str:
    """A Markdown table with one row per (task, SAE)."""
    rows, columns = [], ["task", "name", "raw"]
    for name, doc in outputs.items():
        ks = doc["eval_config"]["k_values"]
        columns += [f"top_{k}" for k in ks if f"top_{k}" not in columns]
        for task, info in doc["eval_result_unstructured"]["tasks"].items():
            seeds, std = info["per_seed"], info["std"]
            row = {"task": task, "name": name, "raw": _pm(mean_or_none(seeds["llm_test_accuracy"]), std["llm_test_accuracy"])}
            for k in ks:
                key = f"sae_top_{k}_test_accuracy"
                row[f"top_{k}"] = _pm(mean_or_none(seeds[key]), std[key])
            rows.append(row)
    return markdown_table(sorted(rows, key=lambda r: (r["task"], r["name"])), columns)


def plot_sparse_probing(outputs: Mapping[str, dict[str, Any]], path: Path) -> Path | None:
    """One panel per site: mean test accuracy over tasks against k for each SAE there (error bars:
    standard deviation over seeds), the raw-activation probe dashed; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    by_site: dict[str, list[str]] = {}
    for name, doc in outputs.items():
        by_site.setdefault(doc["sae_cfg_dict"]["hook_name"], []).append(name)
    sites = sorted(by_site, key=lambda site: site_depth(site) or (10**9, site))
    fig, axes = plt.subplots(1, len(sites), figsize=(3.6 * len(sites) + 0.4, 3.4), sharey=True, squeeze=False)
    for ax, site in zip(axes[0], sites):
        names = by_site[site]
        for name in names:
            doc = outputs[name]
            ks = doc["eval_config"]["k_values"]
            sae, std = doc["eval_result_metrics"]["sae"], doc["eval_result_unstructured"]["metrics_std"]
            ys = [sae[f"sae_top_{k}_test_accuracy"] for k in ks]
            errs = [std[f"sae_top_{k}_test_accuracy"] or 0.0 for k in ks]
            ax.errorbar(ks, ys, yerr=errs, marker="o", markersize=3, capsize=2, label=name)
        raw = outputs[names[0]]["eval_result_metrics"]["llm"]["llm_test_accuracy"]
        ax.axhline(raw, linestyle="--", color="grey", linewidth=1, label="raw probe")
        ax.set_xscale("log")
        ax.set_xlabel("k (SAE latents)")
        ax.set_title(site, fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
    axes[0][0].set_ylabel("test accuracy (mean over tasks)")
    fig.suptitle("k-sparse probing", fontsize=10)
    return save_figure(plt, fig, path)


def write_bench_report(
    out: Path, results: Mapping[str, Mapping[str, dict[str, Any]]], *, title: str, intro: str, links: Mapping[str, Path | str] | None = None
) -> list[Path]:
    """Write every SAEBench JSON of ``results`` (eval type id -> SAE name -> output) and the report into
    ``out``: one row per SAE with the columns of every eval run; returns the JSON files."""
    out = Path(out)
    files = [write_output(out, doc) for outputs in results.values() for doc in outputs.values()]
    merged: dict[str, dict[str, Any]] = {}
    parts, plots = [intro], []
    probing, absorbed = results.get("sparse_probing"), results.get("absorption_first_letter")
    cored, meta = results.get("core"), results.get("meta_structure_decoder_variance")
    if probing:
        for row in summary_rows(probing):
            merged.setdefault(row["name"], {}).update(row)
        plots.append(plot_sparse_probing(probing, out / "sparse_probing.png"))
        parts += [NOTES, f"Sparse probing per task:\n\n{task_table(probing)}"]
    if absorbed:
        for row in absorption_rows(absorbed):
            merged.setdefault(row["name"], {}).update(row)
        plots.append(plot_absorption(absorbed, out / "absorption.png"))
        parts.append(ABSORPTION_NOTES)
    for outputs, to_rows, plot, notes, png in (
        (cored, core_rows, plot_core, CORE_NOTES, "core.png"),
        (meta, meta_rows, plot_meta, META_NOTES, "meta_structure.png"),
    ):
        if outputs:
            for row in to_rows(outputs):
                merged.setdefault(row["name"], {}).update(row)
            plots.append(plot(outputs, out / png))
            parts.append(notes)
    rows = list(merged.values())
    columns = list(dict.fromkeys(c for row in rows for c in row))
    parts.append(f"SAEBench JSON: {len(files)} file(s) in {', '.join(f'`{t}/`' for t in results)}.\n\nPer SAE:")
    write_report(out, title=title, intro="\n\n".join(parts), rows=rows, columns=columns, plots=plots, links=links)
    return files
