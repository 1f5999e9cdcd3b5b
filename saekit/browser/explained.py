"""The pieces of the pages that show ``saekit interpret``'s explanations and scores
(:mod:`saekit.browser.explanations`): made only by the escaping templates of :mod:`saekit.browser.fmt`."""

from __future__ import annotations

from saekit.browser.explanations import Explanations, Scores
from saekit.browser.fmt import Html, html, num


def explanation_section(explanations: Explanations | None, latent: int) -> Html:
    """The latent page's explanation, its scores and where they come from; nothing without explanations."""
    if explanations is None:
        return Html()
    source = html("by {} with prompts {}", explanations.model, explanations.prompts_version)
    found = explanations.latents.get(latent)
    if found is None:
        why = explanations.failed.get(latent, "not interpreted")
        return html('<h2>Explanation</h2><p class="facts">none: {} ({})</p>', why, source)
    return html(
        '<h2>Explanation</h2><p><b>{text}</b></p><p class="facts">detection: {detection} · fuzzing: {fuzzing} '
        "· {source}</p>",
        text=found.explanation, detection=scores_text(found.detection), fuzzing=scores_text(found.fuzzing), source=source,
    )  # fmt: skip


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
