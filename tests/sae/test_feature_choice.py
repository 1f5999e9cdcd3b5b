"""Feature Choice SAE: every latent takes at most its capacity of tokens per batch, none starves, and
the per-latent thresholds carry the training sparsity to per-token inference."""

from __future__ import annotations

import pytest
import torch

import saekit
from saekit.eval.evaluate import evaluate
from saekit.sae import build
from saekit.sae import functional as F
from saekit.sae import topk_family as family
from saekit.sae.feature_choice import FeatureChoiceConfig, FeatureChoiceSAE
from saekit.types import ActBatch, Codes, LossOut, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")


def test_capacities_hand_computed() -> None:
    assert F.feature_capacities(512, 3, 256).tolist() == [6] * 256  # ⌊512·3/256⌋
    assert F.feature_capacities(10, 1, 4).tolist() == [2] * 4  # ⌊10/4⌋
    assert F.feature_capacities(4, 1, 16).tolist() == [1] * 16  # at least 1
    # Zipf shape 1, 1/2, 1/3, 1/4 (sum 25/12) of the budget 100: ⌊48⌋, ⌊24⌋, ⌊16⌋, ⌊12⌋.
    assert F.feature_capacities(50, 2, 4, exponent=1.0).tolist() == [48, 24, 16, 12]
    assert F.feature_capacities(20, 2, 4, exponent=1.0).tolist() == [19, 9, 6, 4]  # 40·[.48, .24, .16, .12]; ≤ n


def test_selection_hand_computed() -> None:
    acts = torch.tensor([[0.9, 0.0, 0.2], [0.5, 0.3, 0.1], [0.7, 0.4, 0.0]])
    mask = F.feature_choice_mask(acts, torch.tensor([2, 1, 3]))
    assert mask.tolist() == [[True, False, True], [False, False, True], [True, True, True]]


def hand_sae(**hparams) -> FeatureChoiceSAE:
    return FeatureChoiceSAE(FeatureChoiceConfig(d_in=2, d_sae=3, k=1, **hparams))


def out_with(codes: list[list[float]]) -> LossOut:
    c = torch.tensor(codes)
    return LossOut(torch.zeros(()), torch.zeros(c.shape[0], 2), Codes(c), {})


def test_per_latent_threshold_ema() -> None:
    sae = hand_sae(threshold_ema=0.5, threshold_start_step=0)
    ctx = StepCtx(step=0, total_steps=1000)
    sae.after_step(out_with([[0.5, 0.0, 0.2], [0.3, 0.0, 0.0]]), ctx)
    torch.testing.assert_close(sae.threshold, torch.tensor([0.3, float("inf"), 0.2]))  # latent 1 kept nothing: unset
    sae.after_step(out_with([[0.9, 0.4, 0.0]]), ctx)
    torch.testing.assert_close(sae.threshold, torch.tensor([0.6, 0.4, 0.2]))
    # Inference: each latent against its own threshold.
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2, 3))
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, 0.5]))
    x = torch.tensor([[0.7, 0.3], [0.5, 0.5]])  # ReLU acts [[0.7, 0.3, 0.5], [0.5, 0.5, 0.5]]
    assert torch.equal(sae.encode(x), torch.tensor([[0.7, 0.0, 0.5], [0.0, 0.5, 0.5]]))


def test_unset_latent_stays_off_at_inference() -> None:
    sae = hand_sae(threshold_start_step=0)
    sae.after_step(out_with([[0.1, 0.0, 0.0]]), StepCtx(step=0, total_steps=1000))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2, 3))
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(sae.encode(torch.tensor([[0.5, 0.5]])), torch.tensor([[0.5, 0.0, 0.0]]))


@pytest.mark.parametrize("exponent", [0.0, 1.0])
def test_a_latent_never_exceeds_its_capacity(exponent: float) -> None:
    sae = build("feature_choice", d_in=8, d_sae=32, k=3, seed=0, capacity_zipf_exponent=exponent)
    with torch.no_grad():
        sae.b_enc.fill_(5.0)  # every activation positive, so every capacity is filled exactly
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    codes = sae.loss(ActBatch(x), StepCtx()).codes.to_dense()
    caps = sae.capacities(40)
    assert torch.equal((codes != 0).sum(0), caps)
    acts = family.pre_acts(sae, x).relu()
    for j in range(32):  # the kept tokens of each latent are its largest activations
        kept = codes[:, j] != 0
        assert acts[kept, j].min() >= acts[~kept, j].max()
    assert int(caps.sum()) <= 40 * 3


@pytest.fixture(scope="module")
def trained():
    """TopK, with its default AuxK, and Feature Choice with uniform capacities (every latent takes its
    best tokens of every batch) at the same budget on the same stream."""
    data = saekit.SyntheticSource(d=16, n_features=32, mean_active=3, seed=0)
    fc = build("feature_choice", d_in=16, d_sae=256, k=3, seed=0, capacity_zipf_exponent=0.0)
    saes = [build("topk", d_in=16, d_sae=256, k=3, seed=0), fc]
    result = saekit.training.run(
        saes, data, saekit.TrainConfig(steps=300, batch_size=512, seed=0, progress=False, dead_tokens=512 * 20)
    )
    return data, result


def test_no_dead_latents_where_topk_has_some(trained) -> None:
    data, result = trained
    topk, fc = result.saes
    held_out = data.sample(8192, seed=1)
    dead = {sae.architecture: evaluate(sae, held_out)["dead_fraction"] for sae in (topk, fc)}
    train_dead = {sae.architecture: m["dead_fraction"] for sae, m in zip(result.saes, result.final_metrics)}
    print(dead, train_dead)
    assert train_dead["topk"] > 0.1 and dead["topk"] > 0.1
    assert train_dead["feature_choice"] == 0
    # At inference a latent fires when it passes its learned threshold, an estimate from recent
    # batches: a few thresholds may sit above all 8,192 held-out activations of their latent.
    assert dead["feature_choice"] <= 0.01
    # On fresh batches every latent fires within its capacity of ⌊512·3/256⌋ = 6 tokens per batch.
    fired = torch.zeros(256, dtype=torch.bool)
    for _, batch in zip(range(5), data.batches(512, seed=5)):
        counts = (fc.loss(ActBatch(batch[data.sites[0]].x), StepCtx()).codes.to_dense() != 0).sum(0)
        assert counts.max() <= 6
        fired |= counts > 0
    assert fired.all()


def test_threshold_keeps_inference_l0_near_training_l0(trained) -> None:
    data, result = trained
    fc = result.saes[1]
    train_l0 = result.final_metrics[1]["l0"]
    held_l0 = evaluate(fc, data.sample(8192, seed=1))["l0"]
    print(train_l0, held_l0)
    assert held_l0 == pytest.approx(train_l0, rel=0.15)
    assert (fc.threshold > 0).all()


@pytest.mark.parametrize("bad", [{"capacity_zipf_exponent": -1.0}, {"k": 0}, {"threshold_ema": 0.0}])
def test_bad_hyperparameters_name_the_field(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        FeatureChoiceConfig(d_in=4, d_sae=8, **{"k": 2, **bad})
