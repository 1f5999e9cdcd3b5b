"""Feature absorption on the first-letter task (Chanin et al. 2024, as SAEBench's ``absorption`` eval
scores it): does the SAE keep a "starts with L" latent that fires whenever the model knows a word starts
with L, or do other latents absorb that direction for some words?

Words are single tokens of the tokenizer's vocabulary (a space, then ASCII letters). Each is read in an
in-context prompt (``prompt_template``, a few other words with their answers before it) at its own
token, at every SAE's site. Per seed the words are split into train and test; per letter (one against
the rest):

1. a logistic-regression probe on the raw activations gives the letter's direction; its F1 on the test
   words decides whether the letter counts (``min_probe_f1``), and the test words of the letter it
   classifies right are the probe's true positives;
2. k-sparse probes on the SAE's codes (latents ranked by how much more they fire on the letter's train
   words) for k = 1 .. ``max_k``: the main latents are the top k while each k raises F1 by more than
   ``f1_jump_threshold`` (their count is SAEBench's number of split features);
3. for each true positive, with ``proj(a) = a · p`` (p the unit probe direction) and each latent's share
   ``c_j (d_j · p)`` (code times decoder row along p): the absorption fraction is the part of the
   activation's projection that the main latents miss and at most three other latents aligned with p
   (cosine ≥ 0.1) supply, when those supply at least 40% of it; full absorption is the main latents all
   silent while the latent of largest share has cosine ≥ 0.025 with p and supplies at least 40%.

The rates are averaged over the letters that count. Differences from SAEBench: binary one-against-rest
probes instead of one 26-way probe; latents ranked by the difference of class means instead of an L1
probe's weights; a latent's share uses its decoder row's projection (equal to SAEBench's activation
times cosine when decoder rows have unit norm).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.errors import ConfigError, DataError
from saekit.eval.bench.logreg import fit_logistic
from saekit.eval.bench.pooling import check_finite
from saekit.eval.bench.sparse_probing import Split, check_saes
from saekit.models.load import LoadedModel
from saekit.sae.base import SAE
from saekit.sources.hf import collect_activations

LETTERS = "abcdefghijklmnopqrstuvwxyz"
FULL_COS = 0.025
"""Full absorption: the least cosine between the absorbing latent's decoder row and the probe."""
PARTIAL_COS = 0.1
"""Absorption fraction: the least cosine of a latent counted as absorbing."""
SHARE = 0.4
"""The least share of the activation's probe projection the absorbing latents must supply."""
MAX_ABSORBING = 3


@dataclass(frozen=True)
class AbsorptionConfig:
    max_words: int = 2000
    """Vocabulary words scored (a seeded sample; the in-context examples are drawn apart)."""
    icl_examples: int = 5
    """Words with their answers shown before the scored word."""
    test_fraction: float = 0.3
    """Share of the words each probe is scored on."""
    max_k: int = 10
    """Largest k of the k-sparse probes that find a letter's main latents."""
    f1_jump_threshold: float = 0.03
    """A further latent is a main latent when it raises the sparse probe's F1 by more than this."""
    min_probe_f1: float = 0.6
    """Letters whose raw-activation probe has a lower test F1 are left out."""
    seeds: int = 3
    """Train/test partitions of the words scored, seeded random_seed, random_seed + 1, ..."""
    random_seed: int = 42
    """Seed of the word sample, the in-context examples and the first partition."""
    prompt_template: str = "{word} has the first letter:"
    """The prompt around each word; its answer is the word's first letter in capitals."""
    batch_size: int = 16
    """Prompts per forward pass."""
    C: float = 1.0
    """Inverse L2 penalty of every probe."""

    def __post_init__(self) -> None:
        if self.prompt_template.count("{word}") != 1 or not self.prompt_template.startswith("{word}"):
            raise ConfigError(f"prompt_template must start with {{word}} and hold it once, got {self.prompt_template!r}")
        try:
            self.prompt_template.format(word="w")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"prompt_template {self.prompt_template!r} cannot be filled with a word alone ({exc!r})") from None
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")
        for key in ("max_words", "max_k", "seeds", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if self.icl_examples < 0 or not self.C > 0:
            raise ConfigError(f"icl_examples must be at least 0 and C positive, got {self.icl_examples} and {self.C}")


class Words(NamedTuple):
    """Single-token words: their token ids, texts (with the leading space) and first-letter labels 0..25."""

    ids: list[int]
    texts: list[str]
    letters: Tensor


def vocabulary_words(loaded: LoadedModel) -> Words:
    """Every token of the vocabulary that decodes to a space and ASCII letters only."""
    tok = loaded.tokenizer
    ids, texts = [], []
    for i in range(len(tok)):
        text = str(tok.decode([i]))
        if len(text) > 1 and text[0] == " " and text[1:].isascii() and text[1:].isalpha():
            ids.append(i)
            texts.append(text)
    letters = torch.tensor([LETTERS.index(t[1].lower()) for t in texts], dtype=torch.long)
    return Words(ids, texts, letters)


def prompt_tokens(loaded: LoadedModel, words: Words, examples: Sequence[int], template: str) -> tuple[list[int], list[int]]:
    """The token ids before and after the scored word: BOS, the in-context examples (each the template
    with its answer, after a newline) and a newline; then the template's text after ``{word}``."""
    tok = loaded.tokenizer
    shown = "".join(f"\n{template.format(word=words.texts[i])} {words.texts[i][1].upper()}" for i in examples)
    before = list(tok(shown + "\n", add_special_tokens=False)["input_ids"])
    after = list(tok(template.removeprefix("{word}"), add_special_tokens=False)["input_ids"])
    bos = loaded.bos_token_id
    return ([bos] if bos is not None else []) + before, after


class WordActs(NamedTuple):
    """At each scored word's token: ``llm[site] [n, d_in]`` and ``sae[name] [n, d_sae]``, float32 CPU."""

    llm: dict[str, Tensor]
    sae: dict[str, Tensor]


@torch.no_grad()
def word_activations(loaded: LoadedModel, word_ids: Sequence[int], before: list[int], after: list[int], saes: Mapping[str, SAE], batch_size: int) -> WordActs:
    """Activations and codes at the word's position of every prompt (all prompts have one length)."""
    sites = list(dict.fromkeys(sae.require_site() for sae in saes.values()))
    pos = len(before)
    llm: dict[str, list[Tensor]] = {site: [] for site in sites}
    codes: dict[str, list[Tensor]] = {name: [] for name in saes}
    for start in tqdm(range(0, len(word_ids), batch_size), desc="absorption prompts", leave=False):
        part = word_ids[start : start + batch_size]
        tokens = torch.tensor([before + [w] + after for w in part], dtype=torch.long)
        acts = collect_activations(loaded, tokens, sites)
        for site in sites:
            llm[site].append(acts[site][:, pos].float().cpu())
        for name, sae in saes.items():
            rows = acts[sae.require_site()][:, pos]
            codes[name].append(sae.encode(rows.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu())
    out = WordActs({s: torch.cat(v) for s, v in llm.items()}, {n: torch.cat(v) for n, v in codes.items()})
    check_finite(out.llm, out.sae, "absorption")
    return out


def f1_score(pred: Tensor, truth: Tensor) -> float:
    """F1 of boolean predictions against boolean truth (0 when there is no true or predicted positive)."""
    tp = (pred & truth).sum().item()
    denom = pred.sum().item() + truth.sum().item()
    return 0.0 if denom == 0 else 2 * tp / denom


def main_latents(codes: Tensor, y: Tensor, split: Split, max_k: int, jump: float, C: float) -> list[int]:
    """The top-k latents (by mean code on the letter minus the rest, on the train words) for the
    largest k reached while every step from k − 1 raised the k-sparse probe's test F1 by more than ``jump``."""
    xtr, ytr = codes[split.train], y[split.train]
    diff = xtr[ytr == 1].double().mean(0) - xtr[ytr == 0].double().mean(0)
    order = torch.sort(diff, descending=True, stable=True).indices
    best, chosen = -1.0, [int(order[0])]
    for k in range(1, min(max_k, codes.shape[1]) + 1):
        cols = order[:k]
        probe = fit_logistic(xtr[:, cols], ytr, C=C)
        f1 = f1_score(probe.logits(codes[split.test][:, cols]) > 0, y[split.test] == 1)
        if f1 <= best + jump:
            break
        best, chosen = f1, cols.tolist()
    return chosen


class WordScore(NamedTuple):
    """One word's absorption fraction (0..1) and whether its letter was fully absorbed."""

    fraction: float
    full: bool


def absorption_of(act_proj: float, codes: Tensor, along: Tensor, cos: Tensor, main: list[int]) -> WordScore:
    """One true positive's absorption fraction and full absorption (see the module's docstring):
    ``act_proj`` its activation's projection on the probe direction p, ``codes`` its SAE codes,
    ``along`` each decoder row's projection on p and ``cos`` its cosine with p."""
    shares = codes * along
    main_share = shares[main].sum().item()
    others = torch.ones_like(shares, dtype=torch.bool)
    others[main] = False
    absorbing = shares[others & (cos >= PARTIAL_COS) & (shares > 0)]
    top = absorbing.topk(min(MAX_ABSORBING, absorbing.numel())).values.sum().item()
    if act_proj <= 0 or main_share >= act_proj or top / act_proj < SHARE:
        fraction = 0.0
    elif main_share <= 0:
        fraction = 1.0
    else:
        taken = min(top, act_proj - main_share)
        fraction = min(max(taken / (taken + main_share), 0.0), 1.0)
    leader = int(shares.argmax())
    full = bool((codes[main] == 0).all() and act_proj > 0 and cos[leader] >= FULL_COS and shares[leader].item() / act_proj >= SHARE)
    return WordScore(fraction, full)


def check_words(words: Words, cfg: AbsorptionConfig) -> None:
    """Refuse a vocabulary too small to give every letter words besides the in-context examples."""
    if len(words.ids) < cfg.icl_examples + 2 * len(LETTERS):
        raise DataError(f"the tokenizer has {len(words.ids)} single-token words; the first-letter task needs more than {cfg.icl_examples + 52}")


class LetterProbe(NamedTuple):
    """A letter's raw-activation probe on one partition: unit direction, test F1, true positives (test rows)."""

    direction: Tensor
    f1: float
    true_positives: Tensor


def letter_probes(x: Tensor, letters: Tensor, split: Split, C: float) -> list[LetterProbe]:
    """One probe per letter (that letter against the rest) on the train words, scored on the test words."""
    probes = []
    for letter in range(len(LETTERS)):
        y = (letters == letter).long()
        if y[split.train].sum() == 0 or y[split.test].sum() == 0:
            probes.append(LetterProbe(torch.zeros(x.shape[1]), 0.0, split.test[:0]))
            continue
        probe = fit_logistic(x[split.train], y[split.train], C=C)
        pred = probe.logits(x[split.test]) > 0
        truth = y[split.test] == 1
        direction = probe.weight.float() / probe.weight.norm().clamp_min(1e-12).float()
        probes.append(LetterProbe(direction, f1_score(pred, truth), split.test[pred & truth]))
    return probes


def letter_scores(
    acts: Tensor, codes: Tensor, sae: SAE, letters: Tensor, split: Split, probes: list[LetterProbe], cfg: AbsorptionConfig
) -> dict[str, dict[str, Any]]:
    """Per letter: SAEBench's absorption statistics of one SAE on one partition."""
    w_dec = sae.W_dec.detach().float().cpu()
    out: dict[str, dict[str, Any]] = {}
    for letter, probe in enumerate(probes):
        counted = probe.f1 >= cfg.min_probe_f1 and len(probe.true_positives) > 0
        row: dict[str, Any] = {"probe_f1": probe.f1, "counted": counted, "num_probe_true_positives": len(probe.true_positives)}
        if counted:
            main = main_latents(codes, (letters == letter).long(), split, cfg.max_k, cfg.f1_jump_threshold, cfg.C)
            along = w_dec @ probe.direction
            cos = along / w_dec.norm(dim=1).clamp_min(1e-12)
            scores = [absorption_of((acts[i] @ probe.direction).item(), codes[i], along, cos, main) for i in probe.true_positives.tolist()]
            n_full = sum(s.full for s in scores)
            row |= {
                "mean_absorption_fraction": sum(s.fraction for s in scores) / len(scores),
                "full_absorption_rate": n_full / len(scores),
                "num_full_absorption": n_full,
                "num_split_features": len(main),
                "main_latents": main,
            }
        out[LETTERS[letter]] = row
    return out


def random_split(n: int, test_fraction: float, seed: int) -> Split:
    """A seeded partition of ``n`` words, ``test_fraction`` of them (at least one, not all) for testing."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    return Split(perm[n_test:], perm[:n_test])


def absorption(
    saes: Mapping[str, SAE], model: LoadedModel, config: AbsorptionConfig | None = None, *, release: str | None = None
) -> dict[str, dict]:
    """SAEBench ``absorption_first_letter`` output (a JSON-ready dict) of every SAE, by name."""
    from saekit.eval.bench.output import absorption_output

    cfg = config or AbsorptionConfig()
    if not isinstance(model, LoadedModel):
        raise ConfigError("the absorption eval needs the model with its tokenizer, as saekit.load_model returns it")
    check_saes(saes, (cfg.max_k,))
    words = vocabulary_words(model)
    check_words(words, cfg)
    perm = torch.randperm(len(words.ids), generator=torch.Generator().manual_seed(cfg.random_seed)).tolist()
    examples, scored = perm[: cfg.icl_examples], perm[cfg.icl_examples : cfg.icl_examples + cfg.max_words]
    before, after = prompt_tokens(model, words, examples, cfg.prompt_template)
    acts = word_activations(model, [words.ids[i] for i in scored], before, after, saes, cfg.batch_size)
    letters = words.letters[scored]
    splits = [random_split(len(scored), cfg.test_fraction, cfg.random_seed + s) for s in range(cfg.seeds)]
    probes = {
        site: [letter_probes(x, letters, split, cfg.C) for split in splits]
        for site, x in tqdm(acts.llm.items(), desc="letter probes", unit="site", leave=False)
    }
    per_seed = {
        name: [
            letter_scores(acts.llm[sae.require_site()], acts.sae[name], sae, letters, split, site_probes, cfg)
            for split, site_probes in zip(splits, probes[sae.require_site()])
        ]
        for name, sae in tqdm(saes.items(), desc="absorption", unit="SAE", leave=False)
    }
    return {name: absorption_output(name, sae, per_seed[name], cfg, model, release, len(after)) for name, sae in saes.items()}
