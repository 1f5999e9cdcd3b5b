"""The analyses of a trained series: every checkpoint's model and SAEs run on the same tokens (the
data's first ``track.analysis_contexts`` contexts), measured with :mod:`saekit.analysis.dynamics`.

The final checkpoint is read first (its model loaded and run once, then reused as the last checkpoint
of the loop): its SAEs choose each latent's top tokens, and its decoders are the directions drift is
measured against. Then each checkpoint in turn gives its codes, its model's
activations and next-token loss, and each SAE's FVU and L0 on those tokens; only the per-latent
statistics are kept, never a checkpoint's codes, so memory does not grow with the number of checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.analysis import dynamics as D
from saekit.analysis.matching import match_cosine
from saekit.analysis.store import Stored
from saekit.io.artifact import load_suite
from saekit.sae.base import SAE
from saekit.sources.hf import next_token_loss
from saekit.sources.model import ModelSource
from saekit.track.config import TrackRun
from saekit.track.series import SeriesResult, checkpoint_source

FORMED = 0.5
"""A latent has formed at the first checkpoint where its progress reaches this fraction of its final value."""


@dataclass
class SAEDynamics(Stored):
    """The dynamics of one SAE of the series; tensors are [checkpoints, latents] unless said."""

    name: str
    site: str
    checkpoints: list[str]
    steps: list[int | None]
    model_loss: list[float]
    """Next-token loss of each checkpoint's model on the analysis tokens."""
    fvu: list[float]
    """Fraction of variance unexplained by the checkpoint's SAE on its model's activations."""
    l0: list[float]
    drift_to_final: Tensor
    drift_to_previous: Tensor
    progress_cosine: Tensor
    progress_wjaccard: Tensor
    progress_activations: Tensor
    """The progress measure on the model's activations instead of the codes (cosine)."""
    alive: Tensor
    """[latents] bool: fires on at least two analysis tokens at the final checkpoint (the others'
    statistics are meaningless and left out of summaries)."""
    formation: Tensor
    """[latents]: index of the checkpoint where the latent formed (``FORMED``), -1 if it never did."""
    token_purity: Tensor
    """[latents]: share of the latent's top tokens (final checkpoint) that are one token id."""
    trajectory_latents: list[int]
    trajectories: Tensor
    """[len(trajectory_latents), checkpoints, 2]: decoder trajectories on their top two principal axes."""
    independent_matched_to_final: list[float]
    """With the independent baseline: mean over latents of the Hungarian-matched decoder cosine of each
    checkpoint's from-scratch SAE with the final one (what following a latent needs without the
    series); [] without it."""
    independent_by_index_to_final: list[float]
    """The same by index, without matching (about 0: independent SAEs do not keep latent identity)."""
    series_matched_to_independent: list[float]
    """Mean Hungarian-matched decoder cosine of the series' SAE with the from-scratch SAE, per checkpoint."""
    independent_fvu: list[float]
    """FVU of each checkpoint's from-scratch SAE on the analysis tokens (NaN where there is none)."""


class _Tokens:
    """The analysis tokens of every checkpoint: the same contexts, so row r is the same token everywhere."""

    def __init__(self, source: ModelSource, contexts: int) -> None:
        self.ids = torch.arange(min(contexts, source.tokens.shape[0]))
        self.token_ids = source.tokens[self.ids, source.skip_positions :].flatten()


def measure_series(tr: TrackRun, series: SeriesResult, rng_seed: int = 0) -> list[SAEDynamics]:
    """The dynamics of every SAE of ``series`` (see the module docstring)."""
    stages = series.series
    final = stages[-1]
    source = _source(tr, final.checkpoint)
    tokens = _Tokens(source, tr.track.analysis_contexts)
    final_saes = load_suite(final.folder / "saes")
    acts = source.activations_of(tokens.ids)
    final_run = (source, acts, final_saes)  # measured again below as the last checkpoint: loaded and run once
    n_rows = len(tokens.token_ids)
    random_rows = torch.randperm(n_rows, generator=torch.Generator().manual_seed(rng_seed))[: tr.track.random_tokens]
    final_codes = {name: _codes(sae, acts) for name, sae in final_saes.items()}
    tops = {name: D.top_tokens(codes, min(tr.track.top_k, n_rows)) for name, codes in final_codes.items()}
    frequency = {name: (codes > 0).float().mean(0) for name, codes in final_codes.items()}
    independent = _independent_saes(series)
    per_ckpt: list[dict[str, dict]] = []
    losses = []
    for stage in stages:
        if stage is final:
            source, acts, saes = final_run
        else:
            source = _source(tr, stage.checkpoint)
            acts, saes = source.activations_of(tokens.ids), load_suite(stage.folder / "saes")
        losses.append(_model_loss(source, tokens.ids))
        stats = {name: _checkpoint_stats(sae, acts, tops[name], random_rows) for name, sae in saes.items()}
        for name, by_index in independent.items():
            if stage.checkpoint.index in by_index:
                stats[name]["independent_fvu"] = _fvu(by_index[stage.checkpoint.index], acts)
        per_ckpt.append(stats)
        print(f"[track] measured {stage.checkpoint.label}: model loss {losses[-1]:.3f}")
    return [
        _assemble(tr, name, final_saes[name].metadata["site"], tops[name], frequency[name], tokens, [c[name] for c in per_ckpt], losses, independent.get(name))
        for name in series.names
    ]


def _source(tr: TrackRun, ckpt) -> ModelSource:
    source = checkpoint_source(tr, ckpt)
    assert isinstance(source, ModelSource)  # the track config admits only model and games data
    return source


def _codes(sae: SAE, acts: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return sae.encode(acts[sae.metadata["site"]]).float()


@torch.no_grad()
def _model_loss(source: ModelSource, ids: Tensor) -> float:
    total, count = 0.0, 0
    device = next(source.model.parameters()).device
    for start in range(0, len(ids), source.forward_batch):
        batch = source.tokens[ids[start : start + source.forward_batch]]
        logits = source.model(input_ids=batch.to(device)).logits
        total += float(next_token_loss(logits, batch.to(device), reduction="sum"))
        count += batch.shape[0] * (batch.shape[1] - 1)
    return total / count


@torch.no_grad()
def _checkpoint_stats(sae: SAE, acts: dict[str, Tensor], top: D.TopTokens, random_rows: Tensor) -> dict:
    x = acts[sae.metadata["site"]].float()
    codes = sae.encode(x).float()
    return {
        "decoder": sae.W_dec.detach().float().cpu(),
        "codes": D.progress(codes, top, random_rows),
        "acts": D.progress(x, top, random_rows, jaccard=False),
        "fvu": _fvu(sae, acts),
        "l0": float((codes != 0).sum(1).float().mean()),
    }


@torch.no_grad()
def _fvu(sae: SAE, acts: dict[str, Tensor]) -> float:
    """FVU of what the SAE reconstructs: its input, or a transcoder's output site."""
    x = acts[sae.metadata["site"]].float()
    y = acts[sae.require_site_out()].float() if sae.transcoder else x
    return float((y - sae(x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def _independent_saes(series: SeriesResult) -> dict[str, dict[int, SAE]]:
    """name -> checkpoint index -> the from-scratch SAE there (the series' own from-scratch one included)."""
    if not series.independent:
        return {}
    scratch = next(s for s in series.series if not s.warm)
    out: dict[str, dict[int, SAE]] = {name: {} for name in series.names}
    for stage in [scratch, *series.independent]:
        for name, sae in load_suite(stage.folder / "saes").items():
            out[name][stage.checkpoint.index] = sae
    return out


def _assemble(
    tr: TrackRun, name: str, site: str, top: D.TopTokens, frequency: Tensor, tokens: _Tokens, stats: list[dict], losses: list[float],
    independent: dict[int, SAE] | None,
) -> SAEDynamics:  # fmt: skip
    decoders = torch.stack([s["decoder"] for s in stats])
    drift = D.drift(decoders)
    progress = torch.stack([s["codes"].cosine for s in stats])
    alive = top.valid.sum(1) >= 2
    n_traj = min(tr.track.trajectories, int(alive.sum()))
    chosen = [int(i) for i in frequency.argsort(descending=True)[:n_traj]]
    return SAEDynamics(
        name=name,
        site=site,
        checkpoints=[c.label for c in tr.checkpoints],
        steps=[c.step for c in tr.checkpoints],
        model_loss=losses,
        fvu=[s["fvu"] for s in stats],
        l0=[s["l0"] for s in stats],
        drift_to_final=drift.to_final,
        drift_to_previous=drift.to_previous,
        progress_cosine=progress,
        progress_wjaccard=torch.stack([s["codes"].wjaccard for s in stats]),
        progress_activations=torch.stack([s["acts"].cosine for s in stats]),
        alive=alive,
        formation=D.formation(progress, FORMED),
        token_purity=D.token_purity(top, tokens.token_ids),
        trajectory_latents=chosen,
        trajectories=torch.stack([D.trajectory_2d(decoders[:, i]) for i in chosen]) if chosen else torch.zeros(0, len(stats), 2),
        **_baseline(decoders, independent, [s.get("independent_fvu", float("nan")) for s in stats]),
    )


def _baseline(series_decoders: Tensor, independent: dict[int, SAE] | None, fvu: list[float]) -> dict[str, list[float]]:
    if not independent:
        return dict.fromkeys(("independent_matched_to_final", "independent_by_index_to_final", "series_matched_to_independent", "independent_fvu"), [])
    last = max(independent)
    final = independent[last].W_dec.detach().float()
    matched, by_index, versus = [], [], []
    for t in range(series_decoders.shape[0]):
        W = independent[t].W_dec.detach().float()
        matched.append(float(match_cosine(W, final).score.mean()))
        by_index.append(float(D.drift(torch.stack([W, final])).to_final[0].mean()))
        versus.append(float(match_cosine(series_decoders[t], W).score.mean()))
    return {
        "independent_matched_to_final": matched,
        "independent_by_index_to_final": by_index,
        "series_matched_to_independent": versus,
        "independent_fvu": fvu,
    }
