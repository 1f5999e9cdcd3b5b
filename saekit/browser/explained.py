"""How the pages show ``saekit interpret``'s explanations and scores (:mod:`saekit.browser.explanations`):
the latent list's cell, made only by the escaping templates of :mod:`saekit.browser.fmt`, and the
scores' text that the latent page's ``page.json`` carries."""

from __future__ import annotations

from saekit.browser.explanations import Explanations, Scores
from saekit.browser.fmt import Html, html, num


def scores_text(scores: Scores | None) -> str:
    """"balanced accuracy 0.85 (accuracy 0.85, precision 0.9, recall 0.8; 20 answered, 0 failed)"."""
    if scores is None:
        return "no contexts to score"
    return (
        f"balanced accuracy {num(scores.balanced_accuracy)} (accuracy {num(scores.accuracy)}, precision "
        f"{num(scores.precision)}, recall {num(scores.recall)}; {scores.n} answered, {scores.failed} failed)"
    )


def explanation_cell(explanations: Explanations, latent: int) -> Html:
    """The latent list's cell: the explanation, sorted by its text."""
    found = explanations.latents.get(latent)
    text = found.explanation if found is not None else ""
    return html('<td data-v="{0}">{0}</td>', text)
