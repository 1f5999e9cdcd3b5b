"""Activation sources from the `[data]` table of a run config: `kind` picks the source, the other
keys are its settings (strictly checked).

    kind = "file"       path = "acts.npy" | "acts.safetensors", site = "..."
    kind = "synthetic"  SyntheticConfig fields (d, n_features, mean_active, ...)
    kind = "model"      ModelDataConfig fields + TextConfig fields (model, sites, corpus, n_tokens, ...)
    kind = "games"      ModelDataConfig fields + GamesConfig fields (model, sites, game, n_games, ...)
    kind = "cache"      path = "cache-folder", sites = [...] (default: all)
    kind = "models"     models = {name = model, ...}, contexts = "text" | "games", and the other keys of
                        that kind: several models on the same contexts, sites "name/site" (saekit.sources.zipped)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from saekit.comm import LOCAL, Comm
from saekit.errors import ConfigError
from saekit.strict import from_dict
from saekit.types import ActivationSource

T = TypeVar("T")

if TYPE_CHECKING:
    from torch import Tensor

    from saekit.sources.model import ModelSource


@dataclass(frozen=True)
class ModelDataConfig:
    """A live language model as the activation source (kind = "model"); text settings sit beside
    these keys (corpus, context_size, n_tokens, seed, split, ... of TextConfig)."""

    model: str = "smollm2-135m"
    """The embedded default, a local Hugging Face folder, or a hub id (needs network)."""
    sites: tuple[str, ...] = ("layers.*.resid_post",)
    """Canonical sites (layers.{i}.resid_pre / resid_post / attn_out / mlp_in / mlp_out), globs
    ("layers.*.resid_post", "layers.{3..5}.mlp_out") or raw module paths."""
    device: str = "auto"
    """Where the model runs: "cpu", "cuda", ...; "auto" takes CUDA when available."""
    dtype: str = "float32"
    """Model weights dtype: "float32", "bfloat16" or "float16"."""
    chunk_seqs: int = 64
    """Contexts per shuffled chunk: larger mixes better and costs chunk_seqs·context rows of memory per site."""
    forward_batch: int = 16
    """Contexts per forward pass."""
    skip_positions: int = 1
    """Leading positions of each context left out of the data (1: the BOS token)."""
    with_grads: bool = False
    """Also carry d(next-token loss)/d(activation) in every batch (for gradient_topk); costs a full
    forward and backward pass per chunk."""


def _file(settings: dict[str, Any], comm: Comm = LOCAL) -> ActivationSource:
    from saekit.sources.tensor import TensorSource

    _only(settings, {"path", "site"}, "file")
    if "path" not in settings:
        raise ConfigError("data: kind 'file' needs a 'path' (.npy or .safetensors)")
    return TensorSource(settings["path"], site=settings.get("site"))


def _synthetic(settings: dict[str, Any], comm: Comm = LOCAL) -> ActivationSource:
    from saekit.sources.synthetic import SyntheticConfig, SyntheticSource

    return SyntheticSource(from_dict(SyntheticConfig, settings, where="data"))


def _cache(settings: dict[str, Any], comm: Comm = LOCAL) -> ActivationSource:
    from saekit.sources.cache import CacheSource

    _only(settings, {"path", "sites"}, "cache")
    if "path" not in settings:
        raise ConfigError("data: kind 'cache' needs a 'path' (a folder written by `saekit cache`)")
    sites = settings.get("sites")
    return CacheSource(settings["path"], sites=[sites] if isinstance(sites, str) else sites)


class ModelData(NamedTuple):
    model: ModelDataConfig
    text: Any
    """saekit.sources.text.TextConfig (imported lazily: it needs transformers)."""


def split_model_settings(settings: dict[str, Any]) -> ModelData:
    from saekit.sources.text import TextConfig

    return ModelData(*_split(settings, TextConfig, "model"))


def _split(settings: dict[str, Any], other: type[T], kind: str, model_defaults: dict[str, Any] | None = None) -> tuple[ModelDataConfig, T]:
    """A model table's keys split into the model's settings and those of its contexts (``other``); a
    key of neither is refused, naming ``kind``."""
    other_keys = {f.name for f in dataclasses.fields(other)}  # type: ignore[arg-type]  (T is a config dataclass)
    model_keys = {f.name for f in dataclasses.fields(ModelDataConfig)}
    _only(settings, other_keys | model_keys, kind)
    if isinstance(settings.get("sites"), str):
        settings = {**settings, "sites": [settings["sites"]]}
    model_settings = {**(model_defaults or {}), **{k: v for k, v in settings.items() if k in model_keys}}
    model_cfg = from_dict(ModelDataConfig, model_settings, where="data")
    return model_cfg, from_dict(other, {k: v for k, v in settings.items() if k in other_keys}, where="data")


class _Plan(NamedTuple):
    """What a model table gives :func:`model_source_of`: the model's settings, its contexts as a function
    of its tokenizer, and the description of those contexts."""

    model: ModelDataConfig
    tokens_for: Callable[[Any], Tensor]
    description: dict[str, Any]


def _text_plan(settings: dict[str, Any]) -> _Plan:
    from saekit.sources.text import tokens_from_config
    from saekit.strict import to_dict

    model_cfg, text_cfg = split_model_settings(settings)
    return _Plan(model_cfg, lambda tokenizer: tokens_from_config(text_cfg, tokenizer), {"text": to_dict(text_cfg)})


def _games_plan(settings: dict[str, Any]) -> _Plan:
    from saekit.sources.games import GamesConfig, game_tokens

    # A game has no BOS token: no leading position is skipped unless asked.
    model_cfg, games = _split(settings, GamesConfig, "games", {"skip_positions": 0})
    return _Plan(model_cfg, lambda tokenizer: game_tokens(games, tokenizer), {"games": dataclasses.asdict(games)})


def model_source(settings: dict[str, Any], comm: Comm = LOCAL) -> ModelSource:
    """Load the model and corpus of a kind = "model" table and wrap them as a ModelSource."""
    return model_source_of(*_text_plan(settings), comm)


def model_source_of(
    model_cfg: ModelDataConfig, tokens_for: Callable[[Any], Tensor], description: dict[str, Any], comm: Comm = LOCAL
) -> ModelSource:
    """The ModelSource of ``model_cfg``'s model over the contexts ``tokens_for(tokenizer)``: the one place a
    data table's model is loaded (text and games sources alike)."""
    from saekit.devices import rank_device, resolve_device
    from saekit.models import load_model
    from saekit.sources.model import ModelSource

    # Each rank of a distributed run puts its model on its own GPU (rank_device); names: saekit.devices
    device = rank_device(resolve_device(model_cfg.device)) if comm.distributed else model_cfg.device
    loaded = load_model(model_cfg.model, device=device, dtype=model_cfg.dtype)
    return ModelSource(
        loaded.model,
        tokens_for(loaded.tokenizer),
        list(model_cfg.sites),
        chunk_seqs=model_cfg.chunk_seqs,
        forward_batch=model_cfg.forward_batch,
        skip_positions=model_cfg.skip_positions,
        with_grads=model_cfg.with_grads,
        description={"model": loaded.name, **description},
        comm=comm,
    )


def games_source(settings: dict[str, Any], comm: Comm = LOCAL) -> ModelSource:
    """A ModelSource over the games of a kind = "games" table (its model and games settings)."""
    if "model" not in settings:
        raise ConfigError("data: kind 'games' needs a 'model' (a folder written by `saekit games othello-model` or `chess-model`)")
    return model_source_of(*_games_plan(settings), comm)


def models_source(settings: dict[str, Any], comm: Comm = LOCAL) -> ActivationSource:
    """Several models side by side on the same contexts (kind = "models"): a ZippedSource of one
    ModelSource per entry of ``models`` (name -> model). ``contexts = "text"`` (the default) cuts the text
    with the first model's tokenizer, which every model must share; ``"games"`` draws seeded games
    (checkpoints of one board-game model). The other keys are those of kind "model" or "games"."""
    from saekit.sources.zipped import ZippedSource

    settings = dict(settings)
    models = settings.pop("models", None)
    contexts = settings.pop("contexts", "text")
    if not isinstance(models, dict) or len(models) < 2 or not all(isinstance(m, str) for m in models.values()):
        raise ConfigError(f"data: kind 'models' needs 'models', a table of two or more name = model entries, got {models!r}")
    if "model" in settings:
        raise ConfigError("data: kind 'models' names its models in 'models', not 'model'")
    if contexts not in ("text", "games"):
        raise ConfigError(f"data: 'contexts' must be \"text\" or \"games\", got {contexts!r}")
    shared: dict[str, Any] = {}
    parts = {}
    for name, model in models.items():
        plan = (_text_plan if contexts == "text" else _games_plan)({**settings, "model": model})

        def tokens_for(tokenizer: Any, plan: _Plan = plan, name: str = name) -> Tensor:
            # The contexts are cut (or the games drawn) once, with the first model's tokenizer; every
            # other model must share that tokenizer, so the same tokens mean the same to it.
            vocab = tokenizer.get_vocab()
            if shared and vocab != shared["vocab"]:
                raise ConfigError(f"data: model {name!r} has another tokenizer than the first model; models side by side must share one")
            if not shared:
                shared.update(vocab=vocab, tokens=plan.tokens_for(tokenizer))
            return shared["tokens"]

        parts[name] = model_source_of(plan.model, tokens_for, plan.description, comm)
    return ZippedSource(parts)


SOURCE_KINDS = {"file": _file, "synthetic": _synthetic, "model": model_source, "games": games_source, "cache": _cache, "models": models_source}


def source_from_spec(spec: dict[str, Any], comm: Comm = LOCAL) -> ActivationSource:
    """The source a run config's [data] table describes; in a distributed run (``comm``) a model source
    splits its forward passes over the ranks."""
    settings = dict(spec)
    kind = settings.pop("kind", None)
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"data: 'kind' must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    return SOURCE_KINDS[kind](settings, comm)


def _only(settings: dict[str, Any], allowed: set[str], kind: str) -> None:
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ConfigError(
            f"data: unknown key {', '.join(map(repr, unknown))} for kind {kind!r}; valid keys are {', '.join(sorted(allowed))}"
        )
