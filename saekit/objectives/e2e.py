"""End-to-end SAE training (Braun, Taylor, Goldowsky-Dill & Sharkey 2024, papers.md §6): the SAE's
reconstruction is spliced into the model and the SAE learns to keep the model's output, not the
activation.

    x̂          = the SAE's training reconstruction of the activation h at ``site`` (positions ≥ skip)
    KL         = mean over positions ≥ skip of KL(p_clean ‖ p_spliced), in nats
    sparsity   = the architecture's own loss minus its reconstruction MSE (L1, L0, AuxK, ...)
    MSE_k      = mean over positions ≥ skip and over the width of (a_k^spliced − a_k^clean)², in the
                 model's own units, at each of the N ``downstream_sites`` k
    SAE_e2e    : loss = kl_coef · KL + sparsity                                    (kl_coef 1)
    SAE_e2e+ds : loss = kl_coef · KL + sparsity + (downstream_coef / N) Σ_k MSE_k   (kl_coef 0.5)

This is the paper's objective as its code computes it (ApolloResearch/e2e_sae ``losses.py`` and the
GPT-2 configs ``gpt2_e2e.yaml`` / ``gpt2_e2e_recon.yaml``): ``F.mse_loss`` per downstream hook, the
``in_to_orig`` coefficient 2.5 a total split equally over the hooks, the KL weight 1 for e2e and 0.5
for e2e+ds (``kl_coef`` left unset picks it), and "later" hooks the ``resid_pre`` of every block after
the SAE's up to and including the last block's input (never the final block's output).

The sparsity term is the architecture's own, on activations scaled to unit mean squared norm (as every
saekit objective). The paper's is φ · mean_t ||c||₁ / d_in on raw activations with a column-normalised
decoder (φ = 1.5 for e2e and e2e+ds on GPT-2); for saekit's ReLU SAE, whose codes are s times the
raw ones when activations are scaled by s, the same penalty is ``l1_coef = φ / (d_in · s)`` with s the
run's ``normalization_factor``.

Any registered architecture trains this way: its ``loss`` must be ``MSE + rest`` with saekit's MSE
(summed over the width, mean over tokens), which the first step checks.

The model is the source: each step runs ``ceil(batch_size / (context − skip))`` contexts once clean
(shared by every SAE) and once per SAE spliced, with gradients flowing through the frozen model into
the SAE. Contexts are visited in seeded epochs, so step ``i`` reads a pure function of ``(seed, i)``
and a run resumed from its checkpoint ends with exactly the weights of an uninterrupted one. As in
the local loop, activations are scaled to unit mean squared norm while training and the factor is
folded back at the end; the schedules, optimiser, dead-latent tracking and checkpoint format are
those of :mod:`saekit.training`.

Fine-tuning: pass SAEs that were already trained (e.g. loaded with :func:`saekit.load_sae`); an SAE
whose metadata has a ``normalization_factor`` keeps its ``b_dec`` instead of re-initialising it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.errors import ConfigError, DataError
from saekit.models.load import LoadedModel, as_module
from saekit.sae import functional as F
from saekit.sae.base import SAE
from saekit.sources.hf import splice
from saekit.sources.sites import layer_of, n_layers, resolve_sites
from saekit.sources.tensor import seeded_generator
from saekit.strict import refuse_unused, to_dict
from saekit.training import dead
from saekit.training.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, restore, save_checkpoint
from saekit.training.config import TrainConfig
from saekit.training.logs import MetricsLog
from saekit.training.loop import TrainResult, enter_normalised_units_, rescale_, resolve_device, resolve_dtype
from saekit.training.optim import apply_update, make_optimizer
from saekit.training.schedules import lr_factor, sparsity_factor
from saekit.types import ActBatch, StepCtx, as_float

_EPOCH = 21  # tag of this module's random stream of context orders


@dataclass(frozen=True)
class E2EConfig:
    kl_coef: float | None = None
    """Weight of KL(p_clean ‖ p_spliced); None takes the paper's: 1 for e2e, 0.5 for e2e+ds."""
    downstream_sites: tuple[str, ...] = ()
    """Sites whose spliced activations are pulled back to the clean ones (e2e+ds); globs allowed, and
    "later" means, as the paper, the input of every block after the SAE's site up to the last block's
    input (the final block's output is not one). Empty: plain e2e."""
    downstream_coef: float = 2.5
    """Total weight of the downstream MSEs, split equally over the downstream sites (paper: 2.5)."""
    skip_positions: int = 1
    """Leading positions (BOS) left as they are and not scored, as in the local ModelSource."""

    def __post_init__(self) -> None:
        if (self.kl_coef is not None and not self.kl_coef >= 0) or not self.downstream_coef >= 0:
            raise ConfigError("e2e: kl_coef and downstream_coef must be >= 0")
        if self.skip_positions < 0:
            raise ConfigError(f"e2e: skip_positions must be >= 0, got {self.skip_positions}")
        if not self.downstream_sites:
            refuse_unused(self, ("downstream_coef",), "there are no downstream_sites (plain e2e)")

    @property
    def resolved_kl_coef(self) -> float:
        if self.kl_coef is not None:
            return self.kl_coef
        return 0.5 if self.downstream_sites else 1.0


def context_ids(n_contexts: int, per_step: int, seed: int, step: int) -> Tensor:
    """Indices of the contexts read at ``step``: consecutive slices of seeded shuffles (epochs)."""
    ids, perms = [], {}
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, n_contexts)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n_contexts, generator=seeded_generator(_EPOCH, seed, epoch))
        ids.append(perms[epoch][offset])
    return torch.stack(ids)


def later_sites(model: nn.Module | LoadedModel, site: str) -> list[str]:
    """The paper's downstream hooks for an SAE at ``site``: ``resid_pre`` of every block whose input comes
    after ``site``, up to the last block's (for ``layers.6.resid_pre`` of a 12-block model: blocks 7 to
    11, as e2e_sae's ``gpt2_e2e_recon.yaml``)."""
    model = as_module(model)
    layer = layer_of(site)
    if layer is None:
        raise ConfigError(f"e2e: 'later' downstream sites need a canonical site (layers.N.kind), got {site!r}")
    first = layer + 2 if site.endswith("resid_post") else layer + 1  # resid_post of L is resid_pre of L + 1
    return [f"layers.{i}.resid_pre" for i in range(first, n_layers(model))]


def kl_clean_spliced(clean_logp: Tensor, spliced_logits: Tensor) -> Tensor:
    """Mean over positions of KL(p_clean ‖ p_spliced) (both [batch, positions, vocab]), in float32."""
    spliced_logp = spliced_logits.float().log_softmax(-1)
    return (clean_logp.exp() * (clean_logp - spliced_logp)).sum(-1).mean()


def mean_downstream_mse(spliced: Mapping[str, Tensor], clean: Mapping[str, Tensor]) -> Tensor:
    """(1 / N) Σ_k mean((spliced_k − clean_k)²) over the N sites of ``clean``, each [batch, positions, d]:
    times ``downstream_coef`` it is e2e_sae's ``in_to_orig`` term, whose total coefficient is split
    equally over the hooks."""
    return torch.stack([torch.nn.functional.mse_loss(spliced[k].float(), clean[k].float()) for k in clean]).mean()


@contextlib.contextmanager
def _capture(model: nn.Module, sites: Sequence[str], into: dict[str, Tensor]) -> Iterator[None]:
    """Record the tensors of ``sites`` (positions included) during the forward passes in the block."""

    def reader(name: str) -> Callable[[Tensor], Tensor]:
        def read(h: Tensor) -> Tensor:
            into[name] = h
            return h

        return read

    with contextlib.ExitStack() as stack:
        for name in sites:
            stack.enter_context(splice(model, name, reader(name)))
        yield


@contextlib.contextmanager
def _autocast(dtype: str, devices: Sequence[torch.device]) -> Iterator[None]:
    """TrainConfig.dtype for the block, on every device type in ``devices`` (float32: nothing; "auto" as
    resolved per device by :func:`saekit.training.loop.resolve_dtype`)."""
    with contextlib.ExitStack() as stack:
        for device in {d.type: d for d in devices}.values():
            resolved = resolve_dtype(dtype, device)
            if resolved != torch.float32:
                stack.enter_context(torch.autocast(device.type, dtype=resolved))
        yield


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model's parameters without gradients (restored after), so only the SAE accumulates them."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def train_e2e(
    model: nn.Module | LoadedModel,
    tokens: Tensor,
    saes: SAE | Sequence[SAE],
    train: TrainConfig,
    e2e: E2EConfig = E2EConfig(),
    *,
    site: str | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``saes`` end to end through ``model`` on the contexts ``tokens`` [n, T].

    ``site``: the site every SAE replaces; None takes each SAE's own ``site`` metadata. ``train`` gives
    steps (or tokens), ``batch_size`` in tokens per step (rounded up to whole contexts), seed, schedules,
    clipping, normalisation, checkpoint cadence and device. Returns the SAEs in raw activation units.
    """
    model = as_module(model)
    started = time.perf_counter()
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not saes:
        raise ConfigError("nothing to train: the list of SAEs is empty")
    if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
        raise DataError(f"tokens must be an integer tensor [n_contexts, context], got {tuple(tokens.shape)} {tokens.dtype}")
    skip = e2e.skip_positions
    if not 0 <= skip < tokens.shape[1] - 1:
        raise ConfigError(f"e2e: skip_positions must be in 0..{tokens.shape[1] - 2} for contexts of {tokens.shape[1]} tokens")
    out_dir = Path(out_dir) if out_dir is not None else None
    if resume and out_dir is None:
        raise ConfigError("resume needs the output folder of the interrupted run")
    if train.checkpoint_every and out_dir is None:
        raise ConfigError("checkpoint_every needs an output folder")
    sites = _sites_of(model, saes, site)
    downstream = {s: _downstream_of(model, s, e2e) for s in sites}
    watched = sorted(set(sites) | {d for ds in downstream.values() for d in ds})
    device = resolve_device(train.device)
    model.eval()
    model_device = next(model.parameters()).device
    devices = [model_device, device]
    per_step = math.ceil(train.batch_size / (tokens.shape[1] - skip))
    total = train.total_steps
    fingerprint = {
        "saes": [{"architecture": s.architecture, "config": to_dict(s.cfg), "site": st} for s, st in zip(saes, sites)],
        "train": to_dict(replace(train, progress=True, log_every=1, checkpoint_every=None, device="auto")),
        "e2e": to_dict(e2e),
        "data": {"tokens_shape": list(tokens.shape), "tokens_sum": int(tokens.long().sum())},
    }
    fingerprint = _json(fingerprint)

    def clean_pass(step: int) -> tuple[dict[str, Tensor], Tensor]:
        batch = tokens[context_ids(tokens.shape[0], per_step, train.seed, step)].to(model_device)
        captured: dict[str, Tensor] = {}
        # The clean pass runs in the same precision as the spliced one, so an exact SAE has KL 0.
        with torch.no_grad(), _autocast(train.dtype, devices), _capture(model, watched, captured):
            logits = model(input_ids=batch, use_cache=False).logits
        acts = {name: h[:, skip:].detach() for name, h in captured.items()}
        return acts | {"_tokens": batch}, logits[:, skip:].float().log_softmax(-1)

    for sae in saes:
        sae.to(device)
    optimizers = [make_optimizer(sae) for sae in saes]
    counters = [dead.new_counter(sae.d_sae, device) for sae in saes]
    ckpt_path = out_dir / CHECKPOINT_NAME if out_dir is not None else None
    start = 0
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.info.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{ckpt_path} was written by a different e2e run; resume with the same settings or use a new folder"
            )
        restore(ckpt, saes, optimizers, counters)
        scales, start = ckpt.info["scales"], ckpt.step
    else:
        if train.normalize_activations:
            sq_norms = _mean_sq_norms(clean_pass, sorted(set(sites)), train.norm_estimation_tokens)
            scales = {s: 1.0 / math.sqrt(sq_norms[s]) for s in sites}
        else:
            scales = dict.fromkeys(sites, 1.0)
        first, _ = clean_pass(0)
        for sae, s in zip(saes, sites):
            enter_normalised_units_(sae, first[s].reshape(-1, sae.d_in).to(device).float() * scales[s], scales[s])

    log = MetricsLog(
        out_dir, resume_step=start, tensorboard=train.tensorboard, wandb_project=train.wandb_project, run_config=fingerprint
    )
    window = train.resolved_dead_tokens

    def checkpoint(step: int) -> None:
        if ckpt_path is not None:
            info = {"scales": scales, "fingerprint": fingerprint}
            save_checkpoint(
                ckpt_path,
                Checkpoint(
                    step,
                    [s.state_dict() for s in saes],
                    [o.state_dict() for o in optimizers],
                    counters,
                    torch.get_rng_state(),
                    info,
                ),
            )

    records: list[dict[str, Any]] = []
    bar = tqdm(total=total, initial=start, disable=not train.progress, unit="step", desc=f"e2e training {len(saes)} SAE(s)")
    with _frozen(model):
        for step in range(start, total):
            clean, clean_logp = clean_pass(step)
            ctx0 = StepCtx(step=step, total_steps=total, sparsity_scale=sparsity_factor(step, train.resolved_sparsity_warmup))
            lr_mult = lr_factor(step, total, train.lr_warmup_steps, train.lr_decay_fraction)
            terms_all = []
            for i, (sae, opt, counter, s) in enumerate(zip(saes, optimizers, counters, sites)):
                ctx = replace(ctx0, dead_mask=dead.dead_mask(counter, window))
                with _autocast(train.dtype, devices):
                    loss, out, terms = _e2e_loss(
                        model, sae, s, clean, clean_logp, ctx, scales[s], downstream[s], e2e, device
                    )
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"SAE {i} ({sae.architecture}) diverged at step {step}; lower its learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                apply_update(sae, opt, lr_mult, train.grad_clip)
                with torch.no_grad():
                    sae.after_step(out, ctx)
                dead.update_counter_(counter, out.codes, out.fired)
                terms_all.append(terms)
            if (step + 1) % train.log_every == 0 or step + 1 == total:
                records = [
                    {"step": step + 1, "sae": i, "name": f"{i:02d}-{sae.architecture}", "site": s, **terms,
                     "dead_fraction": float(dead.dead_mask(counter, window).float().mean()),
                     "lr": opt.param_groups[0]["lr"], "tokens": (step + 1) * per_step * (tokens.shape[1] - skip)}
                    for i, (sae, s, terms, counter, opt) in enumerate(zip(saes, sites, terms_all, counters, optimizers))
                ]  # fmt: skip
                log.write(records)
                bar.set_postfix({r["name"]: f"kl={r['kl']:.3g} l0={r['l0']:.3g}" for r in records[:3]})
            bar.update(1)
            if train.checkpoint_every and (step + 1) % train.checkpoint_every == 0 and step + 1 < total:
                checkpoint(step + 1)
    bar.close()
    checkpoint(total)
    log.close()
    for sae, s in zip(saes, sites):
        rescale_(sae, 1.0 / scales[s])
        sae.metadata["site"] = s
        sae.metadata["normalization_factor"] = scales[s]
    final = [{k: v for k, v in r.items() if k not in ("step", "sae", "name")} for r in records]
    for sae, metrics in zip(saes, final):
        sae.provenance.update({"objective": "e2e", "e2e_config": to_dict(e2e), "train_config": to_dict(train),
                               "tokens": total * per_step * (tokens.shape[1] - skip), "final_metrics": metrics})  # fmt: skip
    return TrainResult(saes, final, total, start, time.perf_counter() - started)


def _e2e_loss(model, sae, site, clean, clean_logp, ctx, scale, downstream, e2e, device):
    """One SAE's e2e objective on the clean pass ``clean``: (loss, its LossOut, logged terms)."""
    h = clean[site]
    x = h.reshape(-1, h.shape[-1]).to(device).float() * scale
    out = sae.loss(ActBatch(x), ctx)
    mse = F.mse_per_token(x, out.x_hat).mean()
    if "mse" not in out.terms or not torch.allclose(mse.detach(), out.terms["mse"].float(), rtol=1e-4, atol=1e-7):
        raise ConfigError(
            f"{sae.architecture}: its loss does not report saekit's reconstruction MSE as 'mse', so the "
            "sparsity part of its objective cannot be separated for end-to-end training"
        )
    rest = out.loss.float() - mse  # the sparsity (and auxiliary) part of the architecture's objective
    x_hat = (out.x_hat / scale).reshape(h.shape).to(h.device)

    def replace_kept(a: Tensor) -> Tensor:
        return torch.cat([a[:, : a.shape[1] - x_hat.shape[1]], x_hat.to(a.dtype)], dim=1)

    spliced: dict[str, Tensor] = {}
    with splice(model, site, replace_kept), _capture(model, downstream, spliced):
        logits = model(input_ids=clean["_tokens"], use_cache=False).logits
    skip = logits.shape[1] - x_hat.shape[1]
    kl = kl_clean_spliced(clean_logp, logits[:, skip:])
    loss = e2e.resolved_kl_coef * kl + rest
    terms = {k: as_float(v) for k, v in out.terms.items()}
    terms["kl"] = float(kl.detach())
    if downstream:
        ds = mean_downstream_mse({d: spliced[d][:, skip:] for d in downstream}, {d: clean[d] for d in downstream})
        loss = loss + e2e.downstream_coef * ds.to(loss.device)
        terms["downstream_mse"] = float(ds.detach())
    terms["loss"] = float(loss.detach())
    return loss, out, terms


def _sites_of(model: nn.Module, saes: list[SAE], site: str | None) -> list[str]:
    sites = []
    for i, sae in enumerate(saes):
        name = site or sae.site
        if name is None:
            raise ConfigError(f"SAE {i} ({sae.architecture}) has no site: pass site=... or set sae.metadata['site']")
        resolved = resolve_sites(model, name)
        if len(resolved) != 1:
            raise ConfigError(f"SAE {i}: site {name!r} names {len(resolved)} sites; an SAE replaces exactly one")
        sites.append(resolved[0])
    return sites


def _downstream_of(model: nn.Module, site: str, e2e: E2EConfig) -> list[str]:
    names: list[str] = []
    for pattern in e2e.downstream_sites:
        names += later_sites(model, site) if pattern == "later" else resolve_sites(model, pattern)
    if site in names:
        raise ConfigError(f"e2e: downstream sites must differ from the SAE's own site {site!r}")
    if e2e.downstream_sites and not names:
        raise ConfigError(
            f"e2e: downstream_sites {list(e2e.downstream_sites)} name no site after {site!r} (\"later\" stops at the "
            "last block's input, as the paper); give the sites explicitly or train plain e2e"
        )
    return list(dict.fromkeys(names))


@torch.no_grad()
def _mean_sq_norms(clean_pass, sites: list[str], n_tokens: int) -> dict[str, float]:
    """E||a||² per site over the first steps' contexts, until ``n_tokens`` rows are seen."""
    sums, count, step = dict.fromkeys(sites, 0.0), 0, 0
    while count < n_tokens:
        acts, _ = clean_pass(step)
        for s in sites:
            a = acts[s].double()
            if not torch.isfinite(a).all():
                raise DataError(f"activations at site {s!r} contain NaN or inf")
            sums[s] += float(a.pow(2).sum())
        count += acts[sites[0]].shape[0] * acts[sites[0]].shape[1]
        step += 1
    for s, v in sums.items():
        if v <= 0:
            raise DataError(f"activations at site {s!r} are all zero; cannot normalise them")
    return {s: v / count for s, v in sums.items()}


def downstream_errors(
    model: nn.Module | LoadedModel, tokens: Tensor, site: str, sae: SAE, sites: Sequence[str], *, skip_positions: int = 1, batch_size: int = 8
) -> dict[str, float]:
    """For each of ``sites``: E_t ||a^spliced − a^clean||² / E||a^clean||² over positions ≥ skip, with
    ``sae``'s reconstruction spliced at ``site`` (how far the SAE moves later activations)."""
    return downstream_errors_of(model, tokens, site, {"_": sae}, sites, skip_positions=skip_positions, batch_size=batch_size)["_"]


def downstream_errors_of(
    model: nn.Module | LoadedModel,
    tokens: Tensor,
    site: str,
    saes: Mapping[str, SAE],
    sites: Sequence[str],
    *,
    skip_positions: int = 1,
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """:func:`downstream_errors` of several SAEs (by name) at the same ``site``, sharing one clean pass
    over ``tokens``: ``{name: {downstream site: normalised squared error}}``."""
    model = as_module(model)
    if site in sites:
        raise ConfigError(f"downstream_errors: {site!r} is the spliced site itself; name sites after it")
    if not 0 <= skip_positions < tokens.shape[1]:
        raise ConfigError(f"downstream_errors: skip_positions must be in 0..{tokens.shape[1] - 1}, got {skip_positions}")
    errs = {name: dict.fromkeys(sites, 0.0) for name in saes}
    norms = dict.fromkeys(sites, 0.0)
    device = next(model.parameters()).device

    def through(sae: SAE) -> Callable[[Tensor], Tensor]:
        def through_sae(h: Tensor) -> Tensor:
            kept = h[:, skip_positions:]
            rec = sae(kept.reshape(-1, kept.shape[-1]).to(sae.W_dec.device, sae.W_dec.dtype)).reshape(kept.shape)
            return torch.cat([h[:, :skip_positions], rec.to(h.device, h.dtype)], dim=1)

        return through_sae

    with torch.no_grad():
        for begin in range(0, tokens.shape[0], batch_size):
            part = tokens[begin : begin + batch_size].to(device)
            clean: dict[str, Tensor] = {}
            with _capture(model, sites, clean):
                model(input_ids=part, use_cache=False)
            for s in sites:
                norms[s] += float(clean[s][:, skip_positions:].double().pow(2).sum())
            for name, sae in saes.items():
                spliced: dict[str, Tensor] = {}
                with splice(model, site, through(sae)), _capture(model, sites, spliced):
                    model(input_ids=part, use_cache=False)
                for s in sites:
                    diff = spliced[s][:, skip_positions:].double() - clean[s][:, skip_positions:].double()
                    errs[name][s] += float(diff.pow(2).sum())
    return {name: {s: e[s] / norms[s] for s in sites} for name, e in errs.items()}


def _json(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))
