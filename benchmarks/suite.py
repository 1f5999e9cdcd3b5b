"""The suite case: TopK SAEs on all 30 residual sites (``layers.*.resid_post``) of SmolLM2-135M.

The SAEs are those of the single-site cases (d_sae 4608, an 8× expansion; k 32; batch 4096), trained
for ``SuiteCase.steps`` = 6 steps each, long enough for every library to reach its steady step cost;
the contexts are exactly enough for those tokens (194 contexts of 127 tokens after BOS), plus 16
held-out contexts for quality.

* saekit trains the 30 SAEs side by side from one stream: :class:`saekit.sources.model.ModelSource`
  runs the model once per chunk of contexts and every SAE takes its site's rows of the same batch
  (``saekit.train`` with a list of SAEs, ``dead_tokens=10_000_000`` as in the single-site cases, so
  that no library computes an auxiliary loss, see benchmarks/peers.py).
* SAELens runs its own suite pipeline, ``MultiSAETrainingRunner`` (new in SAELens 6): one forward pass
  per batch of contexts feeds every SAE, through ``HookedProxyLM``, its hooks on the same Hugging Face
  model object, with its activation store (smallest buffer it accepts: one batch), its per-site
  normalisation (estimated on one batch, as saekit does) and its trainer (:func:`run_sae_lens`). Its
  passes stop after the last hooked layer, as saekit's do; it forwards a few more contexts than saekit
  (its normalisation batch is drawn from the stream and its mixing buffer keeps half a batch back).
* sparsify runs its own suite pipeline, ``Trainer`` with ``hookpoints`` (:func:`run_sparsify`): one
  forward pass of the whole model per batch of contexts, hooks on the outputs of ``layers.0`` ...
  ``layers.29`` (saekit's ``layers.{i}.resid_post``), one TopK ``SparseCoder`` per hookpoint trained on
  the raw rows with its FVU loss, Adam at the suite's learning rate and its own schedule (warm-up, then
  linear decay to 0 over the run); batches of 32 contexts (4,064 tokens once BOS is dropped through
  its ``exclude_tokens``), so its 6 steps see 24,384 tokens against everyone else's 24,576. It runs
  offline on the embedded model (a Hugging Face ``LlamaForCausalLM``), with wandb off; its final
  checkpoint write (SAEs and optimiser state, 2 GB) is left out, as no other library here writes one.
  Its passes run every layer of the model, also past the last hooked one (it cannot stop early).
* dictionary_learning has no trainer for several sites at once (its ``ActivationBuffer`` and trainers
  take one submodule), and its own way, one buffer per site, would run the model 30 times (15.5
  full passes, each stopping at its site). It gets the generous version instead: the activations of
  all 30 sites are harvested once with saekit's hooks in one model pass over the same contexts (timed
  once, here, and added to its time) and the 30 SAEs are then trained one after the other in one
  process, from memory, with the runner of benchmarks/peers.py (each site's activations scaled to
  E||x||² = 1 first).

Time is end to end: for saekit and SAELens, from setting up the data pipeline to the last trained SAE,
the model's forward passes included; for dictionary_learning, the harvest plus the 30 training runs
(every SAE's set-up included). Loading the model and tokenising are left out for everyone. FVU and L0
are the means over the 30 sites on held-out contexts the SAEs never saw, leaving out the attention-sink
rows (benchmarks/peers.py ``sink_rows``: massive activations, mostly in layers 2–8, one of which would
decide a site's FVU).

Duration on this 2-core CPU (on a slow day, R = 103 GFLOP/s): saekit ~2 min, SAELens ~7 min,
dictionary_learning ~7 min with the harvest (~1.2 min, in the preparation). Memory: the 30 sites' rows
take 1.7 GB (float32).

    .bench-venv/bin/python benchmarks/suite.py prepare WORK_DIR CONFIG_JSON   # harvest, held-out rows
    .bench-venv/bin/python benchmarks/suite.py LIBRARY WORK_DIR CONFIG_JSON OUT_JSON
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from peers import DEAD_TOKENS, RUNNERS, Case, PeakRSS, quality, schedule, sink_rows  # noqa: E402

SITES = "layers.*.resid_post"
MODEL = "smollm2-135m"


@dataclass(frozen=True)
class SuiteCase:
    name: str = "suite-30-topk-4608"
    """Label in the tables and in bench-results.json."""
    d_sae: int = 4608
    """8× expansion of SmolLM2's 576, as the single-site cases."""
    k: int = 32
    batch: int = 4096
    steps: int = 6
    """Steps per SAE: enough for every library to reach its steady step cost (set-up and the first
    steps are in everyone's end-to-end time, as they would be in a real suite)."""
    lr: float = 1e-3
    context: int = 128
    """Tokens per context, BOS included (the BOS position is dropped, as ModelSource does)."""
    held_out_contexts: int = 16
    forward_batch: int = 16

    @property
    def tokens(self) -> int:
        return self.steps * self.batch

    @property
    def train_contexts(self) -> int:
        """Contexts the training tokens come from (``tokens`` rows once BOS is dropped): each runs
        through the model once, for every library."""
        return -(-self.tokens // (self.context - 1))

    def case(self) -> Case:
        return Case(self.name, "topk", self.d_sae, self.steps, self.batch, self.k, self.lr)


def _tokens(cfg: SuiteCase, tokenizer) -> torch.Tensor:
    from saekit.sources.text import TextConfig, tokens_from_config

    n = (cfg.train_contexts + cfg.held_out_contexts) * cfg.context
    tokens = tokens_from_config(TextConfig(context_size=cfg.context, n_tokens=n), tokenizer)
    if len(tokens) < cfg.train_contexts + cfg.held_out_contexts:
        raise RuntimeError(f"the corpus gave {len(tokens)} contexts, fewer than the suite needs")
    return tokens


def _harvest(model, tokens: torch.Tensor, forward_batch: int) -> tuple[list[str], np.ndarray]:
    """[n_sites, rows, d] activations of ``tokens`` at every residual site, BOS positions dropped.

    The forward passes run with saekit's heap reuse (saekit._fast.heap), as in a saekit training run,
    so the peers get the speed of saekit's own forward passes."""
    from saekit._fast.heap import reuse_large_blocks
    from saekit.sources.hf import collect_activations

    parts: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode(), reuse_large_blocks(torch.device("cpu")):
        for i in range(0, len(tokens), forward_batch):
            for site, acts in collect_activations(model, tokens[i : i + forward_batch], SITES).items():
                parts.setdefault(site, []).append(acts[:, 1:].reshape(-1, acts.shape[-1]).float())
    sites = list(parts)
    return sites, np.stack([torch.cat(parts[s]).numpy() for s in sites])


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def prepare(work: Path, cfg: SuiteCase) -> dict:
    """Tokens for saekit, the timed harvest the peers train from, and held-out rows for quality."""
    from saekit.models import load_model

    loaded = load_model(MODEL)
    tokens = _tokens(cfg, loaded.tokenizer)
    train_tokens = tokens[: cfg.train_contexts]
    start = time.perf_counter()
    sites, acts = _harvest(loaded.model, train_tokens, cfg.forward_batch)
    # What a peer needs before training: rows shuffled (documents mixed), each site scaled to E||x||² = 1.
    order = np.random.default_rng(0).permutation(acts.shape[1])[: cfg.tokens]
    train = acts[:, order]
    scales = np.sqrt(1.0 / (train.astype(np.float64) ** 2).sum(-1).mean(-1))
    train = (train * scales[:, None, None]).astype(np.float32)
    harvest_seconds = time.perf_counter() - start
    _, held = _harvest(loaded.model, tokens[cfg.train_contexts : cfg.train_contexts + cfg.held_out_contexts], cfg.forward_batch)
    work.mkdir(parents=True, exist_ok=True)
    _save(work / "suite-tokens.npy", train_tokens.numpy())
    _save(work / "suite-train-scaled.npy", train)
    _save(work / "suite-held-out.npy", held.astype(np.float32))
    _save(work / "suite-scales.npy", scales.astype(np.float32))
    info = {"sites": sites, "harvest_seconds": harvest_seconds, "rows_harvested": int(acts.shape[1])}
    (work / "suite-info.json").write_text(json.dumps(info))
    return info


def run_saekit(work: Path, cfg: SuiteCase) -> tuple[float, list, list[str]]:
    import saekit
    from saekit.models import load_model
    from saekit.sources.model import ModelSource

    loaded = load_model(MODEL)
    tokens = torch.from_numpy(np.load(work / "suite-tokens.npy"))
    start = time.perf_counter()
    # ModelSource's default chunk (64 contexts), as a user's run: it holds one chunk of the 30 sites' rows.
    source = ModelSource(loaded.model, tokens, SITES, forward_batch=cfg.forward_batch)
    saes = []
    for site in source.sites:
        sae = saekit.build_sae("topk", d_in=source.d_in(site), d_sae=cfg.d_sae, k=cfg.k, lr=cfg.lr, seed=0)
        sae.metadata["site"] = site
        saes.append(sae)
    warm = max(1, cfg.steps // 20)
    saekit.train(
        saes, source, steps=cfg.steps, batch_size=cfg.batch, norm_estimation_tokens=cfg.batch, lr_warmup_steps=warm,
        progress=False, log_every=cfg.steps, seed=0, dead_tokens=DEAD_TOKENS,
    )
    seconds = time.perf_counter() - start
    models = [(lambda h, s=s: s.encode(h), lambda h, f, s=s: s.reconstruct(h, f)) for s in saes]
    return seconds, models, list(source.sites)


def run_sae_lens(work: Path, cfg: SuiteCase) -> tuple[float, list, list[str]]:
    """SAELens's own suite pipeline over all 30 sites (:func:`sae_lens_multi_runner`)."""
    from datasets import Dataset

    from saekit.models import load_model

    loaded = load_model(MODEL)
    tokens = np.load(work / "suite-tokens.npy")
    dataset = Dataset.from_dict({"input_ids": tokens.tolist()})  # the contexts saekit gets, BOS first
    # saekit's site layers.{i}.resid_post is the output of the module model.layers.{i}.
    hooks = {f"layer{i:02d}": f"model.layers.{i}" for i in range(loaded.model.config.num_hidden_layers)}
    torch.manual_seed(0)
    start = time.perf_counter()
    saes = sae_lens_multi_runner(loaded, dataset, hooks, cfg.case(), context=cfg.context, forward_batch=cfg.forward_batch)
    seconds = time.perf_counter() - start
    models = [(lambda h, s=s: s.encode(h), lambda h, f, s=s: s.decode(f)) for s in saes.values()]
    return seconds, models, [f"layers.{i}.resid_post" for i in range(len(hooks))]


def sae_lens_multi_runner(loaded, dataset, hooks: dict[str, str], case: Case, *, context: int, forward_batch: int) -> dict:
    """SAELens's own multi-site pipeline: ``MultiSAETrainingRunner``, one TopK SAE per hook (name -> module
    path of the Hugging Face model), all fed from one forward pass per batch of the contexts of
    ``dataset`` (a ``datasets.Dataset`` of ``input_ids``, BOS first) through ``HookedProxyLM`` (its
    wrapper of a Hugging Face model, hooked by module name), with its own activation store, per-SAE
    normalisation and training loop; its SAEs by name. The caller times it."""
    import contextlib
    import io
    import logging
    import warnings

    from sae_lens import LoggingConfig, TopKTrainingSAEConfig
    from sae_lens.load_model import HookedProxyLM
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig

    warm, decay = schedule(case)
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    model = HookedProxyLM(loaded.model, loaded.tokenizer, hook_names=list(hooks.values()))
    sae_cfg = TopKTrainingSAEConfig(
        d_in=loaded.model.config.hidden_size, d_sae=case.d_sae, k=case.k, aux_loss_coefficient=1 / 32,
        rescale_acts_by_decoder_norm=False,
        normalize_activations="expected_average_only_in",  # its per-site scaling to ||x|| ~ sqrt(d_in), folded back at the end
    )
    runner_cfg = MultiSAETrainingRunnerConfig(
        saes=dict.fromkeys(hooks, sae_cfg), hook_names=hooks, model_class_name="AutoModelForCausalLM",
        model_name=MODEL, context_size=context, streaming=False, training_tokens=case.steps * case.batch,
        train_batch_size_tokens=case.batch, store_batch_size_prompts=forward_batch,
        n_batches_in_buffer=case.batch // context,  # its smallest buffer: one training batch of rows
        exclude_special_tokens=[loaded.tokenizer.bos_token_id],  # BOS rows dropped, as saekit drops them
        n_batches_for_norm_estimate=1,  # as saekit, which estimates its scales on one batch
        lr=case.lr, lr_warm_up_steps=warm, lr_decay_steps=decay, lr_end=0.0, device="cpu",
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None,
    )
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # its bars and epoch warnings
        warnings.simplefilter("ignore")
        return MultiSAETrainingRunner(runner_cfg, override_dataset=dataset, override_model=model).run()


def run_dictionary_learning(work: Path, cfg: SuiteCase) -> tuple[float, list, list[str]]:
    """The shared harvest (timed in ``prepare``) plus dictionary_learning's trainer on each site in turn."""
    info = json.loads((work / "suite-info.json").read_text())
    acts = np.load(work / "suite-train-scaled.npy", mmap_mode="r")
    seconds = info["harvest_seconds"]
    models = []
    for i in range(len(info["sites"])):
        x = torch.from_numpy(np.array(acts[i]))  # in memory, as it is right after the harvest
        start = time.perf_counter()
        encode, reconstruct, _ = RUNNERS["dictionary_learning"](cfg.case(), x, None)
        seconds += time.perf_counter() - start
        models.append((encode, reconstruct))
    return seconds, models, info["sites"]


def run_sparsify(work: Path, cfg: SuiteCase) -> tuple[float, list, list[str]]:
    """sparsify's own suite pipeline: ``Trainer(TrainConfig(hookpoints=...))`` on the same contexts (see
    the module docstring)."""
    import contextlib
    import io

    from datasets import Dataset
    from peer_sparsify import dense_codes
    from sparsify import SparseCoderConfig, TrainConfig, Trainer

    from saekit.models import load_model

    loaded = load_model(MODEL)
    per_batch = cfg.batch // cfg.context
    tokens = np.load(work / "suite-tokens.npy")[: cfg.steps * per_batch]  # whole batches: its loader keeps a last partial one
    dataset = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")  # BOS first, as saekit's
    hooks = [f"layers.{i}" for i in range(loaded.model.config.num_hidden_layers)]
    warm, _ = schedule(cfg.case())
    start = time.perf_counter()
    train_cfg = TrainConfig(
        SparseCoderConfig(num_latents=cfg.d_sae, k=cfg.k), batch_size=per_batch, optimizer="adam",
        lr=cfg.lr, lr_warmup_steps=warm, hookpoints=hooks, exclude_tokens=[loaded.tokenizer.bos_token_id],
        log_to_wandb=False, save_every=10**9, save_dir=str(work / "sparsify-checkpoints"),
    )
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its prints and bar
        trainer = Trainer(train_cfg, dataset, loaded.model)
        trainer.save = lambda: None  # its final checkpoint write (see the module docstring)
        trainer.fit()
    seconds = time.perf_counter() - start
    saes = [trainer.saes[h] for h in hooks]
    models = [(lambda h, s=s: dense_codes(s, h), lambda h, f, s=s: f @ s.W_dec + s.b_dec) for s in saes]
    return seconds, models, [f"layers.{i}.resid_post" for i in range(len(hooks))]


SUITE_RUNNERS = {
    "saekit": run_saekit, "sae_lens": run_sae_lens, "dictionary_learning": run_dictionary_learning, "sparsify": run_sparsify,
}
RAW_INPUT = {"saekit", "sae_lens", "sparsify"}
"""Libraries whose trained SAEs take raw activations (their normalisation folded back); dictionary_learning
trained on the harvest's scaled rows."""


def main() -> None:
    if sys.argv[1] == "prepare":
        work, cfg = Path(sys.argv[2]), SuiteCase(**json.loads(sys.argv[3]))
        print(json.dumps(prepare(work, cfg)))
        return
    library, work, cfg, out = sys.argv[1], Path(sys.argv[2]), SuiteCase(**json.loads(sys.argv[3])), sys.argv[4]
    torch.manual_seed(0)
    with PeakRSS() as mem:
        seconds, models, sites = SUITE_RUNNERS[library](work, cfg)
    held = np.load(work / "suite-held-out.npy", mmap_mode="r")
    scales = np.load(work / "suite-scales.npy")
    fvus, l0s = [], []
    for i, (encode, reconstruct) in enumerate(models):
        rows = torch.from_numpy(np.array(held[i]))
        rows = rows[~sink_rows(rows)]  # the same rows for every library
        if library not in RAW_INPUT:  # trained on scaled rows (FVU is scale-free, the scale only matches the input)
            rows = rows * float(scales[i])
        fvu, l0 = quality(encode, reconstruct, rows)
        fvus.append(fvu)
        l0s.append(l0)
    record = {
        "case": cfg.name, "library": library, "tokens_per_s": cfg.tokens * len(sites) / seconds,
        "peak_mem_mb": round(mem.mb, 1), "fvu": float(np.mean(fvus)), "l0": float(np.mean(l0s)),
        "seconds_total": seconds, "tokens": cfg.tokens, "n_saes": len(sites), "fvu_per_site": fvus,
        "case_config": asdict(cfg),
    }
    Path(out).write_text(json.dumps(record))


if __name__ == "__main__":
    main()
