"""The contexts a latent is explained and scored on, taken from the feature browser's data
(:class:`saekit.browser.store.SaeData`): no second pass over the model.

* explained on: its ``explain_top`` strongest examples (the browser's top examples) and every other
  example of the uniform random sample of its firings (the quantile examples, slots 0, 2, 4, ...);
* scored on (held out): the other sampled firings, then the remaining top examples, none of whose
  rows was shown for the explanation, at most ``score_active`` of them; and as many of the browser's
  random windows as there are held-out ones among those where the latent is zero on every token and
  whose text differs from every activating context's.

Contexts are the browser's windows (``window_before`` tokens before the example's token, some
after); a token's text is the tokenizer's display string.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.browser.stats import window_positions
from saekit.browser.store import SaeData


@dataclass(frozen=True)
class Example:
    """One context: its tokens' text and the latent's activation on each."""

    tokens: tuple[str, ...]
    acts: tuple[float, ...]

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass(frozen=True)
class LatentContexts:
    explain: list[Example]
    """Shown to the explainer, strongest first."""
    active: list[Example]
    """Held-out contexts where the latent fires."""
    inactive: list[Example]
    """Contexts where it is zero throughout."""


@dataclass(frozen=True)
class ContextSettings:
    explain_top: int = 10
    """Top-activating examples shown to the explainer (with every other sampled firing)."""
    score_active: int = 10
    """Held-out activating contexts scored (as many non-activating ones)."""

    def __post_init__(self) -> None:
        if self.explain_top < 1 or self.score_active < 1:
            raise ValueError(f"explain_top and score_active must be at least 1, got {self.explain_top} and {self.score_active}")


def latent_contexts(d: SaeData, latent: int, settings: ContextSettings = ContextSettings()) -> LatentContexts:
    """The contexts of ``latent`` (see the module docstring); empty lists for a latent that never fired."""
    s = d.stats
    top = _examples(d, s.top_rows[latent], s.top_windows[latent])
    sampled = _examples(d, s.quantile_rows[latent].flatten(), s.quantile_windows[latent].flatten(0, 1))
    explain = top[: settings.explain_top] + sampled[0::2]
    shown = {row for row, _ in explain}
    held = [e for e in sampled[1::2] + top[settings.explain_top :] if e[0] not in shown]
    active = _unique(held)[: settings.score_active]
    texts = {e.text for _, e in top + sampled}
    random = _examples(d, s.random_rows[latent], s.random_windows[latent])
    inactive = [e for _, e in random if not any(a > 0 for a in e.acts) and e.text not in texts]
    return LatentContexts([e for _, e in explain], active, _unique_examples(inactive)[: len(active)])


def _examples(d: SaeData, rows: Tensor, windows: Tensor) -> list[tuple[int, Example]]:
    """(row, example) of each present example (row >= 0) among ``rows`` [E] with ``windows`` [E, W]."""
    before = d.window_before
    after = windows.shape[-1] - before - 1
    seqs, positions = window_positions(rows, d.layout, before, after)
    out = []
    for row, seq, pos, acts in zip(rows.tolist(), seqs.tolist(), positions.tolist(), windows.tolist()):
        if row < 0:
            continue
        kept = [(p, a) for p, a in zip(pos, acts) if p >= 0]
        ids = d.tokens[seq, torch.tensor([p for p, _ in kept], dtype=torch.long)].tolist()
        tokens = tuple(d.vocab.get(int(t), "?") for t in ids)
        out.append((row, Example(tokens, tuple(float(a) for _, a in kept))))
    return out


def _unique(examples: list[tuple[int, Example]]) -> list[Example]:
    """The examples in order, each row once."""
    seen: set[int] = set()
    out = []
    for row, e in examples:
        if row not in seen:
            seen.add(row)
            out.append(e)
    return out


def _unique_examples(examples: list[Example]) -> list[Example]:
    """The examples in order, each text once (a corpus repeats itself)."""
    seen: set[str] = set()
    out = []
    for e in examples:
        if e.text not in seen:
            seen.add(e.text)
            out.append(e)
    return out
