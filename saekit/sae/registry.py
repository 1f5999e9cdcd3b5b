"""Registry of architectures: ``@register("topk")`` on the class, ``build(name, ...)`` to make one.
The registry name is what cfg.json stores, so a saved SAE is rebuilt by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from saekit.errors import UnknownArchitectureError
from saekit.sae.base import SAE, SAEConfig
from saekit.strict import from_dict

_REGISTRY: dict[str, type[SAE]] = {}
S = TypeVar("S", bound=type[SAE])


def register(name: str) -> Callable[[S], S]:
    def wrap(cls: S) -> S:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"architecture {name!r} is registered twice")
        cls.architecture = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_architectures() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type[SAE]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known architectures are {', '.join(list_architectures())}"
        ) from None


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
