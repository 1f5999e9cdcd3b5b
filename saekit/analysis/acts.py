"""An SAE's codes and reconstructions of activation rows, computed in batches, for the studies."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saekit.sae.base import SAE


class Encoded(NamedTuple):
    """Codes and reconstructions of an SAE on rows, float32 on the CPU."""

    codes: Tensor
    x_hat: Tensor


@torch.no_grad()
def encode_rows(sae: SAE, x: Tensor, batch: int = 8192) -> Encoded:
    """(codes, x_hat) of the SAE on rows ``x``, computed in batches in the SAE's dtype and device."""
    param = sae.W_dec
    codes, recon = [], []
    for start in range(0, x.shape[0], batch):
        rows = x[start : start + batch].to(param.device, param.dtype)
        c = sae.encode(rows)
        codes.append(c.float().cpu())
        recon.append(sae.decode(c).float().cpu())
    return Encoded(torch.cat(codes), torch.cat(recon))
