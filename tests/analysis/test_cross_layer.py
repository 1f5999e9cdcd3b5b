import pytest
import torch

import saekit
from saekit.analysis import cross_layer as cl

pytestmark = pytest.mark.usefixtures("one_thread")


def jumprelu(d_in=16, d_sae=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = saekit.build_sae("jumprelu", d_in=d_in, d_sae=d_sae, seed=seed, init_decoder_norm=1.0)  # unit rows
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(d_sae, generator=g) * 2 + 0.05)  # thresholds from 0.05 to 2
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
    return sae


def permuted(sae, perm, noise=0.0, seed=1):
    """``sae`` with latent i moved to position perm[i] (so latent i of ``sae`` matches perm[i])."""
    g = torch.Generator().manual_seed(seed)
    other = saekit.build_sae(sae.architecture, d_in=sae.d_in, d_sae=sae.d_sae)
    inv = torch.argsort(perm)
    with torch.no_grad():
        for name in ("W_dec", "b_enc", "threshold"):
            getattr(other, name).copy_(getattr(sae, name)[inv])
        other.W_enc.copy_(sae.W_enc[:, inv])
        other.b_dec.copy_(sae.b_dec)
        other.W_dec.add_(noise * torch.randn(other.W_dec.shape, generator=g))
    return other


def test_a_noisy_permutation_is_matched_exactly():
    a = jumprelu()
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    b = permuted(a, perm, noise=0.05)
    for on in ("decoder", "encoder", "both"):
        m = cl.match_layers(a, b, on=on)
        assert torch.equal(m.perm, perm), on
    assert cl.match_layers(a, b).cosine.min() > 0.9


def test_folding_keeps_reconstructions_and_equalises_scales():
    a = jumprelu()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)) * 3
    f = cl.fold(a)
    codes = a.encode(x).double() / f.scale
    assert torch.allclose(codes @ f.W_dec + f.b_dec, a(x).double(), atol=1e-5)
    assert torch.allclose(f.W_dec.norm(dim=-1), a.threshold.double() * a.W_dec.double().norm(dim=-1))
    relu = saekit.build_sae("relu", d_in=16, d_sae=40, seed=0)
    with torch.no_grad():
        relu.W_dec.mul_(torch.linspace(0.1, 5, 40)[:, None])
    fr = cl.fold(relu)
    assert torch.allclose(fr.W_dec.norm(dim=-1), torch.ones(40, dtype=torch.float64))
    assert torch.allclose((relu.encode(x).double() / fr.scale) @ fr.W_dec + fr.b_dec, relu(x).double(), atol=1e-5)


def test_folding_matches_what_scale_differences_hide():
    """Decoder directions alone are ambiguous when two latents share a direction at different
    scales; the folded decoder (threshold x direction) tells them apart."""
    a = jumprelu(d_sae=2)
    with torch.no_grad():
        a.W_dec[1] = a.W_dec[0]
        a.threshold.copy_(torch.tensor([0.2, 2.0]))
    b = permuted(a, torch.tensor([1, 0]), noise=0.0)
    assert torch.equal(cl.match_layers(a, b).perm, torch.tensor([1, 0]))


def test_chain_composes_permutations():
    p0, p1 = torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0])
    path = cl.chain([p0, p1])
    assert path.tolist() == [[0, 1, 2], [2, 0, 1], [0, 1, 2]]  # p1[p0[i]]
    assert cl.chain([p0, p1], start=1).tolist() == [[0, 1, 2], [1, 2, 0]]


def test_transfer_through_an_exact_permutation_is_the_first_sae():
    a = jumprelu()
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(5))
    b = permuted(a, perm)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1)) * 3
    assert torch.allclose(cl.transfer(a, b, perm, x), a(x), atol=1e-5)


def test_run_on_a_tiny_model_and_round_trip(tmp_path):
    import tiny_lm

    from saekit.eval.downstream import downstream_metrics
    from saekit.eval.metrics import fvu
    from saekit.sources.hf import site_rows

    model = tiny_lm.tiny_llama().eval()
    tokens = torch.randint(3, 15, (8, 10), generator=torch.Generator().manual_seed(0))
    sites = ["layers.0.resid_post", "layers.1.resid_post"]
    acts = site_rows(model, tokens, sites, progress=False)
    assert acts[sites[0]].shape == (8 * 9, 16)
    a, b = jumprelu(seed=0), jumprelu(seed=1)
    res = cl.run([a, b], sites=sites, acts=acts, model=model, tokens=tokens)
    (pair,) = res.pairs
    assert pair.fvu_identity == pytest.approx(fvu(acts[sites[1]], acts[sites[0]]))
    assert pair.fvu_own_sae == pytest.approx(fvu(acts[sites[1]], b(acts[sites[1]])), rel=1e-5)
    assert pair.delta_ce_own_sae == pytest.approx(downstream_metrics(model, tokens, sites[1], b).delta_ce, abs=1e-6)
    assert pair.delta_ce_identity > 0
    assert sorted(res.perms[0].tolist()) == list(range(40))
    res.save(tmp_path / "c")
    back = cl.CrossLayerResult.load(tmp_path / "c")
    assert back.pairs == res.pairs and torch.equal(back.perms[0], res.perms[0])
    assert back.plot(tmp_path / "c.png") is not None


def test_site_rows_reads_a_site_named_twice_once():
    import tiny_lm

    from saekit.sources.hf import site_rows

    model = tiny_lm.tiny_llama().eval()
    tokens = torch.randint(3, 15, (4, 6), generator=torch.Generator().manual_seed(0))
    site = "layers.0.resid_post"
    twice = site_rows(model, tokens, [site, site], skip_positions=2, progress=False)
    once = saekit.collect_activations(model, tokens, [site])[site][:, 2:].reshape(-1, 16)
    assert list(twice) == [site] and torch.allclose(twice[site], once)
