"""Latents are found by their top tokens or their explanation, exact token matches first; a query
that is empty or too long is refused by name."""

import dataclasses

import pytest
from browser_helpers import EVIL, tiny_data

from saekit.browser.explanations import Explanations, LatentExplanation
from saekit.browser.search import MAX_QUERY, search_latents, top_tokens
from saekit.errors import ConfigError


def test_top_tokens_count_the_tokens_at_the_top_examples():
    d = tiny_data()
    rows = d.stats.top_rows[2]
    per = d.layout.per_context
    ids = [int(d.tokens[r // per, r % per + d.layout.skip]) for r in rows.tolist() if r >= 0]
    found = top_tokens(d)[2]
    assert sum(t.count for t in found) == len(ids) or len(found) == 3
    assert all(t.count == sum(d.vocab[i] == t.text for i in ids) for t in found)


def test_a_token_query_finds_the_latents_with_that_top_token_exact_ones_first():
    d = tiny_data()
    hits = search_latents(d, "t1")  # "t1" exactly, and "t10", "t11" contain it
    assert hits and all(any("t1" in t.text for t in h.top_tokens) for h in hits)
    exact = [h.exact for h in hits]
    assert exact == sorted(exact, reverse=True)
    assert all(h.exact == any(t.text == "t1" for t in h.top_tokens) for h in hits)
    assert {h.latent for h in search_latents(d, EVIL.upper())} == {
        i for i, tops in enumerate(top_tokens(d)) if any(t.text == EVIL for t in tops)
    }


def test_an_explanation_query_finds_its_latent():
    explained = Explanations("v1", "m", "http://x", {4: LatentExplanation("Mentions of Baghdad", None, None)})
    d = dataclasses.replace(tiny_data(), explanations=explained)
    hits = search_latents(d, "  baghdad ")
    assert [h.latent for h in hits] == [4] and hits[0].explanation == "Mentions of Baghdad" and not hits[0].exact
    assert search_latents(d, "no such thing") == []


@pytest.mark.parametrize("query, length", [("", 0), ("   ", 0), ("x" * (MAX_QUERY + 1), MAX_QUERY + 1)])
def test_an_empty_or_long_query_is_refused(query, length):
    with pytest.raises(ConfigError, match=f"a search needs a query of 1 to {MAX_QUERY} characters, got {length}"):
        search_latents(tiny_data(), query)
