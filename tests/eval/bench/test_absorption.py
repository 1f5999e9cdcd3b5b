"""Feature absorption on the first-letter task: the per-word scores computed by hand, the choice of a
letter's main latents, the vocabulary's words, and the whole path through a tiny LLaMA whose word
embeddings carry their first letter."""

import pytest
import torch

from saekit.errors import ConfigError, DataError
from saekit.eval.bench.absorption import (
    AbsorptionConfig,
    absorption,
    absorption_of,
    main_latents,
    vocabulary_words,
)
from saekit.eval.bench.output import TOP_LEVEL_KEYS
from saekit.eval.bench.sparse_probing import Split
from saekit.models.load import LoadedModel
from saekit.sae import build
from tests.tiny_lm import letter_llama, tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

COS = torch.tensor([0.9, 0.5, 0.05, 0.0])


@pytest.mark.parametrize(
    ("shares", "main", "fraction", "full"),
    [
        ([1.0, 0.0, 0.0, 0.0], [0], 0.0, False),  # the main latent carries the whole projection
        ([0.0, 0.8, 0.0, 0.0], [0], 1.0, True),  # main silent, latent 1 (cos 0.5) supplies 80%
        ([0.5, 0.5, 0.0, 0.0], [0], 0.5, False),  # half each: absorbed 0.5 / (0.5 + 0.5)
        ([0.0, 0.3, 0.0, 0.0], [0], 0.0, False),  # 30% < 40%: not absorption
        ([0.0, 0.0, 0.9, 0.0], [0], 0.0, True),  # cos 0.05: too low to absorb partly, enough for full (≥ 0.025)
    ],
)
def test_absorption_of_one_word_matches_the_hand_computation(shares, main, fraction, full):
    score = absorption_of(1.0, torch.tensor(shares), torch.ones(4), COS, main)
    assert score.fraction == pytest.approx(fraction) and score.full is full


def test_a_firing_main_latent_orthogonal_to_the_probe_is_no_full_absorption():
    # Shares are code × projection: latent 0 fires (code 2) but adds nothing along p, latent 1 supplies 90%.
    codes, along = torch.tensor([2.0, 0.9, 0.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert absorption_of(1.0, codes, along, COS, [0]) == (1.0, False)


def test_main_latents_grow_while_f1_jumps():
    # Letter words (y = 1) fire latent 2 (first half) or latent 5 (second half); the rest fire latent 0.
    y = torch.tensor([1] * 20 + [0] * 20)
    codes = torch.zeros(40, 8)
    codes[:10, 2] = 1.0
    codes[10:20, 5] = 1.0
    codes[20:, 0] = 1.0
    split = Split(torch.arange(0, 40, 2), torch.arange(1, 40, 2))
    assert sorted(main_latents(codes, y, split, max_k=6, jump=0.03, C=10.0)) == [2, 5]
    assert len(main_latents(codes, y, split, max_k=1, jump=0.03, C=10.0)) == 1


def test_vocabulary_words_are_space_then_letters():
    model, tok, _ = letter_llama()
    lm = LoadedModel(model, tok, "letters")
    words = vocabulary_words(lm)
    assert " aab" in words.texts and " has" in words.texts and " A" in words.texts and ":" not in words.texts
    assert words.letters[words.texts.index(" zoz")] == 25


def test_the_whole_path_writes_saebench_absorption_outputs():
    model, tok, letter_dirs = letter_llama()
    lm = LoadedModel(model, tok, "letters")
    # An SAE with one latent per letter (its direction) and one spare latent per letter nearly aligned.
    sae = build("relu", d_in=32, d_sae=52, seed=0)
    with torch.no_grad():
        dirs = torch.cat([letter_dirs, letter_dirs + 0.1 * torch.randn(26, 32)])
        sae.W_dec.copy_(dirs / dirs.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.fill_(-2.0)
        sae.b_dec.zero_()
    sae.metadata.update(site="layers.0.resid_post")
    cfg = AbsorptionConfig(icl_examples=2, seeds=2, min_probe_f1=0.5, max_k=3, C=10.0)
    doc = absorption({"s": sae}, lm, cfg, release="suite")["s"]
    assert set(TOP_LEVEL_KEYS) <= set(doc) and doc["eval_type_id"] == "absorption_first_letter"
    assert doc["eval_config"]["prompt_token_pos"] == -6 and doc["eval_config"]["max_k_value"] == 3
    mean = doc["eval_result_metrics"]["mean"]
    assert set(mean) == {
        "mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
        "std_dev_absorption_fraction_score", "std_dev_full_absorption_score", "std_dev_num_split_features",
    }  # fmt: skip
    assert 0.0 <= mean["mean_absorption_fraction_score"] <= 1.0 and 0.0 <= mean["mean_full_absorption_score"] <= 1.0
    assert 1.0 <= mean["mean_num_split_features"] <= 3.0
    details = doc["eval_result_details"]
    assert len(details) >= 13 and all(len(d["first_letter"]) == 1 and d["num_probe_true_positives"] > 0 for d in details)
    assert len(doc["eval_result_unstructured"]["letters_per_seed"]) == 2


def test_bad_settings_and_a_small_vocabulary_are_named():
    with pytest.raises(ConfigError, match="prompt_template must start with"):
        AbsorptionConfig(prompt_template="The word {word}")
    with pytest.raises(ConfigError, match=r"prompt_template '\{word\} is \{other\}' cannot be filled"):
        AbsorptionConfig(prompt_template="{word} is {other}")
    with pytest.raises(ConfigError, match="test_fraction"):
        AbsorptionConfig(test_fraction=1.0)
    sae = build("relu", d_in=16, d_sae=32, seed=0)
    sae.metadata.update(site="layers.0.resid_post")
    small = LoadedModel(tiny_llama().eval(), tiny_tokenizer(), "tiny")
    with pytest.raises(DataError, match="single-token words; the first-letter task needs more"):
        absorption({"s": sae}, small)
    with pytest.raises(ConfigError, match="k=40 is larger than SAE 's''s d_sae=32"):
        absorption({"s": sae}, small, AbsorptionConfig(max_k=40))


def test_an_sae_whose_codes_are_not_finite_is_named():
    model, tok, _ = letter_llama()
    sae = build("relu", d_in=32, d_sae=40, seed=0)
    sae.metadata.update(site="layers.0.resid_post")
    with torch.no_grad():
        sae.b_enc[2] = float("inf")
    with pytest.raises(DataError, match=r"absorption: the codes of SAE 'bad' hold NaN or infinite values"):
        absorption({"bad": sae}, LoadedModel(model, tok, "letters"), AbsorptionConfig(icl_examples=2, seeds=1))
