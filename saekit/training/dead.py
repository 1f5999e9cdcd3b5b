"""Dead-latent tracking: tokens since each latent last fired."""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.comm import LOCAL, Comm
from saekit.types import Codes


def new_counter(d_sae: int, device: torch.device | str = "cpu") -> Tensor:
    return torch.zeros(d_sae, dtype=torch.int64, device=device)


@torch.no_grad()
def update_counter_(counter: Tensor, codes: Codes, comm: Comm = LOCAL) -> None:
    """Add the batch's rows to every latent's count and reset the latents that fired (on any rank)."""
    fired = comm.max_(codes.fired().to(torch.int32)).bool() if comm.distributed else codes.fired()
    counter.add_(codes.shape[0] * comm.world_size)
    counter.masked_fill_(fired, 0)


def dead_mask(counter: Tensor, window_tokens: int) -> Tensor:
    """Latents that have not fired in the last ``window_tokens`` tokens."""
    return counter >= window_tokens
