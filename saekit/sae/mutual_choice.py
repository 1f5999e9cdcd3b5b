"""Mutual Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature Choice
Sparse Autoencoders"): tokens and latents choose each other freely within the batch budget.

Training couples the tokens of a batch of n:

    Z     = ReLU((x − b_dec) W_enc + b_enc)                     [n, d_sae]
    f     = Z on the n·k largest entries of the whole of Z, 0 elsewhere
    x̂     = f W_dec + b_dec
    loss  = ||x − x̂||² + aux_coef · AuxK (+ aux_zipf_coef · aux_zipf_loss)

The batch spends exactly the TopK budget n·k (fewer only when Z has fewer positive entries) with no
limit per token or per latent: a hard token takes many latents, an easy one few. This selection is the
one BatchTopK (Bussmann et al. 2024) found independently; the paper pairs it with aux_zipf_loss
(the ``aux_zipf_coef`` option, shared by every TopK-family SAE here).

Because the selection IS BatchTopK's, this class is BatchTopK under the paper's name (its training
step, sparse fast path included, and its threshold are BatchTopK's, not a copy of them). Inference
must not depend on the batch, so one global threshold is learned: after each step from
``threshold_start_step`` on (capped at half the run),

    θ ← (1 − β) θ + β · (smallest positive activation kept in the batch)

and ``encode(x) = Z ⊙ 1[Z > θ]``, saved for SAELens as ``jumprelu`` with a [d_sae] threshold of equal
entries. Until θ is set (+inf marks "not yet"), ``encode`` gives zero codes, as SAELens does.

Defaults follow the TopK family: the default learning rate, AuxK weight 1/32 with k_aux = d_in // 2,
unit-norm decoder, geometric-median ``b_dec``.
"""

from __future__ import annotations

from dataclasses import dataclass

from saekit.sae.batch_topk import BatchTopKConfig, BatchTopKSAE
from saekit.sae.registry import register


@dataclass(frozen=True)
class MutualChoiceConfig(BatchTopKConfig):
    """BatchTopK's fields and checks; k sets the batch budget."""

    k: int = 32
    """Budget in active latents per token, on average: a batch of n tokens keeps its n·k largest
    activations, however they fall across tokens and latents."""


@register("mutual_choice")
class MutualChoiceSAE(BatchTopKSAE):
    config_class = MutualChoiceConfig
    cfg: MutualChoiceConfig
