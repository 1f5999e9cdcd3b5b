"""The SAE contract, checked for every registered architecture: a new architecture is covered by
registering it, with no edit here. Transcoders are checked writing a width of their own (d_out ≠ d_in),
with and without their skip connection."""

from __future__ import annotations

import copy

import pytest
import torch

from saekit.errors import DataError
from saekit.io import load_sae, save_sae
from saekit.sae import SAE, build, get, list_architectures
from saekit.types import ActBatch, LossOut, StepCtx

D_IN, D_SAE, BATCH = 16, 128, 64
D_OUT = 12
"""A transcoder's output width here, unlike its input's, so that no d_in can stand in for a d_out."""
TRAIN_STEPS = 10


def random_rows(n: int, seed: int, width: int = D_IN) -> torch.Tensor:
    """Rows of varied norms, so that a rule coupling the rows of a batch would show."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.empty(n, 1).uniform_(-1.0, 1.0, generator=g))
    return torch.randn(n, width, generator=g) * scales / width**0.5


def batch_of(sae: SAE, x: torch.Tensor, seed: int) -> ActBatch:
    """The rows ``x`` as ``sae``'s loss takes them: with target rows of the output site for a transcoder."""
    return ActBatch(x, target=random_rows(x.shape[0], seed + 10_000, sae.d_out) if sae.transcoder else None)


def skip_of(sae: SAE, x: torch.Tensor) -> torch.Tensor | float:
    """What the skip connection adds, from the weights: x W_skipᵀ, or 0."""
    state = sae.state_dict()
    return x @ state["W_skip"].t() if "W_skip" in state else 0.0


def train(sae: SAE, steps: int = TRAIN_STEPS) -> SAE:
    """A few Adam steps through the generic loop, so that learned thresholds are set."""
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for step in range(steps):
        ctx = StepCtx(step=step, total_steps=steps)
        out = sae.loss(batch_of(sae, random_rows(BATCH, seed=step), step), ctx)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sae.after_step(out, ctx)
    return sae


def _cases() -> list:
    cases = []
    for name in list_architectures():
        if get(name).transcoder:
            cases += [pytest.param((name, {"d_out": D_OUT}), id=name), pytest.param((name, {"d_out": D_OUT, "skip": True}), id=f"{name}-skip")]
        else:
            cases.append(pytest.param((name, {}), id=name))
    return cases


@pytest.fixture(scope="module", params=_cases())
def trained(request) -> SAE:
    name, extra = request.param
    return train(build(name, d_in=D_IN, d_sae=D_SAE, seed=0, **extra))


@pytest.fixture
def sae(trained) -> SAE:
    return copy.deepcopy(trained)


@torch.no_grad()
@pytest.mark.parametrize("shape", [(5, D_IN), (3, 4, D_IN)])
def test_shapes_and_non_negative_codes(sae, shape):
    x = torch.randn(shape)
    codes = sae.encode(x)
    assert codes.shape == (*shape[:-1], D_SAE)
    assert (codes >= 0).all()
    assert sae.decode(codes).shape == (*shape[:-1], sae.d_out)
    assert sae.d_out == (D_OUT if sae.transcoder else D_IN)
    torch.testing.assert_close(sae(x), sae.decode(codes) + skip_of(sae, x))


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_an_sae_stored_in_half_precision_runs_in_it(sae, dtype):
    """Saved folders may hold float16/bfloat16 weights: such an SAE encodes and decodes in its dtype,
    and agrees with its float32 self within that dtype's precision."""
    x = random_rows(BATCH, seed=7)
    reference = sae(x)
    half = sae.to(dtype)
    codes = half.encode(x.to(dtype))
    assert codes.dtype == dtype and half.decode(codes).dtype == dtype
    error = (half(x.to(dtype)).float() - reference).norm() / reference.norm()
    assert error < 0.1, error


@torch.no_grad()
def test_encode_is_per_token(sae):
    x = random_rows(BATCH, seed=100)
    batch = sae.encode(x)
    assert batch.count_nonzero() > 0, "all-zero codes would make this test vacuous"
    for i in range(0, BATCH, 7):
        torch.testing.assert_close(sae.encode(x[i : i + 1])[0], batch[i], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae.encode(x.view(8, 8, D_IN)), batch.view(8, 8, D_SAE))


def test_loss_is_finite_and_reaches_the_weights(sae):
    x = random_rows(BATCH, seed=200)
    for dead_mask in (None, torch.ones(D_SAE, dtype=torch.bool)):
        sae.zero_grad()
        out = sae.loss(batch_of(sae, x, 200), StepCtx(step=0, total_steps=10, dead_mask=dead_mask))
        assert isinstance(out, LossOut)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        assert {"mse", "l0"} <= out.terms.keys()
        assert all(torch.isfinite(v) for v in out.terms.values())
        assert out.x_hat.shape == (BATCH, sae.d_out) and out.codes.shape == (BATCH, D_SAE)
        out.loss.backward()
        for name in ("W_enc", "W_dec", *(["W_skip"] if "W_skip" in sae.state_dict() else [])):
            grad = getattr(sae, name).grad
            assert grad is not None and grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_save_load_round_trip(sae, tmp_path):
    loaded = load_sae(save_sae(sae, tmp_path / "sae"))
    x = random_rows(BATCH, seed=300)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x), sae(x))
    assert loaded.d_out == sae.d_out and loaded.hparams() == sae.hparams()


@pytest.mark.parametrize("call", ["encode", "forward", "loss"])
def test_wrong_width_is_a_data_error(sae, call):
    x = torch.randn(4, D_IN + 1)
    run = {"encode": sae.encode, "forward": sae, "loss": lambda x: sae.loss(batch_of(sae, x, 0), StepCtx())}[call]
    with pytest.raises(DataError, match=f"d_in={D_IN}"):
        run(x)


def test_a_target_of_the_wrong_shape_is_a_data_error(sae):
    """A transcoder's target rows must be one per input row, d_out wide (an SAE has none to check)."""
    if not sae.transcoder:
        pytest.skip("an SAE reconstructs its input")
    x = random_rows(8, seed=0)
    for target in (torch.randn(8, D_OUT + 1), torch.randn(7, D_OUT), None):
        with pytest.raises(DataError, match=f"d_out={D_OUT}"):
            sae.loss(ActBatch(x, target=target), StepCtx())


def test_scaled_params_exist(sae):
    state = sae.state_dict()
    for name in sae.scaled_params:
        assert name in state and state[name].is_floating_point(), name
    # ratio_params: W_enc for every transcoder, W_skip where it has one; none for an SAE
    assert ("W_enc" in sae.ratio_params) == sae.transcoder
    assert set(sae.ratio_params) <= {"W_enc", "W_skip"}


def test_declared_capabilities_match_the_tensors(sae):
    """What an architecture declares (read by the analyses instead of probing) is what it has."""
    state = sae.state_dict()
    assert ("b_enc" in state) == sae.has_b_enc
    assert ("threshold" in state) == sae.has_threshold
    if sae.has_threshold:
        assert state["threshold"].shape == (sae.d_sae,)


@torch.no_grad()
@pytest.mark.parametrize(("scale", "scale_out"), [(3.7, 3.7), (0.25, 0.25), (3.7, 0.5)])
def test_dividing_scaled_params_folds_an_activation_scale(sae, scale, scale_out):
    """``scaled_params`` are exactly the tensors in activation units: dividing them by s turns the SAE
    for activations s·x into one for activations x. A transcoder reads s·x and writes s_out·y: its
    scaled_params are in the output's units and its ``ratio_params`` (W_enc, W_skip) carry s / s_out."""
    if not sae.transcoder and scale != scale_out:
        pytest.skip("an SAE reads and writes the same activations")
    # Positive noise makes every bias non-zero (a default zero would fold trivially) and keeps
    # thresholds non-negative.
    g = torch.Generator().manual_seed(1)
    for t in sae.state_dict().values():
        if t.is_floating_point():
            t.add_(torch.rand(t.shape, generator=g) * 0.1)
    folded = copy.deepcopy(sae)
    tensors = dict(folded.named_parameters()) | dict(folded.named_buffers())
    for name in sae.scaled_params:
        tensors[name].div_(scale_out)
    for name in set(sae.ratio_params) & tensors.keys():
        tensors[name].mul_(scale / scale_out)
    x = random_rows(BATCH, seed=400)
    assert sae.encode(scale * x).count_nonzero() > 0
    torch.testing.assert_close(folded(x) * scale_out, sae(scale * x), rtol=1e-5, atol=1e-6)
