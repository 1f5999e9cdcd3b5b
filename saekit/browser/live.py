"""Live text: which latents fire on each token of a text typed into the local server's ``live.html``.

The text is tokenized (BOS first, as in the sample), run through the model once with the activations
captured at the SAE's site by the capture path of :func:`saekit.sources.hf.site_rows`, and encoded by
the SAE; each token gets its ``top`` latents by activation. Input is bounded before any work:
:data:`MAX_CHARS` characters and :data:`MAX_TOKENS` tokens, so one request costs at most one short
forward pass.

    live = LiveModel.load("demo-output/saes")          # the suite's model and SAEs
    live.run("L9-topk", "The president of Iraq")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from saekit.errors import ConfigError
from saekit.io import load_sae
from saekit.sae.base import SAE
from saekit.sources.hf import site_rows

if TYPE_CHECKING:
    from saekit.models.load import LoadedModel

MAX_CHARS = 2000
"""Longest text a request may send."""
MAX_TOKENS = 256
"""Most tokens of a text that are run through the model (the rest are cut off, and the answer says so)."""
TOP = 8
"""Latents listed per token."""


class LiveToken(NamedTuple):
    """One token of the text: its display string and its firing latents, largest first."""

    text: str
    latents: list[tuple[int, float]]


class LiveResult(NamedTuple):
    sae: str
    tokens: list[LiveToken]
    truncated: bool
    """Whether the text had more than :data:`MAX_TOKENS` tokens (only those were run)."""


@dataclass(frozen=True)
class LiveModel:
    """A model and the SAEs whose latents the live page shows, all in memory."""

    loaded: LoadedModel
    saes: dict[str, SAE]

    @classmethod
    def load(cls, target: str | os.PathLike[str], model: str | None = None, device: str = "cpu") -> LiveModel:
        """The SAEs of ``target`` (an SAE or suite folder) and their model (``model``, else the one their
        provenance or cfg.json names, as for the browser)."""
        from saekit.browser.build import model_to_run, sae_folders
        from saekit.browser.game_sample import game_source
        from saekit.models import load_model

        folders = sae_folders(target)
        saes = {name: load_sae(folder, device=device).eval() for name, folder in folders.items()}
        return cls(load_model(model_to_run(folders, model, game_source(folders)), device=device), saes)

    @torch.no_grad()
    def run(self, sae: str, text: str, top: int = TOP) -> LiveResult:
        """The latents of SAE ``sae`` on each token of ``text``; a ConfigError for an unknown SAE, a text
        over :data:`MAX_CHARS` characters, or one without a token."""
        if sae not in self.saes:
            raise ConfigError(f"no SAE {sae!r} here; the SAEs are {', '.join(self.saes)}")
        if len(text) > MAX_CHARS:
            raise ConfigError(f"the text has {len(text):,} characters, more than the {MAX_CHARS:,} a request may send")
        ids = self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError("the text has no token")
        truncated = len(ids) > MAX_TOKENS
        bos = self.loaded.bos_token_id
        skip = 0 if bos is None else 1
        tokens = torch.tensor([([bos] if bos is not None else []) + ids[:MAX_TOKENS]])
        model = self.saes[sae]
        device = model.W_enc.device
        acts = site_rows(self.loaded, tokens, [model.require_site()], skip_positions=skip, batch_size=1, progress=False)
        codes = model.encode(acts[model.require_site()].to(device, model.W_enc.dtype)).float().cpu()
        values, latents = codes.topk(min(top, codes.shape[1]), dim=1)
        words = self.loaded.tokenizer.batch_decode([[i] for i in ids[:MAX_TOKENS]])
        out = [
            LiveToken(word, [(int(j), float(v)) for j, v in zip(row_ids.tolist(), row_values.tolist()) if v > 0])
            for word, row_ids, row_values in zip(words, latents, values)
        ]  # fmt: skip
        return LiveResult(sae, out, truncated)
