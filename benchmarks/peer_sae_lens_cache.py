"""SAELens's side of benchmarks/cache_sweeps.py: its activation cache against recomputing, on the same
sites, tokens and sweeps as saekit's.

* recompute: each sweep is SAELens's multi-site pipeline, ``MultiSAETrainingRunner`` (one forward pass
  per batch of contexts feeds every site's SAE; benchmarks/suite.py ``sae_lens_multi_runner``);
* cache: ``CacheActivationsRunner`` caches **one** hook per run (its config has a single ``hook_name``), so
  every site is its own run, each running the model over all the tokens up to that site's layer; it loads the model itself, by
  name, so the embedded SmolLM2 is saved once (untimed) as a Hugging Face folder for it. BOS positions
  are cut with its ``seqpos_slice = (1, None)``, so each cached context has 127 rows, as saekit's;
  storage float16 (saekit's default), one buffer holding every row (a buffer left partly filled when the
  contexts run out is dropped by its loop). Then each sweep trains one SAE per site with
  ``LanguageModelSAETrainingRunner`` from that site's cached dataset (``use_cached_activations``), with
  its per-site normalisation on one batch and the same settings as the recompute path. It is given the
  already loaded model (``override_model``, untimed), which it does not run when reading a cache.

    .bench-venv/bin/python benchmarks/cache_sweeps.py --library sae_lens --ks 32
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from peers import Case, schedule
from suite import MODEL, sae_lens_multi_runner


def _sweep_case(cfg, k: int) -> Case:
    return Case(f"cache-sweep-k{k}", "topk", cfg.d_sae, cfg.steps, cfg.batch, k, cfg.lr)


def _hooks(cfg) -> dict[str, str]:
    """SAE name -> module path: saekit's ``layers.{i}.resid_post`` is the output of ``model.layers.{i}``."""
    return {site: "model." + site.removesuffix(".resid_post") for site in cfg.sites}


def _quiet():
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))  # its progress bars
    return stack


def recompute(cfg, loaded, tokens: np.ndarray, k: int) -> tuple[float, dict]:
    from datasets import Dataset

    dataset = Dataset.from_dict({"input_ids": tokens.tolist()})  # saekit's contexts, BOS first
    torch.manual_seed(0)
    start = time.perf_counter()
    saes = sae_lens_multi_runner(loaded, dataset, _hooks(cfg), _sweep_case(cfg, k), context=cfg.context, forward_batch=16)
    return time.perf_counter() - start, dict(saes)


def write_caches(cfg, loaded, tokens: np.ndarray, work: Path) -> tuple[float, int, dict[str, Path]]:
    """(seconds, bytes on disk, site -> cached dataset folder): one CacheActivationsRunner per site."""
    from datasets import Dataset
    from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig

    hf_folder = work / "hf-model"
    if not (hf_folder / "config.json").exists():
        loaded.model.save_pretrained(hf_folder)
        loaded.tokenizer.save_pretrained(hf_folder)
    dataset = Dataset.from_dict({"input_ids": tokens.tolist()})
    rows, bytes_per_row = len(tokens) * (cfg.context - 1), loaded.model.config.hidden_size * 2
    folders, seconds = {}, 0.0
    for site, hook in _hooks(cfg).items():
        folder = work / f"sae-lens-cache-{site}"
        if folder.exists():
            shutil.rmtree(folder)
        runner_cfg = CacheActivationsRunnerConfig(
            dataset_path="unused (override_dataset)", model_name=str(hf_folder), model_class_name="AutoModelForCausalLM",
            model_batch_size=16, hook_name=hook, d_in=loaded.model.config.hidden_size, training_tokens=rows,
            context_size=cfg.context, seqpos_slice=(1, None), new_cached_activations_path=str(folder), dtype="float16",
            device="cpu", streaming=False, shuffle=True, seed=0,
            buffer_size_gb=(rows * bytes_per_row + bytes_per_row // 2) / 1e9,  # one buffer of exactly every row
        )  # fmt: skip
        with _quiet():
            start = time.perf_counter()
            CacheActivationsRunner(runner_cfg, override_dataset=dataset).run()
            seconds += time.perf_counter() - start
        folders[site] = folder
    size = sum(f.stat().st_size for folder in folders.values() for f in folder.rglob("*") if f.is_file())
    return seconds, size, folders


def from_caches(cfg, loaded, tokens: np.ndarray, folders: dict[str, Path], k: int) -> tuple[float, dict]:
    """One sweep from the cached datasets: a LanguageModelSAETrainingRunner per site, one after the other.

    It is given the token dataset too: its ``ActivationsStore.from_config`` refuses a config without a
    dataset even when the activations come from a cache (with only ``dataset_path`` it would load that
    dataset from the Hub); it opens the dataset but does not run the model over it."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig, TopKTrainingSAEConfig
    from sae_lens.load_model import HookedProxyLM

    warm, decay = schedule(_sweep_case(cfg, k))
    hooks = _hooks(cfg)
    dataset = Dataset.from_dict({"input_ids": tokens.tolist()})
    model = HookedProxyLM(loaded.model, loaded.tokenizer, hook_names=list(hooks.values()))
    saes, seconds = {}, 0.0
    for site, hook in hooks.items():
        sae_cfg = TopKTrainingSAEConfig(
            d_in=loaded.model.config.hidden_size, d_sae=cfg.d_sae, k=k, aux_loss_coefficient=1 / 32,
            rescale_acts_by_decoder_norm=False, normalize_activations="expected_average_only_in",
        )  # fmt: skip
        runner_cfg = LanguageModelSAERunnerConfig(
            sae=sae_cfg, model_name=MODEL, model_class_name="AutoModelForCausalLM", hook_name=hook,
            use_cached_activations=True, cached_activations_path=str(folders[site]), context_size=cfg.context - 1,
            training_tokens=cfg.steps * cfg.batch, train_batch_size_tokens=cfg.batch, store_batch_size_prompts=16,
            n_batches_in_buffer=-(-cfg.batch // (cfg.context - 1)),  # its smallest buffer: one batch of rows
            n_batches_for_norm_estimate=1, lr=cfg.lr,
            lr_warm_up_steps=warm, lr_decay_steps=decay, lr_end=0.0, device="cpu", seed=0,
            logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None,
        )  # fmt: skip
        torch.manual_seed(0)
        with _quiet():
            start = time.perf_counter()
            saes[site] = LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset, override_model=model).run()
            seconds += time.perf_counter() - start
    return seconds, saes
