"""Detection and fuzzing, as EleutherAI's delphi scores explanations: items (a context's text and its
true label) are shuffled, asked about in batches, and the answers compared with the labels.

* detection: held-out activating contexts (label 1) and non-activating ones (label 0), plain text;
* fuzzing: the held-out activating contexts with the tokens where the latent fires marked (label 1),
  and the non-activating contexts with as many tokens marked at random (label 0).

A batch whose answer does not follow the format counts its items as failed; the scores are over
the answered items only, and say how many failed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import NamedTuple

from saekit.browser.explanations import Scores
from saekit.interpret.client import AnswerError
from saekit.interpret.contexts import LatentContexts
from saekit.interpret.prompts import marked, read_labels


class Item(NamedTuple):
    text: str
    label: int
    """1: activating (detection) or correctly marked (fuzzing); 0: not."""


def detection_items(contexts: LatentContexts) -> list[Item]:
    return [Item(e.text, 1) for e in contexts.active] + [Item(e.text, 0) for e in contexts.inactive]


def fuzzing_items(contexts: LatentContexts, rng: random.Random) -> list[Item]:
    items = [Item(marked(e.tokens, [a > 0 for a in e.acts]), 1) for e in contexts.active]
    counts = [max(1, sum(a > 0 for a in e.acts)) for e in contexts.active]
    for e in contexts.inactive:
        n = min(rng.choice(counts), len(e.tokens)) if counts else 1
        chosen = set(rng.sample(range(len(e.tokens)), n))
        items.append(Item(marked(e.tokens, [i in chosen for i in range(len(e.tokens))]), 0))
    return items


def score(
    items: Sequence[Item], ask: Callable[[list[str]], str], batch: int, rng: random.Random
) -> Scores | None:
    """Ask about ``items`` in shuffled batches of ``batch``; ``ask(texts)`` returns the endpoint's
    answer for those texts. None when there is nothing to score."""
    if not items:
        return None
    order = list(items)
    rng.shuffle(order)
    labels, predictions, failed = [], [], 0
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        try:
            answers = read_labels(ask([item.text for item in chunk]), len(chunk))
        except AnswerError:
            failed += len(chunk)
            continue
        labels += [item.label for item in chunk]
        predictions += answers
    return classification_scores(labels, predictions, failed)


def classification_scores(labels: Sequence[int], predictions: Sequence[int], failed: int = 0) -> Scores:
    """Accuracy, balanced accuracy, precision, recall and F1 of ``predictions``; a ratio whose
    denominator is zero is None."""
    tp = sum(1 for y, p in zip(labels, predictions) if y == 1 and p == 1)
    tn = sum(1 for y, p in zip(labels, predictions) if y == 0 and p == 0)
    fp = sum(1 for y, p in zip(labels, predictions) if y == 0 and p == 1)
    fn = sum(1 for y, p in zip(labels, predictions) if y == 1 and p == 0)
    n = len(labels)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    balanced = None if recall is None or specificity is None else (recall + specificity) / 2
    f1 = None if precision is None or recall is None or precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return Scores(n=n, failed=failed, accuracy=_ratio(tp + tn, n), balanced_accuracy=balanced, precision=precision, recall=recall, f1=f1)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None
