"""Dead-latent tracking: tokens since each latent last fired."""

from __future__ import annotations

import torch
from torch import Tensor


def new_counter(d_sae: int, device: torch.device | str = "cpu") -> Tensor:
    return torch.zeros(d_sae, dtype=torch.int64, device=device)


@torch.no_grad()
def update_counter_(counter: Tensor, codes: Tensor, fired: Tensor | None = None) -> None:
    """Add the batch's tokens to every latent's count and reset the latents that fired.

    ``fired`` ([d_sae] bool, ``(codes != 0).any(0)``) may be given by an architecture that knows it
    from its sparse selection; it saves a scan over the dense [tokens, d_sae] codes.
    """
    if codes.layout != torch.strided:  # the sparse CSR codes of the sparse training paths
        n_tokens = codes.shape[0]
        if fired is None:
            fired = torch.zeros(codes.shape[-1], dtype=torch.bool, device=codes.device)
            fired.index_fill_(0, codes.col_indices()[codes.values() != 0], True)
    else:
        flat = codes.reshape(-1, codes.shape[-1])
        n_tokens = flat.shape[0]
        if fired is None:
            fired = (flat != 0).any(0)
    counter.add_(n_tokens)
    counter.masked_fill_(fired, 0)


def dead_mask(counter: Tensor, window_tokens: int) -> Tensor:
    """Latents that have not fired in the last ``window_tokens`` tokens."""
    return counter >= window_tokens
