"""The hand-computed 2 → 3 SAE that several architecture tests share: for ``X``, x − b_dec is
[[1, 1], [0, −1]], and the pre-activations (x − b_dec) W_enc + b_enc are [[1, 1.25, 1.5], [0, −0.75, −1.5]]."""

from __future__ import annotations

import torch

from saekit.sae.base import SAE

X = torch.tensor([[1.5, 1.0], [0.5, -1.0]])
UNIT_W_DEC = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
"""Unit-norm decoder rows."""


@torch.no_grad()
def set_weights_(sae: SAE, W_dec: torch.Tensor = UNIT_W_DEC) -> SAE:
    """``sae`` (d_in 2, d_sae 3) with the hand weights and decoder ``W_dec``; returns it."""
    sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    sae.b_enc.copy_(torch.tensor([0.0, 0.25, -0.5]))
    sae.b_dec.copy_(torch.tensor([0.5, 0.0]))
    sae.W_dec.copy_(W_dec)
    return sae
