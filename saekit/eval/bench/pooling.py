"""One vector per text: a site's activations, and each SAE's codes, averaged over the text's tokens.

As in SAEBench, the SAE encodes every token and its codes are averaged (not the SAE applied to the
averaged activation), and the leading positions (``skip_positions``: the BOS token, or more for models
with massive activations there) and the padding never enter a mean. Texts are tokenized without
special tokens, the model's BOS put in front, cut to ``context_length`` tokens, and run in batches of
similar length through :func:`saekit.sources.hf.collect_activations`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.errors import DataError
from saekit.models.load import LoadedModel
from saekit.sae.base import SAE
from saekit.sources.hf import collect_activations


class Pooled(NamedTuple):
    """Per-text means, float32 on the CPU: ``llm[site] [n, d_in]`` and ``sae[name] [n, d_sae]``."""

    llm: dict[str, Tensor]
    sae: dict[str, Tensor]


def tokenize_texts(loaded: LoadedModel, texts: Sequence[str], context_length: int) -> list[list[int]]:
    """Each text's token ids: the model's BOS (when it has one), then the text's own, at most ``context_length``."""
    bos = loaded.bos_token_id
    ids = []
    for text in texts:
        own = list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(([bos] if bos is not None else []) + own)
    return [t[:context_length] for t in ids]


def _batch(ids: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    width = max(len(t) for t in ids)
    tokens = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, t in enumerate(ids):
        tokens[i, : len(t)] = torch.tensor(list(t), dtype=torch.long)
        mask[i, : len(t)] = 1
    return tokens, mask


@torch.no_grad()
def pooled_means(
    loaded: LoadedModel,
    ids: Sequence[Sequence[int]],
    saes: Mapping[str, SAE],
    *,
    skip_positions: int = 1,
    batch_size: int = 16,
    what: str = "texts",
) -> Pooled:
    """Mean activations at every SAE's site and mean codes of every SAE, one row per token list of
    ``ids`` (from :func:`tokenize_texts`); each must be longer than ``skip_positions``."""
    sites = list(dict.fromkeys(sae.require_site() for sae in saes.values()))
    for i, t in enumerate(ids):
        if len(t) <= skip_positions:
            raise DataError(f"{what}: text {i} has {len(t)} token(s), none left after skipping {skip_positions}")
    pad = loaded.tokenizer.pad_token_id
    pad = pad if isinstance(pad, int) else 0
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    llm: dict[str, Tensor] = {}
    codes = {name: torch.empty(len(ids), sae.d_sae) for name, sae in saes.items()}
    for start in tqdm(range(0, len(order), batch_size), desc=what, leave=False):
        rows = order[start : start + batch_size]
        tokens, mask = _batch([ids[i] for i in rows], pad)
        acts = collect_activations(loaded, tokens, sites, attention_mask=mask)
        keep = mask.bool()
        keep[:, :skip_positions] = False
        owner = torch.arange(len(rows)).unsqueeze(1).expand_as(keep)[keep]
        counts = keep.sum(1, keepdim=True).float()
        index = torch.tensor(rows)
        for site, a in acts.items():
            flat = a[keep.to(a.device)].float().cpu()
            llm.setdefault(site, torch.empty(len(ids), a.shape[-1]))[index] = _sum_by(flat, owner, len(rows)) / counts
        for name, sae in saes.items():
            a = acts[sae.require_site()]
            c = sae.encode(a[keep.to(a.device)].to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()
            codes[name][index] = _sum_by(c, owner, len(rows)) / counts
    check_finite(llm, codes, what)
    return Pooled(llm, codes)


def check_finite(llm: Mapping[str, Tensor], codes: Mapping[str, Tensor], what: str) -> None:
    """Refuse activations or codes holding NaN or inf, naming the site or SAE, before any probe sees them."""
    for site, x in llm.items():
        if not torch.isfinite(x).all():
            raise DataError(f"{what}: the activations at {site} hold NaN or infinite values")
    for name, c in codes.items():
        if not torch.isfinite(c).all():
            raise DataError(f"{what}: the codes of SAE {name!r} hold NaN or infinite values")


def _sum_by(values: Tensor, owner: Tensor, n: int) -> Tensor:
    return torch.zeros(n, values.shape[1]).index_add_(0, owner, values)
