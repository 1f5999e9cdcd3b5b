"""EleutherAI's sparsify (PyPI ``eai-sparsify``) as a peer of benchmarks/peers.py: one single-site TopK run.

sparsify's ``Trainer`` only trains on a language model's hookpoints (it runs the model itself), so on
the shared activation rows its ``SparseCoder`` is driven here with the steps of its own ``Trainer.fit``
(sparsify/trainer.py), in its order, on the same batches as every other library:

1. on the first step, ``b_dec`` = the batch's mean (its trainer's initialisation at ``global_step == 0``);
2. ``set_decoder_norm_to_unit_norm()`` (its trainer renormalises before every forward);
3. forward: ``sae(x)`` (its fused TopK encoder: ``F.linear`` then ``topk``, with the sparse backward of
   sparsify/fused_encoder.py; the decode is ``embedding_bag``, or its Triton kernel on a GPU with
   Triton), loss = its ``fvu`` (Σ(x − x̂)² / Σ(x − mean)²); no AuxK, since ``auxk_alpha`` defaults to 0
   and no latent is dead in these runs (peers.py);
4. ``fvu.backward()``;
5. ``remove_gradient_parallel_to_decoder_directions()``;
6. gradient clipping at norm 1.0 (saekit's and SAELens's default; sparsify's trainer does not clip, and
   with its FVU loss the norm stays below 1, so the clip only costs its time);
7. ``torch.optim.Adam`` (its trainer's choice when bitsandbytes is absent, β = (0.9, 0.999)) at the
   case's learning rate (not its width-dependent default) with the warm-up and decay every library gets
   (peers.schedule, saekit's ``lr_factor``); ``zero_grad()``.

On CUDA its ``forward`` runs under bf16 autocast (its own decorator) and the decode uses its Triton
kernel when Triton is installed (``SPARSIFY_DISABLE_TRITON=1`` turns it off).
"""

from __future__ import annotations

import torch
from peers import Case, Clock, batches, schedule

GRAD_CLIP = 1.0


def sparsify_sae(case: Case, d_in: int, device: torch.device):
    """sparsify's SparseCoder for ``case`` (TopK, ``num_latents`` = d_sae, seed 0, float32)."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    return SparseCoder(d_in, SparseCoderConfig(num_latents=case.d_sae, k=case.k), device=device, dtype=torch.float32)


def lr_multiplier(case: Case):
    """The learning-rate factor of every library's schedule (peers.schedule) as a LambdaLR function."""
    from saekit.training.schedules import lr_factor

    warm, decay = schedule(case)
    return lambda step: lr_factor(step, case.steps, warm, decay / case.steps)


def run(case: Case, x: torch.Tensor, y: torch.Tensor | None):
    """Train sparsify's TopK SparseCoder on ``x`` (see the module docstring); the peers.RUNNERS contract."""
    if y is not None or case.arch != "topk":
        raise ValueError(f"{case.name}: sparsify runs only single-site TopK here")
    sae = sparsify_sae(case, x.shape[1], x.device)
    opt = torch.optim.Adam(sae.parameters(), lr=case.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(case))
    clock = Clock(batches(x, case))
    for step, batch in enumerate(clock):
        if step == 0:
            sae.b_dec.data = batch.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        sae(batch).fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad()
        sched.step()
    sae.set_decoder_norm_to_unit_norm()
    return (lambda h: dense_codes(sae, h)), (lambda h, f: f.to(sae.dtype) @ sae.W_dec + sae.b_dec), clock.times


def dense_codes(sae, h: torch.Tensor) -> torch.Tensor:
    """[rows, d_sae] codes of a SparseCoder: its top-k activations scattered into zeros."""
    top_acts, top_indices, _ = sae.encode(h)
    return torch.zeros(len(h), sae.num_latents, dtype=top_acts.dtype, device=h.device).scatter_(1, top_indices, top_acts)
