"""Results in SAEBench's output JSON schema (``sae_bench/evals/base_eval_output.py``), one file per SAE
and eval type, so that SAEBench's tables and Neuronpedia read them.

The top-level keys are SAEBench's: ``eval_type_id``, ``eval_config``, ``eval_id`` (a UUID per run),
``datetime_epoch_millis``, ``eval_result_metrics`` (flat metric groups), ``eval_result_details`` (one
object per dataset), ``sae_bench_commit_hash``, ``sae_lens_id``, ``sae_lens_release_id``,
``sae_lens_version``, ``sae_cfg_dict`` and ``eval_result_unstructured``. SAEBench's code did not run, so
``sae_bench_commit_hash`` names saekit and its version, and ``sae_lens_version`` is None. Metrics and
details hold the means over seeds; the per-seed values and their standard deviations (the spread
SAEBench's single-seed output lacks) go into ``eval_result_unstructured``, which SAEBench leaves free.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from saekit.atomic import write_text
from saekit.io.convert.native import saelens_cfg
from saekit.models.load import LoadedModel
from saekit.sae.base import SAE
from saekit.version import __version__

if TYPE_CHECKING:
    from saekit.eval.bench.absorption import AbsorptionConfig
    from saekit.eval.bench.core import CoreConfig
    from saekit.eval.bench.core_stats import WeightStats
    from saekit.eval.bench.meta_structure import MetaStructureConfig
    from saekit.eval.bench.sparse_probing import SparseProbingConfig, TaskRun

TOP_LEVEL_KEYS = (
    "eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics", "eval_result_details",
    "sae_bench_commit_hash", "sae_lens_id", "sae_lens_release_id", "sae_lens_version", "sae_cfg_dict",
    "eval_result_unstructured",
)  # fmt: skip
RUN_ID = str(uuid.uuid4())
"""SAEBench gives every SAE evaluated by one run the same eval_id."""


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean, or None when any value is None (a metric not computed for some seed or task)."""
    return None if any(v is None for v in values) else statistics.fmean(v for v in values if v is not None)


def _std(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) or len(values) < 2 else statistics.stdev(v for v in values if v is not None)


def sae_cfg_dict(sae: SAE) -> dict[str, Any]:
    """SAELens's config keys of ``sae`` (what its cfg.json holds), with its site and model."""
    return {**saelens_cfg(sae), "hook_name": sae.site, "model_name": sae.metadata.get("model")}


def base_output(eval_type: str, config: dict[str, Any], name: str, sae: SAE, release: str | None) -> dict[str, Any]:
    """The keys every SAEBench output has, metrics and details left empty for the eval to fill."""
    return {
        "eval_type_id": eval_type,
        "eval_config": config,
        "eval_id": RUN_ID,
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": {},
        "eval_result_details": [],
        "sae_bench_commit_hash": f"saekit-{__version__}",
        "sae_lens_id": name,
        "sae_lens_release_id": release,
        "sae_lens_version": None,
        "sae_cfg_dict": sae_cfg_dict(sae),
        "eval_result_unstructured": None,
    }


def sparse_probing_output(
    name: str, sae: SAE, runs: Sequence[TaskRun], cfg: SparseProbingConfig, model: LoadedModel, release: str | None
) -> dict[str, Any]:
    """One SAE's ``sparse_probing`` output over the tasks of ``runs``."""
    per_task = {run.task.name: run.per_seed[name] for run in runs}
    keys = list(next(iter(per_task.values())))
    seeds = [cfg.random_seed + s for s in range(cfg.seeds)]
    # For each seed, the mean over tasks; the spread of the benchmark's number is the spread of these.
    by_seed = {key: [mean_or_none([values[key][s] for values in per_task.values()]) for s in range(cfg.seeds)] for key in keys}
    metrics = {key: mean_or_none(vals) for key, vals in by_seed.items()}
    config = {
        **{k: v for k, v in asdict(cfg).items() if k not in ("tasks", "k_values")},
        "random_seed": cfg.random_seed,
        "dataset_names": list(per_task),
        "probe_train_set_size": cfg.train_size,
        "probe_test_set_size": cfg.test_size,
        "context_length": cfg.context_length,
        "sae_batch_size": cfg.batch_size,
        "llm_batch_size": cfg.batch_size,
        "llm_dtype": str(model.model.dtype).removeprefix("torch."),
        "model_name": model.name,
        "k_values": list(cfg.k_values),
        "lower_vram_usage": False,
        "seed_list": seeds,
        "dataset_source": sorted({run.task.source for run in runs}),
    }
    out = base_output("sparse_probing", config, name, sae, release)
    out["eval_result_metrics"] = {
        "llm": {k: v for k, v in metrics.items() if k.startswith("llm_")},
        "sae": {"sae_test_accuracy": None, **{k: v for k, v in metrics.items() if k.startswith("sae_")}},
    }
    out["eval_result_details"] = [
        {"dataset_name": task, **{k: mean_or_none(v) for k, v in values.items()}, "sae_test_accuracy": None} for task, values in per_task.items()
    ]
    out["eval_result_unstructured"] = {
        "seeds": seeds,
        "metrics_per_seed": by_seed,
        "metrics_std": {k: _std(v) for k, v in by_seed.items()},
        "tasks": {
            run.task.name: {
                "classes": list(run.task.classes),
                "n_train": run.n_train,
                "n_test": run.n_test,
                "n_too_short": run.n_too_short,
                "per_seed": run.per_seed[name],
                "std": {k: _std(v) for k, v in run.per_seed[name].items()},
            }
            for run in runs
        },
        "notes": "sae_test_accuracy (a probe on every latent) is not computed; metrics are means over seeds",
    }
    return out


def write_output(folder: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as ``folder/<eval_type_id>/<sae_lens_id>_eval_results.json`` (SAEBench's layout)."""
    path = Path(folder) / doc["eval_type_id"] / f"{doc['sae_lens_id']}_eval_results.json"
    write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


ABSORPTION_METRICS = {
    "mean_absorption_fraction_score": "mean_absorption_fraction",
    "mean_full_absorption_score": "full_absorption_rate",
    "mean_num_split_features": "num_split_features",
}
"""SAEBench's absorption metrics and the per-letter value each averages."""
DETAIL_KEYS = ("mean_absorption_fraction", "full_absorption_rate", "num_full_absorption", "num_probe_true_positives", "num_split_features")
"""The keys of SAEBench's per-letter result details."""


def _letter_summary(letters: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """SAEBench's six metrics over the letters that count: means and standard deviations over letters."""
    counted = [row for row in letters.values() if row["counted"]]
    out: dict[str, float | None] = {}
    for metric, key in ABSORPTION_METRICS.items():
        values = [float(row[key]) for row in counted]
        out[metric] = statistics.fmean(values) if values else None
        out[metric.replace("mean_", "std_dev_", 1)] = statistics.stdev(values) if len(values) > 1 else None
    return out


def absorption_output(
    name: str, sae: SAE, per_seed: Sequence[dict[str, dict[str, Any]]], cfg: AbsorptionConfig, model: LoadedModel,
    release: str | None, tokens_after_word: int,
) -> dict[str, Any]:  # fmt: skip
    """One SAE's ``absorption_first_letter`` output: metrics averaged over seeds, details of the first seed."""
    summaries = [_letter_summary(letters) for letters in per_seed]
    keys = list(summaries[0])
    by_seed = {key: [s[key] for s in summaries] for key in keys}
    config = {
        **asdict(cfg),
        "model_name": model.name,
        "max_k_value": cfg.max_k,
        "prompt_token_pos": -(tokens_after_word + 1),
        "llm_batch_size": cfg.batch_size,
        "llm_dtype": str(model.model.dtype).removeprefix("torch."),
        "min_GT_probe_f1": cfg.min_probe_f1,
        "seed_list": [cfg.random_seed + s for s in range(cfg.seeds)],
    }
    out = base_output("absorption_first_letter", config, name, sae, release)
    out["eval_result_metrics"] = {"mean": {k: _mean_present(v) for k, v in by_seed.items()}}
    out["eval_result_details"] = [
        {"first_letter": letter, **{k: row[k] for k in DETAIL_KEYS}} for letter, row in per_seed[0].items() if row["counted"]
    ]
    out["eval_result_unstructured"] = {
        "seeds": config["seed_list"],
        "metrics_per_seed": by_seed,
        "metrics_std": {k: _std([v for v in vals if v is not None]) for k, vals in by_seed.items()},
        "letters_per_seed": list(per_seed),
        "notes": "metrics: means over seeds of SAEBench's per-seed values (over the letters whose probe F1 reaches "
        "min_probe_f1); details: the first seed",
    }
    return out


def _mean_present(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


DETAIL_PRECISION = 10
"""Digits SAEBench rounds each per-latent value to."""


def saebench_number(value: float | None) -> float | None:
    """A value as SAEBench writes it: NaN (and, since JSON has neither, ±inf) as -1."""
    if value is None:
        return None
    return -1 if math.isnan(value) or math.isinf(value) else value


def _latent_details(stats: dict[str, Any], weights: WeightStats) -> list[dict[str, Any]]:
    """SAEBench's per-latent ``eval_result_details`` of the core eval."""
    columns: dict[str, Tensor | None] = {
        "feature_density": stats["feature_density"],
        "consistent_activation_heuristic": stats["consistent_activation_heuristic"],
        **weights._asdict(),
    }
    lists = {key: None if col is None else col.tolist() for key, col in columns.items()}
    n = len(lists["feature_density"] or [])
    return [
        {"index": i, **{key: None if col is None else saebench_number(round(col[i], DETAIL_PRECISION)) for key, col in lists.items()}}
        for i in range(n)
    ]


def core_output(
    name: str, sae: SAE, ev: dict[str, Any], stats: dict[str, Any], weights: WeightStats, cfg: CoreConfig,
    model: LoadedModel, release: str | None, *, tokens: tuple[int, int], batches: int,
) -> dict[str, Any]:  # fmt: skip
    """One SAE's ``core`` output: ``ev`` its :func:`~saekit.eval.evaluate.evaluate_on_model` result,
    ``stats`` its :class:`~saekit.eval.bench.core_stats.CoreTotals` result, ``weights`` its weight statistics."""
    from saekit.eval.bench.core_stats import misc_metrics

    config = {
        "model_name": model.name,
        "llm_dtype": str(model.model.dtype).removeprefix("torch."),
        "batch_size_prompts": cfg.batch_size_prompts,
        "n_eval_reconstruction_batches": batches,
        "n_eval_sparsity_variance_batches": batches,
        "dataset": cfg.dataset,
        "context_size": tokens[1],
        **dict.fromkeys(("compute_kl", "compute_ce_loss", "compute_l2_norms", "compute_sparsity_metrics", "compute_variance_metrics"), True),
        "compute_featurewise_density_statistics": True,
        "compute_featurewise_weight_based_metrics": True,
        "exclude_special_tokens_from_reconstruction": cfg.skip_positions > 0,
        "verbose": False,
        "skip_positions": cfg.skip_positions,
    }
    zero_kl = ev["zero_ablation_kl"]
    metrics = {
        "model_behavior_preservation": {
            "kl_div_score": (zero_kl - ev["kl"]) / zero_kl if zero_kl != 0 else math.nan,
            "kl_div_with_ablation": zero_kl,
            "kl_div_with_sae": ev["kl"],
        },
        "model_performance_preservation": {
            "ce_loss_score": ev["loss_recovered_zero"],
            "ce_loss_with_ablation": ev["zero_ablation_ce"],
            "ce_loss_with_sae": ev["spliced_ce"],
            "ce_loss_without_sae": ev["clean_ce"],
        },
        "reconstruction_quality": {k: stats[k] for k in ("explained_variance", "explained_variance_legacy", "mse", "cossim")},
        "shrinkage": {k: stats[k] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias")},
        "sparsity": {"l0": stats["l0"], "l1": stats["l1"]},
        "token_stats": {"total_tokens_eval_reconstruction": tokens[0] * tokens[1], "total_tokens_eval_sparsity_variance": tokens[0] * tokens[1]},
        "misc_metrics": misc_metrics(stats["feature_density"], weights.max_encoder_cosine_sim, weights.max_decoder_cosine_sim),
    }
    out = base_output("core", config, name, sae, release)
    out["eval_result_metrics"] = {group: {k: saebench_number(v) for k, v in values.items()} for group, values in metrics.items()}
    out["eval_result_details"] = _latent_details(stats, weights)
    saekit_keys = ("fvu", "explained_variance", "mse", "nmse", "cos", "l2_ratio", "l0", "dead_fraction", "dense_fraction",
                   "delta_ce", "mean_ablation_ce", "loss_recovered_mean", "scored_tokens", "tokens")  # fmt: skip
    out["eval_result_unstructured"] = {
        "saekit": {k: saebench_number(ev[k]) for k in saekit_keys} | {"readout": ev.get("readout", "plain"), "site": ev["site"]},
        "notes": "eval_result_metrics follow SAEBench's formulas (explained_variance about zero, mse divided by the "
        "batch's tokens); saekit holds saekit's own: explained_variance = 1 - FVU about the mean token, mse per "
        "element. Scored, replaced and counted: positions >= skip_positions of every context.",
    }
    return out


def meta_structure_output(name: str, sae: SAE, per_seed: Sequence[dict[str, float]], cfg: MetaStructureConfig, release: str | None) -> dict[str, Any]:
    """One SAE's ``meta_structure_decoder_variance`` output: metrics averaged over the seeds' meta-SAEs,
    the per-seed values and their standard deviations in ``eval_result_unstructured``."""
    keys = ("decoder_fraction_variance_explained", "train_time_seconds", "final_reconstruction_mse")
    by_seed = {key: [run[key] for run in per_seed] for key in keys}
    config = {**asdict(cfg), "seed_list": [cfg.random_seed + s for s in range(cfg.seeds)], "dtype": "float32", "autocast": False}
    out = base_output("meta_structure_decoder_variance", config, name, sae, release)
    out["eval_result_metrics"] = {"meta_structure": {k: statistics.fmean(v) for k, v in by_seed.items()}}
    out["eval_result_unstructured"] = {
        "seeds": config["seed_list"],
        "metrics_per_seed": by_seed,
        "metrics_std": {k: _std(v) for k, v in by_seed.items()},
        "meta_width": per_seed[0]["meta_width"],
        "notes": "metrics: means over seeds of one meta-SAE each, trained by saekit's engine on the unit-norm decoder rows",
    }
    return out
