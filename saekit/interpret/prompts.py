"""The prompts of automated interpretability and the readers of their answers.

Three tasks, each a short system message and one user message:

* explain: the latent's contexts with the tokens where it fires marked ``<<like this>>`` and their
  activations on a 0-10 scale; the answer ends with a line ``Explanation: <a short phrase>``;
* detection: an explanation and numbered contexts; the answer is a JSON list with one 1 (the latent
  fires somewhere in the context) or 0 per context;
* fuzzing: an explanation and numbered contexts with some tokens marked; the answer is a JSON list
  with one 1 (the marked tokens are what the explanation describes) or 0 per context.

An answer that does not follow its format raises :class:`~saekit.interpret.client.AnswerError` (the
item counts as failed). Changing a prompt changes :data:`PROMPTS_VERSION`, which is saved with the
results, so scores made with different prompts are never mixed in one file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from saekit.interpret.client import AnswerError
from saekit.interpret.contexts import Example

PROMPTS_VERSION = "saekit-autointerp-1"
MAX_EXPLANATION_CHARS = 400

_EXPLAIN_SYSTEM = (
    "You study the features a language model computes. You are shown text excerpts in which one feature "
    "is active. The tokens on which it is active are marked <<like this>>, and each excerpt is followed by "
    "those tokens with the feature's strength on a 0-10 scale. Find what the marked tokens, and the text "
    "just before them, have in common. Be concise: the explanation is one short phrase, not a sentence "
    "about the feature. You may think first; end your answer with one line of the form\n"
    "Explanation: <the phrase>"
)
_DETECTION_SYSTEM = (
    "You are given an explanation of a feature of a language model and numbered text excerpts. The feature "
    "is active in some of the excerpts and inactive in the others. For each excerpt, decide whether the "
    "feature, as the explanation describes it, is active on some token of it. Answer with a JSON list of "
    "one number per excerpt, in order: 1 if it is active, 0 if not, e.g. [1, 0, 0, 1, 0] for five "
    "excerpts, and nothing else."
)
_FUZZING_SYSTEM = (
    "You are given an explanation of a feature of a language model and numbered text excerpts in which "
    "some tokens are marked <<like this>>. In some excerpts the marked tokens are exactly where the feature "
    "is active; in the others they were marked at random. For each excerpt, decide whether the marked "
    "tokens are ones the explanation describes. Answer with a JSON list of one number per excerpt, in "
    "order: 1 if the marking fits the explanation, 0 if not, e.g. [0, 1, 1, 0, 1] for five excerpts, and "
    "nothing else."
)


def marked(tokens: Sequence[str], marks: Sequence[bool]) -> str:
    """The text of ``tokens`` with each run of marked tokens put between ``<<`` and ``>>``."""
    out, inside = [], False
    for token, mark in zip(tokens, marks):
        if mark != inside:
            out.append("<<" if mark else ">>")
            inside = mark
        out.append(token)
    if inside:
        out.append(">>")
    return "".join(out)


def explain_messages(examples: Sequence[Example]) -> list[dict[str, str]]:
    top = max((a for e in examples for a in e.acts), default=0.0) or 1.0
    parts = []
    for i, e in enumerate(examples, 1):
        strengths = ", ".join(f"{t!r} {round(10 * a / top)}" for t, a in zip(e.tokens, e.acts) if a > 0)
        parts.append(f"Excerpt {i}: {marked(e.tokens, [a > 0 for a in e.acts])}\nActive tokens: {strengths}")
    return [{"role": "system", "content": _EXPLAIN_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def detection_messages(explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    return _classify_messages(_DETECTION_SYSTEM, explanation, texts)


def fuzzing_messages(explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    return _classify_messages(_FUZZING_SYSTEM, explanation, texts)


def _classify_messages(system: str, explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    excerpts = "\n".join(f"Excerpt {i}: {text}" for i, text in enumerate(texts, 1))
    user = f"Explanation: {explanation}\n\n{excerpts}\n\nAnswer with a JSON list of {len(texts)} numbers (1 or 0)."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def read_explanation(answer: str) -> str:
    """The phrase on the answer's last ``Explanation:`` line."""
    found = re.findall(r"^\s*\**explanation\**\s*:\**\s*(.*?)\s*$", answer, re.IGNORECASE | re.MULTILINE)
    phrase = found[-1].strip().strip("*\"'").strip() if found else ""
    if not phrase:
        raise AnswerError(f"the answer has no 'Explanation: ...' line: {_excerpt(answer)}")
    return phrase[:MAX_EXPLANATION_CHARS]


def read_labels(answer: str, n: int) -> list[int]:
    """The answer's JSON list of ``n`` values 0 or 1 (true and false are taken as 1 and 0)."""
    lists = re.findall(r"\[[^\[\]]*\]", answer)
    if not lists:
        raise AnswerError(f"the answer holds no list: {_excerpt(answer)}")
    try:
        values = json.loads(lists[-1])
    except ValueError:
        raise AnswerError(f"the answer's list is not JSON: {_excerpt(lists[-1])}") from None
    if len(values) != n or not all(v in (0, 1) and not isinstance(v, float) for v in values):
        raise AnswerError(f"expected a list of {n} values 0 or 1, got {_excerpt(lists[-1])}")
    return [int(v) for v in values]


def _excerpt(text: str) -> str:
    return repr(text[:120] + ("..." if len(text) > 120 else ""))
