"""Mutual Choice SAE (BatchTopK's selection under the paper's name): the batch spends exactly n·k,
unevenly across tokens, and the learned global threshold carries that sparsity to per-token inference."""

from __future__ import annotations

import pytest
import torch

import saekit
from saekit.eval.evaluate import evaluate
from saekit.io import load_sae, save_sae
from saekit.sae import build
from saekit.sae.batch_topk import BatchTopKConfig, BatchTopKSAE
from saekit.types import ActBatch, Codes, LossOut, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mutual_choice_is_batch_topk_under_a_second_name(tmp_path) -> None:
    sae = build("mutual_choice", d_in=4, d_sae=8, k=2, seed=0)
    assert type(sae) is BatchTopKSAE and sae.architecture == "batch_topk"
    assert "mutual_choice" not in saekit.list_architectures()
    folder = save_sae(sae, tmp_path / "mc")
    assert '"architecture": "batch_topk"' in (folder / "cfg.json").read_text().replace("'", '"')
    assert torch.equal(load_sae(folder).W_enc, sae.W_enc)


def test_selection_hand_computed() -> None:
    sae = BatchTopKSAE(BatchTopKConfig(d_in=2, d_sae=3, k=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, 0.25, -0.5]))
        sae.b_dec.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[1.5, 1.0], [0.5, -1.0], [2.5, 0.0]])  # ReLU acts [[1, 1.25, 1.5], [0, 0, 0], [2, 0.25, 1.5]]
    # Budget 3·1 = 3 entries of the whole matrix: 2 and 1.5 (twice); ties broken by topk.
    codes = sae.loss(ActBatch(x), StepCtx()).codes.to_dense()
    assert torch.equal(codes, torch.tensor([[0.0, 0.0, 1.5], [0.0, 0.0, 0.0], [2.0, 0.0, 1.5]]))


def test_global_threshold_ema() -> None:
    sae = BatchTopKSAE(BatchTopKConfig(d_in=2, d_sae=3, k=1, threshold_ema=0.5, threshold_start_step=0))
    codes = lambda c: LossOut(torch.zeros(()), torch.zeros(len(c), 2), Codes(torch.tensor(c)), {})  # noqa: E731
    sae.after_step(codes([[0.5, 0.0, 0.2], [0.3, 0.0, 0.0]]), StepCtx(step=0, total_steps=1000))
    assert torch.allclose(sae.threshold, torch.full((3,), 0.2))
    sae.after_step(codes([[0.9, 0.4, 0.0]]), StepCtx(step=1, total_steps=1000))
    assert torch.allclose(sae.threshold, torch.full((3,), 0.3))


@pytest.fixture(scope="module")
def trained():
    data = saekit.SyntheticSource(d=16, n_features=32, mean_active=3, seed=0)
    sae = build("mutual_choice", d_in=16, d_sae=256, k=3, seed=0)
    result = saekit.training.run([sae], data, saekit.TrainConfig(steps=300, batch_size=512, seed=0, progress=False))
    return data, result


def test_spends_exactly_the_batch_budget_with_variable_counts(trained) -> None:
    data, result = trained
    sae = result.saes[0]
    for batch in (b[data.sites[0]].x for _, b in zip(range(3), data.batches(512, seed=7))):
        out = sae.loss(ActBatch(batch), StepCtx())
        per_token = (out.codes.to_dense() != 0).sum(-1)
        assert int(per_token.sum()) == 512 * 3
        assert per_token.max() > 3 and per_token.min() < 3
        assert per_token.float().std() > 0.5
        assert per_token.float().mean().item() == 3.0


def test_threshold_keeps_inference_l0_near_training_l0(trained) -> None:
    data, result = trained
    train_l0 = result.final_metrics[0]["l0"]
    held_l0 = evaluate(result.saes[0], data.sample(8192, seed=1))["l0"]
    print(train_l0, held_l0)
    assert train_l0 == 3.0
    assert held_l0 == pytest.approx(train_l0, rel=0.15)


@pytest.mark.parametrize("bad", [{"k": 0}, {"k": 9}, {"aux_zipf_coef": -1.0}, {"threshold_start_step": -1}])
def test_bad_hyperparameters_name_the_field(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        BatchTopKConfig(d_in=4, d_sae=8, **{"k": 2, **bad})
