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

It runs on the one training engine (:mod:`saekit.training.engine`) as two small pieces: a source,
:class:`ContextSource`, whose step ``i`` runs ``ceil(batch_size / (context − skip))`` contexts once
clean (shared by every SAE; contexts visited in seeded epochs, so step ``i`` is a pure function of
``(seed, i)``), and an objective, :class:`E2EObjective`, which splices each SAE's reconstruction in
and runs the model again, gradients flowing through the frozen model into the SAE. Normalisation,
schedules, optimiser, dead-latent tracking, precision, checkpoints (exact resume), logs and
provenance are the engine's, as for local training.

Fine-tuning: pass SAEs that were already trained (e.g. loaded with :func:`saekit.load_sae`); an SAE
whose metadata has a ``normalization_factor`` keeps its ``b_dec`` instead of re-initialising it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from saekit import devices
from saekit.comm import Comm
from saekit.errors import ConfigError, DataError
from saekit.models.load import LoadedModel, as_module
from saekit.sae import functional as F
from saekit.sae.base import SAE
from saekit.sources.hf import record, splice
from saekit.sources.order import EpochOrder
from saekit.sources.sites import layer_of, n_layers, resolve_sites
from saekit.strict import refuse_unused, to_dict
from saekit.training.config import TrainConfig
from saekit.training.engine import TrainResult, run
from saekit.training.objective import Unit, UnitLoss, shard_rows
from saekit.training.run_state import Run
from saekit.types import ActBatch, LossOut, StepCtx

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
    return EpochOrder(n_contexts, _EPOCH).take(seed, step * per_step, per_step)


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


class ContextBatch(dict):
    """One step of a :class:`ContextSource`: site -> ActBatch of the kept positions' rows (what the
    engine reads), plus the contexts and their clean pass (what :class:`E2EObjective` reads)."""

    tokens: Tensor
    """[contexts, positions] token ids, on the model's device."""
    clean_logp: Tensor
    """[contexts, positions − skip, vocab] float32 log-probabilities of the clean pass."""
    clean: dict[str, Tensor]
    """Every watched site's clean activations at positions >= skip, [contexts, positions − skip, d]."""


class ContextSource:
    """Contexts of a model as an activation source: step ``i`` runs its contexts through the model once,
    clean, and yields the SAE sites' activations at positions >= ``skip`` as rows."""

    def __init__(self, model: nn.Module, tokens: Tensor, sites: Sequence[str], watched: Sequence[str], skip: int, dtype: str) -> None:
        self.model, self.tokens, self.skip, self.dtype = model, tokens, skip, dtype
        self._sites, self._watched = tuple(dict.fromkeys(sites)), sorted(set(sites) | set(watched))
        self._order = EpochOrder(tokens.shape[0], _EPOCH)
        with torch.no_grad():
            probe = self._clean(tokens[:1])
        self._width = {site: probe.clean[site].shape[-1] for site in self._sites}

    @property
    def sites(self) -> tuple[str, ...]:
        return self._sites

    def d_in(self, site: str) -> int:
        return self._width[site]

    def describe(self) -> dict:
        return {"kind": "contexts", "tokens_shape": list(self.tokens.shape), "tokens_sum": int(self.tokens.long().sum()),
                "skip_positions": self.skip}  # fmt: skip

    def batches(self, batch_size: int, *, seed: int, start: int = 0) -> Iterator[ContextBatch]:
        per_step = math.ceil(batch_size / (self.tokens.shape[1] - self.skip))
        step = start
        while True:
            yield self._clean(self.tokens[self._order.take(seed, step * per_step, per_step)])
            step += 1

    @torch.no_grad()
    def _clean(self, part: Tensor) -> ContextBatch:
        device = next(self.model.parameters()).device
        part = part.to(device)
        captured: dict[str, Tensor] = {}
        # The clean pass runs in the run's precision, as the spliced one, so an exact SAE has KL 0.
        with devices.autocast(self.dtype, [device]), record(self.model, self._watched, captured):
            logits = self.model(input_ids=part, use_cache=False).logits
        batch = ContextBatch({s: ActBatch(captured[s][:, self.skip :].reshape(-1, captured[s].shape[-1])) for s in self._sites})
        batch.tokens = part
        batch.clean_logp = logits[:, self.skip :].float().log_softmax(-1)
        batch.clean = {name: h[:, self.skip :].detach() for name, h in captured.items()}
        return batch


class E2EObjective:
    """KL(p_clean ‖ p_spliced) (+ the downstream MSEs) plus each SAE's own non-reconstruction terms."""

    prefetch = False  # the objective runs the source's model: its hooks cannot be shared with a thread
    distributable = True  # each rank scores its share of the contexts (shard); means over them average

    def __init__(self, model: nn.Module, e2e: E2EConfig, downstream: Mapping[str, list[str]]) -> None:
        self.model, self.e2e, self.downstream = model, e2e, dict(downstream)

    def units(self, n_saes: int) -> list[Unit]:
        return [Unit((i,)) for i in range(n_saes)]

    def describe(self) -> dict:
        return {"objective": "e2e", "e2e_config": to_dict(self.e2e)}

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The model's parameters without gradients (restored after), so only the SAEs accumulate them."""
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    def shard(self, batch: Mapping[str, ActBatch], comm: Comm) -> ContextBatch:
        """This rank's equal share of the step's contexts, and their rows (rows are contexts in order)."""
        assert isinstance(batch, ContextBatch)
        if batch.tokens.shape[0] % comm.world_size:
            raise ConfigError(
                f"{batch.tokens.shape[0]} contexts a step do not split evenly over {comm.world_size} ranks; make "
                "batch_size a multiple of (context positions used) × ranks"
            )
        contexts = comm.rows(batch.tokens.shape[0])
        part = ContextBatch(shard_rows(batch, comm))
        part.tokens, part.clean_logp = batch.tokens[contexts], batch.clean_logp[contexts]
        part.clean = {name: h[contexts] for name, h in batch.clean.items()}
        return part

    def unit_loss(self, run: Run, unit: Unit, batch: Mapping[str, ActBatch], ctxs: Mapping[int, StepCtx]) -> UnitLoss:
        assert isinstance(batch, ContextBatch)
        (i,) = unit.members
        (site,), sae = run.sites[i], run.saes[i]
        inputs = run.inputs(i, batch)
        with devices.autocast(run.cfg.dtype, [run.device, batch.tokens.device]):
            out = sae.loss(inputs, ctxs[i])
            mse = F.mse_per_token(inputs.x, out.x_hat).mean()
            _check_mse(sae, out, mse)
            x_hat = (out.x_hat / run.scales[site]).reshape(batch.clean[site].shape)
            loss, terms = self._spliced(batch, site, x_hat)
        loss = loss + (out.loss.float() - mse)  # the architecture's sparsity (and auxiliary) terms
        terms["loss"] = loss.detach()
        return UnitLoss(loss, {i: out._replace(loss=loss, terms={**out.terms, **terms})})

    def _spliced(self, batch: ContextBatch, site: str, x_hat: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        spliced: dict[str, Tensor] = {}
        downstream = self.downstream[site]
        skip = batch.tokens.shape[1] - x_hat.shape[1]
        with splice(self.model, site, lambda kept: x_hat, start=skip), record(self.model, downstream, spliced):
            logits = self.model(input_ids=batch.tokens, use_cache=False).logits
        kl = kl_clean_spliced(batch.clean_logp, logits[:, skip:])
        loss, terms = self.e2e.resolved_kl_coef * kl, {"kl": kl.detach()}
        if downstream:
            ds = mean_downstream_mse({d: spliced[d][:, skip:] for d in downstream}, {d: batch.clean[d] for d in downstream})
            loss = loss + self.e2e.downstream_coef * ds.to(loss.device)
            terms["downstream_mse"] = ds.detach()
        return loss, terms


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
    start_files: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train ``saes`` end to end through ``model`` on the contexts ``tokens`` [n, T].

    ``site``: the site every SAE replaces; None takes each SAE's own ``site`` metadata. ``train`` gives
    steps (or tokens), ``batch_size`` in tokens per step (rounded up to whole contexts), seed, schedules,
    clipping, normalisation, checkpoint cadence and device. Returns the SAEs in raw activation units.
    """
    model = as_module(model)
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not saes:
        raise ConfigError("nothing to train: the list of SAEs is empty")
    if transcoders := [f"SAE {i} ({sae.architecture})" for i, sae in enumerate(saes) if sae.transcoder or sae.crosscoder]:
        raise ConfigError(
            f"e2e: {', '.join(transcoders)} is a transcoder or crosscoder; end-to-end training splices an SAE at the one "
            "site it reads, so train transcoders and crosscoders on activations"
        )
    if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
        raise DataError(f"tokens must be an integer tensor [n_contexts, context], got {tuple(tokens.shape)} {tokens.dtype}")
    skip = e2e.skip_positions
    if not 0 <= skip < tokens.shape[1] - 1:
        raise ConfigError(f"e2e: skip_positions must be in 0..{tokens.shape[1] - 2} for contexts of {tokens.shape[1]} tokens")
    sites = _sites_of(model, saes, site)
    for sae, s in zip(saes, sites):
        sae.metadata["site"] = s
    downstream = {s: _downstream_of(model, s, e2e) for s in sites}
    model.eval()
    source = ContextSource(model, tokens, sites, [d for ds in downstream.values() for d in ds], skip, train.dtype)
    return run(
        saes, source, train, objective=E2EObjective(model, e2e, downstream), out_dir=out_dir, resume=resume, start_files=start_files
    )


def _check_mse(sae: SAE, out: LossOut, mse: Tensor) -> None:
    if "mse" not in out.terms or not torch.allclose(mse.detach(), out.terms["mse"].float(), rtol=1e-4, atol=1e-7):
        raise ConfigError(
            f"{sae.architecture}: its loss does not report saekit's reconstruction MSE as 'mse', so the "
            "sparsity part of its objective cannot be separated for end-to-end training"
        )


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
        def through_sae(kept: Tensor) -> Tensor:
            return sae(kept.reshape(-1, kept.shape[-1]).to(sae.W_dec.device, sae.W_dec.dtype)).reshape(kept.shape)

        return through_sae

    with torch.no_grad():
        for begin in range(0, tokens.shape[0], batch_size):
            part = tokens[begin : begin + batch_size].to(device)
            clean: dict[str, Tensor] = {}
            with record(model, sites, clean):
                model(input_ids=part, use_cache=False)
            for s in sites:
                norms[s] += float(clean[s][:, skip_positions:].double().pow(2).sum())
            for name, sae in saes.items():
                spliced: dict[str, Tensor] = {}
                with splice(model, site, through(sae), start=skip_positions), record(model, sites, spliced):
                    model(input_ids=part, use_cache=False)
                for s in sites:
                    diff = spliced[s][:, skip_positions:].double() - clean[s][:, skip_positions:].double()
                    errs[name][s] += float(diff.pow(2).sum())
    return {name: {s: e[s] / norms[s] for s in sites} for name, e in errs.items()}
