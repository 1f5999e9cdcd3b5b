"""k-sparse probing (SAEBench's ``sparse_probing``): how well a few SAE latents, picked by the
difference of class means on the training texts, classify a binary property of texts, beside a
logistic-regression probe on all of the site's raw activations.

Per task: a class-balanced pool of at most ``train_size + test_size`` texts is drawn once (seeded by
``random_seed``) and run through the model once; each of ``seeds`` seeds then splits the pool into
train and test (stratified), picks the top-k latents (and, as SAEBench reports too, the top-k raw
channels) on the train split, fits an L2 logistic regression on them and scores it on the test split.
The spread over seeds is the spread over train/test partitions of the same texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.errors import ConfigError, DataError
from saekit.eval.bench.logreg import fit_logistic
from saekit.eval.bench.pooling import pooled_means, tokenize_texts
from saekit.eval.bench.tasks import DEFAULT_TASKS, ProbeTask, load_task
from saekit.models.load import LoadedModel
from saekit.sae.base import SAE

EVAL_TYPE = "sparse_probing"


@dataclass(frozen=True)
class SparseProbingConfig:
    tasks: tuple[str, ...] = DEFAULT_TASKS
    """sae-probes task names (numbered tags such as 5_hist_fig_ismale)."""
    k_values: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
    """Numbers of latents (and raw channels) each sparse probe is trained on."""
    train_size: int = 1024
    """Texts a probe is trained on (half per class; fewer when a class has fewer texts)."""
    test_size: int = 256
    """Held-out texts a probe is scored on."""
    seeds: int = 5
    """Train/test partitions scored, seeded random_seed, random_seed + 1, ..."""
    random_seed: int = 42
    """Seed of the pool of texts drawn from each task and of the first partition."""
    context_length: int = 128
    """Tokens of a text read, BOS included; the rest is cut off."""
    skip_positions: int = 1
    """Leading positions of each text left out of its mean (1 = BOS)."""
    batch_size: int = 16
    """Texts per forward pass."""
    C: float = 1.0
    """Inverse L2 penalty of every probe (scikit-learn's C)."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("sparse probing needs at least one task")
        check_unique(self.tasks)
        if not self.k_values or min(self.k_values) < 1 or len(set(self.k_values)) != len(self.k_values):
            raise ConfigError(f"k_values must be distinct positive integers, got {list(self.k_values)}")
        for key in ("train_size", "test_size"):
            if getattr(self, key) < 2:
                raise ConfigError(f"{key} must be at least 2 (one text per class), got {getattr(self, key)}")
        for key in ("seeds", "context_length", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if self.skip_positions < 0 or self.skip_positions >= self.context_length:
            raise ConfigError(f"skip_positions must be in [0, context_length), got {self.skip_positions}")
        if not self.C > 0:
            raise ConfigError(f"C must be positive, got {self.C}")


class Split(NamedTuple):
    """Positions in a task's pool of the texts a probe is fitted on (train) and scored on (test)."""

    train: Tensor
    test: Tensor


class TaskRun(NamedTuple):
    """One task's results: ``per_seed[metric]`` one accuracy per seed (None where k > d_in for a raw
    top-k probe), for each SAE; and the sizes used."""

    task: ProbeTask
    per_seed: dict[str, dict[str, list[float | None]]]
    n_train: int
    n_test: int
    n_too_short: int
    """Texts left out: no token left after skipping the leading positions."""


def check_unique(names: Sequence[str]) -> None:
    """Refuse a task named twice: its results would be merged under one name."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"task {name!r} is named twice; each task is scored once")
        seen.add(name)


def top_k_by_mean_diff(x: Tensor, y: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` columns of ``x [n, d]`` whose class means (labels ``y``) differ most in
    absolute value, largest first (ties: lower index first)."""
    if k > x.shape[1]:
        raise ConfigError(f"k={k} is larger than the {x.shape[1]} columns to choose from")
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        raise DataError("choosing latents by class means needs texts of both classes")
    diff = (x[pos].double().mean(0) - x[neg].double().mean(0)).abs()
    return torch.sort(diff, descending=True, stable=True).indices[:k]


def balanced_pool(labels: Tensor, size: int, seed: int) -> Tensor:
    """Indices of at most ``size // 2`` texts of each class, drawn without replacement."""
    g = torch.Generator().manual_seed(seed)
    per_class = min(size // 2, int((labels == 0).sum()), int((labels == 1).sum()))
    picks = [torch.nonzero(labels == c).flatten() for c in (0, 1)]
    return torch.cat([p[torch.randperm(len(p), generator=g)[:per_class]] for p in picks])


def stratified_split(labels: Tensor, train_fraction: float, seed: int) -> Split:
    """A seeded train/test partition of ``labels``'s positions keeping each class's share in both."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in (0, 1):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = min(max(1, round(len(idx) * train_fraction)), len(idx) - 1)
        train.append(idx[:n])
        test.append(idx[n:])
    return Split(torch.cat(train), torch.cat(test))


def probe_accuracies(x: Tensor, y: Tensor, split: Split, k_values: Sequence[int], C: float, prefix: str) -> dict[str, float | None]:
    """SAEBench's per-task metrics of one split on columns ``x``: the top-k probes (None where k exceeds
    the width) and, for the raw activations (``prefix`` "llm"), the probe on all of them."""
    ytr, yte = y[split.train], y[split.test]
    out: dict[str, float | None] = {}
    if prefix == "llm":
        out["llm_test_accuracy"] = fit_logistic(x[split.train], ytr, C=C).accuracy(x[split.test], yte)
    for k in k_values:
        if k > x.shape[1]:
            out[f"{prefix}_top_{k}_test_accuracy"] = None
            continue
        cols = top_k_by_mean_diff(x[split.train], ytr, k)
        probe = fit_logistic(x[split.train][:, cols], ytr, C=C)
        out[f"{prefix}_top_{k}_test_accuracy"] = probe.accuracy(x[split.test][:, cols], yte)
    return out


def check_saes(saes: Mapping[str, SAE], k_values: Sequence[int]) -> None:
    """Refuse, before any forward pass, SAEs without a site and k values larger than an SAE's width."""
    if not saes:
        raise ConfigError("a benchmark needs at least one SAE")
    for name, sae in saes.items():
        if sae.crosscoder:
            raise ConfigError(f"SAE {name!r} reads several sites {list(sae.sites)}; SAEBench's evaluations take SAEs of one site")
        if sae.site is None:
            raise ConfigError(f"SAE {name!r} records no site: the benchmark needs to know where to read the model")
        if max(k_values) > sae.d_sae:
            raise ConfigError(f"k={max(k_values)} is larger than SAE {name!r}'s d_sae={sae.d_sae}; choose a smaller k")


def run_task(task: ProbeTask, loaded: LoadedModel, saes: Mapping[str, SAE], cfg: SparseProbingConfig) -> TaskRun:
    """Every SAE's per-seed accuracies on one task (one forward pass over the task's pool)."""
    ids = tokenize_texts(loaded, task.texts, cfg.context_length)
    usable = torch.tensor([len(t) > cfg.skip_positions for t in ids])
    labels = torch.tensor(task.labels).masked_fill(~usable, -1)  # too short: in neither class
    pool = balanced_pool(labels, cfg.train_size + cfg.test_size, cfg.random_seed)
    if len(pool) < 4:
        raise DataError(
            f"task {task.name!r}: needs at least 2 texts of each class with more than {cfg.skip_positions} token(s), "
            f"has {int((labels == 1).sum())} and {int((labels == 0).sum())}"
        )
    y = labels[pool]
    pooled = pooled_means(
        loaded, [ids[i] for i in pool.tolist()], saes, skip_positions=cfg.skip_positions, batch_size=cfg.batch_size, what=f"task {task.name!r}"
    )
    fraction = cfg.train_size / (cfg.train_size + cfg.test_size)
    splits = [stratified_split(y, fraction, cfg.random_seed + s) for s in range(cfg.seeds)]
    by_site = {site: [probe_accuracies(x, y, split, cfg.k_values, cfg.C, "llm") for split in splits] for site, x in pooled.llm.items()}
    per_seed: dict[str, dict[str, list[float | None]]] = {}
    for name, sae in tqdm(saes.items(), desc=f"{task.name} probes", unit="SAE", leave=False):
        sae_rows = [probe_accuracies(pooled.sae[name], y, split, cfg.k_values, cfg.C, "sae") for split in splits]
        rows = [{**llm, **own} for llm, own in zip(by_site[sae.require_site()], sae_rows)]
        per_seed[name] = {key: [r[key] for r in rows] for key in rows[0]}
    return TaskRun(task, per_seed, len(splits[0].train), len(splits[0].test), int((~usable).sum()))


def sparse_probing(
    saes: Mapping[str, SAE],
    model: LoadedModel,
    config: SparseProbingConfig | None = None,
    *,
    tasks: Sequence[ProbeTask] | None = None,
    release: str | None = None,
) -> dict[str, dict[str, Any]]:
    """SAEBench ``sparse_probing`` output (a JSON-ready dict) of every SAE, by name.

    ``tasks`` replaces the sae-probes tasks named in ``config`` (texts and labels made by the caller,
    e.g. with :func:`saekit.eval.bench.tasks.make_task`); ``release`` is recorded as the SAEs'
    ``sae_lens_release_id`` (a suite's name)."""
    from saekit.eval.bench.output import sparse_probing_output

    cfg = config or SparseProbingConfig()
    if not isinstance(model, LoadedModel):
        raise ConfigError("sparse probing needs the model with its tokenizer, as saekit.load_model returns it")
    check_saes(saes, cfg.k_values)
    chosen = list(tasks) if tasks is not None else [load_task(name) for name in cfg.tasks]
    check_unique([task.name for task in chosen])
    runs = [run_task(task, model, saes, cfg) for task in chosen]
    return {name: sparse_probing_output(name, sae, runs, cfg, model, release) for name, sae in saes.items()}
