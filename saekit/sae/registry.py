"""Registry of architectures: ``@register("topk")`` on the class, ``build(name, ...)`` to make one.
The registry name is what cfg.json stores, so a saved SAE is rebuilt by name. ``alias(name, target)``
gives an architecture a second name (Mutual Choice is BatchTopK's selection under the paper's name):
it builds the target's class, and saved folders record the target's name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from saekit.errors import UnknownArchitectureError
from saekit.sae.base import SAE, SAEConfig
from saekit.strict import from_dict

_REGISTRY: dict[str, type[SAE]] = {}
_ALIASES: dict[str, str] = {}
S = TypeVar("S", bound=type[SAE])


def register(name: str) -> Callable[[S], S]:
    def wrap(cls: S) -> S:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"architecture {name!r} is registered twice")
        cls.architecture = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def alias(name: str, target: str) -> None:
    """Let ``name`` build the architecture registered as ``target``."""
    if name in _REGISTRY or _ALIASES.get(name, target) != target:
        raise ValueError(f"architecture name {name!r} is taken")
    _ALIASES[name] = target


def list_architectures() -> list[str]:
    """Names of every registered architecture (one per class, aliases left out), sorted."""
    return sorted(_REGISTRY)


def aliases() -> dict[str, str]:
    """Second names of architectures: alias -> registered name."""
    return dict(_ALIASES)


def get(name: str) -> type[SAE]:
    try:
        return _REGISTRY[_ALIASES.get(name, name)]
    except KeyError:
        known = sorted([*_REGISTRY, *_ALIASES])
        raise UnknownArchitectureError(f"unknown architecture {name!r}; known architectures are {', '.join(known)}") from None


def make_config(name: str, d_in: int, d_sae: int, **hparams: Any) -> SAEConfig:
    """The architecture's config from keyword hyper-parameters; unknown names are an error."""
    cls = get(name)
    return from_dict(cls.config_class, {"d_in": d_in, "d_sae": d_sae, **hparams}, where=name)


def build(name: str, *, d_in: int, d_sae: int, seed: int | None = None, **hparams: Any) -> SAE:
    """A freshly initialised SAE. ``seed`` makes the initialisation reproducible."""
    cfg = make_config(name, d_in, d_sae, **hparams)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return get(name)(cfg, generator=generator)


def from_config(name: str, cfg_dict: dict[str, Any]) -> SAE:
    """An SAE (initial weights) from a stored config dict."""
    cls = get(name)
    return cls(from_dict(cls.config_class, cfg_dict, where=name))
