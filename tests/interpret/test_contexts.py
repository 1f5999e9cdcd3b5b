"""The contexts a latent is explained and scored on come from the browser's data: held-out ones are
never shown to the explainer, non-activating ones are zero throughout and unlike any activating one."""

import dataclasses

import torch

from saekit.interpret.contexts import ContextSettings, latent_contexts
from tests.browser.browser_helpers import tiny_data


def test_held_out_and_inactive_contexts_by_their_definition():
    data = tiny_data(d_sae=6)
    settings = ContextSettings(explain_top=2, score_active=3)
    for latent in range(6):
        c = latent_contexts(data, latent, settings)
        fired = int(data.stats.fire_count[latent]) > 0
        assert bool(c.explain) == fired and len(c.active) <= 3 and len(c.inactive) <= len(c.active)
        shown = {(e.tokens, e.acts) for e in c.explain}
        assert not any((e.tokens, e.acts) in shown for e in c.active)
        assert all(any(a > 0 for a in e.acts) for e in c.explain + c.active)
        assert all(not any(a > 0 for a in e.acts) for e in c.inactive)
        assert not {e.text for e in c.inactive} & {e.text for e in c.explain + c.active}
        assert len(c.explain) >= min(2, int((data.stats.top_rows[latent] >= 0).sum()))


def test_the_explained_contexts_are_the_top_ones_first_with_the_tokens_text():
    data = tiny_data(d_sae=6)
    latent = int(torch.argmax(data.stats.fire_count))
    c = latent_contexts(data, latent, ContextSettings(explain_top=1))
    row = int(data.stats.top_rows[latent, 0])
    per = data.layout.per_context
    seq, pos = divmod(row, per)
    token = int(data.tokens[seq, pos + data.layout.skip])
    best = c.explain[0]
    assert max(best.acts) == float(data.stats.top_values[latent, 0]) and data.vocab[token] in best.tokens


def test_a_latent_that_never_fired_has_no_contexts():
    data = tiny_data(d_sae=6)
    stats = data.stats
    empty = dataclasses.replace(
        stats, top_rows=torch.full_like(stats.top_rows, -1), quantile_rows=torch.full_like(stats.quantile_rows, -1)
    )
    c = latent_contexts(dataclasses.replace(data, stats=empty), 0)
    assert c.explain == [] and c.active == [] and c.inactive == []
