"""Training: one loop for any number of SAEs on one activation stream."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saekit.sae.base import SAE
from saekit.strict import from_dict
from saekit.training.config import TrainConfig
from saekit.training.engine import TrainResult, run


def train(
    saes: SAE | Sequence[SAE],
    activations: Any,
    *,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    **settings: Any,
) -> TrainResult:
    """Train one SAE, or a list of SAEs side by side on the same activation stream.

    ``activations``: a tensor or numpy array [tokens, d_in] (or [batch, pos, d_in]), a path to a
    ``.npy`` / ``.safetensors`` file, or an activation source. ``settings`` are :class:`TrainConfig`
    fields (``steps`` or ``tokens``, ``batch_size``, ``seed``, ``device``, ``dtype``, ...); unknown
    names are an error. With ``out_dir``, metrics go to ``out_dir/metrics.jsonl`` and checkpoints to
    ``out_dir/checkpoint.safetensors``; ``resume=True`` continues from the latest checkpoint there.

    Returns a :class:`TrainResult`: ``.sae`` (a run of one SAE) or ``.saes`` (in the order given) are
    the SAEs passed in, trained in place; they take raw activations.
    """
    from saekit.sources.tensor import as_source

    if config is not None and settings:
        raise TypeError("give either config= or keyword settings, not both")
    cfg = config if config is not None else from_dict(TrainConfig, settings, where="train")
    return run([saes] if isinstance(saes, SAE) else list(saes), as_source(activations), cfg, out_dir=out_dir, resume=resume)


__all__ = ["TrainConfig", "TrainResult", "run", "train"]
