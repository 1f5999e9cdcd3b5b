"""TrainConfig: everything about a training run that is not an SAE's own hyper-parameter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from saekit.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    steps: int | None = None
    """Optimiser steps; give this or ``tokens``."""
    tokens: int | None = None
    """Training tokens; the run takes ceil(tokens / batch_size) steps."""
    batch_size: int = 4096
    """Tokens per step, shared by every SAE of the run."""
    seed: int = 0
    """Seed of the data order (and of any randomness in the loop)."""
    lr_warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 over this many steps; none by default: Adam's bias-corrected
    first steps are already of the learning rate's size, and on planted features a warm-up over 5% of
    the run cost BatchTopK a quarter of the features it recovers (docs/architectures.md, "Defaults")."""
    lr_decay_fraction: float = 0.2
    """Fraction of the run, at its end, over which the learning rate decays linearly to 0."""
    sparsity_warmup_steps: int | None = None
    """Linear warm-up of the sparsity coefficient from 0; None: 2000 steps or 10% of the run."""
    grad_clip: float | None = 1.0
    """Maximum gradient norm per SAE; None disables clipping."""
    normalize_activations: bool = True
    """Scale each site's activations by one fixed factor to unit mean squared norm while training;
    the factor is folded back into the weights at the end, so trained SAEs take raw activations."""
    norm_estimation_tokens: int = 65536
    """Tokens used to estimate the normalisation factor."""
    dead_tokens: int | None = None
    """A latent is dead after this many tokens without firing; None: 10M or a tenth of the run."""
    log_every: int = 50
    """Steps between two lines of the metrics log."""
    checkpoint_every: int | None = None
    """Steps between two checkpoints (needs an output folder); None: only at the end."""
    device: str = "auto"
    """"cpu", "cuda", "cuda:1", ...; "auto" takes CUDA when available."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype of the forward pass (autocast); parameters and Adam state stay float32. "auto":
    bfloat16 on a CUDA device that supports it (the matmuls run at tensor-core rate), float32 on the
    CPU (where bfloat16 matmuls are slower without AMX units)."""
    collective_timeout_s: float = 300.0
    """In a distributed run (``torchrun``): seconds a rank waits at a collective before it stops with
    an error, so that a rank that died ends the run instead of hanging it."""
    parallel: Literal["data", "sites", "latents", "fsdp"] = "data"
    """How a distributed run (``torchrun``) shares the work out (docs/scaling.md). "data": every rank
    trains a replica of every SAE on its share of each batch. "sites": each SAE (or group of SAEs that
    train together) lives on one rank, which trains it on whole batches, so a rank holds only its own
    SAEs' weights, gradients and Adam state. "latents": every SAE's latents split over the ranks, each
    rank training its slice on whole batches (topk, batch_topk and jumprelu), for dictionaries too wide
    for one device. "fsdp": data parallel with every SAE's weights, gradients and Adam state split over
    the ranks (torch's FSDP2), each SAE gathered whole only while its loss is computed. All end with
    the weights one process trains (one process trains the same way under any)."""
    progress: bool = True
    """Show a progress bar."""
    wandb_project: str | None = None
    """Also log to this Weights & Biases project (needs ``wandb`` installed)."""
    tensorboard: bool = False
    """Also write TensorBoard events to the output folder (needs ``tensorboard`` installed)."""

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.tokens is None):
            raise ConfigError("give exactly one of steps and tokens")
        for name in ("steps", "tokens", "batch_size", "log_every", "norm_estimation_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        for name in ("lr_warmup_steps", "sparsity_warmup_steps", "dead_tokens", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if not 0 <= self.lr_decay_fraction <= 1:
            raise ConfigError(f"lr_decay_fraction must be in [0, 1], got {self.lr_decay_fraction}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.parallel not in ("data", "sites", "latents", "fsdp"):
            raise ConfigError(f"parallel must be 'data', 'sites', 'latents' or 'fsdp', got {self.parallel!r}")
        if not self.collective_timeout_s > 0:
            raise ConfigError(f"collective_timeout_s must be positive, got {self.collective_timeout_s}")

    @property
    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        assert self.tokens is not None  # __post_init__ requires one of the two
        return math.ceil(self.tokens / self.batch_size)

    @property
    def total_tokens(self) -> int:
        return self.total_steps * self.batch_size

    @property
    def resolved_sparsity_warmup(self) -> int:
        if self.sparsity_warmup_steps is not None:
            return self.sparsity_warmup_steps
        return min(2000, self.total_steps // 10)

    @property
    def resolved_dead_tokens(self) -> int:
        if self.dead_tokens is not None:
            return self.dead_tokens
        return min(10_000_000, max(self.batch_size, self.total_tokens // 10))
