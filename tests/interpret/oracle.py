"""Stub answerers for the end-to-end tests: an oracle that knows each latent's contexts (so it answers
every question right) and a coin that answers at random, both recording what they answered."""

from __future__ import annotations

import random
import re
from typing import Any

from chat_server import Reply, chat_reply

from saekit.browser.store import SaeData
from saekit.interpret.contexts import latent_contexts
from saekit.interpret.prompts import explain_messages, marked


class Oracle:
    """Explains latent ``k`` as "latent k" (recognising it by its explanation prompt) and then labels
    each excerpt of a detection or fuzzing question by that latent's true contexts."""

    def __init__(self, data: SaeData, latents: range) -> None:
        self.latent_of: dict[str, int] = {}
        self.active: dict[int, set[str]] = {}
        self.marked: dict[int, set[str]] = {}
        for k in latents:
            contexts = latent_contexts(data, k)
            if contexts.explain:
                self.latent_of[explain_messages(contexts.explain)[1]["content"]] = k
            self.active[k] = {e.text for e in contexts.active}
            self.marked[k] = {marked(e.tokens, [a > 0 for a in e.acts]) for e in contexts.active}
        self.asked: list[tuple[int, str, list[str], list[int]]] = []
        """(latent, task, excerpts, answers) of each detection or fuzzing question."""

    def truth(self, latent: int, task: str, text: str) -> int:
        return int(text in (self.active if task == "detection" else self.marked)[latent])

    def guess(self, latent: int, task: str, texts: list[str]) -> list[int]:
        return [self.truth(latent, task, t) for t in texts]

    def __call__(self, body: dict[str, Any]) -> Reply:
        system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        if "Explanation: <the phrase>" in system:
            return chat_reply(f"Thinking...\nExplanation: latent {self.latent_of[user]}")
        latent = int(re.match(r"Explanation: latent (\d+)", user).group(1))
        task = "fuzzing" if "marked <<like this>>" in system else "detection"
        texts = re.findall(r"^Excerpt \d+: (.*)$", user, re.M)
        answers = self.guess(latent, task, texts)
        self.asked.append((latent, task, texts, answers))
        return chat_reply(str(answers))


class Coin(Oracle):
    """Explains as the oracle does, then answers each excerpt with a seeded coin flip."""

    def __init__(self, data: SaeData, latents: range, seed: int = 0) -> None:
        super().__init__(data, latents)
        self.rng = random.Random(seed)

    def guess(self, latent: int, task: str, texts: list[str]) -> list[int]:
        return [self.rng.randint(0, 1) for _ in texts]
