import math

import pytest
import torch

import saekit
from saekit.analysis import dark_matter as dm
from saekit.analysis.regression import split_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n=40_000, d=8, c=0.5, seed=0):
    """x ~ N(0, I); error = x A + c (x_π² − 1): an affine part and a part uncorrelated with any affine
    function of x (E[x_i (x_j² − 1)] = 0 for a standard Gaussian)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    A = 0.4 * torch.randn(d, d, generator=g, dtype=torch.float64)
    perm = torch.randperm(d, generator=g)
    err = x @ A + c * (x[:, perm].pow(2) - 1)
    return x, err, A


def test_planted_linear_and_nonlinear_error_give_the_implied_r2():
    c = 0.5
    x, err, A = planted(c=c)
    split = split_tokens(x.shape[0], 0.5, seed=0)
    res = dm.analyse_error(x, x - err, split)
    lin_var = A.pow(2).sum(0)  # Var((xA)_j) for unit-variance independent inputs
    nl_var = 2 * c**2  # Var(c (x² − 1)) = 2c²
    expected_r2 = (lin_var / (lin_var + nl_var)).mean()
    assert res.r2_vector == pytest.approx(float(expected_r2), abs=0.02)
    d = x.shape[1]
    assert res.fvu_nonlinear == pytest.approx(nl_var, abs=0.03)  # Σ||e_nl||² / Σ||x − x̄||² = d·2c² / d
    assert res.fvu_linear == pytest.approx(float(lin_var.sum()) / d, rel=0.05)
    assert res.fvu == pytest.approx(res.fvu_linear + res.fvu_nonlinear, rel=0.02)
    assert res.fvu_plus_linear == pytest.approx(res.fvu_nonlinear, rel=1e-9)
    assert res.r2_per_dim.shape == (d,)


def test_purely_linear_error_is_fully_predictable_and_noise_is_not():
    x, _, A = planted()
    split = split_tokens(x.shape[0], 0.5, seed=3)
    assert dm.analyse_error(x, x - (x @ A + 0.1), split).r2_vector == pytest.approx(1.0, abs=1e-9)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert abs(dm.analyse_error(x, x - noise, split).r2_vector) < 0.01


def test_norm_r2_of_a_planted_linear_squared_norm():
    """||e||² = 2 + x_0 + ξ with x_0, ξ ~ U(−1, 1) independent: R²_norm = Var(x_0) / (Var(x_0) + Var(ξ)) = 0.5."""
    g = torch.Generator().manual_seed(1)
    n, d = 40_000, 6
    x = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
    xi = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
    u = torch.randn(d, generator=g, dtype=torch.float64)
    err = (2 + x[:, 0] + xi).sqrt()[:, None] * (u / u.norm())
    split = split_tokens(n, 0.5, seed=0)
    assert dm.norm_r2(x, err, split) == pytest.approx(0.5, abs=0.02)


def test_norm_scaling_uses_the_nonlinear_norm():
    g = torch.Generator().manual_seed(4)
    n, d = 4000, 8

    def with_norms(norms):
        v = torch.randn(n, d, generator=g, dtype=torch.float64)
        return v / v.norm(dim=-1, keepdim=True) * norms[:, None]

    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    b = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    large = with_norms(2 * a + 3 * b)
    r2 = dm.norm_scaling(with_norms(a), with_norms(b), large)
    assert r2.with_nonlinear == pytest.approx(1.0, abs=1e-9)
    # Var(2a) / Var(2a + 3b) = 4 / 13 for independent a, b of equal variance
    assert r2.from_norm == pytest.approx(4 / 13, abs=0.05)


def test_previous_layer_map_removes_a_planted_nonlinear_error():
    g = torch.Generator().manual_seed(6)
    n, d = 20_000, 8
    prev_hat, prev_err = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    e_nl = prev_err @ torch.randn(d, d, generator=g, dtype=torch.float64) + 0.5
    split = split_tokens(n, 0.5, seed=0)
    test_var = float(n * d) / 2
    res = dm.previous_layer_result(prev_hat + prev_err, prev_hat, e_nl, split, test_var=test_var)
    assert res.r2 == pytest.approx(1.0, abs=1e-6)
    assert res.fvu_nonlinear == pytest.approx(float(e_nl[split.test].pow(2).sum()) / test_var)
    assert res.fvu_nonlinear_after < 1e-6 * res.fvu_nonlinear
    # from x_prev = x̂ + e alone (independent, equal variances) the best affine guess of e M is x_prev M / 2:
    # R² = 1/2, which the SAE split of x_prev beats
    assert res.r2_from_activation == pytest.approx(0.5, abs=0.02)


def test_previous_layer_map_is_scored_on_held_out_tokens():
    # e_nl unrelated to the previous layer: a map with many inputs fits the train tokens' noise and must
    # not score above zero on the test tokens
    g = torch.Generator().manual_seed(7)
    n, d = 600, 64
    prev_x = torch.randn(n, d, generator=g, dtype=torch.float64)
    e_nl = torch.randn(n, d, generator=g, dtype=torch.float64)
    res = dm.previous_layer_result(prev_x, 0.5 * prev_x, e_nl, split_tokens(n, 0.5, seed=0), test_var=1.0)
    assert res.r2 < 0 and res.r2_from_activation < 0
    assert res.fvu_nonlinear_after > res.fvu_nonlinear


def exact_relu_sae(d):
    """relu(x) − relu(−x) = x: a 2d-latent ReLU SAE whose reconstruction is exact."""
    sae = saekit.build_sae("relu", d_in=d, d_sae=2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_run_on_a_tiny_model_with_downstream_and_round_trip(tmp_path):
    import tiny_lm

    model = tiny_lm.tiny_llama().eval()
    tokens = torch.randint(3, 15, (24, 12), generator=torch.Generator().manual_seed(0))
    site = "layers.0.resid_post"
    x = saekit.collect_activations(model, tokens, [site])[site][:, 1:].reshape(-1, 16)
    prev_x = saekit.collect_activations(model, tokens, ["layers.0.resid_pre"])["layers.0.resid_pre"][:, 1:].reshape(-1, 16)
    sae = saekit.build_sae("topk", d_in=16, d_sae=32, k=4, seed=0)
    larger = saekit.build_sae("topk", d_in=16, d_sae=64, k=8, seed=1)
    res = dm.run(
        sae, x, name="t", larger=larger, previous=(exact_relu_sae(16), prev_x), model=model, tokens=tokens, site=site, skip_positions=1
    )
    from saekit.eval.downstream import downstream_metrics

    assert res.downstream["delta_ce_sae"] == pytest.approx(downstream_metrics(model, tokens, site, sae).delta_ce, abs=1e-6)
    assert res.l0 == pytest.approx(4.0)
    assert res.pursuit.l0 == pytest.approx(4.0)
    assert res.scaling is not None and res.previous is not None
    exact = dm.run(exact_relu_sae(16), x, pursuit=False, model=model, tokens=tokens, site=site, skip_positions=1)
    assert exact.fvu < 1e-10
    for key in ("delta_ce_sae", "delta_ce_sae_plus_linear", "delta_ce_sae_plus_nonlinear"):
        assert abs(exact.downstream[key]) < 1e-5
    res.save(tmp_path / "r")
    back = dm.DarkMatterResult.load(tmp_path / "r")
    assert back.scaling == res.scaling and back.pursuit == res.pursuit and back.downstream == res.downstream
    assert torch.equal(back.r2_per_dim, res.r2_per_dim)
    assert back.plot(tmp_path / "p.png").stat().st_size > 1000
    assert not math.isnan(back.r2_norm)


def test_paper_protocol_fits_no_intercept_and_is_recorded(tmp_path):
    """The paper's code (SAE-Dark-Matter utils.run_lstsq) regresses without a column of ones. With an
    error that is an offset plus noise, the affine fit explains the offset's part of ||e||² and the
    linear one cannot (x has zero mean): the two protocols give different R², and each result says
    which it followed."""
    g = torch.Generator().manual_seed(0)
    n, d = 20_000, 6
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    err = x @ (0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)) + 2.0
    split = split_tokens(n, 0.5, seed=0)
    affine = dm.analyse_error(x, x - err, split)
    paper = dm.analyse_error(x, x - err, split, protocol=dm.PROTOCOLS["paper"])
    assert affine.r2_vector == pytest.approx(1.0, abs=1e-9)  # the offset is the intercept
    assert paper.r2_vector < 0.5  # through the origin, a constant offset of zero-mean inputs is unreachable
    assert (affine.protocol, affine.intercept, affine.skip_positions) == ("saekit", True, 2)
    assert (paper.protocol, paper.intercept, paper.skip_positions) == ("paper", False, 200)
    back = dm.DarkMatterResult.load(paper.save(tmp_path / "p"))
    assert (back.protocol, back.intercept, back.skip_positions) == ("paper", False, 200)


def test_linear_fit_without_intercept_equals_lstsq():
    from saekit.analysis.regression import fit_affine

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(500, 4, generator=g, dtype=torch.float64) + 1.0, torch.randn(500, 3, generator=g, dtype=torch.float64)
    fit = fit_affine(x, y, ridge=0.0, intercept=False)
    torch.testing.assert_close(fit.weight, torch.linalg.lstsq(x, y).solution)
    assert torch.equal(fit.bias, torch.zeros(3, dtype=torch.float64))
