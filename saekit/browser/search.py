"""Search an SAE's latents by the text of their explanation (``saekit interpret``) or by their top tokens
(the tokens at their top examples), for the server's ``<sae>/search.json?q=`` and the Python API.

    hits = search_latents(browser.saes["L9-topk"], "iraq")

A latent matches when the query (case-insensitive, surrounding spaces ignored) is part of its
explanation or of one of its :data:`TOP_TOKENS` most common top tokens. Latents whose top token is
the query itself come first, then the others; each group by firing count, largest first.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import torch

from saekit.browser.store import SaeData
from saekit.errors import ConfigError

TOP_TOKENS = 3
"""Most common tokens of a latent's top examples that a search looks at (and the latent list shows)."""
MAX_QUERY = 200
"""Longest query, in characters."""


class TopToken(NamedTuple):
    text: str
    count: int
    """Top examples of the latent at this token."""


class SearchHit(NamedTuple):
    latent: int
    top_tokens: list[TopToken]
    explanation: str | None
    exact: bool
    """Whether a top token is the query itself."""


def top_tokens(d: SaeData, n: int = TOP_TOKENS) -> list[list[TopToken]]:
    """Per latent, the ``n`` most common tokens at its top examples, with how many examples each has."""
    rows = d.stats.top_rows
    per = d.layout.per_context
    flat = (rows.clamp(min=0) // per) * d.layout.context + rows.clamp(min=0) % per + d.layout.skip
    centers = torch.where(rows >= 0, d.tokens.flatten()[flat], -1).tolist()
    return [
        [TopToken(d.vocab.get(t, "?"), c) for t, c in Counter(t for t in ids if t >= 0).most_common(n)]
        for ids in centers
    ]  # fmt: skip


def search_latents(d: SaeData, query: str, limit: int = 50) -> list[SearchHit]:
    """The latents of ``d`` matching ``query`` (see the module docstring), at most ``limit``."""
    q = query.strip().lower()
    if not q or len(q) > MAX_QUERY:
        raise ConfigError(f"a search needs a query of 1 to {MAX_QUERY} characters, got {len(q)}")
    found = d.explanations.latents if d.explanations is not None else {}
    hits = []
    for i, tokens in enumerate(top_tokens(d)):
        words = [t.text.strip().lower() for t in tokens]
        explained = found.get(i)
        text = explained.explanation if explained is not None else None
        if any(q in w for w in words) or (text is not None and q in text.lower()):
            hits.append(SearchHit(i, tokens, text, q in words))
    fired = d.stats.fire_count.tolist()
    hits.sort(key=lambda h: (not h.exact, -fired[h.latent], h.latent))
    return hits[:limit]
