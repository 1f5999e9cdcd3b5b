"""Activation sources from the `[data]` table of a run config: `kind` picks the source, the other
keys are its settings (strictly checked)."""

from __future__ import annotations

from typing import Any

from saekit.errors import ConfigError
from saekit.strict import from_dict
from saekit.types import ActivationSource


def _file(settings: dict[str, Any]) -> ActivationSource:
    from saekit.sources.tensor import TensorSource

    unknown = sorted(set(settings) - {"path", "site"})
    if unknown:
        raise ConfigError(f"data: unknown key {', '.join(map(repr, unknown))} for kind 'file'; valid keys are path, site")
    if "path" not in settings:
        raise ConfigError("data: kind 'file' needs a 'path' (.npy or .safetensors)")
    return TensorSource(settings["path"], site=settings.get("site"))


def _synthetic(settings: dict[str, Any]) -> ActivationSource:
    from saekit.sources.synthetic import SyntheticConfig, SyntheticSource

    return SyntheticSource(from_dict(SyntheticConfig, settings, where="data"))


SOURCE_KINDS = {"file": _file, "synthetic": _synthetic}


def source_from_spec(spec: dict[str, Any]) -> ActivationSource:
    settings = dict(spec)
    kind = settings.pop("kind", None)
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"data: 'kind' must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    return SOURCE_KINDS[kind](settings)
