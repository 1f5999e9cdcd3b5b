"""Matryoshka BatchTopK SAE: the nested prefix loss, its widths, and BatchTopK's threshold."""

from __future__ import annotations

import pytest
import torch
from hand import set_weights_

from saekit.errors import ConfigError
from saekit.sae import build, get
from saekit.sae.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig
from saekit.sources.synthetic import SyntheticSource
from saekit.training import train
from saekit.types import ActBatch, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")

# BatchTopK's hand example (tests/sae/test_batch_topk.py): with k = 1 the batch keeps latent 1 (1.25)
# and latent 2 (1.5) of the first token and nothing of the second.
W_DEC = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
X = torch.tensor([[1.5, 1.0], [0.5, -1.0]])


def hand_sae(**hparams) -> MatryoshkaBatchTopKSAE:
    return set_weights_(MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in=2, d_sae=3, k=1, **hparams)), W_DEC)


def test_loss_is_the_sum_of_the_prefix_errors_by_hand() -> None:
    out = hand_sae(widths=(2, 3), aux_coef=0.0).loss(ActBatch(X), StepCtx())
    assert torch.equal(out.codes.to_dense(), torch.tensor([[0.0, 1.25, 1.5], [0.0, 0.0, 0.0]]))
    # Prefix 2 (latents 0, 1): x̂ = [0.5, 1.25] and b_dec = [0.5, 0]; errors 1 + 0.0625 and 1.
    assert out.terms["mse_2"].item() == pytest.approx((1.0625 + 1.0) / 2)
    # The whole SAE adds 1.5 · [0.6, 0.8]: x̂ = [1.4, 2.45]; errors 0.01 + 2.1025 and 1.
    assert out.terms["mse"].item() == pytest.approx((2.1125 + 1.0) / 2)
    assert out.loss.item() == pytest.approx(1.03125 + 1.55625)
    torch.testing.assert_close(out.x_hat, torch.tensor([[1.4, 2.45], [0.5, 0.0]]))


def test_auxk_reconstructs_the_residual_of_the_whole_sae() -> None:
    sae = hand_sae(widths=(2, 3), aux_k=1)
    out = sae.loss(ActBatch(X), StepCtx(dead_mask=torch.tensor([True, False, False])))
    residual = X - torch.tensor([[1.4, 2.45], [0.5, 0.0]])
    residual_hat = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # dead latent 0: activations 1 and 0, along e₁
    aux = ((residual_hat - residual) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum()
    assert out.terms["aux_k"].item() == pytest.approx(aux.item())
    assert out.loss.item() == pytest.approx(1.03125 + 1.55625 + aux.item() / 32)


def test_one_width_is_batch_topk() -> None:
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    ctx = StepCtx(dead_mask=torch.arange(24) % 4 == 0)
    nested = build("matryoshka_batch_topk", d_in=8, d_sae=24, k=3, widths=[24], seed=0).loss(ActBatch(x), ctx)
    plain = build("batch_topk", d_in=8, d_sae=24, k=3, seed=0).loss(ActBatch(x), ctx)
    torch.testing.assert_close(nested.loss, plain.loss)
    assert nested.terms.keys() == plain.terms.keys()


def test_the_prefixes_share_one_sparse_decode() -> None:
    """Five prefixes, one decode: the backward pass computes one set of code gradients (one sampled
    product over the selected pairs), not one per prefix."""
    from torch.profiler import profile

    sae = build("matryoshka_batch_topk", d_in=8, d_sae=80, k=3, aux_coef=0.0, seed=0)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    with profile() as prof:
        sae.loss(ActBatch(x), StepCtx()).loss.backward()
    calls = {e.key: e.count for e in prof.key_averages()}
    assert len(sae.cfg.prefix_widths) == 5
    assert calls.get("aten::sparse_sampled_addmm") == 1
    assert calls.get("aten::_embedding_bag_forward_only", 0) + calls.get("aten::_embedding_bag", 0) == 3  # decode; W_dec and W_enc gradients


@pytest.mark.parametrize(
    ("d_sae", "widths"), [(512, (32, 64, 128, 256, 512)), (48, (3, 6, 12, 24, 48)), (3, (1, 3)), (1, (1,))]
)
def test_default_widths_double_up_to_d_sae(d_sae: int, widths: tuple[int, ...]) -> None:
    assert MatryoshkaConfig(d_in=4, d_sae=d_sae, k=1).prefix_widths == widths


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ([], "at least one prefix width, the last being d_sae=48"),
        ([0, 48], "widths must be positive, got 0"),
        ([16, 16, 48], "increase strictly, got 16 after 16"),
        ([32, 16, 48], "increase strictly, got 16 after 32"),
        ([16, 32], r"last of widths must be d_sae=48 .* got \[16, 32\]; end the list with 48"),
        ([16, 64], "last of widths must be d_sae=48"),
        (["a", 48], "expected an integer, got 'a'"),
        ([True, 48], "expected an integer, got True"),
        (16, "expected a list, got 16"),
    ],
)
def test_bad_widths_are_a_config_error_naming_them(widths, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        build("matryoshka_batch_topk", d_in=4, d_sae=48, k=2, widths=widths)
    assert str(caught.value).startswith("matryoshka_batch_topk") and "widths" in str(caught.value)


def test_widths_given_in_python_must_be_a_tuple() -> None:
    with pytest.raises(ValueError, match=r"widths must be a tuple of integers .* got \[16, 48\]"):
        MatryoshkaConfig(d_in=4, d_sae=48, k=2, widths=[16, 48])  # type: ignore[arg-type]


def test_threshold_is_learned_as_batch_topk_learns_it() -> None:
    sae = hand_sae(widths=(2, 3), threshold_start_step=0)
    assert torch.equal(sae.encode(X), torch.zeros(2, 3))  # not set: θ = +inf, nothing fires
    out = sae.loss(ActBatch(X), StepCtx())
    sae.after_step(out, StepCtx(step=0, total_steps=1000))
    assert torch.allclose(sae.threshold, torch.full((3,), 1.25))  # the smallest kept activation
    assert torch.equal(sae.encode(X), torch.tensor([[0.0, 0.0, 1.5], [0.0, 0.0, 0.0]]))


def test_flags() -> None:
    assert get("matryoshka_batch_topk") is MatryoshkaBatchTopKSAE
    assert MatryoshkaBatchTopKSAE.saelens_architecture == "jumprelu"
    assert MatryoshkaBatchTopKSAE.apply_b_dec_to_input and MatryoshkaBatchTopKSAE.unit_norm_decoder
    assert "threshold" in MatryoshkaBatchTopKSAE.scaled_params


def prefix_fvus(sae, x: torch.Tensor, widths: tuple[int, ...]) -> list[float]:
    """Fraction of variance unexplained by the first m latents alone, for each m, at inference."""
    with torch.no_grad():
        codes = sae.encode(x)
        total = (x - x.mean(0)).pow(2).sum()
        return [float((codes[:, :m] @ sae.W_dec[:m] + sae.b_dec - x).pow(2).sum() / total) for m in widths]


def test_prefixes_reconstruct_on_their_own_where_batch_topk_prefixes_do_not() -> None:
    """Trained side by side from the same initialisation on planted features, Matryoshka's first 8 of
    128 latents alone explain a good part of the variance and every wider prefix explains more, while
    the first 8 latents of a BatchTopK SAE explain none: only the prefix loss orders the latents."""
    data = SyntheticSource(d=32, n_features=128, mean_active=4, seed=0)
    saes = [build(name, d_in=32, d_sae=128, k=4, seed=0) for name in ("matryoshka_batch_topk", "batch_topk")]
    nested, plain = train(saes, data, steps=200, batch_size=256, seed=0, progress=False).saes
    x = data.sample(4096, seed=1)
    widths = nested.cfg.prefix_widths
    assert widths == (8, 16, 32, 64, 128)
    ours, theirs = prefix_fvus(nested, x, widths), prefix_fvus(plain, x, widths)
    assert all(wider < narrower for narrower, wider in zip(ours, ours[1:])), ours
    assert ours[0] < 0.75 and theirs[0] > 0.95, (ours, theirs)
    assert ours[-1] < 1.5 * theirs[-1], (ours, theirs)  # the whole SAE pays little for the nesting
