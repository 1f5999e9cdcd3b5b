"""Learning-rate and sparsity-coefficient schedules as pure functions of the step."""

from __future__ import annotations


def lr_factor(step: int, total_steps: int, warmup_steps: int, decay_fraction: float) -> float:
    """Multiplier on the base learning rate at ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` (the first step already gets 1/warmup, never 0), constant,
    then a linear decay that reaches 0 at the end over the last ``decay_fraction`` of the run.
    """
    factor = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        factor = (step + 1) / warmup_steps
    decay_steps = int(round(decay_fraction * total_steps))
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        factor = min(factor, (total_steps - step) / decay_steps)
    return factor


def sparsity_factor(step: int, warmup_steps: int) -> float:
    """Multiplier on the sparsity coefficient: linear from 1/warmup to 1 over ``warmup_steps``."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps
